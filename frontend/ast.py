"""The located syntax tree of a .ad program."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..vocab import Loc


@dataclass
class Node:
    loc: Loc = field(repr=False, compare=False)


@dataclass
class TypeSpec(Node):
    dtype: str
    dims: tuple


@dataclass
class Param(Node):
    name: str
    type: TypeSpec | None


@dataclass
class FnDef(Node):
    name: str
    params: list
    ret: list | None          # TypeSpecs, or None when not declared
    ret_tuple: bool
    body: list


@dataclass
class Let(Node):
    targets: list             # names, or lists of them for nested parts; "_" discards its part
    value: "Node"
    pattern: Loc | None = None    # where the names are written


@dataclass
class Return(Node):
    values: list


@dataclass
class Program(Node):
    items: list               # FnDef and Let, in source order


@dataclass
class Num(Node):
    value: int | float


@dataclass
class Str(Node):
    value: str                # a string literal: einsum's spec, an option's value (mode="forward")


@dataclass
class Bool(Node):
    value: bool


@dataclass
class Name(Node):
    id: str


@dataclass
class BinOp(Node):
    op: str                   # + - * / @ ** < <= > >= == != and or
    left: Node
    right: Node


@dataclass
class UnOp(Node):
    op: str                   # - not
    operand: Node


@dataclass
class Call(Node):
    func: Node
    args: list
    kwargs: list              # (name, expr, loc)


@dataclass
class Slice(Node):
    start: Node | None
    stop: Node | None
    step: Node | None


@dataclass
class Index(Node):
    value: Node
    subs: list                # expressions and Slices


@dataclass
class Tuple(Node):
    items: list


@dataclass
class List(Node):
    items: list


def dump(node, indent=0) -> str:
    """An indented tree, one node a line: what `--emit ast` prints."""
    lines, todo = [], [(node, indent)]       # a stack, not recursion: a chain a + b + ... is deep
    while todo:
        part = todo.pop()
        if isinstance(part, str):
            lines.append(part)
        else:
            todo += reversed(_dump_one(*part))
    return "\n".join(lines)


def _dump_one(node, indent) -> list:
    """node's own line, then its parts as (node, indent) for dump to expand, in order."""
    pad = "  " * indent
    if isinstance(node, list):
        return [(n, indent) for n in node]
    if not isinstance(node, Node):
        return [pad + repr(node)]
    fields = {k: v for k, v in vars(node).items() if k != "loc"}
    simple = {k: v for k, v in fields.items() if not isinstance(v, (Node, list)) or
              (isinstance(v, list) and all(isinstance(x, str) for x in v))}
    head = f"{pad}{type(node).__name__} " + " ".join(f"{k}={v!r}" for k, v in simple.items())
    head = head.rstrip() + f"  @{node.loc.line}:{node.loc.col}"
    parts = [head]
    for k, v in fields.items():
        if k in simple or v is None:
            continue
        parts.append(f"{pad}  {k}:")
        items = v if isinstance(v, list) else [v]
        for item in items:
            if isinstance(item, tuple):     # keyword argument
                parts.append(f"{pad}    {item[0]}=")
                parts.append((item[1], indent + 3))
            else:
                parts.append((item, indent + 2))
    return parts


def pattern_names(targets) -> list:
    """The names a let pattern binds, nested parts included, in order."""
    out = []
    for t in targets:
        out += pattern_names(t) if isinstance(t, list) else [t]
    return out


# ---- statements of control flow


@dataclass
class Var(Node):
    name: str
    value: Node


@dataclass
class Assign(Node):
    name: str
    value: Node
    op: str = ""              # "" for =, else the operator of an augmented assignment (+= ...)


@dataclass
class For(Node):
    var: str
    start: Node
    stop: Node
    body: list
    checkpoint: Node | bool | None = None   # None: none; True: every sqrt(trips)-th; an expr: every k-th


@dataclass
class While(Node):
    cond: Node
    body: list


@dataclass
class If(Node):
    cond: Node
    then: list
    orelse: list


# ---- derivative rules and records


@dataclass
class RuleDef(Node):
    kind: str                 # "vjp" | "jvp"
    name: str                 # the function the rule belongs to
    params: list
    body: list


@dataclass
class StructDef(Node):
    name: str
    fields: list              # Params, each with its type


@dataclass
class Attr(Node):
    value: Node
    name: str                 # a record's field: p.W1


@dataclass
class Record(Node):
    name: str                 # the struct
    fields: list              # (name, expr, loc)
