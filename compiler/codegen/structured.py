"""A graph with loops and branches as a program of straight-line blocks and control steps.

Every target compiles a block as it compiles any graph (fused loops, its own arena); the
values that cross from one step to another live in buffers the driver allocates; a loop's
body is a program of its own, run once per iteration. Shared by the CPU driver (LLVM, the
loop is a native loop) and the CUDA one (a host loop of launches).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..control import bodies, is_control, result_types
from ..ir import Graph, Node, graph_symbols


@dataclass
class Block:
    graph: Graph                      # params: values read from earlier steps; outputs: values read later


@dataclass
class Control:
    node: Node                        # for | while | if
    parts: list                       # the values of its result's parts (item values), by index
    programs: dict                    # attr name -> Program of that body


@dataclass
class Program:
    name: str
    graph: Graph                      # the graph it came from
    steps: list = field(default_factory=list)
    aliases: dict = field(default_factory=dict)   # item value -> (control node's out, index)
    syms: tuple = ()                  # the dims it is called with (trip symbols of outer loops too)
    own_trips: tuple = ()             # trip symbols its own loops define


def make_program(g: Graph, name: str | None = None) -> Program:
    name = name or g.name
    prog = Program(name, g)
    later = {}                        # value -> index of the last node (or len for outputs) reading it
    for i, n in enumerate(g.nodes):
        for x in n.ins:
            later[x] = i
    for o in g.outputs:
        later[o] = len(g.nodes)
    item_parts = {}
    for n in g.nodes:
        if n.op == "item":
            prog.aliases[n.out] = (n.ins[0], n.attr("index"))
            item_parts.setdefault(n.ins[0], {})[n.attr("index")] = n.out
    pending = []
    counter = [0]

    def flush(upto):
        if not pending:
            return
        inside = {n.out for n in pending}
        params = []
        for n in pending:
            for x in n.ins:
                if x not in inside and x not in params:
                    params.append(x)
        outs = [n.out for n in pending if later.get(n.out, -1) >= upto]
        if outs:
            k = counter[0]
            counter[0] += 1
            prog.steps.append(Block(Graph(f"{name}.b{k}", tuple(params), tuple(pending), tuple(outs))))
        pending.clear()

    for i, n in enumerate(g.nodes):
        if n.op == "item":
            continue
        if is_control(n):
            flush(i)
            k = counter[0]
            counter[0] += 1
            progs = {a: make_program(b, f"{name}.c{k}.{a}") for a, b in bodies(n)}
            parts = [item_parts.get(n.out, {}).get(j) for j in range(len(result_types(n)))]
            prog.steps.append(Control(n, parts, progs))
            continue
        pending.append(n)
    flush(len(g.nodes))
    own = tuple(sorted({n.attr("trip") for n in g.nodes if n.op == "for"}))
    prog.own_trips = own
    # the dims it is called with: those of its own shapes and those its bodies are called with,
    # less the trip counts its own loops define
    need = graph_symbols(g)
    for step in prog.steps:
        if isinstance(step, Control):
            for p in step.programs.values():
                need |= set(p.syms)
    prog.syms = tuple(sorted(s for s in need if s not in own))
    return prog


