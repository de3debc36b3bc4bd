"""The shared walk of the rewriting passes: each node may become an alias of an earlier value."""
from __future__ import annotations

from dataclasses import replace

from ...compiler.ir import Graph


def rewrite(g: Graph, step) -> Graph:
    """step(node, emit) returns a Value that replaces node.out, or None to keep the node.

    emit(op, ins, attrs, like) appends a new node (typed like the node `like`) and returns its out.
    """
    from ..builder import fresh
    alias, nodes = {}, []

    def emit(op, ins, attrs, shape, dtype, loc):
        out = fresh(shape, dtype)
        nodes.append(type(g.nodes[0])(op, tuple(ins), out, tuple(attrs), loc))
        return out

    for n in g.nodes:
        n = replace(n, ins=tuple(alias.get(i, i) for i in n.ins)) if any(i in alias for i in n.ins) else n
        new = step(n, emit)
        if new is None:
            nodes.append(n)
        else:
            alias[n.out] = new
    return replace(g, nodes=tuple(nodes), outputs=tuple(alias.get(o, o) for o in g.outputs),
                   names=tuple((k, alias.get(v, v)) for k, v in g.names))
