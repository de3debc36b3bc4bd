"""The typed graph IR: values, nodes and graphs as small immutable dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..vocab import DTYPES, FLOATS, INTS, Loc, concrete, dim_add, dim_parts, dim_value, symbols, type_str  # noqa: F401

Dim = "int | str"          # an int, a symbol "N", or a symbol with an offset "N-1"
Shape = tuple


class ShapeError(Exception):
    """An op was given inputs whose shapes or dtypes it cannot take."""


@dataclass(frozen=True, slots=True)
class Value:
    id: int
    shape: tuple
    dtype: str

    @property
    def type(self) -> str:
        return type_str(self.shape, self.dtype)


@dataclass(frozen=True, slots=True)
class Node:
    op: str
    ins: tuple
    out: Value
    attrs: tuple = ()
    loc: Loc | None = field(default=None, compare=False)

    def attr(self, name, default=None):
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    @property
    def kw(self) -> dict:
        return dict(self.attrs)


@dataclass(frozen=True, slots=True)
class Graph:
    """A function in A-normal form: nodes in topological order."""
    name: str
    params: tuple
    nodes: tuple
    outputs: tuple
    param_names: tuple = ()
    names: tuple = ()            # (let-name, Value) of the function's own bindings
    out_tuple: bool = False      # the function returns a tuple (even of one value)
    layout: tuple = ()           # records among the params and outputs (compiler/records.py); () none

    def __str__(self):
        return format_graph(self)

    def producers(self) -> dict:
        return {n.out: n for n in self.nodes}


def format_attr(v) -> str:
    if isinstance(v, Graph):
        return f"@{v.name}"
    if isinstance(v, float):
        return repr(v)
    return str(v).replace(" ", "")


def format_node(n: Node, num: dict | None = None) -> str:
    num = num if num is not None else {}
    ref = lambda v: f"%{num.get(v, v.id)}"
    ins = ", ".join(ref(v) for v in n.ins)
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs)
    text = f"{ref(n.out)} = {n.op}"
    if ins:
        text += f" {ins}"
    if attrs:
        text += f" {{{attrs}}}"
    text += f" : {n.out.type}"
    if n.loc is not None:
        text += f"  # {n.loc}"
    return text


def format_graph(g: Graph) -> str:
    names = g.param_names or tuple(f"p{i}" for i in range(len(g.params)))
    num = {v: i for i, v in enumerate(g.params + tuple(n.out for n in g.nodes))}
    params = ", ".join(f"%{num[p]} {nm}: {p.type}" for p, nm in zip(g.params, names))
    let_names = {}
    for nm, v in g.names:
        let_names.setdefault(v, nm)
    lines = [f"fn {g.name}({params}) {{"]
    for n in g.nodes:
        line = "  " + format_node(n, num)
        if n.out in let_names:
            line += f" ({let_names[n.out]})" if n.loc is not None else f"  # ({let_names[n.out]})"
        lines.append(line)
    lines.append("  return " + ", ".join(f"%{num.get(v, v.id)}" for v in g.outputs))
    lines.append("}")
    # the bodies of loops and branches follow the function that uses them, each once
    seen = set()
    for n in g.nodes:
        for _, v in n.attrs:
            if isinstance(v, Graph) and id(v) not in seen:
                seen.add(id(v))
                lines.append(format_graph(replace(v, name="@" + v.name)))
    return "\n".join(lines)


def use_counts(g: Graph) -> dict:
    """value -> how many times g's nodes and outputs read it (a value read twice by one node
    counts twice)."""
    uses = {}
    for n in g.nodes:
        for i in n.ins:
            uses[i] = uses.get(i, 0) + 1
    for o in g.outputs:
        uses[o] = uses.get(o, 0) + 1
    return uses


def graph_symbols(g: Graph, bodies=False) -> set:
    """The dimension symbols of g's parameters and values (and of its loop and branch bodies,
    with bodies=True)."""
    out = set()
    for p in g.params:
        out |= symbols(p.shape)
    for n in g.nodes:
        if n.out.dtype != "tuple":
            out |= symbols(n.out.shape)
        if bodies:
            for _, v in n.attrs:
                if isinstance(v, Graph):
                    out |= graph_symbols(v, True)
    return out
