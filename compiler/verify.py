"""Check a graph's invariants: defined before use, one definition a value, types as the ops say."""
from __future__ import annotations

from .ir import Graph
from .ops import OPS


class VerifyError(Exception):
    pass


def verify(g: Graph) -> Graph:
    defined = set(g.params)
    for n in g.nodes:
        if n.op not in OPS:
            raise VerifyError(f"unknown op '{n.op}'")
        for i in n.ins:
            if i not in defined:
                raise VerifyError(f"%{i.id} is used by {n.op} before it is defined")
        if n.out in defined:
            raise VerifyError(f"%{n.out.id} is defined twice")
        shape, dtype = OPS[n.op].shape(*n.ins, **n.kw)
        if tuple(shape) != n.out.shape or dtype != n.out.dtype:
            raise VerifyError(f"{n.op} gives {dtype}{list(shape)}, but its result is typed {n.out.type}")
        defined.add(n.out)
        for _, v in n.attrs:
            if isinstance(v, Graph):
                verify(v)
    for o in g.outputs:
        if o not in defined:
            raise VerifyError(f"output %{o.id} is not defined")
    return g
