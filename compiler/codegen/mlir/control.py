"""A function's program as MLIR: its straight-line blocks (the roots of each block's fusion plan)
and its control steps, for as scf.for, while as scf.while, if as scf.if (in the iree target's
text: blocks and branches, see below); the status of the run-time checks threads through all
of them."""
from __future__ import annotations

from llvmlite import ir

from ..layout import ZERO
from ..plan import make_plan
from ..scalar import I64, LLTYPES
from ..structured import Block
from ...ops import OPS, numel_of
from .scalar import MV, index_of, mtype
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


class Stacks:
    """The rows a loop stores for each step, one stack per stored value ([trip, *row]).

    shared (the iree target): one stack per dtype instead, a 1-d tensor holding each stored
    value's stack as a contiguous run, and each value's stack cut out of it after the loop.
    IREE 3.13 loses a buffer when a later loop reads two stacks that one loop carried
    ("indirect buffer reference slot 0 is out range" in its runtime: the reverse pass of
    tanh(h * w + b), which reads both the h and the tanh rows); one stack per dtype avoids it.
    (Side by side in one [trip, n] tensor, a stack is a strided column that IREE cannot read.)"""

    def __init__(self, fe, ys, trip, shared):
        self.fe, self.ys, self.trip, self.shared = fe, ys, trip, shared
        if not shared:
            self.groups = [[k] for k in range(len(ys))]
        else:
            by = {}
            for k, y in enumerate(ys):
                by.setdefault(y.dtype, []).append(k)
            self.groups = list(by.values())
        self.inits, self.types, self.bases, self.sizes, self.runs = [], [], {}, {}, {}
        steps = fe.idx_dim(trip) if shared else None
        for g in self.groups:
            fe.n_stacks += 1
            # each stack starts from a value of its own: IREE 3.13 gives loop-carried tensors made
            # by equal (CSE-merged) ops one buffer, and the rows of one stack overwrite another's
            y = ys[g[0]]
            if not shared:
                self.inits.append(fe.filled((trip,) + y.shape, y.dtype, fe.n_stacks))
                self.types.append(ttype((trip,) + y.shape, y.dtype))
                continue
            total = fe.emit("arith.constant 0 : index", "c")
            for k in g:
                self.sizes[k] = self._size(ys[k].shape)
                self.bases[k] = total
                self.runs[k] = fe.emit(f"arith.muli {steps}, {self.sizes[k]} : index", "c")
                total = fe.emit(f"arith.addi {total}, {self.runs[k]} : index", "c")
            t = ttype((None,), y.dtype)
            e = fe.emit(f"tensor.empty({total}) : {t}", "e")
            et = ir.IntType(8) if y.dtype == "bool" else LLTYPES[y.dtype]
            c = fe.entry.v(ir.Constant(et, fe.n_stacks))
            self.inits.append(fe.emit(f"linalg.fill ins({c} : {mtype(et)}) outs({e} : {t}) -> {t}", "f"))
            self.types.append(t)

    def _size(self, shape) -> str:
        size = self.fe.emit("arith.constant 1 : index", "c")
        for d in shape:
            size = self.fe.emit(f"arith.muli {size}, {self.fe.idx_dim(d)} : index", "c")
        return size

    def store(self, stacks, rows, row) -> list:
        """The stacks with this step's rows (tensors of the values ys) at index row."""
        fe, out = self.fe, []
        for g, st, sty in zip(self.groups, stacks, self.types):
            for k in g:
                y, yt = self.ys[k], rows[k]
                # a scalar row is one element (IREE miscompiles a 0-d insert_slice)
                v = None if y.shape else fe.emit(f"tensor.extract {yt}[] : {ttype((), y.dtype)}", "s")
                if self.shared:
                    at = fe.emit(f"arith.muli {row}, {self.sizes[k]} : index", "c")
                    at = fe.emit(f"arith.addi {self.bases[k]}, {at} : index", "c")
                    if v is not None:
                        # (a scalar tensor.insert into a shared stack comes out wrong in IREE 3.13)
                        flat, n = fe.emit(f"tensor.from_elements {v} : {ttype((1,), y.dtype)}", "v"), "1"
                        ft = ttype((1,), y.dtype)
                    else:
                        flat, n, ft = self._flat(yt, y), self.sizes[k], ttype((None,), y.dtype)
                    st = fe.emit(f"tensor.insert_slice {flat} into {st}[{at}] [{n}] [1] : {ft} into {sty}", "ins")
                elif v is not None:
                    st = fe.emit(f"tensor.insert {v} into {st}[{row}] : {sty}", "ins")
                else:
                    offs = [row] + ["0"] * len(y.shape)
                    sizes = ["1"] + [str(d) if isinstance(d, int) else fe.idx_dim(d) for d in y.shape]
                    st = fe.emit(f"tensor.insert_slice {yt} into {st}[{', '.join(offs)}] [{', '.join(sizes)}] "
                                 f"[{', '.join(['1'] * (1 + len(y.shape)))}] : {ttype(y.shape, y.dtype)} into {sty}",
                                 "ins")
            out.append(st)
        return out

    def _flat(self, yt, y) -> str:
        """A row as a 1-d tensor of dynamic size."""
        fe = self.fe
        k, syms = numel_of(y.shape)
        static = None if syms else k
        if len(y.shape) > 1:
            yt = fe.emit(f"tensor.collapse_shape {yt} [[{', '.join(map(str, range(len(y.shape))))}]] : "
                         f"{ttype(y.shape, y.dtype)} into {ttype((static,), y.dtype)}", "v")
        if static is not None:
            yt = fe.emit(f"tensor.cast {yt} : {ttype((static,), y.dtype)} to {ttype((None,), y.dtype)}", "v")
        return yt

    def parts(self, stacks) -> list:
        """Each stored value's stack ([trip, *row]) from the loop's final stacks."""
        if not self.shared:
            return list(stacks)
        fe, out = self.fe, [None] * len(self.ys)
        steps = fe.idx_dim(self.trip)
        for g, st, sty in zip(self.groups, stacks, self.types):
            for k in g:
                y = self.ys[k]
                v = fe.emit(f"tensor.extract_slice {st}[{self.bases[k]}] [{self.runs[k]}] [1] : {sty} to {sty}", "v")
                if not y.shape:
                    out[k] = v                      # [trip] already
                    continue
                dims = [steps] + [str(d) if isinstance(d, int) else fe.idx_dim(d) for d in y.shape]
                grouped = "[[" + ", ".join(str(q) for q in range(1 + len(y.shape))) + "]]"
                out[k] = fe.emit(f"tensor.expand_shape {v} {grouped} output_shape [{', '.join(dims)}] : "
                                 f"{ttype((None,), y.dtype)} into {ttype((self.trip,) + y.shape, y.dtype)}", "v")
        return out


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

    # The iree target's text writes control steps as blocks and branches (cf) of the function,
    # not as scf regions: IREE 3.13 keeps the offsets of tensors that share one allocation when
    # they cross a branch, but its lowering of scf regions comes after that step, and a loop then
    # starts from, or carries on with, another tensor's bytes (wrong results, no diagnostic).

    def _label(self) -> str:
        return "^" + self.names("bb")[1:]

    def _jump(self, target, values, types) -> str:
        return f"cf.br {target}({', '.join(values)} : {', '.join(types)})" if values else f"cf.br {target}"

    def _open(self, label, args=(), types=()):
        """Start block label (cf form) with block arguments args of types."""
        sig = ", ".join(f"{a}: {t}" for a, t in zip(args, types))
        self.lines.append(f"{label}({sig}):" if args else f"{label}:")

    def _bind_results(self, step, env, results):
        """env's parts of step from results (one name per part, then the two of the status)."""
        for j, part in enumerate(step.parts):
            if part is not None:
                env[part] = results[j]
        self.status, self.badval = MV(results[-2], I64), MV(results[-1], I64)

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
        stored = Stacks(self, ys, kw["trip"], shared=self.iree)
        stacks = stored.inits
        carry_types = [ttype(p.shape, p.dtype) for p in body.params[1:1 + nc]]
        types = carry_types + stored.types + ["i64", "i64"]
        state = [e.v(x) for x in self._state()]
        lo = self.emit("arith.constant 0 : index", "c")
        one = self.emit("arith.constant 1 : index", "c")
        hi = index_of(e, trip)
        iv = self.names("k")
        iters = [self.names("it") for _ in types]
        if self.iree:
            head, enter, leave = self._label(), self._label(), self._label()
            self.lines.append(self._jump(head, [lo] + init + stacks + state, ["index"] + types))
            self._open(head, [iv] + iters, ["index"] + types)
            more = self.emit(f"arith.cmpi slt, {iv}, {hi} : index", "c")
            self.lines.append(f"cf.cond_br {more}, {enter}, {leave}({', '.join(iters)} : {', '.join(types)})"
                              f"{loc_text(n.loc)}")
            self._open(enter)
        lines = self.lines if self.iree else []
        with self.region(lines):
            i = MV(self.emit(f"arith.index_cast {iv} : index to i64"), I64)
            t = e.sub(e.sub(t_end, ir.Constant(I64, 1)), i) if kw.get("reverse") else e.add(s, i)
            row = index_of(e, e.sub(t, s))
            tt = self.tensor_of(e.trunc(t, LLTYPES[body.params[0].dtype]) if body.params[0].dtype != "i64" else t,
                                body.params[0].dtype)
            self.status, self.badval = MV(iters[-2], I64), MV(iters[-1], I64)
            outs = self.program(step.programs["body"], [tt] + iters[:nc] + caps)
            new_stacks = stored.store(iters[nc:nc + len(stacks)], outs[nc:], row)
            yields = outs[:nc] + new_stacks + [e.v(x) for x in self._state()]
            if self.iree:
                step_on = self.emit(f"arith.addi {iv}, {one} : index", "k")
                lines.append(self._jump(head, [step_on] + yields, ["index"] + types))
            else:
                lines.append(f"scf.yield {', '.join(yields)} : {', '.join(types)}")
        if self.iree:
            results = [self.names("r") for _ in types]
            self._open(leave, results, types)
            k = nc + len(stacks)
            self._bind_results(step, env, results[:nc] + stored.parts(results[nc:k]) + results[k:])
            return
        carried = ", ".join(f"{a} = {b}" for a, b in zip(iters, init + stacks + state))
        res = self.names("for")
        self.lines.append(f"{res}:{len(types)} = scf.for {iv} = {lo} to {hi} step {one} iter_args({carried}) -> "
                          f"({', '.join(types)}) {{\n{indent(lines)}\n}}{loc_text(n.loc)}")
        self._bind_results(step, env, [f"{res}#{j}" for j in range(len(types))])

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
        after_args = [self.names("w") for _ in types]
        results = [self.names("w") for _ in types] if self.iree else None
        if self.iree:
            test, enter, leave = self._label(), self._label(), self._label()
            self.lines.append(self._jump(test, init, types))
            self._open(test, before_args, types)
        before = self.lines if self.iree else []
        with self.region(before):
            self.status, self.badval = MV(before_args[-2], I64), MV(before_args[-1], I64)
            (c,) = self.program(step.programs["cond"], before_args[:nc] + caps)
            cv = self.scalar_of(c, "bool")
            carried = before_args[:nc + 1] + [e.v(x) for x in self._state()]
            if self.iree:
                passed = f"({', '.join(carried)} : {', '.join(types)})"
                before.append(f"cf.cond_br {cv.name}, {enter}{passed}, {leave}{passed}{loc_text(n.loc)}")
                self._open(enter, after_args, types)
            else:
                before.append(f"scf.condition({cv.name}) {', '.join(carried)} : {', '.join(types)}")
        after = self.lines if self.iree else []
        with self.region(after):
            self.status, self.badval = MV(after_args[-2], I64), MV(after_args[-1], I64)
            outs = self.program(step.programs["body"], after_args[:nc] + caps)
            count = e.add(MV(after_args[nc], I64), ir.Constant(I64, 1))
            yields = outs + [count.name] + [e.v(x) for x in self._state()]
            after.append(self._jump(test, yields, types) if self.iree else
                         f"scf.yield {', '.join(yields)} : {', '.join(types)}")
        if self.iree:
            self._open(leave, results, types)
        else:
            res = self.names("wh")
            results = [f"{res}#{j}" for j in range(len(types))]
            sig = ", ".join(f"{a}: {t}" for a, t in zip(after_args, types))
            self.lines.append(
                f"{res}:{len(types)} = scf.while ({', '.join(f'{a} = {b}' for a, b in zip(before_args, init))}) : "
                f"({', '.join(types)}) -> ({', '.join(types)}) {{\n{indent(before)}\n}} do {{\n^bb0({sig}):\n"
                f"{indent(after)}\n}}{loc_text(n.loc)}")
        # the trip count as the i64 tensor the graph's last part is
        parts = list(step.parts)
        for j, part in enumerate(parts[:nc]):
            if part is not None:
                env[part] = results[j]
        if len(parts) > nc and parts[nc] is not None:
            env[parts[nc]] = self.tensor_of(MV(results[nc], I64), "i64")
        self.status, self.badval = MV(results[nc + 1], I64), MV(results[nc + 2], I64)

    def _if(self, n, step, env):
        kw = n.kw
        c, *caps = [env[v] for v in n.ins]
        cv = self.scalar_of(c, "bool")
        outs_t = [ttype(o.shape, o.dtype) for o in kw["then"].outputs] + ["i64", "i64"]
        state = self._state()
        if self.iree:
            labels, join = (self._label(), self._label()), self._label()
            self.lines.append(f"cf.cond_br {cv.name}, {labels[0]}, {labels[1]}{loc_text(n.loc)}")
        regions = []
        for k, name in enumerate(("then", "orelse")):
            if self.iree:
                self._open(labels[k])
            lines = self.lines if self.iree else []
            with self.region(lines):
                self.status, self.badval = state
                outs = self.program(step.programs[name], caps) + [self.entry.v(x) for x in self._state()]
                lines.append(self._jump(join, outs, outs_t) if self.iree else
                             f"scf.yield {', '.join(outs)} : {', '.join(outs_t)}")
            regions.append(lines)
        if self.iree:
            results = [self.names("if") for _ in outs_t]
            self._open(join, results, outs_t)
            self._bind_results(step, env, results)
            return
        res = self.names("if")
        self.lines.append(f"{res}:{len(outs_t)} = scf.if {cv.name} -> ({', '.join(outs_t)}) {{\n{indent(regions[0])}\n"
                          f"}} else {{\n{indent(regions[1])}\n}}{loc_text(n.loc)}")
        self._bind_results(step, env, [f"{res}#{j}" for j in range(len(outs_t))])
