"""A function's program as MLIR: its straight-line blocks (the roots of each block's fusion plan)
and its control steps, for as scf.for, while as scf.while, if as scf.if; the status of the run-time
checks threads through all of them."""
from __future__ import annotations

from llvmlite import ir

from ..layout import ZERO
from ..plan import make_plan
from ..scalar import I64, LLTYPES
from ..structured import Block
from ...ops import OPS
from .scalar import MV, index_of
from .text import Unsupported, indent, loc_text, ttype


def shared_values(g, plan) -> set:
    """Values the plan recomputes in several places that get a tensor of their own here: text
    is no register, and a value recomputed in each branch of a concat would double per level
    (IREE fuses the generics again where that pays)."""
    uses = {}
    for n in g.nodes:
        for x in set(n.ins):
            uses[x] = uses.get(x, 0) + 1
    for o in g.outputs:
        uses[o] = uses.get(o, 0) + 1
    return {n.out for n in g.nodes if n.out not in plan.buffers and uses.get(n.out, 0) > 1
            and OPS[n.op].kind not in ("source", "check") and OPS[n.op].cheap != 0}


class ControlFlow:
    """FunctionEmitter's programs: what it emits between and around its linalg.generic ops."""


    def program(self, prog, args) -> list:
        """Emit prog's steps with its graph's params bound to args (tensor names); its outputs."""
        env = dict(zip(prog.graph.params, args))
        for step in prog.steps:
            if isinstance(step, Block):
                self.block(step.graph, env)
            else:
                self.control(step, env)
        return [env[o] for o in prog.graph.outputs]

    def block(self, g, env):
        plan = make_plan(g)
        self.plan = plan
        self.bufs = {p: env[p] for p in g.params}
        self.literals = {}
        roots = {n.out for n in plan.roots} | shared_values(g, plan)
        for n in g.nodes:
            kind = OPS[n.op].kind
            if kind == "control" or kind == "item":
                raise Unsupported(f"the MLIR output cannot express op {n.op!r} here", n.loc)
            if n.out in roots:
                self.bufs[n.out] = self.root(n)
            if kind == "check":
                self.check(n)
        for o in g.outputs:
            env[o] = self.materialized(o)

    def control(self, step, env):
        n = step.node
        if n.op == "custom":
            raise Unsupported("the MLIR output cannot express a call of a function with rules of its own "
                              "that a transform still needs", n.loc)
        getattr(self, "_" + n.op)(n, step, env)

    def _state(self):
        return [self.status, self.badval]

    def _bind_results(self, step, env, res, count, types):
        for j, part in enumerate(step.parts):
            if part is not None:
                env[part] = f"{res}#{j}"
        self.status = MV(f"{res}#{count}", I64)
        self.badval = MV(f"{res}#{count + 1}", I64)

    def _for(self, n, step, env):
        kw = n.kw
        start, stop, *rest = [env[v] for v in n.ins]
        nc = len(n.ins) - 2 - kw["n_caps"]
        init, caps = rest[:nc], rest[nc:]
        body = kw["body"]
        ys = body.outputs[nc:]
        e = self.entry
        s, t_end = self.scalar_of(start, n.ins[0].dtype), self.scalar_of(stop, n.ins[1].dtype)
        s, t_end = e.sext(s, I64), e.sext(t_end, I64)
        diff = e.sub(t_end, s)
        trip = e.select(e.icmp_signed("<", diff, ZERO), ZERO, diff)
        self.syms[kw["trip"]] = trip
        # each stack starts from a value of its own: IREE 3.13 gives loop-carried tensors made by
        # equal (CSE-merged) ops one buffer, and the rows of one stack overwrite another's
        stacks = []
        for y in ys:
            self.n_stacks += 1
            stacks.append(self.filled((kw["trip"],) + y.shape, y.dtype, self.n_stacks))
        carry_types = [ttype(p.shape, p.dtype) for p in body.params[1:1 + nc]]
        stack_types = [ttype((kw["trip"],) + y.shape, y.dtype) for y in ys]
        types = carry_types + stack_types + ["i64", "i64"]
        state = [e.v(x) for x in self._state()]
        lo = self.emit("arith.constant 0 : index", "c")
        one = self.emit("arith.constant 1 : index", "c")
        hi = index_of(e, trip)
        iv = self.names("k")
        iters = [self.names("it") for _ in types]
        lines = []
        with self.region(lines):
            i = MV(self.emit(f"arith.index_cast {iv} : index to i64"), I64)
            t = e.sub(e.sub(t_end, ir.Constant(I64, 1)), i) if kw.get("reverse") else e.add(s, i)
            row = index_of(e, e.sub(t, s))
            tt = self.tensor_of(e.trunc(t, LLTYPES[body.params[0].dtype]) if body.params[0].dtype != "i64" else t,
                                body.params[0].dtype)
            self.status, self.badval = MV(iters[-2], I64), MV(iters[-1], I64)
            outs = self.program(step.programs["body"], [tt] + iters[:nc] + caps)
            new_stacks = []
            for y, yt, st, sty in zip(ys, outs[nc:], iters[nc:nc + len(ys)], stack_types):
                if not y.shape:
                    # a scalar row is one element (IREE miscompiles a 0-d insert_slice)
                    v = self.emit(f"tensor.extract {yt}[] : {ttype((), y.dtype)}", "s")
                    new_stacks.append(self.emit(f"tensor.insert {v} into {st}[{row}] : {sty}", "ins"))
                    continue
                offs = [row] + ["0"] * len(y.shape)
                sizes = ["1"] + [str(d) if isinstance(d, int) else self.idx_dim(d) for d in y.shape]
                new_stacks.append(self.emit(
                    f"tensor.insert_slice {yt} into {st}[{', '.join(offs)}] [{', '.join(sizes)}] "
                    f"[{', '.join(['1'] * (1 + len(y.shape)))}] : {ttype(y.shape, y.dtype)} into {sty}", "ins"))
            yields = outs[:nc] + new_stacks + [e.v(x) for x in self._state()]
            lines.append(f"scf.yield {', '.join(yields)} : {', '.join(types)}")
        carried = ", ".join(f"{a} = {b}" for a, b in zip(iters, init + stacks + state))
        res = self.names("for")
        self.lines.append(f"{res}:{len(types)} = scf.for {iv} = {lo} to {hi} step {one} iter_args({carried}) -> "
                          f"({', '.join(types)}) {{\n{indent(lines)}\n}}{loc_text(n.loc)}")
        self._bind_results(step, env, res, nc + len(ys), types)

    def _while(self, n, step, env):
        kw = n.kw
        vals = [env[v] for v in n.ins]
        nc = len(n.ins) - kw["n_caps"]
        init, caps = vals[:nc], vals[nc:]
        body = kw["body"]
        e = self.entry
        types = [ttype(p.shape, p.dtype) for p in body.params[:nc]] + ["i64", "i64", "i64"]
        init = init + [e.v(ir.Constant(I64, 0))] + [e.v(x) for x in self._state()]
        before_args = [self.names("w") for _ in types]
        before = []
        with self.region(before):
            self.status, self.badval = MV(before_args[-2], I64), MV(before_args[-1], I64)
            (c,) = self.program(step.programs["cond"], before_args[:nc] + caps)
            cv = self.scalar_of(c, "bool")
            carried = before_args[:nc + 1] + [e.v(x) for x in self._state()]
            before.append(f"scf.condition({cv.name}) {', '.join(carried)} : {', '.join(types)}")
        after_args = [self.names("w") for _ in types]
        after = []
        with self.region(after):
            self.status, self.badval = MV(after_args[-2], I64), MV(after_args[-1], I64)
            outs = self.program(step.programs["body"], after_args[:nc] + caps)
            count = e.add(MV(after_args[nc], I64), ir.Constant(I64, 1))
            yields = outs + [count.name] + [e.v(x) for x in self._state()]
            after.append(f"scf.yield {', '.join(yields)} : {', '.join(types)}")
        res = self.names("wh")
        sig = ", ".join(f"{a}: {t}" for a, t in zip(after_args, types))
        self.lines.append(
            f"{res}:{len(types)} = scf.while ({', '.join(f'{a} = {b}' for a, b in zip(before_args, init))}) : "
            f"({', '.join(types)}) -> ({', '.join(types)}) {{\n{indent(before)}\n}} do {{\n^bb0({sig}):\n"
            f"{indent(after)}\n}}{loc_text(n.loc)}")
        # the trip count as the i64 tensor the graph's last part is
        parts = list(step.parts)
        for j, part in enumerate(parts[:nc]):
            if part is not None:
                env[part] = f"{res}#{j}"
        if len(parts) > nc and parts[nc] is not None:
            env[parts[nc]] = self.tensor_of(MV(f"{res}#{nc}", I64), "i64")
        self.status, self.badval = MV(f"{res}#{nc + 1}", I64), MV(f"{res}#{nc + 2}", I64)

    def _if(self, n, step, env):
        kw = n.kw
        c, *caps = [env[v] for v in n.ins]
        cv = self.scalar_of(c, "bool")
        outs_t = [ttype(o.shape, o.dtype) for o in kw["then"].outputs] + ["i64", "i64"]
        state = self._state()
        regions = []
        for name in ("then", "orelse"):
            lines = []
            with self.region(lines):
                self.status, self.badval = state
                outs = self.program(step.programs[name], caps)
                lines.append(f"scf.yield {', '.join(outs + [self.entry.v(x) for x in self._state()])} : "
                             f"{', '.join(outs_t)}")
            regions.append(lines)
        res = self.names("if")
        self.lines.append(f"{res}:{len(outs_t)} = scf.if {cv.name} -> ({', '.join(outs_t)}) {{\n{indent(regions[0])}\n"
                          f"}} else {{\n{indent(regions[1])}\n}}{loc_text(n.loc)}")
        self._bind_results(step, env, res, len(outs_t) - 2, outs_t)
