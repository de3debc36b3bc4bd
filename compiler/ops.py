"""The op registry: each op's shape rule, NumPy semantics, derivative rules and lowering."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..vocab import NP_DTYPES
from .ir import FLOATS, INTS, ShapeError, dim_add, dim_parts, type_str



@dataclass(frozen=True)
class OpDef:
    name: str
    shape: Callable            # (*in_values, **attrs) -> (shape, dtype), or ShapeError
    ref: Callable              # (*arrays, **attrs) -> np.ndarray: the oracle
    vjp: Callable | None       # (e, g, out, *ins, **attrs) -> one cotangent per input, None = none
    jvp: Callable | None       # (e, tangents, out, *ins, **attrs) -> tangent of out, None = zero
    kind: str = "elementwise"  # elementwise | reduce | layout | matmul | source
    lower: Callable | None = None   # (cg, *elems, **attrs) -> LLVM value of one element, written with
    # the code generator's typed helpers (codegen/scalar.py); layout, reduce and matmul ops
    # lower as loops in codegen/
    needs: Callable | None = None   # (*in_values, **attrs) -> [Need]: sizes the inputs must have
    # at run time (compiler/checks.py collects them, the runtime tests them once per call)
    cheap: int | None = None   # the instructions an element costs to recompute where that is
    # little: 0 (an index map, a cast) or 1; such values are computed again in each loop that
    # uses them rather than stored (the fusion plan reads this). None: worth storing

    identity: Callable | None = None   # a reduction's: (dtype) -> the Python value it starts from
    combine: Callable | None = None    # a reduction's: (cg, acc, x) -> acc combined with x
    index_map: Callable | None = None  # a layout op's element lowering: (L, node, idx) -> the element
    # at idx from its input's elements (codegen/layout.py registers them; every backend uses them)
    batch: Callable | None = None      # the batching rule (vmap): (b, node, ins, mapped) -> (value,
    # mapped) with the batch on axis 0 (a tuple op: a list of them, one per part); None: the
    # fallback, a loop over the batch around the op (compiler/batching.py)


@dataclass(frozen=True)
class Need:
    """Axis `axis` of input `value` must have at least `min` elements, else `error`.

    what: the phrase the message starts with ("index 5", "slice 0:10", "max").
    message: a message of its own ("{owner}": the parameter or value, "{at}": the position).
    """
    error: str                 # "IndexError" | "ValueError"
    value: object              # the input Value
    axis: int
    min: int
    what: str
    message: str | None = None   # the whole message instead, with {owner}, {at} and {size}


OPS: dict[str, OpDef] = {}
COMPOSITES: dict[str, Callable] = {}     # builtins built from ops: (e, *args, **kw) -> Value


def _quiet(f):
    """NumPy semantics without warnings: inf and nan are values like any other."""
    def g(*a, **k):
        with np.errstate(all="ignore"):
            return f(*a, **k)
    return g


def defop(name, shape, ref, vjp=None, jvp=None, kind="elementwise", lower=None, needs=None, cheap=None,
          identity=None, combine=None, batch=None):
    OPS[name] = OpDef(name, shape, _quiet(ref), vjp, jvp, kind, lower, needs, cheap, identity, combine,
                      batch=batch)


def index_map(name):
    """Register the decorated function as op name's index map (a layout op's element lowering)."""
    def register(fn):
        OPS[name] = replace(OPS[name], index_map=fn)
        return fn
    return register


def composite(fn):
    COMPOSITES[fn.__name__.rstrip("_")] = fn
    return fn


# ---- shape rules

def _t(v) -> str:
    return type_str(v.shape, v.dtype)


def broadcast_shapes(*shapes):
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise ShapeError("cannot broadcast " + " with ".join(
                "[" + ", ".join(map(str, s)) + "]" for s in shapes))
        out.append(big.pop() if big else 1)
    return tuple(out)


def _same_dtype(name, vs, allowed=None):
    """The one dtype of vs; name prefixes the message where the op itself does not."""
    pre = f"{name}: " if name else ""
    dts = {v.dtype for v in vs}
    if len(dts) > 1:
        raise ShapeError(f"{pre}dtype mismatch between " + " and ".join(_t(v) for v in vs)
                         + " (use cast to convert)")
    dt = dts.pop()
    if allowed is not None and dt not in allowed:
        raise ShapeError(f"{pre}expected {' or '.join(allowed)} values, got {_t(vs[0])}")
    return dt


def unary(allowed=FLOATS):
    def rule(x, **_):
        return x.shape, _same_dtype("", (x,), allowed)
    return rule


def binary(allowed=FLOATS + INTS, result=None):
    def rule(*xs, **_):
        dt = _same_dtype("", xs, allowed)
        try:
            shape = broadcast_shapes(*(x.shape for x in xs))
        except ShapeError:
            raise ShapeError("cannot broadcast " + " with ".join(_t(x) for x in xs))
        return shape, result or dt
    return rule


def norm_axes(axes, rank):
    if axes is None:
        return tuple(range(rank))
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axes}")
    return tuple(sorted(out))


def reduce_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_rule(x, axes, keepdims):
    _same_dtype("", (x,), FLOATS + INTS)
    return reduce_shape(x.shape, axes, keepdims), x.dtype


def numel_of(shape):
    """Product of a shape's dims: (constant, sorted symbols)."""
    k, syms = 1, []
    for d in shape:
        if isinstance(d, int):
            k *= d
        else:
            syms.append(d)           # "N" and "N-1" alike: equal names are equal sizes
    return k, tuple(sorted(syms))


def _reshape_rule(x, shape):
    if numel_of(x.shape) != numel_of(shape):
        raise ShapeError(f"cannot reshape {_t(x)} to {type_str(shape, x.dtype)}")
    return tuple(shape), x.dtype


def _broadcast_to_rule(x, shape):
    try:
        out = broadcast_shapes(x.shape, shape)
    except ShapeError:
        out = None
    if out != tuple(shape):
        raise ShapeError(f"cannot broadcast {_t(x)} to {type_str(shape, x.dtype)}")
    return tuple(shape), x.dtype


def _transpose_rule(x, perm):
    if sorted(perm) != list(range(len(x.shape))):
        raise ShapeError(f"transpose: axes {perm} do not fit {_t(x)}")
    return tuple(x.shape[p] for p in perm), x.dtype


def slice_len(d, start, stop, step):
    """Length of d[start:stop:step], symbolic where d is."""
    sym, off = dim_parts(d)
    if sym is None:
        return len(range(*slice(start, stop, step).indices(off)))
    if step not in (None, 1):
        raise ShapeError(f"a step slice of symbolic dimension {d} is not supported")
    begin = 0 if start is None else (start if start >= 0 else dim_add(d, start))
    end = d if stop is None else (stop if stop >= 0 else dim_add(d, stop))
    if isinstance(end, int) and isinstance(begin, int):
        return max(end - begin, 0)
    if isinstance(begin, int):
        return dim_add(end, -begin)
    if not isinstance(end, int) and dim_parts(end)[0] == dim_parts(begin)[0]:
        return max(dim_parts(end)[1] - dim_parts(begin)[1], 0)
    raise ShapeError(f"slice bounds {start}:{stop} on symbolic dimension {d} are not supported")


def _slice_rule(x, spec):
    if len(spec) > len(x.shape):
        raise ShapeError(f"too many indices for {_t(x)}")
    out = []
    for d, s in zip(x.shape, spec):
        if s[0] == "i":
            k = s[1]
            if isinstance(d, int) and not -d <= k < d:
                raise ShapeError(f"index {k} is out of range for a dimension of size {d}")
        else:
            _check_bounds(d, *s[1:])
            out.append(slice_len(d, *s[1:]))
    return tuple(out) + tuple(x.shape[len(spec):]), x.dtype


def _slice_text(start, stop, step):
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    return text + (f":{step}" if step is not None else "")


def _bound_min(k):
    """The least axis size on which the bound k lies within the axis (0 <= bound <= size)."""
    return 0 if k is None else (k if k >= 0 else -k)


def slice_min(start, stop):
    """The least size of an axis that d[start:stop] fits: 0 <= start <= stop <= size, negative
    bounds counted from the end (no clamping, unlike NumPy: the shape rule counts on it)."""
    m = max(_bound_min(start), _bound_min(stop))
    if start is not None and stop is not None and start >= 0 > stop:
        m = max(m, start - stop)
    return m


def _check_bounds(d, start, stop, step):
    sym, size = dim_parts(d)
    text = _slice_text(start, stop, step)
    if sym is None:
        if slice_min(start, stop) > size:
            raise ShapeError(f"bounds {text} are out of range for a dimension of size {size}")
        begin = 0 if start is None else start % size if size else 0
        end = size if stop is None else stop + size if stop < 0 else stop
        if begin > end:
            raise ShapeError(f"bounds {text} end before they start (on a dimension of size {size})")
    elif start is not None and stop is not None and (start >= 0) == (stop >= 0) and start > stop:
        raise ShapeError(f"bounds {text} end before they start")


def _slice_needs(x, spec):
    needs = []
    for axis, (d, s) in enumerate(zip(x.shape, spec)):
        if isinstance(d, int):
            continue              # checked by the shape rule
        if s[0] == "i":
            k = s[1]
            needs.append(Need("IndexError", x, axis, k + 1 if k >= 0 else -k, f"index {k}"))
        elif slice_min(s[1], s[2]) > 0:
            needs.append(Need("IndexError", x, axis, slice_min(s[1], s[2]), f"slice {_slice_text(*s[1:])}"))
    return needs


def slice_key(spec):
    return tuple(s[1] if s[0] == "i" else slice(*s[1:]) for s in spec)


def _pad_ref(g, spec, shape):
    out = np.zeros(shape, g.dtype)
    out[slice_key(spec)] = g
    return out


def _concat_rule(*xs, axis):
    dt = _same_dtype("concat", xs)
    rank = len(xs[0].shape)
    if rank == 0 or any(len(x.shape) != rank for x in xs):
        raise ShapeError("concat needs arrays of one rank (at least 1): " + ", ".join(map(_t, xs)))
    total = 0
    for x in xs:
        if any(x.shape[i] != xs[0].shape[i] for i in range(rank) if i != axis):
            raise ShapeError("concat: shapes differ off the concatenation axis: " + ", ".join(map(_t, xs)))
        d = x.shape[axis]
        if isinstance(total, int):
            total = dim_add(d, total)
        elif isinstance(d, int):
            total = dim_add(total, d)
        else:
            raise ShapeError(f"concat of two symbolic dimensions ({total}, {d}) is not supported")
    shape = list(xs[0].shape)
    shape[axis] = total
    return tuple(shape), dt


# ---- derivative helpers shared by the rules

def _math(name, ref, deriv, allowed=FLOATS, lower=None, cheap=None):
    """An elementwise op whose partials are deriv(e, out, *ins) (None = no gradient)."""
    def vjp(e, g, z, *xs, **_):
        return tuple(None if d is None else e.gmul(g, d) for d in deriv(e, z, *xs))

    def jvp(e, ts, z, *xs, **_):
        acc = None
        for t, d in zip(ts, deriv(e, z, *xs)):
            if t is not None and d is not None:
                acc = e.gmul(t, d) if acc is None else e.add(acc, e.gmul(t, d))
        return acc

    n_in = deriv.__code__.co_argcount - 2
    defop(name, unary(allowed) if n_in == 1 else binary(allowed), ref, vjp, jvp, lower=lower, cheap=cheap)


def _nograd(name, shape, ref, lower=None, cheap=None):
    defop(name, shape, ref, None, None, lower=lower, cheap=cheap)


def _linear(name, shape, ref, vjp, kind="layout", needs=None):
    """An op linear in its inputs: its tangent is the op applied to the tangents."""
    def jvp(e, ts, z, *xs, **attrs):
        if len(xs) == 1:
            return e.emit(name, ts[0], **attrs)
        ts = [t if t is not None else e.zeros_like(x) for t, x in zip(ts, xs)]
        return e.emit(name, *ts, **attrs)
    defop(name, shape, ref, vjp, jvp, kind=kind, needs=needs, cheap=0)


def _int_zero_safe(f):
    """f with an integer divisor of 0 giving 0, as NumPy does (here without its warning)."""
    def g(x, y):
        x, y = np.asarray(x), np.asarray(y)
        if y.dtype.kind not in "iu":
            return f(x, y)
        return np.where(y == 0, np.zeros((), x.dtype), f(x, np.where(y == 0, np.ones((), y.dtype), y)))
    return g


def _sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


# ---- sources

defop("const", lambda value, shape, dtype: (tuple(shape), dtype),
      lambda value, shape, dtype: np.full(shape, value, NP_DTYPES[dtype]), kind="source")
defop("literal", lambda data, shape, dtype: (tuple(shape), dtype),
      lambda data, shape, dtype: np.array(data, NP_DTYPES[dtype]).reshape(shape), kind="source")
defop("numel", lambda x, axes, dtype: ((), dtype),
      lambda x, axes, dtype: np.array(math.prod(x.shape[a] for a in axes), NP_DTYPES[dtype]), kind="source")

# ---- elementwise math (partials written in the IR's own ops)

_math("neg", np.negative, lambda e, y, x: (-1,), FLOATS + INTS,
      lower=lambda cg, x: cg.neg(x), cheap=1)
_math("sin", np.sin, lambda e, y, x: (e.cos(x),),
      lower=lambda cg, x: cg.call("sin", x))
_math("cos", np.cos, lambda e, y, x: (e.neg(e.sin(x)),),
      lower=lambda cg, x: cg.call("cos", x))
_math("tan", np.tan, lambda e, y, x: (e.add(1, e.mul(y, y)),),
      lower=lambda cg, x: cg.call("tan", x))
_math("exp", np.exp, lambda e, y, x: (y,),
      lower=lambda cg, x: cg.call("exp", x))
_math("log", np.log, lambda e, y, x: (e.div(1, x),),
      lower=lambda cg, x: cg.call("log", x))
_math("log1p", np.log1p, lambda e, y, x: (e.div(1, e.add(x, 1)),),
      lower=lambda cg, x: cg.call("log1p", x))
_math("expm1", np.expm1, lambda e, y, x: (e.add(y, 1),),
      lower=lambda cg, x: cg.call("expm1", x))
_math("sqrt", np.sqrt, lambda e, y, x: (e.div(0.5, y),),
      lower=lambda cg, x: cg.call("sqrt", x))
_math("tanh", np.tanh, lambda e, y, x: (e.sub(1, e.mul(y, y)),),
      lower=lambda cg, x: cg.call("tanh", x))
_math("sigmoid", _sigmoid, lambda e, y, x: (e.mul(y, e.sub(1, y)),),
      lower=lambda cg, x: cg.sigmoid(x))
_math("softplus", lambda x: np.logaddexp(0, x).astype(x.dtype), lambda e, y, x: (e.sigmoid(x),),
      lower=lambda cg, x: cg.softplus(x))
_math("abs", np.abs, lambda e, y, x: (e.sign(x),), FLOATS + INTS,
      lower=lambda cg, x: cg.abs(x), cheap=1)
_math("relu", lambda x: np.maximum(x, 0), lambda e, y, x: (e.cast(e.gt(x, 0), dtype=x.dtype),),
      FLOATS + INTS,
      lower=lambda cg, x: cg.maximum(x, cg.c(0, x)), cheap=1)
_nograd("sign", unary(FLOATS + INTS), np.sign,
      lower=lambda cg, x: cg.sign(x), cheap=1)
_math("add", np.add, lambda e, z, x, y: (1, 1), FLOATS + INTS,
      lower=lambda cg, x, y: cg.add(x, y), cheap=1)
_math("sub", np.subtract, lambda e, z, x, y: (1, -1), FLOATS + INTS,
      lower=lambda cg, x, y: cg.sub(x, y), cheap=1)
_math("mul", np.multiply, lambda e, z, x, y: (y, x), FLOATS + INTS,
      lower=lambda cg, x, y: cg.mul(x, y), cheap=1)
_math("div", np.divide, lambda e, z, x, y: (e.div(1, y), e.neg(e.div(z, y))),
      lower=lambda cg, x, y: cg.div(x, y))
# Python's floor semantics, as NumPy's floor_divide and mod; an integer divisor of 0 gives 0
# (NumPy's result, without its warning): no trap, no error
_nograd("floordiv", binary(FLOATS + INTS), _int_zero_safe(np.floor_divide),
        lower=lambda cg, x, y: cg.floordiv(x, y))
_math("mod", _int_zero_safe(np.mod), lambda e, z, x, y: (1, e.neg(e.floordiv(x, y))), FLOATS + INTS,
      lower=lambda cg, x, y: cg.mod(x, y))


def _pow_partials(e, z, x, y):
    # as PyTorch: x ** 0 has derivative 0 in x everywhere (0 * 0 ** -1 would be NaN at x = 0),
    # and 0 ** y (y >= 0) has derivative 0 in y (z * log 0 would be NaN)
    dx = e.where(e.eq(y, 0), 0, e.mul(y, e.pow(x, e.sub(y, 1))))
    dy = e.where(e.and_(e.eq(x, 0), e.ge(y, 0)), 0, e.mul(z, e.log(x)))
    return dx, dy


_math("pow", np.power, _pow_partials,
      lower=lambda cg, x, y: cg.pow(x, y))
# the two sides of a tie share the gradient, as in PyTorch
_math("maximum", np.maximum, lambda e, z, x, y: (e.tie(x, y), e.tie(y, x)), FLOATS + INTS,
      lower=lambda cg, x, y: cg.maximum(x, y), cheap=1)
_math("minimum", np.minimum, lambda e, z, x, y: (e.tie(y, x), e.tie(x, y)), FLOATS + INTS,
      lower=lambda cg, x, y: cg.minimum(x, y), cheap=1)
# gmul: x * y, but exactly zero where x is zero, so a zero cotangent contributes nothing
_math("gmul", lambda x, y: np.where(x == 0, np.zeros_like(x * y), x * y),
      lambda e, z, x, y: (y, x),
      lower=lambda cg, x, y: cg.gmul(x, y), cheap=1)
_nograd("tie", binary(FLOATS), lambda x, y: np.where(x > y, 1, np.where(x == y, 0.5, 0)).astype(x.dtype),
      lower=lambda cg, x, y: cg.tie(x, y), cheap=1)

for _name, _f in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                  ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)):
    _nograd(_name, binary(FLOATS + INTS + ("bool",), "bool"), _f,
            lower=lambda cg, x, y, _n=_name: getattr(cg, _n)(x, y))
_nograd("and", binary(("bool",)), np.logical_and,
      lower=lambda cg, x, y: cg.b.and_(x, y), cheap=1)
_nograd("or", binary(("bool",)), np.logical_or,
      lower=lambda cg, x, y: cg.b.or_(x, y), cheap=1)
_nograd("not", unary(("bool",)), np.logical_not,
      lower=lambda cg, x: cg.b.not_(x), cheap=1)


def _where_rule(c, a, b):
    if c.dtype != "bool":
        raise ShapeError(f"where: the condition must be bool, got {_t(c)}")
    dt = _same_dtype("where", (a, b))
    try:
        return broadcast_shapes(c.shape, a.shape, b.shape), dt
    except ShapeError:
        raise ShapeError(f"where: cannot broadcast {_t(c)}, {_t(a)} and {_t(b)}")


defop("where", _where_rule, np.where, cheap=1,
      vjp=lambda e, g, z, c, a, b: (None, e.where(c, g, 0), e.where(c, 0, g)),
      jvp=lambda e, ts, z, c, a, b: e.where(c, ts[1] if ts[1] is not None else 0,
                                            ts[2] if ts[2] is not None else 0),
      lower=lambda cg, c, a, b: cg.select(c, a, b))


def _clamp_rule(x, lo, hi):
    dt = _same_dtype("clamp", (x, lo, hi), FLOATS + INTS)
    try:
        return broadcast_shapes(x.shape, lo.shape, hi.shape), dt
    except ShapeError:
        raise ShapeError(f"clamp: cannot broadcast {_t(x)}, {_t(lo)} and {_t(hi)}")


def _clamp_masks(e, x, lo, hi):
    # inside [lo, hi] (bounds included, as PyTorch) the gradient goes to x
    inside = e.and_(e.ge(x, lo), e.le(x, hi))
    return inside, e.lt(x, lo), e.gt(x, hi)


defop("clamp", _clamp_rule, lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), cheap=1,
      vjp=lambda e, g, z, x, lo, hi: tuple(e.where(m, g, 0) for m in _clamp_masks(e, x, lo, hi)),
      jvp=lambda e, ts, z, x, lo, hi: _sum_masked(e, ts, _clamp_masks(e, x, lo, hi)),
      lower=lambda cg, x, lo, hi: cg.minimum(cg.maximum(x, lo), hi))


def _sum_masked(e, ts, masks):
    acc = None
    for t, m in zip(ts, masks):
        if t is not None:
            acc = e.where(m, t, 0) if acc is None else e.add(acc, e.where(m, t, 0))
    return acc


def _cast_rule(x, dtype):
    return x.shape, dtype


def _cast_vjp(e, g, z, x, dtype):
    return (e.cast(g, dtype=x.dtype) if x.dtype in FLOATS and dtype in FLOATS else None,)


def _cast_jvp(e, ts, z, x, dtype):
    return e.cast(ts[0], dtype=dtype) if dtype in FLOATS else None


defop("cast", _cast_rule, lambda x, dtype: x.astype(NP_DTYPES[dtype]), _cast_vjp, _cast_jvp,
      lower=lambda cg, x, dtype: cg.cast(x, dtype), cheap=0)
defop("detach", lambda x: (x.shape, x.dtype), lambda x: x,
      lower=lambda cg, x: x, cheap=0)
defop("hook", lambda x, fn: (x.shape, x.dtype), lambda x, fn: x,
      vjp=lambda e, g, z, x, fn: (e.call(fn, g)[0],),
      jvp=lambda e, ts, z, x, fn: ts[0],
      lower=lambda cg, x, fn: x, cheap=0)


class CheckFailed(Exception):
    """A run-time check failed in the reference evaluator: (error, message, value), as the
    native error channel reports it (runtime/module.py check_failed makes the exception)."""


def _check_range_rule(x, lo, hi, error, message):
    if x.dtype not in INTS:
        raise ShapeError(f"a range check needs integer values, got {_t(x)}")
    return x.shape, x.dtype


def _check_range_ref(x, lo, hi, error, message):
    bad = (x < lo) | (x >= hi)
    if np.any(bad):
        raise CheckFailed(error, message, int(x[bad].flat[0]))
    return x


# x itself, once every element is in [lo, hi) (hi an int or a dim); else the call raises error
# with message ("{value}": the first offending element). Backends test it once, after x is
# computed and before anything that reads the result runs (docs/internals.md, the error channel)
defop("check_range", _check_range_rule, _check_range_ref, kind="check", lower=lambda cg, x, **_: x, cheap=0)


def _one_hot_rule(i, n, dtype):
    if i.dtype not in INTS:
        raise ShapeError(f"one_hot needs integer class indices, got {_t(i)}")
    return i.shape + (n,), dtype


_nograd("one_hot", _one_hot_rule,
        lambda i, n, dtype: (i[..., None] == np.arange(n)).astype(NP_DTYPES[dtype]), cheap=0)

# ---- reductions


def _keep(e, g, x, axes, keepdims):
    """g (a reduction's result) broadcast back over x's shape."""
    if not keepdims:
        g = e.reshape(g, shape=reduce_shape(x.shape, axes, True))
    return e.broadcast_to(g, shape=x.shape)


def _extremum_weights(e, z, x, axes, keepdims):
    mask = e.cast(e.eq(x, _keep(e, z, x, axes, keepdims)), dtype=x.dtype)
    return e.div(mask, e.broadcast_to(e.sum(mask, axes=axes, keepdims=True), shape=x.shape))


def _extremum_rule(x, axes, keepdims):
    if any(x.shape[a] == 0 for a in axes):
        raise ShapeError(f"{_t(x)} has an empty axis to reduce, and max and min have no identity")
    return _reduce_rule(x, axes, keepdims)


def _lowest(dtype, sign):
    """The identity of max (sign -1) or min (sign 1): an infinity, or the integer type's extreme."""
    if dtype in FLOATS:
        return sign * math.inf
    bits = 32 if dtype == "i32" else 64
    return -(1 << (bits - 1)) if sign < 0 else (1 << (bits - 1)) - 1


def _extremum_combine(name):
    def combine(cg, acc, x):
        # nan wins, as in np.max; otherwise the larger (smaller) value
        better = cg.gt(x, acc) if name == "max" else cg.lt(x, acc)
        if x.type == acc.type and str(x.type) in ("float", "double"):
            better = cg.b.or_(better, cg.ne(x, x))
        return cg.b.select(better, x, acc)
    return combine


def _extremum(name, ref):
    # an empty axis has no maximum: NumPy raises, and so does every target (checked per call)
    needs = lambda x, axes, keepdims: [Need("ValueError", x, a, 1, name) for a in axes
                                       if not isinstance(x.shape[a], int)]
    defop(name, _extremum_rule, lambda x, axes, keepdims: ref(x, axis=axes, keepdims=keepdims),
          vjp=lambda e, g, z, x, axes, keepdims: (
              e.gmul(_keep(e, g, x, axes, keepdims), _extremum_weights(e, z, x, axes, keepdims)),),
          jvp=lambda e, ts, z, x, axes, keepdims: e.sum(
              e.gmul(ts[0], _extremum_weights(e, z, x, axes, keepdims)), axes=axes, keepdims=keepdims),
          kind="reduce", needs=needs, identity=lambda dtype: _lowest(dtype, -1 if name == "max" else 1),
          combine=_extremum_combine(name))


defop("sum", _reduce_rule, lambda x, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims),
      vjp=lambda e, g, z, x, axes, keepdims: (_keep(e, g, x, axes, keepdims),),
      jvp=lambda e, ts, z, x, axes, keepdims: e.sum(ts[0], axes=axes, keepdims=keepdims),
      kind="reduce", identity=lambda dtype: 0, combine=lambda cg, acc, x: cg.add(acc, x))
_extremum("max", np.max)
_extremum("min", np.min)

# ---- layout (linear: the tangent is the op on the tangent)

_linear("reshape", _reshape_rule, lambda x, shape: np.reshape(x, shape),
        lambda e, g, z, x, shape: (e.reshape(g, shape=x.shape),))
_linear("broadcast_to", _broadcast_to_rule, lambda x, shape: np.broadcast_to(x, shape).copy(),
        lambda e, g, z, x, shape: (e.sum_to(g, x.shape),))
_linear("transpose", _transpose_rule, lambda x, perm: np.transpose(x, perm),
        lambda e, g, z, x, perm: (e.transpose(g, perm=tuple(np.argsort(perm).tolist())),))
_linear("slice", _slice_rule, lambda x, spec: np.array(x[slice_key(spec)]),
        lambda e, g, z, x, spec: (e.pad(g, spec=spec, shape=x.shape),), needs=_slice_needs)
_linear("pad", lambda g, spec, shape: (tuple(shape), g.dtype), _pad_ref,
        lambda e, g, z, x, spec, shape: (e.slice(g, spec=spec),))


# x[s : s + size] along axis with s a run-time integer (x[s] with keep=False); the frontend puts
# a check_range on s before it (0 <= s <= n - size), derived graphs index within their loops
def _dyn_rule(x, s, axis, size, keep, n=None):
    if s.shape != () or s.dtype not in INTS:
        raise ShapeError(f"a run-time index must be an integer scalar, got {_t(s)}")
    if not 0 <= axis < len(x.shape) + (n is not None and not keep):
        raise ShapeError(f"axis {axis} is out of range for {_t(x)}")
    if n is not None:          # dyn_unslice: back to the whole axis
        return x.shape[:axis] + (n,) + x.shape[axis + keep:], x.dtype
    if not keep and size != 1:
        raise ShapeError("internal: an index takes one element")
    return x.shape[:axis] + ((size,) if keep else ()) + x.shape[axis + 1:], x.dtype


def _dyn_key(ndim, s, axis, size, keep):
    key = [slice(None)] * ndim
    key[axis] = slice(int(s), int(s) + size) if keep else int(s)
    return tuple(key)


def _dyn_unslice_ref(g, s, axis, size, keep, n):
    shape = g.shape[:axis] + (n,) + g.shape[axis + keep:]
    out = np.zeros(shape, g.dtype)
    out[_dyn_key(len(shape), s, axis, size, keep)] = g
    return out


defop("dyn_slice", _dyn_rule, lambda x, s, axis, size, keep: np.array(x[_dyn_key(x.ndim, s, axis, size, keep)]),
      lambda e, g, z, x, s, axis, size, keep: (
          e.dyn_unslice(g, s, axis=axis, size=size, keep=keep, n=x.shape[axis]), None),
      lambda e, ts, z, x, s, **kw: e.dyn_slice(ts[0], s, **kw) if ts[0] is not None else None,
      kind="layout", cheap=0)
defop("dyn_unslice", _dyn_rule, _dyn_unslice_ref,
      lambda e, g, z, x, s, axis, size, keep, n: (e.dyn_slice(g, s, axis=axis, size=size, keep=keep), None),
      lambda e, ts, z, x, s, **kw: e.dyn_unslice(ts[0], s, **kw) if ts[0] is not None else None,
      kind="layout", cheap=0)


def _concat_vjp(e, g, z, *xs, axis):
    # slice bounds count from the front up to the one symbolic piece, from the back after it
    dims = [x.shape[axis] for x in xs]
    sym = next((i for i, d in enumerate(dims) if not isinstance(d, int)), len(dims))
    lead = tuple(("s", None, None, None) for _ in range(axis))
    outs = []
    for i, d in enumerate(dims):
        rest = sum(dims[i + 1:]) if i >= sym else 0
        start = sum(dims[:i]) if i <= sym else -(rest + d)
        stop = start + d if i < sym else (-rest or None)
        outs.append(e.slice(g, spec=lead + (("s", start, stop, None),)))
    return tuple(outs)


_linear("concat", _concat_rule, lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_vjp)


# ---- composites: builtins written with the ops above


@composite
def mean(e, x, axis=None, keepdims=False):
    axes = norm_axes(axis, len(x.shape))
    return e.div(e.sum(x, axes=axes, keepdims=keepdims), e.numel(x, axes=axes, dtype=x.dtype))


@composite
def logsumexp(e, x, axis=None, keepdims=False):
    axes = norm_axes(axis, len(x.shape))
    # the shift is detached: its derivative cancels exactly, and it keeps exp from overflowing;
    # an infinite maximum shifts by 0, so [inf, 1] gives inf and [-inf, -inf] gives -inf (not NaN)
    m = e.detach(e.max(x, axes=axes, keepdims=True))
    m = e.where(e.lt(e.abs(m), math.inf), m, 0)
    s = e.log(e.sum(e.exp(e.sub(x, m)), axes=axes, keepdims=True))
    out = e.add(s, m)
    return out if keepdims else e.reshape(out, shape=reduce_shape(x.shape, axes, False))


@composite
def log_softmax(e, x, axis=-1):
    return e.sub(x, logsumexp(e, x, axis, keepdims=True))


@composite
def softmax(e, x, axis=-1):
    axes = norm_axes(axis, len(x.shape))
    ex = e.exp(e.sub(x, e.detach(e.max(x, axes=axes, keepdims=True))))
    return e.div(ex, e.sum(ex, axes=axes, keepdims=True))


from . import control  # noqa: E402,F401  (loops and branches register their ops)
from . import ops_index  # noqa: E402,F401  (integer indexing, scatters, scans, erf)
from . import ops_nn  # noqa: E402,F401  (products, convolution and pooling)
from . import rules  # noqa: E402,F401  (calls of functions with derivative rules of their own)
from . import batching  # noqa: E402,F401  (batching rules for vmap, and as_shape)
