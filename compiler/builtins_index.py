"""The built-in functions of integer indexing and the small ops: take, take_along_axis, index_add,
argmax, argmin, cumsum, cumprod, erf, eye, one_hot (also with a symbolic number of classes)."""
from __future__ import annotations

from ..frontend.diagnostics import CompileError
from .ir import INTS, ShapeError, Value, dim_add
from .ops_index import arg_extremum
from .values import DimRef, DType

I64_MIN = -2 ** 63


def _describe_index(s, idx):
    """How a message names the index array: its parameter or let name where it has one."""
    name = next((k for k, v in s.env.items() if v is idx), None)
    return f" (indices '{name}')" if name is not None else ""


def checked_index(s, node, what, idx, x, axis, loc=None):
    """idx as i64 (what: the builtin's name, or None for a subscript), behind run-time checks that every element lies in [-n, n) for n = x.shape[axis]:
    a call with one outside raises IndexError naming the function, the indices and the index."""
    loc = loc or node.loc
    idx = s.as_value(idx, node, "i64")
    if idx.dtype not in INTS:
        raise CompileError(f"{what or 'an index array'}: indices must be integers (i32 or i64), got {idx.type}", loc)
    owner = _describe_index(s, idx)
    if idx.dtype != "i64":
        idx = s.e.cast(idx, dtype="i64")
    d = x.shape[axis]
    text = f"is out of range for axis {axis} of {x.type} (size {d}){owner} at {loc}"
    e = s.e
    what = f"{what}: index" if what else "index"
    if isinstance(d, int):
        return e.check_range(idx, lo=-d, hi=d, error="IndexError", message=f"{what} {{value}} {text}")
    # a symbolic size: idx < n, then -idx < n + 1 (the negated values checked; lo keeps -idx exact)
    idx = e.check_range(idx, lo=I64_MIN + 1, hi=d, error="IndexError", message=f"{what} {{value}} {text}")
    neg = e.check_range(e.neg(idx), lo=I64_MIN + 1, hi=dim_add(d, 1), error="IndexError",
                        message=f"{what} -{{value}} {text}")
    return e.mul(neg, -1)


def _axis(s, node, axis, x, what):
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise CompileError(f"{what}: axis must be a constant integer, got {s.describe(axis)}", node.loc)
    rank = len(x.shape)
    if not -rank <= axis < rank:
        raise CompileError(f"{what}: axis {axis} is out of range for {x.type}", node.loc)
    return axis % rank


def _array(s, node, x, what):
    x = s.as_value(x, node)
    if not x.shape:
        raise CompileError(f"{what} needs an array, got {x.type}", node.loc)
    return x


def _b_take(s, node, x, idx, axis=0):
    x = _array(s, node, x, "take")
    axis = _axis(s, node, axis, x, "take")
    return s.e.take(x, checked_index(s, node, "take", idx, x, axis), axis=axis)


def _b_take_along_axis(s, node, x, idx, axis=None):
    x = _array(s, node, x, "take_along_axis")
    if axis is None:
        raise CompileError("take_along_axis needs axis=", node.loc)
    axis = _axis(s, node, axis, x, "take_along_axis")
    idx = s.as_value(idx, node, "i64")
    if len(idx.shape) != len(x.shape):
        raise CompileError(f"take_along_axis: the indices must have the rank of the array "
                           f"({len(x.shape)}), got {idx.type} for {x.type}", node.loc)
    return s.e.take_along_axis(x, checked_index(s, node, "take_along_axis", idx, x, axis), axis=axis)


def _b_index_add(s, node, x, idx, values, axis=0):
    x = _array(s, node, x, "index_add")
    axis = _axis(s, node, axis, x, "index_add")
    idx = checked_index(s, node, "index_add", idx, x, axis)
    v = s.as_value(values, node, x.dtype)
    want = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    if v.shape != want:
        try:
            v = s.e.broadcast_to(v, shape=want)     # a scalar or a broadcastable block
        except ShapeError:
            raise CompileError(f"index_add: the values must have shape [{', '.join(map(str, want))}] "
                               f"(x.shape[:axis] + indices.shape + x.shape[axis+1:]) or broadcast to it, "
                               f"got {v.type}", node.loc) from None
    return s.e.index_add(x, idx, v, axis=axis)


def _flat_axis(s, node, x, axis, what):
    """The axis of a scan or arg-reduction: axis=None is the only axis of a vector."""
    if axis is None:
        if len(x.shape) != 1:
            raise CompileError(f"{what} of {x.type} needs axis= (gradc does not flatten)", node.loc)
        return 0
    return _axis(s, node, axis, x, what)


def _b_arg(largest):
    what = "argmax" if largest else "argmin"

    def f(s, node, x, axis=None, keepdims=False):
        x = _array(s, node, x, what)
        if x.dtype == "bool":
            raise CompileError(f"{what} takes numbers, got {x.type}", node.loc)
        return arg_extremum(s.e, x, _flat_axis(s, node, x, axis, what), bool(keepdims), largest)
    return f


def _b_scan(op):
    def f(s, node, x, axis=None):
        x = _array(s, node, x, op)
        axis = _flat_axis(s, node, x, axis, op)
        kw = {"reverse": False} if op == "cumsum" else {}
        return s.e.emit(op, x, axis=axis, **kw)
    return f


def _size(s, node, n, what):
    if isinstance(n, DimRef):
        return n.value
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return n
    raise CompileError(f"{what} needs a constant size or a dimension name, got {s.describe(n)}", node.loc)


def _dtype(s, node, dtype):
    from .builtins import _dtype_arg
    return _dtype_arg(s, node, dtype)


def _b_eye(s, node, n, dtype=DType("f32")):
    n = _size(s, node, n, "eye")
    e = s.e
    shape = (n, n)
    same = e.eq(e.iota(shape=shape, axis=0, dtype="i64"), e.iota(shape=shape, axis=1, dtype="i64"))
    return e.cast(same, dtype=_dtype(s, node, dtype))


def _b_one_hot(s, node, i, n, dtype=DType("f32")):
    n = _size(s, node, n, "one_hot")
    i = s.as_value(i, node, "i64")
    if i.dtype not in INTS:
        raise CompileError(f"one_hot needs integer class indices, got {i.type}", node.loc)
    # a label outside [0, n) is a mistake, not a row of zeros: the call raises ValueError
    i = s.e.check_range(i, lo=0, hi=n, error="ValueError",
                        message=f"one_hot: the label {{value}} is outside [0, {n}) (at {node.loc})")
    dt = _dtype(s, node, dtype)
    if isinstance(n, int):
        return s.e.one_hot(i, n=n, dtype=dt)
    e = s.e
    shape = i.shape + (n,)
    labels = e.broadcast_to(e.reshape(i, shape=i.shape + (1,)), shape=shape)
    return e.cast(e.eq(labels, e.iota(shape=shape, axis=len(i.shape), dtype=i.dtype)), dtype=dt)


def _b_erf(s, node, x):
    x = s.as_value(x, node, "f64" if isinstance(x, (int, float)) else None)
    return s.e.erf(x)


INDEX_BUILTINS = {
    "take": _b_take, "take_along_axis": _b_take_along_axis, "index_add": _b_index_add,
    "argmax": _b_arg(True), "argmin": _b_arg(False), "cumsum": _b_scan("cumsum"),
    "cumprod": _b_scan("cumprod"), "erf": _b_erf, "eye": _b_eye, "one_hot": _b_one_hot,
}


def is_index_array(v) -> bool:
    """An integer-array subscript (x[idx]), as opposed to a scalar index."""
    return isinstance(v, Value) and v.shape != ()

