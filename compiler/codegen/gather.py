"""Index maps of the integer-indexing ops (compiler/ops_index.py): gathers, iota, scans, and the
target maps of the scatters.

A gather's map reads the index element, counts a negative one from the end and reads the input
there. A scatter's map (kind "scatter") is not an element of its result: given the index `uidx`
of an element of the updates (the op's last input), it returns the index of the result that the
element adds into; the backends loop over the updates (cpu/function.py, cuda/graphs.py).
Indices are checked before any of this runs; the maps clamp them all the same, so that no
index outside its axis ever reaches memory.
"""
from __future__ import annotations

from llvmlite import ir

from ..ops import index_map
from .layout import ZERO, broadcast_index
from .scalar import I64, LLTYPES

ONE = ir.Constant(I64, 1)


def wrap(L, j, d):
    """Index j (any integer type) on an axis of size d: a negative one counts from the end, and
    the result is clamped into [0, d) (a checked index is never changed by the clamp)."""
    b = L.b
    j = j if j.type == I64 else b.sext(j, I64)
    n = L.dim(d)
    j = b.select(b.icmp_signed("<", j, ZERO), b.add(j, n), j)
    j = b.select(b.icmp_signed("<", j, ZERO), ZERO, j)
    last = b.sub(n, ONE)
    return b.select(b.icmp_signed(">", j, last), last, j)


def _take_index(L, x, idx_v, axis, uidx):
    """The index into x (or into index_add's result) of element uidx of take's result."""
    m = len(idx_v.shape)
    j = yield idx_v, tuple(uidx[axis:axis + m])
    return tuple(uidx[:axis]) + (wrap(L, j, x.shape[axis]),) + tuple(uidx[axis + m:])


def _along_index(L, x, idx_v, axis, shape, uidx):
    j = yield idx_v, broadcast_index(idx_v.shape, shape, uidx)
    return tuple(ZERO if k != axis and d == 1 else (wrap(L, j, d) if k == axis else uidx[k])
                 for k, d in enumerate(x.shape))


@index_map("take")
def _take(L, n, idx):
    x, i = n.ins
    inner = yield from _take_index(L, x, i, n.attr("axis"), idx)
    return (yield x, inner)


@index_map("take_along_axis")
def _take_along(L, n, idx):
    x, i = n.ins
    inner = yield from _along_index(L, x, i, n.attr("axis"), n.out.shape, idx)
    return (yield x, inner)


@index_map("index_add")
def _index_add(L, n, uidx):
    x, i, v = n.ins
    return (yield from _take_index(L, x, i, n.attr("axis"), uidx))


@index_map("index_add_along")
def _index_add_along(L, n, uidx):
    x, i, v = n.ins
    return (yield from _along_index(L, x, i, n.attr("axis"), v.shape, uidx))


@index_map("iota")
def _iota(L, n, idx):
    return L.cg.cast(idx[n.attr("axis")], n.out.dtype)


def _scan(L, n, idx, combine, start, reverse=False):
    """The running combination along the axis up to idx (from the end with reverse), in order."""
    x, axis = n.ins[0], n.attr("axis")
    t = LLTYPES[x.dtype]
    b = L.b
    acc = L.entry.alloca(t)
    b.store(ir.Constant(t, start), acc)
    d = L.dim(x.shape[axis])
    count = b.sub(d, idx[axis]) if reverse else b.add(idx[axis], ONE)
    with L.loop(count) as k:
        j = b.sub(b.sub(d, ONE), k) if reverse else k
        v = L.elem(x, tuple(idx[:axis]) + (j,) + tuple(idx[axis + 1:]))
        b.store(combine(b.load(acc, typ=t), v), acc)
    return b.load(acc, typ=t)


def _zero(n, v):
    return float(v) if n.out.dtype in ("f32", "f64") else int(v)


@index_map("cumsum")
def _cumsum(L, n, idx):
    return _scan(L, n, idx, L.cg.add, _zero(n, 0), n.attr("reverse"))


@index_map("cumprod")
def _cumprod(L, n, idx):
    return _scan(L, n, idx, L.cg.mul, _zero(n, 1))
