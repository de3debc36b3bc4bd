"""Constant folding through each op's NumPy reference, so it cannot disagree with it."""
from __future__ import annotations

import math

import numpy as np

from ..ir import Graph
from ..ops import NP_DTYPES, OPS
from .rewrite import rewrite

MAX_FOLD = 4096          # elements; larger constants stay computed at run time
UNIFORM_LAYOUT = ("broadcast_to", "reshape", "transpose", "slice")   # keep a uniform constant uniform


def _array(op, attrs):
    """The NumPy value of a constant (a dict of its attributes), or None if its shape is symbolic."""
    dtype, shape = NP_DTYPES[attrs["dtype"]], attrs["shape"]
    if op == "literal":
        return np.array(attrs["data"], dtype).reshape(shape)
    if all(isinstance(d, int) for d in shape):
        return np.full(shape, attrs["value"], dtype)
    return None


def _evaluate(n, arrays):
    """n's result on constant inputs, or None where NumPy refuses (0 ** -1 in integers): the node
    then stays, and computes at run time what it would for any other inputs."""
    try:
        return np.asarray(OPS[n.op].ref(*arrays, **n.kw), NP_DTYPES[n.out.dtype])
    except (ArithmeticError, ValueError):
        return None


def fold_constants(g: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants."""
    made = {}          # constant value -> (op, attrs)

    def const(emit, n, value):
        attrs = {"dtype": n.out.dtype, "shape": n.out.shape, "value": value}
        out = emit("const", (), sorted(attrs.items()), n.out.shape, n.out.dtype, n.loc)
        made[out] = ("const", attrs)
        return out

    def step(n, emit):
        if n.op in ("const", "literal"):
            made[n.out] = (n.op, n.kw)
            return None
        if n.op == "numel":
            dims = [n.ins[0].shape[a] for a in n.attr("axes")]
            return const(emit, n, math.prod(dims)) if all(isinstance(d, int) for d in dims) else None
        if not n.ins or any(i not in made for i in n.ins) or n.op == "hook" or \
                OPS[n.op].kind in ("check", "control", "item"):
            # a check of constants still runs when called: the call raises, not the compiler
            return None
        srcs = [made[i] for i in n.ins]
        if n.op in UNIFORM_LAYOUT and srcs[0][0] == "const":
            return const(emit, n, srcs[0][1]["value"])
        if OPS[n.op].kind == "elementwise" and all(op == "const" for op, _ in srcs):
            # uniform constants fold on their scalars, symbolic shapes included
            scalars = [np.array(a["value"], NP_DTYPES[a["dtype"]]) for _, a in srcs]
            r = _evaluate(n, scalars)
            return None if r is None else const(emit, n, r.item())
        if not all(isinstance(d, int) for d in n.out.shape) or math.prod(n.out.shape) > MAX_FOLD:
            return None
        arrays = [_array(op, a) for op, a in srcs]
        if any(a is None for a in arrays):
            return None
        r = _evaluate(n, arrays)
        if r is None:
            return None
        flat = r.ravel()
        if flat.size and np.all(flat == flat[0]):
            return const(emit, n, flat[0].item())
        attrs = {"data": tuple(flat.tolist()), "dtype": n.out.dtype, "shape": n.out.shape}
        out = emit("literal", (), sorted(attrs.items()), n.out.shape, n.out.dtype, n.loc)
        made[out] = ("literal", attrs)
        return out

    with np.errstate(all="ignore"):          # 1.0 / 0 is inf here as at run time, not a warning
        return rewrite(g, step)
