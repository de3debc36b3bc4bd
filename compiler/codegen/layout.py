"""Index maps of the layout ops: one element of the result read from the right element of the input.

A map that reads one input element yields (input, index) and is sent the element (function.py
drives it without recursing); pad and concat, which branch, call L.elem inside each branch.
"""
from __future__ import annotations

from llvmlite import ir

from ..ir import dim_parts
from ..ops import index_map
from .scalar import I64, LLTYPES

ZERO = ir.Constant(I64, 0)


def broadcast_index(in_shape, out_shape, idx):
    """The index into an input that NumPy broadcasting stretches to out_shape."""
    lead = len(out_shape) - len(in_shape)
    return tuple(ZERO if d == 1 else idx[k + lead] for k, d in enumerate(in_shape))


def _broadcast_to(L, n, idx):
    x = n.ins[0]
    return (yield x, broadcast_index(x.shape, n.out.shape, idx))


def _transpose(L, n, idx):
    perm = n.attr("perm")
    inner = [None] * len(perm)
    for k, p in enumerate(perm):
        inner[p] = idx[k]
    return (yield n.ins[0], tuple(inner))


def _reshape(L, n, idx):
    x = n.ins[0]
    src = [d for d in x.shape if d != 1]
    dst = [(d, i) for d, i in zip(n.out.shape, idx) if d != 1]
    if src == [d for d, _ in dst]:
        # only unit axes come and go: the other indices carry over
        it = iter(i for _, i in dst)
        return (yield x, tuple(ZERO if d == 1 else next(it) for d in x.shape))
    b = L.b
    # leading and trailing axes the reshape keeps carry their indices over; only the axes
    # between are flattened and split again (no division by a symbolic size where B leads)
    lo, hi_x, hi_o = 0, len(x.shape), len(n.out.shape)
    while lo < min(hi_x, hi_o) and x.shape[lo] == n.out.shape[lo]:
        lo += 1
    while hi_x > lo and hi_o > lo and x.shape[hi_x - 1] == n.out.shape[hi_o - 1]:
        hi_x, hi_o = hi_x - 1, hi_o - 1
    flat = ZERO
    for d, i in zip(n.out.shape[lo:hi_o], idx[lo:hi_o]):
        flat = b.add(b.mul(flat, L.dim(d)), i)
    inner = []
    for k, d in enumerate(reversed(x.shape[lo:hi_x])):
        if k == hi_x - lo - 1:
            inner.append(flat)             # the outermost flattened axis takes what is left
            break
        dv = L.dim(d)
        inner.append(b.urem(flat, dv))
        flat = b.udiv(flat, dv)
    return (yield x, tuple(idx[:lo]) + tuple(reversed(inner)) + tuple(idx[hi_o:]))


def _start(L, d, s):
    """(start, step) of slice spec s on dimension d, as LLVM values; NumPy's clamping rules."""
    _, start, stop, step = s
    sym, size = dim_parts(d)
    if sym is None:
        a, _, st = slice(start, stop, step).indices(size)
        return ir.Constant(I64, a), st
    if start is None:
        return ZERO, 1
    dv, b = L.dim(d), L.entry
    if start >= 0:
        return b.select(b.icmp_signed("<", dv, ir.Constant(I64, start)), dv, ir.Constant(I64, start)), 1
    a = b.add(dv, ir.Constant(I64, start))
    return b.select(b.icmp_signed("<", a, ZERO), ZERO, a), 1


def _index(L, d, k):
    if k >= 0:
        return ir.Constant(I64, k)
    sym, size = dim_parts(d)
    return ir.Constant(I64, size + k) if sym is None else L.entry.add(L.dim(d), ir.Constant(I64, k))


def _slice(L, n, idx):
    x, spec = n.ins[0], n.attr("spec")
    inner, q = [], 0
    for d, s in zip(x.shape, spec):
        if s[0] == "i":
            inner.append(_index(L, d, s[1]))
            continue
        start, step = _start(L, d, s)
        i = idx[q]
        q += 1
        inner.append(L.b.add(start, i if step == 1 else L.b.mul(i, ir.Constant(I64, step))))
    inner += idx[q:]
    return (yield x, tuple(inner))


def _pad(L, n, idx):
    g, spec = n.ins[0], n.attr("spec")
    b = L.b
    inner, conds, q = [], [], 0
    known = n in L.assume_inside          # the loop runs where the innermost axis is in range
    for k, s in enumerate(spec):
        d = n.out.shape[k]
        if s[0] == "i":
            conds.append(b.icmp_signed("==", idx[k], _index(L, d, s[1])))
            continue
        start, step = _start(L, d, s)
        off = b.sub(idx[k], start)
        j = off if step == 1 else b.sdiv(off, ir.Constant(I64, step))
        if not (known and k == len(spec) - 1):
            if step != 1:
                conds.append(b.icmp_signed("==", b.mul(j, ir.Constant(I64, step)), off))
            conds.append(b.icmp_signed(">=", j, ZERO))
            conds.append(b.icmp_signed("<", j, L.dim(g.shape[q])))
        inner.append(j)
        q += 1
    inner += idx[len(spec):]
    if not conds:
        return L.elem(g, tuple(inner))
    cond = conds[0]
    for c in conds[1:]:
        cond = b.and_(cond, c)
    zero = ir.Constant(LLTYPES[g.dtype], 0)
    return L.branch(cond, lambda: L.elem(g, tuple(inner)), lambda: zero)


def _concat(L, n, idx):
    axis, xs = n.attr("axis"), n.ins
    if len(xs) == 1:
        return L.elem(xs[0], idx)
    offs = [ZERO]
    for x in xs[:-1]:
        offs.append(L.entry.add(offs[-1], L.dim(x.shape[axis])))
    # piece i where idx[axis] < offs[i + 1], tested in turn: a loop, for concats of many arrays
    b = L.b
    conds = [lambda i=i: b.icmp_signed("<", idx[axis], offs[i + 1]) for i in range(len(xs) - 1)]
    pieces = [lambda i=i: L.elem(xs[i], idx[:axis] + (b.sub(idx[axis], offs[i]),) + idx[axis + 1:])
              for i in range(len(xs))]
    return L.cases(conds, pieces)


def _one_hot(L, n, idx):
    v = yield n.ins[0], idx[:-1]
    if v.type != I64:
        v = L.b.sext(v, I64)
    return L.cg.cast(L.b.icmp_signed("==", v, idx[-1]), n.attr("dtype"))


def _run_index(L, v):
    return v if v.type == I64 else L.b.sext(v, I64)


def _dyn_slice(L, n, idx):
    axis, keep = n.attr("axis"), n.attr("keep")
    s = _run_index(L, (yield n.ins[1], ()))
    inner = idx[:axis] + ((L.b.add(idx[axis], s),) if keep else (s,)) + idx[axis + keep:]
    return (yield n.ins[0], inner)


def _dyn_unslice(L, n, idx):
    axis, keep, size = n.attr("axis"), n.attr("keep"), n.attr("size")
    g = n.ins[0]
    s = _run_index(L, (yield n.ins[1], ()))
    b = L.b
    off = b.sub(idx[axis], s)
    inside = b.and_(b.icmp_signed(">=", off, ZERO), b.icmp_signed("<", off, ir.Constant(I64, size)))
    inner = idx[:axis] + ((b.select(inside, off, ZERO),) if keep else ()) + idx[axis + 1:]
    v = yield g, inner
    return b.select(inside, v, ir.Constant(LLTYPES[g.dtype], 0))


# each layout op's index map lives in its registry entry (OpDef.index_map): every backend's
# element lowering reads it from there
for _name, _fn in {"broadcast_to": _broadcast_to, "transpose": _transpose, "reshape": _reshape,
                   "slice": _slice, "pad": _pad, "concat": _concat, "one_hot": _one_hot,
                   "dyn_slice": _dyn_slice, "dyn_unslice": _dyn_unslice}.items():
    index_map(_name)(_fn)

from . import gather  # noqa: E402,F401  (the integer-indexing ops' maps)
from . import layout_nn  # noqa: E402,F401  (the window ops of convolution and pooling)
