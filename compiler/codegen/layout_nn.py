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


# ---- max pooling by the winner's index (ops_nn.py: pool_argmax, pool_gather, pool_scatter)

I32 = LLTYPES["i32"]


def _offsets_of(L, j, kernel):
    """The kernel offsets (row-major) of window position j, as i64 values."""
    b, offs = L.b, []
    for k in reversed(kernel):
        offs.append(b.urem(j, _c(k)) if k > 1 else ZERO)
        j = b.udiv(j, _c(k)) if k > 1 else j
    return offs[::-1]


def _winner(L, idx_v, at, size):
    """The winner index at `at`, as i64 clamped into [0, size): never a position outside the window."""
    b = L.b
    j = b.sext(L.elem(idx_v, at), I64)
    j = b.select(b.icmp_signed("<", j, ZERO), ZERO, j)
    return b.select(b.icmp_signed(">", j, _c(size - 1)), _c(size - 1), j)


def _pool_scan(L, n, idx):
    """(maximum, i32 index of the winner) of the window at idx: the chain of where(x_k > m or
    x_k != x_k, x_k, m) over the offsets in row-major order."""
    x, kw = n.ins[0], n.kw
    r = len(kw["kernel"])
    lead = len(idx) - r
    b, cg = L.b, L.cg
    best = arg = None
    for j, offs in enumerate(itertools.product(*(range(k) for k in kw["kernel"]))):
        pos = _positions(L, idx[lead:], offs, kw["stride"], kw["padding"], kw["dilation"])
        cond = _forward(L, pos, x.shape[lead:], kw["padding"])
        v = _read(L, x, tuple(idx[:lead]) + tuple(pos), cond, float("-inf"))
        if best is None:
            best, arg = v, ir.Constant(I32, 0)
            continue
        win = b.or_(cg.gt(v, best), cg.ne(v, v))
        best, arg = b.select(win, v, best), b.select(win, ir.Constant(I32, j), arg)
    return best, arg


@index_map("pool_max")
def _pool_max(L, n, idx):
    return _pool_scan(L, n, idx)[0]


@index_map("pool_argmax")
def _pool_argmax(L, n, idx):
    return _pool_scan(L, n, idx)[1]


@index_map("pool_gather")
def _pool_gather(L, n, idx):
    x, w, kw = n.ins[0], n.ins[1], n.kw
    kernel = kw["kernel"]
    r = len(kernel)
    lead = len(idx) - r
    b = L.b
    size = 1
    for k in kernel:
        size *= k
    offs = _offsets_of(L, _winner(L, w, tuple(idx), size), kernel)
    pos = []
    for o, k, s, p, d in zip(idx[lead:], offs, kw["stride"], kw["padding"], kw["dilation"]):
        v = o if s == 1 else b.mul(o, _c(s))
        v = b.add(v, k if d == 1 else b.mul(k, _c(d)))
        pos.append(v if p == 0 else b.sub(v, _c(p)))
    cond = _forward(L, pos, x.shape[lead:], kw["padding"])
    return _read(L, x, tuple(idx[:lead]) + tuple(pos), cond, kw["fill"])


@index_map("pool_scatter")
def _pool_scatter(L, n, idx):
    g, w, kw = n.ins[0], n.ins[1], n.kw
    kernel, stride, padding, dilation = kw["kernel"], kw["stride"], kw["padding"], kw["dilation"]
    r = len(kernel)
    lead = len(idx) - r
    b, cg = L.b, L.cg
    zero = ir.Constant(LLTYPES[g.dtype], 0)
    out_dims = g.shape[lead:]
    head = tuple(idx[:lead])
    size = 1
    for k in kernel:
        size *= k

    def take(outs, j):
        # g at the window outs if element j of that window is its winner, else 0
        hit = b.icmp_unsigned("==", _winner(L, w, head + tuple(outs), size), j)
        return b.select(hit, L.elem(g, head + tuple(outs)), zero)

    if all(d == 1 and s >= k for k, s, d in zip(kernel, stride, dilation)):
        # the windows do not overlap: the one window this element can be in, and its place there
        cond, outs, j = None, [], ZERO
        for h, k, s, p, od, sd in zip(idx[lead:], kernel, stride, padding, out_dims, kw["shape"]):
            t = h if p == 0 else b.add(h, _c(p))
            o, at = (t, ZERO) if s == 1 else (b.udiv(t, _c(s)), b.urem(t, _c(s)))
            oks = []
            if s > k:
                oks.append(b.icmp_unsigned("<", at, _c(k)))
            if not (isinstance(sd, int) and isinstance(od, int) and sd + p <= od * s):
                oks.append(b.icmp_unsigned("<", o, L.dim(od)))
            for ok in oks:
                cond = ok if cond is None else b.and_(cond, ok)
            outs.append(o)
            j = b.add(b.mul(j, _c(k)), at) if k > 1 else j
        if cond is None:
            return take(outs, j)
        return L.branch(cond, lambda: take(outs, j), lambda: zero)
    acc = None
    for j, offs in enumerate(itertools.product(*(range(k) for k in kernel))):
        outs, cond = _backward(L, idx[lead:], offs, stride, padding, dilation, out_dims)
        v = take(outs, _c(j)) if cond is None else L.branch(cond, lambda: take(outs, _c(j)), lambda: zero)
        acc = v if acc is None else cg.add(acc, v)
    return acc
