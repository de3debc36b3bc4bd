"""The reference evaluator: runs a graph with NumPy in exactly the declared dtypes."""
from __future__ import annotations

import numpy as np

from .ir import Graph, concrete, dim_parts
from .ops import NP_DTYPES, OPS


def bind_dims(g: Graph, args) -> dict:
    dims = {}
    for p, a in zip(g.params, args):
        for d, n in zip(p.shape, np.shape(a)):
            sym, off = dim_parts(d)
            if sym is not None and off == 0:
                dims.setdefault(sym, n)
    return dims


def run(g: Graph, args, promote: bool = False, outer_dims=None) -> list:
    """Evaluate g on NumPy arrays; promote=True computes f32 values in f64 (for finite differences).

    A failed run-time check raises ops.CheckFailed(error, message, value)."""
    def dt(name):
        return "f64" if promote and name == "f32" else name

    dims = dict(outer_dims or {})
    dims.update(bind_dims(g, args))
    vals = {p: np.asarray(a, NP_DTYPES[dt(p.dtype)]) for p, a in zip(g.params, args)}
    for n in g.nodes:
        attrs = n.kw
        kind = OPS[n.op].kind
        if kind == "control":
            # loops and branches run their bodies here, with the dimensions known so far
            r = OPS[n.op].ref(*(vals[i] for i in n.ins), **attrs, _env={"dims": dims, "promote": promote})
            if n.op == "for":
                dims[attrs["trip"]] = max(int(vals[n.ins[1]]) - int(vals[n.ins[0]]), 0)
            vals[n.out] = r
            continue
        if kind == "item":
            vals[n.out] = np.asarray(vals[n.ins[0]][attrs["index"]], NP_DTYPES[dt(n.out.dtype)])
            continue
        if "shape" in attrs:
            attrs["shape"] = concrete(attrs["shape"], dims)
        if OPS[n.op].kind == "check" and isinstance(attrs.get("hi"), str):
            attrs["hi"] = concrete((attrs["hi"],), dims)[0]      # a bound given as a dimension
        if n.op == "dyn_unslice" and isinstance(attrs["n"], str):
            attrs["n"] = concrete((attrs["n"],), dims)[0]
        if "dtype" in attrs:
            attrs["dtype"] = dt(attrs["dtype"])
        if n.op == "hook":
            attrs["fn"] = None
        r = OPS[n.op].ref(*(vals[i] for i in n.ins), **attrs)
        vals[n.out] = np.asarray(r, NP_DTYPES[dt(n.out.dtype)])
    return [vals[o] for o in g.outputs]
