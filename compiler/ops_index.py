"""Registry entries for integer-array indexing (gathers and scatters), scans, iota and erf.

Gathers (`take`, `take_along_axis`) are layout ops whose index map reads the index array; their
adjoints (`index_add`, `index_add_along`) are scatters: ops of kind "scatter", whose result is
their first input with each element of their last input (the updates) added at a position that
the op's index map gives (codegen/gather.py). Backends run a scatter as a copy, then one pass
over the updates: the CPU in order on one thread, the CUDA targets with atomic adds. Index
arrays are checked by the frontend (a check_range before the op, builtins_index.py); the maps
still clamp, so that no index reaches memory outside its array.
"""
from __future__ import annotations

import math

import numpy as np

from ..vocab import NP_DTYPES
from .ir import FLOATS, INTS, ShapeError, type_str
from .ops import _math, _same_dtype, broadcast_shapes, defop


def _t(v):
    return type_str(v.shape, v.dtype)


def _axis_of(name, x, axis):
    if not 0 <= axis < max(len(x.shape), 1) or not x.shape:
        raise ShapeError(f"{name}: axis {axis} is out of range for {_t(x)}")
    return axis


def _index_dtype(name, idx):
    if idx.dtype not in INTS:
        raise ShapeError(f"{name}: indices must be integers (i32 or i64), got {_t(idx)}")


# ---- take: x.shape[:axis] + idx.shape + x.shape[axis + 1:], as np.take

def _take_shape(x, idx, axis):
    _index_dtype("take", idx)
    _axis_of("take", x, axis)
    return x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype


def _take_ref(x, idx, axis):
    return np.take(x, idx.astype(np.int64), axis=axis)


def _index_add_shape(x, idx, v, axis):
    _index_dtype("index_add", idx)
    _axis_of("index_add", x, axis)
    _same_dtype("index_add", (x, v), FLOATS + INTS)
    want = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    if tuple(v.shape) != want:
        raise ShapeError(f"index_add: the values must have shape {type_str(want, x.dtype)} "
                         f"(x.shape[:axis] + indices.shape + x.shape[axis+1:]), got {_t(v)}")
    return x.shape, x.dtype


def _index_add_ref(x, idx, v, axis):
    out = np.array(x, copy=True)
    np.add.at(out, (slice(None),) * axis + (idx.astype(np.int64),), v)
    return out


defop("take", _take_shape, _take_ref,
      vjp=lambda e, g, z, x, idx, axis: (e.index_add(e.zeros_like(x), idx, g, axis=axis), None),
      jvp=lambda e, ts, z, x, idx, axis: e.take(ts[0], idx, axis=axis) if ts[0] is not None else None,
      kind="layout", cheap=0)


def _linear_scatter_jvp(name):
    def jvp(e, ts, z, x, idx, v, axis):
        tx, _, tv = ts
        if tv is None:
            return tx
        return e.emit(name, tx if tx is not None else e.zeros_like(x), idx, tv, axis=axis)
    return jvp


defop("index_add", _index_add_shape, _index_add_ref,
      vjp=lambda e, g, z, x, idx, v, axis: (g, None, e.take(g, idx, axis=axis)),
      jvp=_linear_scatter_jvp("index_add"), kind="scatter")


# ---- take_along_axis: np.take_along_axis (idx of x's rank; other axes broadcast)

def _along_shape(name, x, idx, axis):
    _index_dtype(name, idx)
    _axis_of(name, x, axis)
    if len(idx.shape) != len(x.shape):
        raise ShapeError(f"{name}: the indices must have the rank of the array ({len(x.shape)}), "
                         f"got {_t(idx)} for {_t(x)}")
    out = []
    for k, (a, b) in enumerate(zip(x.shape, idx.shape)):
        if k == axis:
            out.append(b)
            continue
        try:
            out.append(broadcast_shapes((a,), (b,))[0])
        except ShapeError:
            raise ShapeError(f"{name}: the indices {_t(idx)} do not broadcast with {_t(x)} "
                             f"off axis {axis}") from None
    return tuple(out)


def _take_along_ref(x, idx, axis):
    shape = _along_np(x.shape, idx.shape, axis)
    idx = np.broadcast_to(idx.astype(np.int64), shape[:axis] + (idx.shape[axis],) + shape[axis + 1:])
    xs = np.broadcast_to(x, shape[:axis] + (x.shape[axis],) + shape[axis + 1:])
    return np.take_along_axis(xs, idx, axis=axis)


def _along_np(xs, ids, axis):
    return tuple(max(a, b) if k != axis else a for k, (a, b) in enumerate(zip(xs, ids)))


def _index_add_along_shape(x, idx, v, axis):
    want = _along_shape("index_add_along", x, idx, axis)
    _same_dtype("index_add_along", (x, v), FLOATS + INTS)
    if tuple(v.shape) != want:
        raise ShapeError(f"index_add_along: the values must have shape {type_str(want, x.dtype)}, got {_t(v)}")
    return x.shape, x.dtype


def _index_add_along_ref(x, idx, v, axis):
    out = np.array(x, copy=True)
    grids = list(np.indices(v.shape, sparse=True))
    for k, d in enumerate(x.shape):
        if k != axis and d == 1:
            grids[k] = np.zeros_like(grids[k])
    grids[axis] = idx.astype(np.int64)
    np.add.at(out, tuple(np.broadcast_arrays(*grids)), v)
    return out


defop("take_along_axis", lambda x, idx, axis: (_along_shape("take_along_axis", x, idx, axis), x.dtype),
      _take_along_ref,
      vjp=lambda e, g, z, x, idx, axis: (e.index_add_along(e.zeros_like(x), idx, g, axis=axis), None),
      jvp=lambda e, ts, z, x, idx, axis: e.take_along_axis(ts[0], idx, axis=axis) if ts[0] is not None else None,
      kind="layout", cheap=0)
defop("index_add_along", _index_add_along_shape, _index_add_along_ref,
      vjp=lambda e, g, z, x, idx, v, axis: (g, None, e.take_along_axis(g, idx, axis=axis)),
      jvp=_linear_scatter_jvp("index_add_along"), kind="scatter")


# ---- iota: the index along one axis, the source of argmax, eye and one_hot with a symbolic size

def _iota_ref(shape, axis, dtype):
    n = shape[axis]
    r = np.arange(n).reshape((1,) * axis + (n,) + (1,) * (len(shape) - axis - 1))
    return np.broadcast_to(r, shape).astype(NP_DTYPES[dtype])


defop("iota", lambda shape, axis, dtype: (tuple(shape), dtype), _iota_ref, kind="source", cheap=0)


# ---- scans: the running sum or product along an axis, as np.cumsum and np.cumprod

def _scan_shape(x, axis, **_):
    _same_dtype("", (x,), FLOATS + INTS)
    _axis_of("scan", x, axis)
    return x.shape, x.dtype


def _cumsum_ref(x, axis, reverse):
    if reverse:
        return np.flip(np.cumsum(np.flip(x, axis), axis=axis, dtype=x.dtype), axis)
    return np.cumsum(x, axis=axis, dtype=x.dtype)


defop("cumsum", _scan_shape, _cumsum_ref,
      vjp=lambda e, g, z, x, axis, reverse: (e.cumsum(g, axis=axis, reverse=not reverse),),
      jvp=lambda e, ts, z, x, axis, reverse: e.cumsum(ts[0], axis=axis, reverse=reverse),
      kind="layout")


def _cumprod_partials(e, x, axis):
    """C[..., k, i, ...] = prod of x[j] over j <= i, j != k (x's axis split in two: k, then i).

    The partial derivative of out[i] in x[k] for k <= i, exact where x has zeros (no division)."""
    shape = x.shape
    big = shape[:axis + 1] + shape[axis:]
    xi = e.broadcast_to(e.reshape(x, shape=shape[:axis] + (1,) + shape[axis:]), shape=big)
    k = e.iota(shape=big, axis=axis, dtype="i64")
    i = e.iota(shape=big, axis=axis + 1, dtype="i64")
    return e.cumprod(e.where(e.eq(k, i), 1, xi), axis=axis + 1), k, i


def _cumprod_vjp(e, g, z, x, axis):
    c, k, i = _cumprod_partials(e, x, axis)
    gi = e.broadcast_to(e.reshape(g, shape=x.shape[:axis] + (1,) + x.shape[axis:]), shape=c.shape)
    return (e.sum(e.where(e.ge(i, k), e.gmul(gi, c), 0), axes=(axis + 1,), keepdims=False),)


def _cumprod_jvp(e, ts, z, x, axis):
    c, k, i = _cumprod_partials(e, x, axis)
    tk = e.broadcast_to(e.reshape(ts[0], shape=x.shape[:axis + 1] + (1,) + x.shape[axis + 1:]), shape=c.shape)
    return e.sum(e.where(e.le(k, i), e.gmul(tk, c), 0), axes=(axis,), keepdims=False)


defop("cumprod", _scan_shape, lambda x, axis: np.cumprod(x, axis=axis, dtype=x.dtype),
      vjp=_cumprod_vjp, jvp=_cumprod_jvp, kind="layout")


# ---- erf, with its derivative 2/sqrt(pi) exp(-x^2)

_erf = np.vectorize(math.erf, otypes=[np.float64])
_math("erf", lambda x: _erf(x).astype(x.dtype),
      lambda e, y, x: (e.mul(2 / math.sqrt(math.pi), e.exp(e.neg(e.mul(x, x)))),),
      lower=lambda cg, x: cg.call("erf", x))


# ---- argmax, argmin: built from max/min, iota and a min of indices (first occurrence on ties)

def arg_extremum(e, x, axis, keepdims, largest):
    """The first index along axis of x's largest (smallest) value; a NaN counts as the extremum,
    as in np.argmax. An i64 result, without a derivative."""
    m = (e.max if largest else e.min)(x, axes=(axis,), keepdims=True)
    hit = e.eq(x, e.broadcast_to(m, shape=x.shape))
    if x.dtype in FLOATS:
        hit = e.or_(hit, e.ne(x, x))
    pos = e.iota(shape=x.shape, axis=axis, dtype="i64")
    return e.min(e.where(hit, pos, (1 << 63) - 1), axes=(axis,), keepdims=keepdims)
