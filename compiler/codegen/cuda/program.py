"""Launch plans of functions with loops and branches: a host-side program of plans.

A graph with control nodes is split into straight-line blocks and control steps
(codegen/structured.py, shared with the CPU driver). Every block, and every loop or branch body
without control of its own, is compiled as any graph (FunctionKernels: its own kernels, temps
and steps); a body with control is a program again. The runtime (runtime/cuda_control.py) runs
the program on the host: the blocks' launches, a loop's body once per iteration, the values that
cross steps in device buffers of their own. docs/cuda.md, "Loops and branches".
"""
from __future__ import annotations

from ...control import has_control, result_types
from ..structured import Block, Program, make_program


def _types(types) -> list:
    return [{"shape": list(s), "dtype": d} for s, d in types]


class ProgramKernels:
    """The kernels and the structured plan of a graph with control nodes.

    new_prefix(tag) gives a kernel prefix no other plan of the module uses."""

    def __init__(self, g, prefix: str, new_prefix):
        from .graphs import FunctionKernels
        self._fk, self._new_prefix = FunctionKernels, new_prefix
        self.kernels = []
        self.plan = self._program(make_program(g), prefix)

    def plan_json(self) -> dict:
        return self.plan

    def _flat(self, g, prefix) -> dict:
        fk = self._fk(g, prefix)
        self.kernels += fk.kernels
        return fk.plan_json()

    def _sub(self, prog: Program, prefix: str, tag: str) -> dict:
        """The plan of a body: plain when it has no control, else a program."""
        sub = self._new_prefix(f"{prefix}_{tag}")
        if has_control(prog.graph):
            return self._program(prog, sub)
        return self._flat(prog.graph, sub)

    def _program(self, prog: Program, prefix: str) -> dict:
        values = {}

        def vid(v):
            if v is None:
                return None
            key = str(v.id)
            values[key] = {"shape": list(v.shape), "dtype": v.dtype}
            return key

        g = prog.graph
        params = [vid(p) for p in g.params]
        steps = []
        for k, step in enumerate(prog.steps):
            if isinstance(step, Block):
                bg = step.graph
                steps.append({"block": self._flat(bg, self._new_prefix(f"{prefix}_b{k}")),
                              "ins": [vid(p) for p in bg.params], "outs": [vid(o) for o in bg.outputs]})
                continue
            n = step.node
            kw = n.kw
            out = {"types": _types(result_types(n)), "parts": [vid(v) for v in step.parts]}
            if n.op == "for":
                nc = len(n.ins) - 2 - kw["n_caps"]
                out["for"] = {"start": vid(n.ins[0]), "stop": vid(n.ins[1]),
                              "init": [vid(x) for x in n.ins[2:2 + nc]],
                              "caps": [vid(x) for x in n.ins[2 + nc:]],
                              "trip": kw["trip"], "reverse": bool(kw.get("reverse", False))}
                out["body"] = self._sub(step.programs["body"], prefix, f"c{k}_body")
            elif n.op == "while":
                nc = len(n.ins) - kw["n_caps"]
                out["while"] = {"init": [vid(x) for x in n.ins[:nc]], "caps": [vid(x) for x in n.ins[nc:]]}
                out["cond"] = self._sub(step.programs["cond"], prefix, f"c{k}_cond")
                out["body"] = self._sub(step.programs["body"], prefix, f"c{k}_body")
            elif n.op == "if":
                out["if"] = {"cond": vid(n.ins[0]), "caps": [vid(x) for x in n.ins[1:]]}
                out["then"] = self._sub(step.programs["then"], prefix, f"c{k}_then")
                out["orelse"] = self._sub(step.programs["orelse"], prefix, f"c{k}_else")
            else:                                       # pragma: no cover - control.py's ops
                raise NotImplementedError(f"target cuda: no launch plan for control op {n.op!r}")
            steps.append(out)
        outputs = [vid(o) for o in g.outputs]
        return {"symbols": list(prog.syms),
                "program": {"values": values, "params": params, "outputs": outputs, "steps": steps}}

