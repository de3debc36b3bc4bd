"""Typed expression trees for generated programs: shapes with symbolic dims, nodes, the op table's form.

Every node carries its shape, dtype and an interval that bounds its values for inputs in
[-1.5, 1.5], so the generator can keep arguments inside each op's domain (log of positive
values, exp of moderate ones) and the numeric comparisons stay meaningful.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INPUT = 1.5                 # inputs are drawn from [-INPUT, INPUT]
BIG = 60.0                  # intervals beyond this get squashed before the next op
SYMS = ("N", "M")           # symbolic dimensions; bound to 3..5 when a program runs
SYM_MIN = 3


# ---- shapes: a dim is an int or (name, offset), printed "N", "N-1"

def dim_str(d) -> str:
    if isinstance(d, int):
        return str(d)
    return d[0] if d[1] == 0 else f"{d[0]}{d[1]:+d}"


def type_str(shape, dtype) -> str:
    return dtype if not shape else f"{dtype}[{', '.join(dim_str(d) for d in shape)}]"


def dim_min(d) -> int:
    return d if isinstance(d, int) else SYM_MIN + d[1]


def dim_max(d) -> int:
    return d if isinstance(d, int) else 5 + d[1]


def dim_val(d, sizes) -> int:
    return d if isinstance(d, int) else sizes[d[0]] + d[1]


def broadcast(a, b):
    """The broadcast of two shapes, or None."""
    out = []
    for i in range(max(len(a), len(b))):
        x = a[i - max(len(a), len(b)) + len(a)] if i - max(len(a), len(b)) + len(a) >= 0 else 1
        y = b[i - max(len(a), len(b)) + len(b)] if i - max(len(a), len(b)) + len(b) >= 0 else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def numel_max(shape) -> int:
    return math.prod(dim_max(d) for d in shape)


# ---- expressions

@dataclass(eq=False)
class Ex:
    op: str                          # a key of OPS, or "ref" (a name) or "num" (a weak literal)
    args: tuple
    attrs: dict
    shape: tuple
    dtype: str                       # "f32" "f64" "i64" "bool" or "weak" for a bare number
    lo: float = -INPUT
    hi: float = INPUT
    smooth: bool = True              # False below abs, relu, comparisons, max: derivatives may jump


def ref(name, shape, dtype, lo=-INPUT, hi=INPUT) -> Ex:
    return Ex("ref", (), {"name": name}, tuple(shape), dtype, lo, hi)


def num(v: float) -> Ex:
    return Ex("num", (), {"v": v}, (), "weak", min(v, v), max(v, v))


def text(e: Ex) -> str:
    if e.op == "ref":
        return e.attrs["name"]
    if e.op == "num":
        return repr(e.attrs["v"])
    return OPS[e.op].fmt([text(a) for a in e.args], e.attrs)


def walk(e: Ex):
    yield e
    for a in e.args:
        yield from walk(a)


@dataclass(frozen=True)
class Op:
    name: str
    build: object          # (gen, depth) -> Ex | None
    infer: object          # (args, attrs) -> (shape, dtype, lo, hi) or None when ill-typed
    ev: object             # (arrays, attrs) -> array
    fmt: object            # (arg texts, attrs) -> source text
    weight: float = 1.0
    smooth: bool = True


OPS: dict[str, Op] = {}


def mk(op: str, *args, **attrs) -> Ex | None:
    """A node of op over args, typed and bounded by the op's entry; None where it does not fit."""
    if any(a is None for a in args):
        return None
    r = OPS[op].infer(args, attrs)
    if r is None:
        return None
    shape, dtype, lo, hi = r
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return Ex(op, tuple(args), attrs, tuple(shape), dtype, lo, hi,
              OPS[op].smooth and all(a.smooth for a in args))


def _dt(*args):
    dts = {a.dtype for a in args} - {"weak"}
    return dts.pop() if len(dts) == 1 else (None if dts else "weak")


def _image(f, ivs, n=25):
    """Bounds of f over a box of intervals, from a grid (with a margin)."""
    grids = [np.linspace(lo, hi, n) if hi > lo else np.array([lo]) for lo, hi in ivs]
    mesh = np.meshgrid(*grids, indexing="ij")
    with np.errstate(all="ignore"):
        v = np.asarray(f(*mesh), dtype=np.float64)
    if not np.all(np.isfinite(v)):
        return math.inf, math.inf
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo) + 1e-3
    return lo - pad, hi + pad
