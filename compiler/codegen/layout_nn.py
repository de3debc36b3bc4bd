"""Index maps of the window ops (convolution and pooling): one element of the result from its input's.

A window position outside the input reads the fill (zero padding, or -inf for max pooling); an
adjoint sums, over the kernel offsets, the output positions that read this input element.
"""
from __future__ import annotations

import itertools

from llvmlite import ir

from ..ops import index_map
from .scalar import I64, LLTYPES

ZERO = ir.Constant(I64, 0)


def _c(v):
    return ir.Constant(I64, v)


def _forward(L, pos, sizes, padding):
    """The in-range test of input positions pos (None: always inside)."""
    b, cond = L.b, None
    for p, d, pad in zip(pos, sizes, padding):
        if pad == 0:
            continue               # the output size keeps every window inside the input
        inside = b.icmp_unsigned("<", p, L.dim(d))
        cond = inside if cond is None else b.and_(cond, inside)
    return cond


def _positions(L, outs, offsets, stride, padding, dilation):
    b = L.b
    pos = []
    for o, k, s, p, d in zip(outs, offsets, stride, padding, dilation):
        v = o if s == 1 else b.mul(o, _c(s))
        shift = k * d - p
        pos.append(v if shift == 0 else b.add(v, _c(shift)))
    return pos


def _backward(L, here, offsets, stride, padding, dilation, out_dims):
    """(output positions, their test) that read input positions `here` at these kernel offsets."""
    b, cond, outs = L.b, None, []
    for h, k, s, p, d, od in zip(here, offsets, stride, padding, dilation, out_dims):
        shift = p - k * d
        t = h if shift == 0 else b.add(h, _c(shift))
        if s == 1:
            o, ok = t, b.icmp_unsigned("<", t, L.dim(od))
        else:
            o = b.udiv(t, _c(s))
            ok = b.and_(b.icmp_signed(">=", t, ZERO),
                        b.and_(b.icmp_unsigned("==", b.urem(t, _c(s)), ZERO), b.icmp_unsigned("<", o, L.dim(od))))
        outs.append(o)
        cond = ok if cond is None else b.and_(cond, ok)
    return outs, cond


def _read(L, x, idx, cond, fill):
    if cond is None:
        return L.elem(x, idx)
    return L.branch(cond, lambda: L.elem(x, idx), lambda: ir.Constant(LLTYPES[x.dtype], fill))


@index_map("window")
def _window(L, n, idx):
    x, kw = n.ins[0], n.kw
    r = len(kw["kernel"])
    lead = len(idx) - r
    pos = _positions(L, idx[lead:], kw["offset"], kw["stride"], kw["padding"], kw["dilation"])
    cond = _forward(L, pos, x.shape[lead:], kw["padding"])
    return _read(L, x, tuple(idx[:lead]) + tuple(pos), cond, kw["fill"])


@index_map("unwindow")
def _unwindow(L, n, idx):
    g, kw = n.ins[0], n.kw
    r = len(kw["kernel"])
    lead = len(idx) - r
    outs, cond = _backward(L, idx[lead:], kw["offset"], kw["stride"], kw["padding"], kw["dilation"],
                           g.shape[lead:])
    return _read(L, g, tuple(idx[:lead]) + tuple(outs), cond, 0)


@index_map("im2col")
def _im2col(L, n, idx):
    x, kw = n.ins[0], n.kw
    r, groups = len(kw["kernel"]), kw["groups"]
    if groups == 1:
        nn, outs, ch, offs = idx[0], idx[1:1 + r], idx[1 + r], idx[2 + r:]
    else:
        g, nn, outs, c, offs = idx[0], idx[1], idx[2:2 + r], idx[2 + r], idx[3 + r:]
        ch = L.b.add(L.b.mul(g, _c(n.out.shape[2 + r])), c)
    # the kernel offsets are loop indices here, not constants: shift by k*d - p at run time
    b = L.b
    pos = []
    for o, k, s, p, d in zip(outs, offs, kw["stride"], kw["padding"], kw["dilation"]):
        v = o if s == 1 else b.mul(o, _c(s))
        v = b.add(v, k if d == 1 else b.mul(k, _c(d)))
        pos.append(v if p == 0 else b.sub(v, _c(p)))
    cond = _forward(L, pos, x.shape[2:], kw["padding"])
    return _read(L, x, (nn, ch) + tuple(pos), cond, 0)


@index_map("col2im")
def _col2im(L, n, idx):
    c, kw = n.ins[0], n.kw
    kernel, groups = kw["kernel"], kw["groups"]
    r = len(kernel)
    b, cg = L.b, L.cg
    nn, ch, here = idx[0], idx[1], idx[2:]
    if groups == 1:
        out_dims = c.shape[1:1 + r]
        head, mid = (nn,), (ch,)
    else:
        cgs = _c(c.shape[2 + r])
        out_dims = c.shape[2:2 + r]
        head, mid = (b.udiv(ch, cgs), nn), (b.urem(ch, cgs),)
    acc = None
    for offs in itertools.product(*(range(k) for k in kernel)):
        outs, cond = _backward(L, here, offs, kw["stride"], kw["padding"], kw["dilation"], out_dims)
        v = _read(L, c, head + tuple(outs) + mid + tuple(_c(k) for k in offs), cond, 0)
        acc = v if acc is None else cg.add(acc, v)
    return acc
