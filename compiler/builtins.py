"""The built-in functions of the language: argument checking and the ops or composites they emit."""
from __future__ import annotations

import numpy as np

from ..frontend.diagnostics import CompileError
from .ir import DTYPES, FLOATS, ShapeError, Value
from .ops import norm_axes
from .values import DimRef, DType, FnValue


# ---- builtins: (scope, call node, *args, **kwargs) -> value

def _unary(op):
    def f(s, node, x):
        x = s.as_value(x, node, "f64" if isinstance(x, (int, float)) else None)
        return s.e.emit(op, x)
    return f


def _shape_arg(s, node, dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list, np.ndarray)):
        dims = tuple(dims[0].tolist() if isinstance(dims[0], np.ndarray) else dims[0])
    out = []
    for d in dims:
        if isinstance(d, DimRef):
            out.append(d.value)
        elif isinstance(d, int) and not isinstance(d, bool) and d >= -1:
            out.append(d)
        else:
            raise CompileError(f"a shape takes integers and dimension names, got {s.describe(d)}", node.loc)
    return tuple(out)


def _axis(s, node, axis, rank):
    if axis is not None and not (isinstance(axis, int) or
                                 (isinstance(axis, tuple) and all(isinstance(a, int) for a in axis))):
        raise CompileError(f"axis must be a constant integer or a tuple of them, got {s.describe(axis)}",
                           node.loc)
    return norm_axes(axis, rank)


def _reduce(op):
    def f(s, node, x, axis=None, keepdims=False):
        x = s.as_value(x, node)
        return s.e.emit(op, x, axes=_axis(s, node, axis, len(x.shape)), keepdims=bool(keepdims))
    return f


def _composite(op, default_axis):
    def f(s, node, x, axis=default_axis, keepdims=False):
        x = s.as_value(x, node)
        _axis(s, node, axis, len(x.shape))
        kw = {"keepdims": bool(keepdims)} if op in ("mean", "logsumexp") else {}
        if op not in ("mean", "logsumexp") and keepdims:
            raise CompileError(f"{op}() has no keepdims", node.loc)
        if op in ("mean", "logsumexp") and x.dtype not in FLOATS:
            raise ShapeError(f"{op}: expected f32 or f64 values, got {x.type}")
        return getattr(s.e, op)(x, axis, **kw)
    return f


def _dtype_arg(s, node, d):
    if not isinstance(d, DType):
        raise CompileError(f"expected a dtype ({', '.join(DTYPES)}), got {s.describe(d)}", node.loc)
    return d.name


def _fill(value):
    def f(s, node, *dims, dtype=DType("f32")):
        return s.e.const(value, _dtype_arg(s, node, dtype), _shape_arg(s, node, dims))
    return f


def _b_reshape(s, node, x, *shape):
    x = s.as_value(x, node)
    shape = list(_shape_arg(s, node, shape))
    if shape.count(-1) > 1:
        raise CompileError("reshape takes at most one -1", node.loc)
    if -1 in shape:
        known = [d for d in shape if d != -1]
        total = [d for d in x.shape]
        if not all(isinstance(d, int) for d in known + total):
            rest = [d for d in total if d not in known or known.remove(d)]
            if len(rest) != 1:
                raise CompileError(f"reshape of {x.type} with -1 would need a product of symbolic "
                                   "dimensions, which gradc does not represent", node.loc,
                                   ["a dimension is a name plus a constant (N, N-1); keep the "
                                    "symbolic axis separate, e.g. reshape(x, (N, -1))"])
            shape[shape.index(-1)] = rest[0]
        else:
            shape[shape.index(-1)] = int(np.prod(total)) // max(int(np.prod(known)), 1)
    return s.e.reshape(x, shape=tuple(shape))


def _b_transpose(s, node, x, axes=None):
    x = s.as_value(x, node)
    perm = tuple(reversed(range(len(x.shape)))) if axes is None else axes
    if not isinstance(perm, tuple) or not all(isinstance(a, int) for a in perm):
        raise CompileError(f"transpose axes must be a tuple of integers, got {s.describe(axes)}", node.loc)
    rank = len(x.shape)
    if len(perm) != rank or not all(-rank <= a < rank for a in perm):
        raise CompileError(f"transpose: axes {perm} do not fit {x.type}", node.loc)   # as written
    return s.e.transpose(x, perm=tuple(a % max(rank, 1) for a in perm))


def _b_concat(s, node, *xs, axis=0):
    if len(xs) == 1 and isinstance(xs[0], (tuple, list)):
        xs = xs[0]
    if not xs:
        raise CompileError("concat needs at least one array", node.loc)
    vals = [s.as_value(x, node) for x in xs]
    return s.e.concat(*vals, axis=_axis(s, node, axis, len(vals[0].shape))[0])


def _b_where(s, node, c, a, b):
    c = s.as_value(c, node, "bool")
    peer = next((x.dtype for x in (a, b) if isinstance(x, Value)), None)
    return s.e.where(c, s.as_value(a, node, peer), s.as_value(b, node, peer))


def _b_clamp(s, node, x, lo, hi):
    x = s.as_value(x, node)
    return s.e.clamp(x, lo, hi)


def _b_pair(op):
    def f(s, node, a, b):
        if not isinstance(a, Value) and not isinstance(b, Value):
            a = s.as_value(a, node, "f64")
        return s.e.emit(op, a, b)
    return f


def _b_cast(s, node, x, dtype):
    return s.e.cast(s.as_value(x, node), dtype=_dtype_arg(s, node, dtype))


def _b_one_hot(s, node, i, n, dtype=DType("f32")):
    if not isinstance(n, int):
        raise CompileError(f"one_hot needs a constant number of classes, got {s.describe(n)}", node.loc)
    i = s.as_value(i, node, "i64")
    # a label outside [0, n) is a mistake, not a row of zeros: the call raises ValueError
    i = s.e.check_range(i, lo=0, hi=n, error="ValueError",
                        message=f"one_hot: the label {{value}} is outside [0, {n}) (at {node.loc})")
    return s.e.one_hot(i, n=n, dtype=_dtype_arg(s, node, dtype))


def _b_broadcast_to(s, node, x, *shape):
    return s.e.broadcast_to(s.as_value(x, node), shape=_shape_arg(s, node, shape))


def _b_detach(s, node, x):
    return s.e.detach(s.as_value(x, node))


def _b_hook(s, node, x, h):
    x = s.as_value(x, node)
    if not isinstance(h, FnValue):
        raise CompileError(f"hook needs a function of the gradient, got {s.describe(h)}", node.loc)
    g = s.low.instantiate(h, [(x.shape, x.dtype)], node)
    if len(g.outputs) != 1 or g.outputs[0].shape != x.shape or g.outputs[0].dtype != x.dtype:
        got = ", ".join(o.type for o in g.outputs)
        raise CompileError(f"the hook {h.name} must return the gradient's type {x.type}, not {got}",
                           node.loc)
    return s.e.hook(x, fn=g)


BUILTINS = {name: _unary(name) for name in
            ("sin", "cos", "tan", "exp", "log", "log1p", "expm1", "sqrt", "abs", "sign", "tanh",
             "sigmoid", "relu", "softplus")}
BUILTINS.update({
    "minimum": _b_pair("minimum"), "maximum": _b_pair("maximum"), "clamp": _b_clamp,
    "where": _b_where, "sum": _reduce("sum"), "max": _reduce("max"), "min": _reduce("min"),
    "mean": _composite("mean", None), "logsumexp": _composite("logsumexp", None),
    "softmax": _composite("softmax", -1), "log_softmax": _composite("log_softmax", -1),
    "reshape": _b_reshape, "transpose": _b_transpose, "broadcast_to": _b_broadcast_to,
    "concat": _b_concat, "cast": _b_cast, "one_hot": _b_one_hot, "zeros": _fill(0), "ones": _fill(1),
    "detach": _b_detach, "hook": _b_hook,
})

# integer indexing and the small ops (builtins_index.py); one_hot there takes a symbolic size too
from .builtins_index import INDEX_BUILTINS  # noqa: E402

BUILTINS.update(INDEX_BUILTINS)

# ---- products, convolution and pooling (compiler/ops_nn.py)

def _arg_loc(node, i, name=None):
    """Where argument i (or keyword name) of the call is written, else the call."""
    for k, v, loc in node.kwargs:
        if k == name:
            return v.loc
    return node.args[i].loc if i is not None and i < len(node.args) else node.loc


def _ints(s, node, v, r, name, least, op):
    """An integer or a tuple of r integers, each at least least: a tuple of r."""
    ok = lambda k: isinstance(k, int) and not isinstance(k, bool)
    vals = (v,) * r if ok(v) else v if isinstance(v, tuple) and len(v) == r and all(map(ok, v)) else None
    where = _arg_loc(node, None, name)
    if vals is None:
        raise CompileError(f"{op}: {name}= takes an integer or a tuple of {r}, got {s.describe(v)}", where)
    if any(k < least for k in vals):
        raise CompileError(f"{op}: {name}= must be at least {least}, got {v}", where)
    return vals


def _float_value(s, node, x, i, op):
    v = s.as_value(x, node.args[i] if i < len(node.args) else node)
    if v.dtype not in FLOATS:
        raise CompileError(f"{op}: expected f32 or f64 values, got {v.type}", _arg_loc(node, i))
    return v


def _b_conv(r):
    op = f"conv{r}d"
    layout = "N, C, L" if r == 1 else "N, C, H, W"

    def f(s, node, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        from .ops_nn import out_sizes
        x, w = _float_value(s, node, x, 0, op), _float_value(s, node, w, 1, op)
        for v, what, i, form in ((x, "input", 0, layout), (w, "weight", 1, "out channels, in channels / groups, " +
                                                           ("k" if r == 1 else "kh, kw"))):
            if len(v.shape) != r + 2:
                raise CompileError(f"{op}: the {what} must have {r + 2} axes ({form}), got {v.type}",
                                   _arg_loc(node, i))
        if x.dtype != w.dtype:
            raise CompileError(f"{op}: dtype mismatch between {x.type} and {w.type} (use cast to convert)",
                               node.loc)
        if not (isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1):
            raise CompileError(f"{op}: groups= takes a positive integer, got {s.describe(groups)}",
                               _arg_loc(node, None, "groups"))
        o, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
        c = x.shape[1]
        if not all(isinstance(k, int) for k in kernel):
            raise CompileError(f"{op}: the kernel size must be fixed, got {w.type}", _arg_loc(node, 1))
        if groups > 1:
            for what, d, v, i in (("output channels of the weight", o, w, 1), ("input channels", c, x, 0)):
                if not isinstance(d, int) or d % groups:
                    raise CompileError(f"{op}: groups={groups} does not divide the {d} {what} "
                                       f"({v.type})", _arg_loc(node, None, "groups"))
        want = cg if groups == 1 else (cg * groups if isinstance(cg, int) else None)
        if c != want:
            raise CompileError(f"{op}: the input {x.type} has {c} channels, but the weight {w.type} "
                               f"expects {want if want is not None else cg}" +
                               (f" ({cg} per group, groups={groups})" if groups > 1 else ""), node.loc)
        win = {k: _ints(s, node, v, r, k, least, op) for k, v, least in
               (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1))}
        try:
            out_sizes(x.shape, kernel, win["stride"], win["padding"], win["dilation"])
        except ShapeError as ex:
            raise CompileError(f"{op}: {ex}", node.loc) from None
        if b is not None:
            b = _float_value(s, node, b, 2, op)
            if b.shape != (o,) or b.dtype != w.dtype:
                raise CompileError(f"{op}: the bias must be {w.dtype}[{o}] (one per output channel), "
                                   f"got {b.type}", _arg_loc(node, 2, "b"))
        return s.e.conv(x, w, b, groups=groups, **win)
    return f


def _b_pool(kind, r):
    op = f"{kind}_pool{r}d"

    def f(s, node, x, kernel, stride=None, padding=0, **kw):
        from .ops_nn import out_sizes
        x = _float_value(s, node, x, 0, op)
        if len(x.shape) not in (r + 1, r + 2):
            raise CompileError(f"{op}: the input must have {r + 1} or {r + 2} axes, got {x.type}",
                               _arg_loc(node, 0))
        k = _ints(s, node, kernel, r, "kernel", 1, op)
        st = k if stride is None else _ints(s, node, stride, r, "stride", 1, op)
        p = _ints(s, node, padding, r, "padding", 0, op)
        d = _ints(s, node, kw.get("dilation", 1), r, "dilation", 1, op)
        for ki, pi, di in zip(k, p, d):
            if pi > (di * (ki - 1) + 1) // 2:
                raise CompileError(f"{op}: padding {pi} is more than half the kernel ({di * (ki - 1) + 1} "
                                   "wide), as PyTorch requires", _arg_loc(node, None, "padding"))
        try:
            out_sizes(x.shape, k, st, p, d)
        except ShapeError as ex:
            raise CompileError(f"{op}: {ex}", node.loc) from None
        if kind == "max":
            return s.e.max_pool(x, k, st, p, d)
        return s.e.avg_pool(x, k, st, p)
    if kind == "max":
        return lambda s, node, x, kernel, stride=None, padding=0, dilation=1: f(
            s, node, x, kernel, stride, padding, dilation=dilation)
    return lambda s, node, x, kernel, stride=None, padding=0: f(s, node, x, kernel, stride, padding)


def _b_einsum(s, node, spec, *xs):
    from .ops_nn import einsum_sizes, parse_einsum
    if not isinstance(spec, str):
        raise CompileError(f"einsum needs its spec first, as in einsum(\"ij,jk->ik\", a, b), got "
                           f"{s.describe(spec)}", _arg_loc(node, 0))
    vals = [_float_value(s, node, x, i + 1, "einsum") for i, x in enumerate(xs)]
    if len({v.dtype for v in vals}) > 1:
        raise CompileError("einsum: dtype mismatch between " + " and ".join(v.type for v in vals) +
                           " (use cast to convert)", node.loc)
    try:
        ins, _ = parse_einsum(spec, [len(v.shape) for v in vals])
        einsum_sizes(ins, [v.shape for v in vals])
    except ShapeError as ex:
        where, message = ex.args
        raise CompileError(message, _arg_loc(node, 0 if where == "spec" else where + 1)) from None
    return s.e.einsum(*vals, spec=spec)


BUILTINS.update({
    "conv1d": _b_conv(1), "conv2d": _b_conv(2), "einsum": _b_einsum,
    "max_pool1d": _b_pool("max", 1), "max_pool2d": _b_pool("max", 2),
    "avg_pool1d": _b_pool("avg", 1), "avg_pool2d": _b_pool("avg", 2),
})
