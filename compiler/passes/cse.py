"""Common-subexpression elimination: one node per (op, inputs, attributes)."""
from __future__ import annotations

from ..ir import Graph
from .rewrite import rewrite


def cse(g: Graph) -> Graph:
    """Merge nodes that compute the same op of the same inputs with the same attributes."""
    seen = {}

    def step(n, emit):
        key = (n.op, n.ins, n.attrs, n.out.shape, n.out.dtype)
        if key in seen:
            return seen[key]
        seen[key] = n.out
        return None
    return rewrite(g, step)
