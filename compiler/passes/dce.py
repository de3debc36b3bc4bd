"""Dead-code elimination."""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph


def dce(g: Graph) -> Graph:
    """Drop nodes that no output needs."""
    live, kept = set(g.outputs), []
    for n in reversed(g.nodes):
        if n.out in live:
            kept.append(n)
            live.update(n.ins)
    return replace(g, nodes=tuple(reversed(kept)))
