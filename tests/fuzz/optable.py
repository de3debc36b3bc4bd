"""The ops the program generator knows: how to build, type, bound, print and evaluate each one.

One entry per op in `OPS` (expr.py holds the table's form): an entry builds a random node
(asking the generator for operands of the shapes it needs), infers its type and interval,
prints it and evaluates it with NumPy. Adding an op to the language is adding an entry here.
"""
from __future__ import annotations

import math
import random

import numpy as np

from .expr import BIG, OPS, SYM_MIN, SYMS, Op, _dt, _image, broadcast, dim_max, dim_min, dim_str, mk, num

# ---- elementwise entries

def _inside(e, dom):
    return dom is None or (dom[0] <= e.lo and e.hi <= dom[1])


def elementwise(name, f, dom=None, fmt=None, weight=1.0, smooth=True, fix="pos"):
    """A unary elementwise op: f is its NumPy meaning; dom the interval its argument must lie in."""
    def infer(args, attrs):
        (a,) = args
        if a.dtype not in ("f32", "f64") or not _inside(a, dom):
            return None
        lo, hi = _image(f, [(a.lo, a.hi)])
        return a.shape, a.dtype, lo, hi

    def build(g, depth):
        a = g.expr(depth - 1)
        if not _inside(a, dom):
            a = g.fix(a, fix)
        e = mk(name, a)
        if e is None or max(abs(e.lo), abs(e.hi)) > BIG:
            e = mk(name, g.squash(a))
        return e

    OPS[name] = Op(name, build, infer, lambda xs, at: f(*xs),
                   fmt or (lambda t, at: f"{name}({t[0]})"), weight, smooth)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def _softplus(x):
    return np.logaddexp(0, x)


elementwise("neg", np.negative, fmt=lambda t, at: f"(-{t[0]})")
elementwise("sin", np.sin)
elementwise("cos", np.cos)
elementwise("tan", np.tan, (-1.2, 1.2), fix="unit")
elementwise("exp", np.exp, (-BIG, 3.5), fix="unit")
elementwise("log", np.log, (0.1, BIG))
elementwise("log1p", np.log1p, (-0.8, BIG))
elementwise("expm1", np.expm1, (-BIG, 3.5), fix="unit")
elementwise("sqrt", np.sqrt, (0.1, BIG))
elementwise("tanh", np.tanh)
elementwise("sigmoid", _sigmoid)
elementwise("softplus", _softplus)
elementwise("abs", np.abs, smooth=False, weight=0.5)
elementwise("relu", lambda x: np.maximum(x, 0), smooth=False, weight=0.5)
elementwise("sign", np.sign, smooth=False, weight=0.2)
elementwise("detach", lambda x: x, weight=0.4)     # evaluated by Oracle, which freezes its value


def infix(name, sym, f, weight=1.0, rhs_dom=None, smooth=True, call=None):
    """A binary elementwise op with NumPy broadcasting (an operator, or a function when call)."""
    def infer(args, attrs):
        a, b = args
        dt, shape = _dt(a, b), broadcast(a.shape, b.shape)
        if dt not in ("f32", "f64") or shape is None or not _inside(b, rhs_dom):
            return None
        lo, hi = _image(f, [(a.lo, a.hi), (b.lo, b.hi)], 13)
        return shape, dt, lo, hi

    def build(g, depth):
        a = g.expr(depth - 1)
        b = g.partner(a, depth - 1)
        if not _inside(b, rhs_dom):
            b = g.fix(b, "pos") if b.op != "num" else num(2.0)
        e = mk(name, a, b)
        if e is None or max(abs(e.lo), abs(e.hi)) > BIG:
            e = mk(name, g.squash(a), g.squash(b))
        return e

    fmt = (lambda t, at: f"{call}({t[0]}, {t[1]})") if call else (lambda t, at: f"({t[0]} {sym} {t[1]})")
    OPS[name] = Op(name, build, infer, lambda xs, at: f(*xs), fmt, weight, smooth)


infix("add", "+", np.add, 2.0)
infix("sub", "-", np.subtract, 1.5)
infix("mul", "*", np.multiply, 2.0)
infix("div", "/", np.divide, 1.0, rhs_dom=(0.1, BIG))
infix("maximum", None, np.maximum, 0.4, smooth=False, call="maximum")
infix("minimum", None, np.minimum, 0.4, smooth=False, call="minimum")


def _pow_build(g, depth):
    a = g.expr(depth - 1)
    if random.random() < 0.5:
        return mk("pow", a, num(random.choice([2, 3, 2.0])))
    if a.lo < 0.2:
        a = g.fix(a, "pos")
    if a is None:
        return None
    b = num(random.choice([0.5, 1.5, -1.0, -0.5, 2.5])) if random.random() < 0.6 else g.squash(g.partner(a, 0))
    e = mk("pow", a, b)
    return e if e is not None else mk("pow", g.squash(a), num(2))


def _pow_infer(args, attrs):
    a, b = args
    dt, shape = _dt(a, b), broadcast(a.shape, b.shape)
    if dt not in ("f32", "f64") or shape is None:
        return None
    if not (b.op == "num" and float(b.attrs["v"]).is_integer()) and a.lo < 0.1:
        return None
    lo, hi = _image(np.power, [(a.lo, a.hi), (b.lo, b.hi)], 13)
    return (shape, dt, lo, hi) if max(abs(lo), abs(hi)) <= BIG else None


OPS["pow"] = Op("pow", _pow_build, _pow_infer, lambda xs, at: np.power(*xs),
                lambda t, at: f"({t[0]} ** {t[1]})", 1.0)


# ---- comparisons and logic (bool values, for where)

def compare(name, sym, f):
    def infer(args, attrs):
        a, b = args
        shape = broadcast(a.shape, b.shape)
        return None if shape is None or _dt(a, b) is None else (shape, "bool", 0, 1)
    OPS[name] = Op(name, lambda g, d: None, infer, lambda xs, at: f(*xs),
                   lambda t, at: f"({t[0]} {sym} {t[1]})", 0, False)


for _n, _s, _f in (("lt", "<", np.less), ("le", "<=", np.less_equal), ("gt", ">", np.greater),
                   ("ge", ">=", np.greater_equal), ("eq", "==", np.equal), ("ne", "!=", np.not_equal)):
    compare(_n, _s, _f)


def _logic_infer(args, attrs):
    if any(a.dtype != "bool" for a in args):
        return None
    shape = args[0].shape if len(args) == 1 else broadcast(args[0].shape, args[1].shape)
    return None if shape is None else (shape, "bool", 0, 1)


OPS["and"] = Op("and", lambda g, d: None, _logic_infer, lambda xs, at: np.logical_and(*xs),
                lambda t, at: f"({t[0]} and {t[1]})", 0, False)
OPS["or"] = Op("or", lambda g, d: None, _logic_infer, lambda xs, at: np.logical_or(*xs),
               lambda t, at: f"({t[0]} or {t[1]})", 0, False)
OPS["not"] = Op("not", lambda g, d: None, _logic_infer, lambda xs, at: np.logical_not(*xs),
                lambda t, at: f"(not {t[0]})", 0, False)


def _where_infer(args, attrs):
    c, a, b = args
    dt = _dt(a, b)
    s1 = broadcast(a.shape, b.shape)
    shape = broadcast(c.shape, s1) if s1 is not None else None
    if c.dtype != "bool" or dt not in ("f32", "f64") or shape is None:
        return None
    return shape, dt, min(a.lo, b.lo), max(a.hi, b.hi)


def _where_build(g, depth):
    a = g.expr(depth - 1)
    return mk("where", g.cond(a), a, g.partner(a, depth - 1))


OPS["where"] = Op("where", _where_build, _where_infer, lambda xs, at: np.where(*xs),
                  lambda t, at: f"where({t[0]}, {t[1]}, {t[2]})", 0.7, False)


def _clamp_infer(args, attrs):
    (a,) = args
    lo, hi = attrs["lo"], attrs["hi"]
    if a.dtype not in ("f32", "f64"):
        return None
    return a.shape, a.dtype, max(min(a.lo, hi), lo), min(max(a.hi, lo), hi)


OPS["clamp"] = Op("clamp", lambda g, d: mk("clamp", g.expr(d - 1), lo=-0.5, hi=random.choice([0.5, 1.0])),
                  _clamp_infer, lambda xs, at: np.minimum(np.maximum(xs[0], at["lo"]), at["hi"]),
                  lambda t, at: f"clamp({t[0]}, {at['lo']}, {at['hi']})", 0.4, False)


# ---- reductions and normalizations

def _axes_of(rank, axis):
    if axis is None:
        return tuple(range(rank))
    return tuple(sorted(a % rank for a in (axis if isinstance(axis, tuple) else (axis,))))


def _axis_text(axis):
    return str(axis) if not isinstance(axis, tuple) else "(" + ", ".join(map(str, axis)) + ("," if len(axis) == 1 else "") + ")"


def reduction(name, f, bound, weight=1.0, smooth=True):
    """sum, mean, max, min, logsumexp: attrs axis (None, int, tuple) and keepdims."""
    def infer(args, attrs):
        (a,) = args
        if a.dtype not in ("f32", "f64"):
            return None
        axes = _axes_of(len(a.shape), attrs["axis"])
        n = math.prod(dim_max(a.shape[k]) for k in axes)
        shape = tuple((1 if k in axes else d) for k, d in enumerate(a.shape) if attrs["keep"] or k not in axes)
        lo, hi = bound(a.lo, a.hi, n)
        return shape, a.dtype, lo, hi

    def build(g, depth):
        a = g.expr(depth - 1)
        if not a.shape:
            return None
        r = len(a.shape)
        axis = random.choice([None, random.randrange(-r, r), random.randrange(r),
                              tuple(sorted(random.sample(range(r), random.randint(1, r))))])
        e = mk(name, a, axis=axis, keep=random.random() < 0.3)
        return e if e is not None and max(abs(e.lo), abs(e.hi)) <= BIG else mk(name, g.squash(a), axis=axis,
                                                                               keep=False)

    def ev(xs, at):
        axes = _axes_of(xs[0].ndim, at["axis"])
        return f(xs[0], axes, at["keep"])

    def fmt(t, at):
        kw = "" if at["axis"] is None else f", axis={_axis_text(at['axis'])}"
        return f"{name}({t[0]}{kw}{', keepdims=true' if at['keep'] else ''})"

    OPS[name] = Op(name, build, infer, ev, fmt, weight, smooth)


def _lse(x, axes, keep):
    m = np.max(x, axis=axes, keepdims=True)
    r = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return r if keep else np.squeeze(r, axis=axes)


reduction("sum", lambda x, ax, k: np.sum(x, axis=ax, keepdims=k), lambda lo, hi, n: (n * min(lo, 0), n * max(hi, 0)))
reduction("mean", lambda x, ax, k: np.mean(x, axis=ax, keepdims=k), lambda lo, hi, n: (lo, hi))
reduction("max", lambda x, ax, k: np.max(x, axis=ax, keepdims=k), lambda lo, hi, n: (lo, hi), 0.5, False)
reduction("min", lambda x, ax, k: np.min(x, axis=ax, keepdims=k), lambda lo, hi, n: (lo, hi), 0.5, False)
reduction("logsumexp", _lse, lambda lo, hi, n: (lo, hi + math.log(n) + 1e-3), 0.7)


def normalization(name, f, bound):
    def infer(args, attrs):
        (a,) = args
        if a.dtype not in ("f32", "f64") or not a.shape:
            return None
        n = dim_max(a.shape[attrs["axis"] % len(a.shape)])
        return (a.shape, a.dtype) + bound(a.lo, a.hi, n)

    def build(g, depth):
        a = g.expr(depth - 1)
        return mk(name, a, axis=random.randrange(-len(a.shape), len(a.shape))) if a.shape else None

    OPS[name] = Op(name, build, infer, lambda xs, at: f(xs[0], at["axis"]),
                   lambda t, at: f"{name}({t[0]}, axis={at['axis']})", 0.5)


normalization("softmax", lambda x, k: np.exp(x - _lse(x, (k % x.ndim,), True)), lambda lo, hi, n: (0.0, 1.0))
normalization("log_softmax", lambda x, k: x - _lse(x, (k % x.ndim,), True),
              lambda lo, hi, n: (lo - hi - math.log(n) - 1e-3, 0.0))


# ---- layout: slices, transpose, reshape, broadcast_to, concat, matmul, cast

def _slice_infer(args, attrs):
    (a,) = args
    spec = attrs["spec"]
    if len(spec) > len(a.shape):
        return None
    out = []
    for d, s in zip(a.shape, spec):
        if s[0] == "i":
            if not -dim_min(d) <= s[1] < dim_min(d):
                return None
        elif isinstance(d, int):
            # gradc does not clamp: 0 <= start <= stop <= size once negatives count from the end
            start, stop = (v if v is None or v >= 0 else d + v for v in s[1:3])
            if not 0 <= (start or 0) <= (d if stop is None else stop) <= d:
                return None
            n = len(range(*slice(*s[1:]).indices(d)))
            if n < 1:
                return None
            out.append(n)
        else:
            start, stop, step = s[1:]
            if step is not None:
                return None
            off = d[1] - (start or 0) + (stop if stop is not None else 0)
            if SYM_MIN + off < 1:
                return None
            out.append((d[0], off))
    return tuple(out) + a.shape[len(spec):], a.dtype, a.lo, a.hi


def _slice_item(d):
    if isinstance(d, int):
        if random.random() < 0.3:
            return ("i", random.randrange(-d, d))
        start = random.choice([None, 0, 1, -2, -1, d - 1])
        stop = random.choice([None, d, -1, 2, 1])
        step = random.choice([None, None, 2, 3])
        return ("s", start, stop, step)
    if random.random() < 0.3:
        return ("i", random.choice([0, 1, -1]) if dim_min(d) >= 2 else 0)
    return ("s", random.choice([None, 1]), random.choice([None, -1]), None)


def _slice_build(g, depth):
    a = g.expr(depth - 1)
    if not a.shape:
        return None
    k = random.randint(1, len(a.shape))
    spec = tuple(("s", None, None, None) if random.random() < 0.3 and i < k - 1 else _slice_item(d)
                 for i, d in enumerate(a.shape[:k]))
    return mk("slice", a, spec=spec)


def _slice_fmt(t, at):
    def one(s):
        if s[0] == "i":
            return str(s[1])
        start, stop, step = (("" if v is None else str(v)) for v in s[1:])
        return f"{start}:{stop}" + (f":{step}" if step else "")
    return f"{t[0]}[{', '.join(one(s) for s in at['spec'])}]"


OPS["slice"] = Op("slice", _slice_build, _slice_infer,
                  lambda xs, at: xs[0][tuple(s[1] if s[0] == "i" else slice(*s[1:]) for s in at["spec"])],
                  _slice_fmt, 1.2)


def _transpose_infer(args, attrs):
    (a,) = args
    perm = attrs["perm"] or tuple(reversed(range(len(a.shape))))
    if sorted(perm) != list(range(len(a.shape))):
        return None
    return tuple(a.shape[p] for p in perm), a.dtype, a.lo, a.hi


def _transpose_build(g, depth):
    a = g.expr(depth - 1)
    if len(a.shape) < 2:
        return None
    perm = None if random.random() < 0.5 else tuple(random.sample(range(len(a.shape)), len(a.shape)))
    return mk("transpose", a, perm=perm)


OPS["transpose"] = Op("transpose", _transpose_build, _transpose_infer,
                      lambda xs, at: np.transpose(xs[0], at["perm"]),
                      lambda t, at: f"transpose({t[0]})" if at["perm"] is None
                      else f"transpose({t[0]}, {_axis_text(at['perm'])})", 0.6)


def _plain(shape):
    """A shape argument can name a dimension, not compute one (N-1), and is never ()."""
    return shape and all(isinstance(d, int) or d[1] == 0 for d in shape)


def _reshape_infer(args, attrs):
    (a,) = args
    shape = attrs["shape"]
    if not _plain(shape):
        return None
    fixed = [d for d in shape if d != -1]
    src_sym = sorted(d for d in a.shape if not isinstance(d, int))
    dst_sym = sorted(d for d in fixed if not isinstance(d, int))
    if src_sym != dst_sym:
        return None
    n_src = math.prod(d for d in a.shape if isinstance(d, int))
    n_dst = math.prod(d for d in fixed if isinstance(d, int))
    if -1 in shape:
        if n_dst == 0 or n_src % n_dst:
            return None
        shape = tuple(n_src // n_dst if d == -1 else d for d in shape)
    elif n_src != n_dst:
        return None
    return shape, a.dtype, a.lo, a.hi


def _reshape_build(g, depth):
    a = g.expr(depth - 1)
    dims = list(a.shape)
    r = random.random()
    if r < 0.4:
        dims.insert(random.randint(0, len(dims)), 1)
    elif r < 0.6 and 1 in dims:
        dims.remove(1)
    elif all(isinstance(d, int) for d in dims):
        n = math.prod(dims)
        dims = random.choice([[-1], [n], [1, -1], [-1, 1]] + ([[2, -1]] if n % 2 == 0 else []))
    elif dims:
        k = next(i for i, d in enumerate(dims) if not isinstance(d, int))
        dims[k] = -1
    return mk("reshape", a, shape=tuple(dims))


OPS["reshape"] = Op("reshape", _reshape_build, _reshape_infer,
                    lambda xs, at: np.reshape(xs[0], at["_concrete"](xs[0])),
                    lambda t, at: f"reshape({t[0]}, ({', '.join(dim_str(d) for d in at['shape'])}"
                                  f"{',' if len(at['shape']) == 1 else ''}))", 0.5)


def _broadcast_infer(args, attrs):
    (a,) = args
    shape = attrs["shape"]
    if not _plain(shape) or broadcast(a.shape, shape) != tuple(shape):
        return None
    return shape, a.dtype, a.lo, a.hi


def _broadcast_build(g, depth):
    a = g.expr(depth - 1)
    shape = [g.new_dim(True) if d == 1 and random.random() < 0.5 else d for d in a.shape]
    if random.random() < 0.6 or shape == list(a.shape):
        shape.insert(0, g.new_dim(True))
    return mk("broadcast_to", a, shape=tuple(shape))


OPS["broadcast_to"] = Op("broadcast_to", _broadcast_build, _broadcast_infer,
                         lambda xs, at: np.broadcast_to(xs[0], at["_concrete"](xs[0])).copy(),
                         lambda t, at: f"broadcast_to({t[0]}, ({', '.join(dim_str(d) for d in at['shape'])}"
                                       f"{',' if len(at['shape']) == 1 else ''}))", 0.5)


def _concat_infer(args, attrs):
    k = attrs["axis"]
    a = args[0]
    if not a.shape or _dt(*args) not in ("f32", "f64"):
        return None
    k %= len(a.shape)
    if any(len(b.shape) != len(a.shape) or not isinstance(b.shape[k], int) or
           any(x != y for i, (x, y) in enumerate(zip(a.shape, b.shape)) if i != k) for b in args):
        return None
    shape = a.shape[:k] + (sum(b.shape[k] for b in args),) + a.shape[k + 1:]
    return shape, a.dtype, min(b.lo for b in args), max(b.hi for b in args)


def _concat_build(g, depth):
    a = g.expr(depth - 1)
    axes = [k for k, d in enumerate(a.shape) if isinstance(d, int)]
    if not axes:
        return None
    k = random.choice(axes)
    shape = list(a.shape)
    shape[k] = random.randint(1, 3)
    b = g.of_shape(tuple(shape), a.dtype, depth - 1)
    parts = [a, b] + ([a] if random.random() < 0.2 else [])
    return mk("concat", *parts, axis=random.choice([k, k - len(a.shape)]))


OPS["concat"] = Op("concat", _concat_build, _concat_infer,
                   lambda xs, at: np.concatenate(xs, axis=at["axis"]),
                   lambda t, at: f"concat(({', '.join(t)}), axis={at['axis']})", 0.5)


def _matmul_infer(args, attrs):
    a, b = args
    if _dt(a, b) not in ("f32", "f64") or not (1 <= len(a.shape) <= 2 and 1 <= len(b.shape) <= 2):
        return None
    k = a.shape[-1]
    if (b.shape[0] if len(b.shape) == 1 else b.shape[-2]) != k:
        return None
    shape = a.shape[:-1] + b.shape[1:]
    m = dim_max(k) * max(abs(a.lo), abs(a.hi)) * max(abs(b.lo), abs(b.hi))
    return shape, _dt(a, b), -m, m


def _matmul_build(g, depth):
    a = g.expr(depth - 1)
    if not 1 <= len(a.shape) <= 2:
        return None
    k = a.shape[-1]
    b = g.of_shape((k,) if random.random() < 0.3 else (k, g.new_dim()), a.dtype, depth - 1)
    if b is None:
        return None
    if random.random() < 0.3 and len(b.shape) == 2:
        a, b = mk("transpose", b, perm=None), mk("transpose", a, perm=None) if len(a.shape) == 2 else a
        if len(b.shape) == 1:
            b, a = a, b
            a = mk("transpose", a, perm=None)
    e = mk("matmul", a, b)
    return e if e is None or e.hi <= BIG else mk("matmul", g.squash(a), g.squash(b))


OPS["matmul"] = Op("matmul", _matmul_build, _matmul_infer, lambda xs, at: np.matmul(*xs),
                   lambda t, at: f"({t[0]} @ {t[1]})", 0.8)


def _cast_infer(args, attrs):
    (a,) = args
    return a.shape, attrs["to"], a.lo, a.hi


def _cast_build(g, depth):
    a = g.expr(depth - 1)
    if a.dtype == "f64":
        return mk("cast", a, to="f64")
    wide = mk("cast", a, to="f64")
    inner = OPS[random.choice(["sin", "tanh", "softplus", "neg"])]
    return mk("cast", mk(inner.name, wide) or wide, to="f32")


OPS["cast"] = Op("cast", _cast_build, _cast_infer, lambda xs, at: xs[0],
                 lambda t, at: f"cast({t[0]}, {at['to']})", 0.3)


# ---- gradient hooks (linear ones, so the oracle knows what reverse mode sees)

HOOKS = {"hk_double": ("g * 2", 2.0), "hk_half": ("g * 0.5", 0.5), "hk_flip": ("-g", -1.0)}


def _hook_build(g, depth):
    name = random.choice(sorted(HOOKS))
    return mk("hook", g.expr(depth - 1), fn=name)


OPS["hook"] = Op("hook", _hook_build, lambda args, at: (args[0].shape, args[0].dtype, args[0].lo, args[0].hi),
                 lambda xs, at: xs[0], lambda t, at: f"hook({t[0]}, {at['fn']})", 0.3)


# ---- the prelude's losses (scalar results)

def loss(name, f, prep, weight=0.3):
    def infer(args, attrs):
        a, b = args
        if _dt(a, b) not in ("f32", "f64") or broadcast(a.shape, b.shape) is None:
            return None
        lo, hi = attrs.get("bound", (0.0, BIG))
        return (), _dt(a, b), lo, hi

    def build(g, depth):
        a = g.expr(depth - 1)
        a, b = prep(g, a, g.partner(a, depth - 1, literal=False))
        return mk(name, a, b, bound=attrs_bound(a, b))

    def attrs_bound(a, b):
        lo, hi = _image(f, [(a.lo, a.hi), (b.lo, b.hi)], 13)
        return max(lo, -BIG), min(hi, BIG)

    OPS[name] = Op(name, build, infer, lambda xs, at: np.mean(f(*xs)), lambda t, at: f"{name}({t[0]}, {t[1]})",
                   weight)


def _bce(p, y):
    return -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log(1 - p), -100))


loss("mse", lambda a, b: (a - b) ** 2, lambda g, a, b: (g.squash(a), g.squash(b)))
loss("binary_cross_entropy", _bce, lambda g, a, b: (g.fix(a, "prob"), g.fix(b, "prob")))
loss("bce_with_logits", lambda z, y: np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))),
     lambda g, a, b: (g.squash(a), g.fix(b, "prob")))


def _xent_infer(args, attrs):
    z, y = args
    if _dt(z, y) not in ("f32", "f64") or len(z.shape) != 2 or z.shape != y.shape:
        return None
    return (), z.dtype, 0.0, 2 * (z.hi - z.lo) + math.log(dim_max(z.shape[1])) + 1


def _xent_build(g, depth):
    z = g.expr(depth - 1)
    if len(z.shape) != 2 or not isinstance(z.shape[1], int):
        return None
    y = g.labels(z.shape, z.dtype) if random.random() < 0.5 else mk("softmax", g.of_shape(z.shape, z.dtype, 0), axis=-1)
    return mk("cross_entropy", z, y)


OPS["cross_entropy"] = Op("cross_entropy", _xent_build, _xent_infer,
                          lambda xs, at: np.mean(-np.sum(xs[1] * (xs[0] - _lse(xs[0], (1,), True)), axis=-1)),
                          lambda t, at: f"cross_entropy({t[0]}, {t[1]})", 0.3)


def _one_hot_infer(args, attrs):
    (i,) = args
    return i.shape + (attrs["n"],), attrs["dtype"], 0.0, 1.0


# integer arithmetic on class labels in [0, n) that keeps them there: what feeds one_hot.
# Each form is the source text ({0}: the labels, {n}: the classes) and its NumPy meaning.
INT_FORMS = {
    "(({0} + 3) - 3)": lambda i, n: (i + 3) - 3,
    "(({0} * 2) - {0})": lambda i, n: (i * 2) - i,
    "minimum(maximum({0}, 0), {n} - 1)": lambda i, n: np.minimum(np.maximum(i, 0), n - 1),
    "abs({0})": lambda i, n: np.abs(i),
    "(({n} - 1) - {0})": lambda i, n: (n - 1) - i,
    "where({0} > 0, {0}, 0)": lambda i, n: np.where(i > 0, i, 0),
    "(-(-{0}))": lambda i, n: -(-i),
}


def _int_infer(args, attrs):
    (i,) = args
    return (i.shape, i.dtype, 0, attrs["n"] - 1) if i.dtype in ("i32", "i64") else None


OPS["int_label"] = Op("int_label", lambda g, d: None, _int_infer,
                      lambda xs, at: INT_FORMS[at["form"]](xs[0], at["n"]).astype(xs[0].dtype),
                      lambda t, at: at["form"].format(t[0], n=at["n"]), 0)

OPS["one_hot"] = Op("one_hot", lambda g, d: None, _one_hot_infer,
                    lambda xs, at: np.eye(at["n"])[xs[0]],
                    lambda t, at: f"one_hot({t[0]}, {at['n']}, dtype={at['dtype']})", 0)


def _fill_infer(args, attrs):
    v = attrs["value"]
    return attrs["shape"], attrs["dtype"], v, v


OPS["fill"] = Op("fill", lambda g, d: None, _fill_infer,
                 lambda xs, at: np.full(at["_concrete"](None), float(at["value"])),
                 lambda t, at: f"{'ones' if at['value'] == 1 else 'zeros'}({', '.join(dim_str(d) for d in at['shape'])}"
                               f"{', ' if at['shape'] else ''}dtype={at['dtype']})", 0)


def _literal_infer(args, attrs):
    vals = attrs["values"]
    return (len(vals),), attrs["dtype"], min(vals), max(vals)


OPS["literal"] = Op("literal", lambda g, d: None, _literal_infer,
                    lambda xs, at: np.array(at["values"], float),
                    lambda t, at: "[" + ", ".join(map(repr, at["values"])) + "]", 0)


# ---- loops and branches: each a generic helper function the module defines (LOOPS), called
# on two operands; the generator wraps a program's last let in one (gen.generate)

# form -> (helper source, NumPy oracle, smooth): a is the state, b a value it reads
LOOPS = {
    "_loop_for": ("fn _loop_for(a, b) {\n    var s = a\n    for i in 0..3 { s = tanh(s * 0.5 + b) }\n"
                  "    return s\n}\n",
                  lambda a, b: _iterate(lambda s: np.tanh(s * 0.5 + b), a, 3), True),
    "_loop_while": ("fn _loop_while(a, b) {\n    var s = a\n    var k = 0\n"
                    "    while k < 2 { s = sin(s) * 0.5 + b * 0.5\n        k = k + 1 }\n    return s\n}\n",
                    lambda a, b: _iterate(lambda s: np.sin(s) * 0.5 + b * 0.5, a, 2), True),
    "_loop_if": ("fn _loop_if(a, b) {\n    var s = a\n    if sum(a) > 0.0 { s = a * b } else { s = a - b }\n"
                 "    return s\n}\n",
                 lambda a, b: a * b if np.sum(a) > 0 else a - b, False),
    # rows of b read with a run-time index: b has a leading axis of at least 3
    "_loop_rows": ("fn _loop_rows(a, b) {\n    var s = a\n    for i in 0..3 { s = s * 0.5 + tanh(b[i]) }\n"
                   "    return s\n}\n",
                   lambda a, b: _iterate_rows(a, b), True),
    # row i of b times the matrix a: b has 3 rows, so the product leaves the loop (compiler/hoist.py)
    "_loop_rowmm": ("fn _loop_rowmm(a, b) {\n    var s = a\n    for i in 0..3 { s = tanh(s * 0.5 + b[i] @ a) }\n"
                    "    return s\n}\n",
                    lambda a, b: _iterate_rowmm(a, b), True),
}


def _iterate(f, s, n):
    s = np.broadcast_to(s, np.broadcast(s, f(s)).shape).copy() if np.ndim(s) < np.ndim(f(s)) else s
    for _ in range(n):
        s = f(s)
    return s


def _iterate_rows(a, b):
    s = a
    for i in range(3):
        s = s * 0.5 + np.tanh(b[i])
    return s


def _iterate_rowmm(a, b):
    s = a
    for i in range(3):
        s = np.tanh(s * 0.5 + b[i] @ a)
    return s


def _loop_infer(args, attrs):
    a, b = args
    form = attrs["form"]
    if a.dtype not in ("f32", "f64") or b.dtype not in (a.dtype, "weak"):
        return None
    if form == "_loop_rowmm":
        if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[0] != 3 or b.shape[1] != a.shape[0]:
            return None
        return a.shape, a.dtype, -1.0, 1.0
    if form == "_loop_rows":
        if not b.shape or dim_min(b.shape[0]) < 3 or broadcast(a.shape, b.shape[1:]) != a.shape:
            return None
        return a.shape, a.dtype, min(a.lo, -2.0) * 1.0 - 2.0, max(a.hi, 2.0) + 2.0
    if broadcast(a.shape, b.shape) != a.shape:
        return None
    if form == "_loop_for":
        return a.shape, a.dtype, -1.0, 1.0
    if form == "_loop_while":
        m = max(abs(a.lo), abs(a.hi), abs(b.lo), abs(b.hi), 1.0)
        return a.shape, a.dtype, -m, m
    prods = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi, a.lo - b.hi, a.hi - b.lo]
    return a.shape, a.dtype, min(prods), max(prods)


for _form, (_src, _f, _smooth) in LOOPS.items():
    OPS[_form] = Op(_form, lambda g, d: None, _loop_infer,
                    lambda xs, at, f=_f: f(*xs), lambda t, at: f"{at['form']}({t[0]}, {t[1]})", 0.0, _smooth)


# ---- integer indexing and the small ops: index arrays are literals within every axis size

def _indices(d, m):
    n = dim_min(d)
    return tuple(random.randrange(-n, n) for _ in range(m))


def _idx_text(idx):
    return "[" + ", ".join(map(str, idx)) + "]"


def _take_infer(args, attrs):
    (a,) = args
    k = attrs["axis"]
    if a.dtype not in ("f32", "f64") or not 0 <= k < len(a.shape):
        return None
    return a.shape[:k] + (len(attrs["idx"]),) + a.shape[k + 1:], a.dtype, a.lo, a.hi


def _take_build(g, depth):
    a = g.expr(depth - 1)
    if not a.shape:
        return None
    k = random.randrange(len(a.shape))
    return mk("take", a, axis=k, idx=_indices(a.shape[k], random.randint(1, 4)), sub=random.random() < 0.4)


def _take_fmt(t, at):
    if at["sub"]:          # x[:, [1, -1]]: a gather written as a subscript
        return f"{t[0]}[{':, ' * at['axis']}{_idx_text(at['idx'])}]"
    return f"take({t[0]}, {_idx_text(at['idx'])}, axis={at['axis']})"


OPS["take"] = Op("take", _take_build, _take_infer, lambda xs, at: np.take(xs[0], at["idx"], axis=at["axis"]),
                 _take_fmt, 0.5)


def _index_add_infer(args, attrs):
    a, v = args
    k, idx = attrs["axis"], attrs["idx"]
    if _dt(a, v) not in ("f32", "f64") or not 0 <= k < len(a.shape) or \
            v.shape != a.shape[:k] + (len(idx),) + a.shape[k + 1:]:
        return None
    reps = len(idx)                 # at worst every index names the same row
    return a.shape, _dt(a, v), a.lo + reps * min(v.lo, 0), a.hi + reps * max(v.hi, 0)


def _index_add_build(g, depth):
    a = g.expr(depth - 1)
    if not a.shape:
        return None
    k = random.randrange(len(a.shape))
    idx = _indices(a.shape[k], random.randint(1, 4))
    v = g.of_shape(a.shape[:k] + (len(idx),) + a.shape[k + 1:], a.dtype, depth - 1)
    return mk("index_add", a, v, axis=k, idx=idx)


def _index_add_ev(xs, at):
    out = np.array(xs[0], dtype=np.result_type(xs[0], xs[1]), copy=True)
    np.add.at(out, (slice(None),) * at["axis"] + (np.array(at["idx"]),), xs[1])
    return out


OPS["index_add"] = Op("index_add", _index_add_build, _index_add_infer, _index_add_ev,
                      lambda t, at: f"index_add({t[0]}, {_idx_text(at['idx'])}, {t[1]}, axis={at['axis']})", 0.4)


def _along_array(idx, rank, k):
    return np.array(idx).reshape((1,) * k + (len(idx),) + (1,) * (rank - k - 1))


def _along_text(idx, rank, k):
    def lit(a):
        return "[" + ", ".join(lit(x) for x in a) + "]" if isinstance(a, list) else str(a)
    return lit(_along_array(idx, rank, k).tolist())


def _along_infer(args, attrs):
    (a,) = args
    k = attrs["axis"]
    if a.dtype not in ("f32", "f64") or not 0 <= k < len(a.shape):
        return None
    return a.shape[:k] + (len(attrs["idx"]),) + a.shape[k + 1:], a.dtype, a.lo, a.hi


def _along_build(g, depth):
    a = g.expr(depth - 1)
    if not a.shape:
        return None
    k = random.randrange(len(a.shape))
    return mk("take_along_axis", a, axis=k, idx=_indices(a.shape[k], random.randint(1, 3)), rank=len(a.shape))


OPS["take_along_axis"] = Op(
    "take_along_axis", _along_build, _along_infer,
    lambda xs, at: np.take_along_axis(xs[0], np.broadcast_to(
        _along_array(at["idx"], xs[0].ndim, at["axis"]),
        xs[0].shape[:at["axis"]] + (len(at["idx"]),) + xs[0].shape[at["axis"] + 1:]), axis=at["axis"]),
    lambda t, at: f"take_along_axis({t[0]}, {_along_text(at['idx'], at['rank'], at['axis'])}, axis={at['axis']})", 0.4)


def _newaxis_infer(args, attrs):
    (a,) = args
    k = attrs["at"]
    return (a.shape[:k] + (1,) + a.shape[k:], a.dtype, a.lo, a.hi) if 0 <= k <= len(a.shape) else None


def _newaxis_build(g, depth):
    a = g.expr(depth - 1)
    return mk("newaxis", a, at=random.randint(0, len(a.shape))) if len(a.shape) < 3 else None


OPS["newaxis"] = Op("newaxis", _newaxis_build, _newaxis_infer,
                    lambda xs, at: np.expand_dims(xs[0], at["at"]),
                    lambda t, at: f"{t[0]}[{':, ' * at['at']}None]", 0.3)


def scan(name, f, bound, weight=0.4):
    def infer(args, attrs):
        (a,) = args
        k = attrs["axis"]
        if a.dtype not in ("f32", "f64") or not -len(a.shape) <= k < len(a.shape):
            return None
        return (a.shape, a.dtype) + bound(a.lo, a.hi, dim_max(a.shape[k]))

    def build(g, depth):
        a = g.expr(depth - 1)
        if not a.shape:
            return None
        if name == "cumprod":
            a = g.squash(a)
        return mk(name, a, axis=random.randrange(-len(a.shape), len(a.shape)))

    OPS[name] = Op(name, build, infer, lambda xs, at: f(xs[0], axis=at["axis"]),
                   lambda t, at: f"{name}({t[0]}, axis={at['axis']})", weight)


def _prod_bound(lo, hi, n):
    m = max(abs(lo), abs(hi), 1.0) ** n
    return (-m, m) if m <= BIG else (math.inf, math.inf)


scan("cumsum", np.cumsum, lambda lo, hi, n: (n * min(lo, 0), n * max(hi, 0)))
scan("cumprod", np.cumprod, _prod_bound)
elementwise("erf", np.vectorize(math.erf, otypes=[float]), weight=0.5)


def _arg_infer(args, attrs):
    (a,) = args
    k = attrs["axis"]
    if a.dtype not in ("f32", "f64") or not 0 <= k < len(a.shape):
        return None
    shape = tuple(1 if i == k else d for i, d in enumerate(a.shape) if attrs["keep"] or i != k)
    return shape, "i64", 0, dim_max(a.shape[k]) - 1


def _arg_build(name):
    def build(g, depth):
        a = g.expr(depth - 1)
        if not a.shape:
            return None
        # an i64 result, into the floats through a cast (no gradient, a step function), added
        # to its argument so that the program still depends on the values differentiably
        i = mk(name, a, axis=random.randrange(len(a.shape)), keep=True)
        return mk("add", a, mk("cast", i, to=a.dtype)) if i is not None else None
    return build


for _name, _f in (("argmax", np.argmax), ("argmin", np.argmin)):
    OPS[_name] = Op(_name, _arg_build(_name), _arg_infer,
                    lambda xs, at, f=_f: f(xs[0], axis=at["axis"], keepdims=at["keep"]),
                    lambda t, at, n=_name: f"{n}({t[0]}, axis={at['axis']}"
                                           f"{', keepdims=true' if at['keep'] else ''})", 0.3, False)


def _eye_infer(args, attrs):
    n = attrs["n"]
    return (n, n), attrs["dtype"], 0.0, 1.0


def _eye_build(g, depth):
    a = g.expr(depth - 1)
    if not 1 <= len(a.shape) <= 2 or a.dtype not in ("f32", "f64"):
        return None
    d = a.shape[-1]
    if not isinstance(d, int) and d[1] != 0:
        return None
    return mk("matmul", a, mk("eye", n=d, shape=(d, d), dtype=a.dtype))      # a @ eye(d): a itself


OPS["eye"] = Op("eye", _eye_build, _eye_infer, lambda xs, at: np.eye(at["_concrete"](None)[0]),
                lambda t, at: f"eye({dim_str(at['n'])}, {at['dtype']})", 0.3)
# ---- products, convolution and pooling: batched @, einsum, conv1d/conv2d, max/avg pooling

def _out_dim(d, k, s, p, dil):
    span = dil * (k - 1) + 1
    if isinstance(d, int):
        return (d + 2 * p - span) // s + 1 if d + 2 * p >= span else None
    if s != 1 or dim_min(d) + 2 * p < span:
        return None
    return (d[0], d[1] + 2 * p - span + 1)


def _bmm_infer(args, attrs):
    a, b = args
    if _dt(a, b) not in ("f32", "f64") or len(a.shape) != 3 or len(b.shape) != 3 or a.shape[2] != b.shape[1]:
        return None
    batch = broadcast(a.shape[:1], b.shape[:1])
    if batch is None:
        return None
    m = dim_max(a.shape[2]) * max(abs(a.lo), abs(a.hi)) * max(abs(b.lo), abs(b.hi))
    return batch + (a.shape[1], b.shape[2]), _dt(a, b), -m, m


def _bmm_build(g, depth):
    bt, m, k, n = g.new_dim(), g.new_dim(), g.new_dim(), g.new_dim()
    a = g.of_shape((bt, m, k), g.p.dtype, depth - 1)
    b = g.of_shape((random.choice([bt, bt, 1]), k, n), g.p.dtype, depth - 1)
    e = mk("matmul_batched", a, b)
    return e if e is None or e.hi <= BIG else mk("matmul_batched", g.squash(a), g.squash(b))


OPS["matmul_batched"] = Op("matmul_batched", _bmm_build, _bmm_infer, lambda xs, at: np.matmul(*xs),
                           lambda t, at: f"({t[0]} @ {t[1]})", 0.4)

EINSUMS = ["bij,bjk->bik", "ij,kj->ki", "ijk->ki", "ij,ij->i", "i,j->ij", "bij,j->bi", "iij->j",
           "ij,jk,k->i", "ij->"]


def _einsum_infer(args, attrs):
    spec = attrs["spec"]
    ins, out = spec.split("->")
    parts = ins.split(",")
    if _dt(*args) not in ("f32", "f64") or len(parts) != len(args):
        return None
    sizes, bound = {}, 1.0
    for part, a in zip(parts, args):
        if len(part) != len(a.shape):
            return None
        for c, d in zip(part, a.shape):
            if sizes.setdefault(c, d) != d:
                return None
        bound *= max(abs(a.lo), abs(a.hi))
    summed = [c for c in sizes if c not in out]
    m = bound * math.prod(dim_max(sizes[c]) for c in summed)
    return tuple(sizes[c] for c in out), _dt(*args), -m, m


def _einsum_build(g, depth):
    spec = random.choice(EINSUMS)
    ins = spec.split("->")[0].split(",")
    sizes = {c: (random.choice([2, 3]) if any(p.count(c) > 1 for p in ins) else g.new_dim())
             for c in "".join(ins)}
    xs = [g.of_shape(tuple(sizes[c] for c in p), g.p.dtype, depth - 1) for p in ins]
    e = mk("einsum", *xs, spec=spec)
    return e if e is None or e.hi <= BIG else mk("einsum", *[g.squash(x) for x in xs], spec=spec)


OPS["einsum"] = Op("einsum", _einsum_build, _einsum_infer, lambda xs, at: np.einsum(at["spec"], *xs),
                   lambda t, at: f"einsum(\"{at['spec']}\", {', '.join(t)})", 0.4)


def _windows(x, kernel, stride, padding, dilation, fill):
    """x's windows over its last axes: (..., *out, *kernel), padding with fill."""
    r = len(kernel)
    xp = np.pad(x, [(0, 0)] * (x.ndim - r) + [(p, p) for p in padding], constant_values=fill)
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(x.ndim - r, x.ndim)))
    return win[(Ellipsis,) + tuple(slice(None, None, s) for s in stride) + tuple(slice(None, None, d) for d in dilation)]


def _conv_ev(xs, at):
    x, w = xs
    r, gr = len(at["kernel"]), at["groups"]
    win = _windows(x, at["kernel"], at["stride"], at["padding"], at["dilation"], 0.0)   # n, c, *out, *k
    n, c = x.shape[:2]
    o = w.shape[0]
    win = win.reshape((n, gr, c // gr) + win.shape[2:])
    wg = w.reshape((gr, o // gr) + w.shape[1:])
    letters = "xyz"[:r]
    y = np.einsum(f"ngc{letters}{letters.upper()},goc{letters.upper()}->ngo{letters}", win, wg)
    return y.reshape((n, o) + y.shape[3:])


def _conv_infer(args, attrs):
    x, w = args
    r, gr = len(attrs["kernel"]), attrs["groups"]
    if _dt(x, w) not in ("f32", "f64") or len(x.shape) != r + 2 or len(w.shape) != r + 2:
        return None
    if not isinstance(x.shape[1], int) or x.shape[1] != gr * w.shape[1] or w.shape[0] % gr:
        return None
    out = [_out_dim(d, k, s, p, dl) for d, k, s, p, dl in
           zip(x.shape[2:], attrs["kernel"], attrs["stride"], attrs["padding"], attrs["dilation"])]
    if any(d is None for d in out):
        return None
    m = w.shape[1] * math.prod(attrs["kernel"]) * max(abs(x.lo), abs(x.hi)) * max(abs(w.lo), abs(w.hi))
    return (x.shape[0], w.shape[0]) + tuple(out), _dt(x, w), -m, m


def _conv_build(r):
    def build(g, depth):
        gr = random.choice([1, 1, 2])
        cg, og = random.choice([1, 2]), random.choice([1, 2])
        kernel = tuple(random.choice([1, 2, 3]) for _ in range(r))
        spatial = tuple(random.choice([3, 4, 5, (SYMS[0], 0)]) for _ in range(r))
        stride = tuple(1 if not isinstance(d, int) else random.choice([1, 2]) for d in spatial)
        padding = tuple(random.choice([0, 0, 1]) for _ in range(r))
        dilation = tuple(random.choice([1, 1, 2]) for _ in range(r))
        x = g.of_shape((g.new_dim(), gr * cg) + spatial, g.p.dtype, depth - 1)
        w = g.of_shape((gr * og, cg) + kernel, g.p.dtype, depth - 1)
        at = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=gr)
        e = mk(f"conv{r}d", x, w, **at)
        return e if e is None or e.hi <= BIG else mk(f"conv{r}d", g.squash(x), g.squash(w), **at)
    return build


def _conv_fmt(r):
    def fmt(t, at):
        kw = ", ".join(f"{k}={at[k] if r > 1 else at[k][0]}" for k in ("stride", "padding", "dilation"))
        return f"conv{r}d({t[0]}, {t[1]}, {kw}, groups={at['groups']})"
    return fmt


for _r in (1, 2):
    OPS[f"conv{_r}d"] = Op(f"conv{_r}d", _conv_build(_r), _conv_infer, _conv_ev, _conv_fmt(_r), 0.3)


def _pool_infer(args, attrs):
    (x,) = args
    if x.dtype not in ("f32", "f64") or len(x.shape) != 4:
        return None
    out = [_out_dim(d, k, s, p, 1) for d, k, s, p in zip(x.shape[2:], attrs["kernel"], attrs["stride"],
                                                          attrs["padding"])]
    if any(d is None for d in out):
        return None
    lo, hi = (x.lo, x.hi) if attrs["kind"] == "max" else (min(x.lo, 0.0), max(x.hi, 0.0))
    return x.shape[:2] + tuple(out), x.dtype, lo, hi


def _pool_ev(xs, at):
    win = _windows(xs[0], at["kernel"], at["stride"], at["padding"], (1, 1),
                   -np.inf if at["kind"] == "max" else 0.0)
    return win.max(axis=(-2, -1)) if at["kind"] == "max" else win.mean(axis=(-2, -1))


def _pool_build(kind):
    def build(g, depth):
        kernel = tuple(random.choice([1, 2, 3]) for _ in range(2))
        spatial = tuple(random.choice([3, 4, 5, (SYMS[0], 0)]) for _ in range(2))
        stride = tuple(1 if not isinstance(d, int) else random.choice([1, 2, k]) for d, k in zip(spatial, kernel))
        padding = tuple(random.choice([0, k // 2]) for k in kernel)
        x = g.of_shape((g.new_dim(), g.new_dim()) + spatial, g.p.dtype, depth - 1)
        return mk(f"{kind}_pool2d", x, kind=kind, kernel=kernel, stride=stride, padding=padding)
    return build


for _kind in ("max", "avg"):
    OPS[f"{_kind}_pool2d"] = Op(
        f"{_kind}_pool2d", _pool_build(_kind), _pool_infer, _pool_ev,
        lambda t, at: f"{at['kind']}_pool2d({t[0]}, {at['kernel']}, stride={at['stride']}, padding={at['padding']})",
        0.3, smooth=_kind == "avg")
# ---- functions with derivative rules of their own: generic helpers the module defines (RULED),
# with exact rules (so finite differences still judge them); one has only a jvp rule, which
# reverse mode transposes

RULED = {
    "_ruled_sq": ("fn _ruled_sq(a) { return a * a }\nvjp _ruled_sq(a, g) { return g * 2.0 * a }\n"
                  "jvp _ruled_sq(a, t) { return t * 2.0 * a }\n", np.square),
    "_ruled_sin": ("fn _ruled_sin(a) { return sin(a) }\njvp _ruled_sin(a, t) { return t * cos(a) }\n", np.sin),
}
for _name, (_src, _f) in RULED.items():
    elementwise(_name, _f, weight=0.3)
