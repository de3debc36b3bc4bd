"""The typed graph IR: values, nodes and graphs as small immutable dataclasses."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

DTYPES = ("f32", "f64", "i32", "i64", "bool")
FLOATS = ("f32", "f64")
INTS = ("i32", "i64")

Dim = "int | str"          # an int, a symbol "N", or a symbol with an offset "N-1"
Shape = tuple


class ShapeError(Exception):
    """An op was given inputs whose shapes or dtypes it cannot take."""


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int
    col: int

    def __str__(self):
        return f"{self.file}:{self.line}:{self.col}"


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

    def __str__(self):
        return format_graph(self)

    def producers(self) -> dict:
        return {n.out: n for n in self.nodes}


def type_str(shape, dtype) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]" if shape else dtype


# Symbolic dimensions: a name, optionally with a constant offset ("N", "N-1", "N+3").
_DIM = re.compile(r"^([A-Za-z_][A-Za-z_0-9]*)([+-]\d+)?$")


def dim_parts(d):
    """(symbol, offset) of a symbolic dim; (None, d) of a constant one."""
    if isinstance(d, int):
        return None, d
    m = _DIM.match(d)
    return m.group(1), int(m.group(2) or 0)


def dim_add(d, k: int):
    """The dimension d + k, kept symbolic where d is."""
    sym, off = dim_parts(d)
    if sym is None:
        return off + k
    off += k
    return sym if off == 0 else f"{sym}{off:+d}"


def dim_value(d, env: dict) -> int:
    sym, off = dim_parts(d)
    return off if sym is None else env[sym] + off


def concrete(shape, env: dict) -> tuple:
    return tuple(dim_value(d, env) for d in shape)


def symbols(shape) -> set:
    return {dim_parts(d)[0] for d in shape if not isinstance(d, int)}


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
    return "\n".join(lines)
