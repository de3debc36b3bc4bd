"""Optimized graphs as one MLIR module in upstream dialects: a linalg.generic per fused loop nest of
the fusion plan, scf for loops and branches, dynamic dimensions for symbolic ones."""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from ..element import ElementLowering, acc_dtype, reduction_identity
from ..layout import ZERO
from ..scalar import I64, LLTYPES
from ..structured import make_program
from ...ops import OPS
from ...ops_nn import mkn_of
from ...ir import dim_parts
from .control import ControlFlow
from .scalar import ELEM, MV, Builder, MScalar, Names, index_of, mtype
from .text import amap, indent, loc_text, symbol, ttype

I64_MAX = (1 << 63) - 1


class FunctionEmitter(ControlFlow, ElementLowering):
    """One exported function: its blocks' roots as linalg.generic ops, its control steps as scf."""

    def __init__(self, g, file, iree=False):
        self.g, self.file, self.iree = g, file, iree
        f64_math = iree
        self.names = Names()
        self.names.cells = []
        self.lines = []                      # the region being written
        self.b = Builder(self.names, [])
        self.entry = Builder(self.names, self.lines)
        self.cg = MScalar(self.b, f64_math)
        self.syms, self.dims, self.memo = {}, {}, [{}]
        self.checks = []                     # (error, message) per check_range, in order
        self.n_stacks = 0
        self.module = None
        self.sourceless = {}                 # tensors made from no tensor: name -> (shape, dtype)

    # ---- regions

    @contextmanager
    def region(self, lines):
        """Write into lines (a region's body) inside the with block."""
        saved = self.lines, self.entry.lines
        self.lines = lines
        self.entry.lines = lines
        try:
            yield
        finally:
            self.lines, self.entry.lines = saved

    def emit(self, text, prefix="t"):
        name = self.names(prefix)
        self.lines.append(f"{name} = {text}")
        return name

    def idx_dim(self, d) -> str:
        """A dimension as an index value in the current region."""
        sym, off = dim_parts(d)
        if sym is None:
            return self.emit(f"arith.constant {off} : index", "c")
        return index_of(self.entry, self.dim(d))

    def empty(self, shape, dtype) -> str:
        dyn = [self.idx_dim(d) for d in shape if not isinstance(d, int)]
        return self.emit(f"tensor.empty({', '.join(dyn)}) : {ttype(shape, dtype)}", "e")

    def filled(self, shape, dtype, value) -> str:
        e = self.empty(shape, dtype)
        et = LLTYPES[dtype] if dtype != "bool" else ir.IntType(8)
        c = self.entry.v(ir.Constant(et, value))
        t = ttype(shape, dtype)
        out = self.emit(f"linalg.fill ins({c} : {mtype(et)}) outs({e} : {t}) -> {t}", "f")
        self.sourceless[out] = (shape, dtype)
        return out

    def opaque(self, tensor) -> str:
        """For the iree target, a tensor made from no tensor (a splat, a fill) behind
        util.optimization_barrier, where a reduction reads it: IREE 3.13 folds a contraction of
        two such tensors to a single product of their elements, as if nothing were summed."""
        shape, dtype = self.sourceless[tensor]
        t = ttype(shape, dtype)
        out = self.emit(f"util.optimization_barrier {tensor} : {t}", "b")
        dyn = [self.idx_dim(d) for d in shape if not isinstance(d, int)]
        # the barrier hides the sizes too: tied again, as IREE needs them
        return self.emit(f"flow.tensor.tie_shape {out} : {t}{{{', '.join(dyn)}}}", "b") if dyn else out

    def scalar_of(self, tensor, dtype) -> MV:
        """The element of a 0-d tensor (a bool as i1)."""
        x = MV(self.emit(f"tensor.extract {tensor}[] : {ttype((), dtype)}", "s"),
               ir.IntType(8) if dtype == "bool" else LLTYPES[dtype])
        return self.entry.trunc(x, LLTYPES["bool"]) if dtype == "bool" else x

    def tensor_of(self, x: MV, dtype) -> str:
        return self.emit(f"tensor.from_elements {self.entry.v(x)} : {ttype((), dtype)}", "t")

    # ---- linalg.generic

    def generic(self, loops, iters, outs, body, loc=None) -> str:
        """One linalg.generic over loops (dims) and one output; body(idx, acc) -> the value to
        yield. outs: (init tensor, shape, dtype, exprs of the output map). Inputs come from the
        loads body makes: a read at a projection of the loop indices is an input with that
        map, any other read a tensor.extract."""
        init, oshape, odtype, oexprs = outs
        n = len(loops)
        lines = []
        saved = self.b.lines
        self.b.lines = lines
        self.inputs, self.in_keys, self.loop_shape = [], {}, tuple(loops)
        idx = []
        for k in range(n):
            i = self.names("i")
            lines.append(f"{i} = linalg.index {k} : index")
            idx.append(self.names.keep(MV(self.names("j"), I64, loop_dim=k)))
            lines.append(f"{idx[-1].name} = arith.index_cast {i} : index to i64")
        otype = LLTYPES[odtype] if odtype != "bool" else ir.IntType(8)
        acc = MV(self.names("o"), otype)
        self.memo, self.dims = [{}], {}
        self.names.cells = []
        try:
            y = body(idx, acc)
            if odtype == "bool":
                y = self.b.zext(y, ir.IntType(8)) if not isinstance(y, ir.Constant) else \
                    ir.Constant(ir.IntType(8), int(y.constant))
            yv = self.b.v(y)
        finally:
            self.b.lines = saved
        ins = self.inputs
        sourceless = not ins
        if self.iree and "reduction" in iters:
            ins = [(self.opaque(x[0]),) + x[1:] if x[0] in self.sourceless else x for x in ins]
        covered = {e for _, _, ex, _, _ in ins for e in ex} | set(oexprs)
        if any(f"d{k}" not in covered for k in range(n)):
            # a loop no operand spans (its reads are all tensor.extract): an operand of the loops'
            # shape gives linalg their sizes
            arg = self.names("a")
            if self.iree and sourceless and "reduction" in iters:
                # IREE 3.13 drops an operand the body does not read, and with it the sizes of a
                # reduction's loops (sum(ones(M, 3) * 0.5) gave 0.5): here the operand is zeros
                # IREE cannot see, and the body yields its value only where one is read
                shape_t = self.opaque(self.filled(loops, "bool", 0))
                zero, hit = self.names("c"), self.names("c")
                kept = self.names("v")
                lines += [f"{zero} = arith.constant 0 : i8", f"{hit} = arith.cmpi eq, {arg}, {zero} : i8",
                          f"{kept} = arith.select {hit}, {yv}, {acc.name} : {mtype(otype)}"]
                yv = kept
            else:
                shape_t = self.empty(loops, "bool")
            ins.append((shape_t, ttype(loops, "bool"), [f"d{k}" for k in range(n)], arg, ir.IntType(8)))
        maps = [amap(n, e) for _, _, e, _, _ in ins] + [amap(n, oexprs)]
        args = ", ".join(f"{a}: {mtype(t)}" for _, _, _, a, t in ins)
        args = (args + ", " if args else "") + f"{acc.name}: {mtype(otype)}"
        ot = ttype(oshape, odtype)
        head = f"linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = [" + \
            ", ".join(f'"{it}"' for it in iters) + "]}"
        if ins:
            head += f" ins({', '.join(t for t, _, _, _, _ in ins)} : {', '.join(tt for _, tt, _, _, _ in ins)})"
        head += f" outs({init} : {ot}) {{\n^bb0({args}):\n"
        text = head + indent(lines + [f"linalg.yield {yv} : {mtype(otype)}"]) + f"\n}} -> {ot}{loc_text(loc)}"
        out = self.emit(text, "r")
        if sourceless:
            self.sourceless[out] = (tuple(oshape), odtype)
        return out

    def load_tensor(self, tensor, shape, dtype, idx):
        """The element of a tensor at idx, inside the generic being written."""
        et = ir.IntType(8) if dtype == "bool" else LLTYPES[dtype]
        exprs = []
        # an input with an indexing map where its axes run with the loops (a broadcast axis of
        # size 1 at 0); any other read (a window, a padded or clamped index) is a tensor.extract
        for i, d in zip(idx, shape):
            if isinstance(i, MV) and i.loop_dim is not None and self.loop_shape[i.loop_dim] == d:
                exprs.append(f"d{i.loop_dim}")
            elif isinstance(i, ir.Constant) and i.constant == 0 and d == 1:
                exprs.append("0")
            else:
                exprs = None
                break
        if exprs is not None:
            key = (tensor, tuple(exprs))
            arg = self.in_keys.get(key)
            if arg is None:
                arg = MV(self.names("a"), et)
                self.in_keys[key] = arg
                self.inputs.append((tensor, ttype(shape, dtype), exprs, arg.name, et))
            x = arg
        else:
            ix = [index_of(self.b, i) for i in idx]
            x = self.b.op(f"tensor.extract {tensor}[{', '.join(ix)}] : {ttype(shape, dtype)}", et)
        return self.b.trunc(x, LLTYPES["bool"]) if dtype == "bool" else x

    # the element memo keys on the index values themselves (held alive by the key), not on
    # their id(), which Python hands on to a new object once one is freed
    @staticmethod
    def _key(v, idx):
        return v, tuple((str(i.type), i.constant) if isinstance(i, ir.Constant) else i for i in idx)

    def load(self, v, idx):
        return self.load_tensor(self.bufs[v], v.shape, v.dtype, idx)

    # ---- what index maps ask of the lowering, in scf

    def cases(self, conds, makers):
        c = conds[0]() if conds else None
        blocks, vals = [], []
        for k, make in enumerate(makers[:2] if conds else makers[:1]):
            lines = []
            saved = self.b.lines
            self.b.lines = lines
            self.memo.append({})
            try:
                if k == 1 and len(conds) > 1:
                    v = self.cases(conds[1:], makers[1:])
                else:
                    v = make()
                vals.append(v)
                lines.append(f"scf.yield {self.b.v(v)} : {mtype(v.type)}")
            finally:
                self.memo.pop()
                self.b.lines = saved
            blocks.append(lines)
        if c is None:
            self.b.lines.extend(blocks[0][:-1])
            return vals[0]
        t = vals[0].type
        return self.b.op(f"scf.if {self.b.v(c)} -> ({mtype(t)}) {{\n{indent(blocks[0])}\n}} else {{\n"
                         f"{indent(blocks[1])}\n}}", t)

    @contextmanager
    def loop(self, count, start=ZERO):
        cells = [c for c in self.names.cells if c.value is not None]
        b = self.b
        init = [b.v(c.value) for c in cells]
        lo, hi = index_of(b, start), index_of(b, count)
        one = self.names("c")
        b.lines.append(f"{one} = arith.constant 1 : index")
        iters = [MV(self.names("it"), c.type) for c in cells]
        for c, it in zip(cells, iters):
            c.value = it
        lines, saved = [], b.lines
        b.lines = lines
        iv = self.names("k")
        i = self.names.keep(MV(self.names("j"), I64))
        lines.append(f"{i.name} = arith.index_cast {iv} : index to i64")
        self.memo.append({})
        try:
            yield i
            ys = [b.v(c.value) for c in cells]
        finally:
            self.memo.pop()
            b.lines = saved
        types = ", ".join(mtype(c.type) for c in cells)
        if ys:
            lines.append(f"scf.yield {', '.join(ys)} : {types}")
        res = self.names("l")
        carried = ", ".join(f"{it.name} = {x}" for it, x in zip(iters, init))
        head = f"scf.for {iv} = {lo} to {hi} step {one}"
        if cells:
            b.lines.append(f"{res}:{len(cells)} = {head} iter_args({carried}) -> ({types}) {{\n{indent(lines)}\n}}")
        else:
            b.lines.append(f"{head} {{\n{indent(lines)}\n}}")
        for k, c in enumerate(cells):
            c.value = MV(f"{res}#{k}", c.type)

    def literal(self, n, idx):
        data = n.attr("data")
        dt = n.out.dtype
        t = ir.IntType(8) if dt == "bool" else LLTYPES[dt]
        key = ("literal", n)
        tensor = self.literals.get(key)
        if tensor is None:
            consts = [self.entry.v(ir.Constant(t, int(x) if dt in ("bool", "i32", "i64") else x)) for x in data]
            tensor = self.emit(f"tensor.from_elements {', '.join(consts)} : tensor<{len(data)}x{ELEM[dt]}>", "lit")
            self.literals[key] = tensor
        return self.load_tensor(tensor, (len(data),), dt, (self.offset(n.out.shape, idx),))

    # ---- the roots of a block

    def root(self, n):
        kind = OPS[n.op].kind
        out = n.out
        if kind == "reduce":
            return self.reduce(n)
        if kind == "matmul":
            return self.matmul(n)
        if kind == "scatter":
            return self.scatter(n)
        init = self.empty(out.shape, out.dtype)
        return self.generic(out.shape, ["parallel"] * len(out.shape),
                            (init, out.shape, out.dtype, [f"d{k}" for k in range(len(out.shape))]),
                            lambda idx, acc: self.node_elem(n, tuple(idx)), n.loc)

    def reduce(self, n):
        x = n.ins[0]
        axes, keep = set(n.attr("axes")), n.attr("keepdims")
        adt = acc_dtype(n)
        kept = [d for k, d in enumerate(x.shape) if k not in axes]
        ident = reduction_identity(n.op, adt).constant
        init = self.filled(kept, adt, ident)

        def body(idx, acc):
            v = self.elem(x, tuple(idx))
            return OPS[n.op].combine(self.cg, acc, self.cg.cast(v, adt))
        r = self.generic(x.shape, ["reduction" if k in axes else "parallel" for k in range(len(x.shape))],
                         (init, kept, adt, [f"d{k}" for k in range(len(x.shape)) if k not in axes]), body, n.loc)
        if not keep and adt == n.out.dtype:
            return r
        # the accumulator in the result's dtype and shape (keepdims: unit axes where it reduced)
        out = n.out
        drop = [k for k in range(len(out.shape)) if not (keep and k in axes)]
        init = self.empty(out.shape, out.dtype)
        return self.generic(out.shape, ["parallel"] * len(out.shape),
                            (init, out.shape, out.dtype, [f"d{k}" for k in range(len(out.shape))]),
                            lambda idx, acc: self.cg.cast(self.load_tensor(r, kept, adt, [idx[k] for k in drop]),
                                                          out.dtype), n.loc)

    def matmul(self, n):
        a, b = n.ins
        nm, nk, nn = mkn_of(n)
        out = n.out
        nb = len(out.shape) - nm - nn
        kdims = a.shape[len(a.shape) - nk:]
        loops = tuple(out.shape) + tuple(kdims)
        init = self.filled(out.shape, out.dtype, 0)

        def body(idx, acc):
            bidx, m, nidx, k = idx[:nb], idx[nb:nb + nm], idx[nb + nm:nb + nm + nn], idx[nb + nm + nn:]
            la, lb = len(a.shape) - nm - nk, len(b.shape) - nk - nn
            ia = tuple(ZERO if d == 1 else i for d, i in zip(a.shape[:la], bidx[nb - la:])) + tuple(m) + tuple(k)
            ib = tuple(ZERO if d == 1 else i for d, i in zip(b.shape[:lb], bidx[nb - lb:])) + tuple(k) + tuple(nidx)
            return self.cg.add(acc, self.cg.mul(self.elem(a, ia), self.elem(b, ib)))
        return self.generic(loops, ["parallel"] * len(out.shape) + ["reduction"] * nk,
                            (init, out.shape, out.dtype, [f"d{k}" for k in range(len(out.shape))]), body, n.loc)

    def scatter(self, n):
        """out[j] = x[j] + the updates whose target is j: a reduction over the update axes that no
        axis of the result ties down (O(result x those axes): a gather, as linalg can express)."""
        x, upd, out = n.ins[0], n.ins[-1], n.out
        axis = n.attr("axis")
        r, ru = len(out.shape), len(upd.shape)
        k = ru - r + 1                       # update axes in the place of the result's axis
        tie = {}                             # update axis -> result axis with the same index
        for q in range(ru):
            p = q if q < axis else (q - k + 1 if q >= axis + k else None)
            if p is not None and upd.shape[q] == out.shape[p]:
                tie[q] = p
        free = [q for q in range(ru) if q not in tie]
        loops = tuple(out.shape) + tuple(upd.shape[q] for q in free)
        base = self.materialized(x)
        init = self.empty(out.shape, out.dtype)
        init = self.generic(out.shape, ["parallel"] * r, (init, out.shape, out.dtype, [f"d{q}" for q in range(r)]),
                            lambda idx, acc: self.load_tensor(base, x.shape, x.dtype, idx), n.loc)

        def body(idx, acc):
            oidx = idx[:r]
            uidx = tuple(oidx[tie[q]] if q in tie else (ZERO if upd.shape[q] == 1 else idx[r + free.index(q)])
                         for q in range(ru))
            target = self._run(OPS[n.op].index_map(self, n, uidx))
            hit = None
            for t, o in zip(target, oidx):
                if isinstance(t, ir.Constant) and isinstance(o, ir.Constant):
                    continue
                c = self.b.icmp_signed("==", t, o)
                hit = c if hit is None else self.b.and_(hit, c)
            v = self.elem(upd, uidx)
            if hit is not None:
                v = self.b.select(hit, v, ir.Constant(v.type, 0.0 if out.dtype in ("f32", "f64") else 0))
            return self.cg.add(acc, v)
        return self.generic(loops, ["parallel"] * r + ["reduction"] * len(free),
                            (init, out.shape, out.dtype, [f"d{q}" for q in range(r)]), body, n.loc)

    def materialized(self, v):
        """v's tensor: its buffer, or a generic computing it from its fused chain."""
        if v in self.bufs:
            return self.bufs[v]
        init = self.empty(v.shape, v.dtype)
        t = self.generic(v.shape, ["parallel"] * len(v.shape),
                         (init, v.shape, v.dtype, [f"d{k}" for k in range(len(v.shape))]),
                         lambda idx, acc: self.elem(v, tuple(idx)))
        self.bufs[v] = t
        return t

    def check(self, n):
        """The first element outside [lo, hi) in row-major order, as the status of the call."""
        x = n.ins[0]
        self.checks.append((n.attr("error"), n.attr("message")))
        number = len(self.checks)
        tensor = self.bufs[x]
        init = self.filled((), "i64", I64_MAX)
        lo, hi = n.attr("lo"), n.attr("hi")

        def body(idx, acc):
            b = self.b
            v = b.sext(self.load_tensor(tensor, x.shape, x.dtype, idx), I64)
            bad = b.or_(b.icmp_signed("<", v, ir.Constant(I64, lo)),
                        b.icmp_signed(">=", v, self.dim(hi) if isinstance(hi, str) else ir.Constant(I64, hi)))
            flat = self.offset(x.shape, idx)
            here = b.select(bad, flat, ir.Constant(I64, I64_MAX))
            return b.select(b.icmp_signed("<", here, acc), here, acc)
        first = self.generic(x.shape, ["reduction"] * len(x.shape), (init, (), "i64", []), body, n.loc)
        e = self.entry
        f = self.scalar_of(first, "i64")
        found = e.icmp_signed("<", f, ir.Constant(I64, I64_MAX))
        # the offending element, read only where there is one
        then = []
        with self.region(then):
            flat, ix = f, []
            for d in reversed(x.shape):
                dv = self.dim(d)
                ix.append(index_of(e, e.urem(flat, dv)))
                flat = e.udiv(flat, dv)
            el = MV(self.emit(f"tensor.extract {tensor}[{', '.join(reversed(ix))}] : {ttype(x.shape, x.dtype)}"),
                    LLTYPES[x.dtype])
            el = e.sext(el, I64)
            then.append(f"scf.yield {el.name} : i64")
        zero = e.v(ir.Constant(I64, 0))
        val = MV(self.emit(f"scf.if {found.name} -> (i64) {{\n{indent(then)}\n}} else {{\n  scf.yield {zero} : i64\n}}"),
                 I64)
        fresh = e.and_(found, e.icmp_signed("==", self.status, ir.Constant(I64, 0)))
        self.status = e.select(fresh, ir.Constant(I64, number), self.status)
        self.badval = e.select(fresh, val, self.badval)
        self.bufs[n.out] = tensor

    # ---- the function

    def function(self, name) -> str:
        g = self.g
        params = [self.names("arg") for _ in g.params]
        for p, a in zip(g.params, params):
            for k, d in enumerate(p.shape):
                sym, off = dim_parts(d)
                if sym is not None and off == 0 and sym not in self.syms:
                    c = self.emit(f"arith.constant {k} : index", "c")
                    ix = self.emit(f"tensor.dim {a}, {c} : {ttype(p.shape, p.dtype)}", "d")
                    self.syms[sym] = MV(self.emit(f"arith.index_cast {ix} : index to i64", "n"), I64)
        self.status = MV(self.entry.v(ir.Constant(I64, 0)), I64)
        self.badval = self.status
        outs = self.program(make_program(g), params)
        types = [ttype(o.shape, o.dtype) for o in g.outputs]
        rets = list(outs)
        if self.checks:
            rets += [self.tensor_of(self.status, "i64"), self.tensor_of(self.badval, "i64")]
            types += [ttype((), "i64")] * 2
        self.lines.append(f"return {', '.join(rets)} : {', '.join(types)}" if rets else "return")
        sig = ", ".join(f"{a}: {ttype(p.shape, p.dtype)}" for a, p in zip(params, g.params))
        res = f" -> ({', '.join(types)})" if types else ""
        return f"func.func @{symbol(name)}({sig}){res} {{\n{indent(self.lines)}\n}}"


def emit_module(graphs: dict, name: str = "module", file: str = "<source>", iree: bool = False) -> tuple[str, dict]:
    """(the MLIR text of every function, {function: {"checks": [[error, message], ...]}}).

    iree: the text the iree target compiles: f32 transcendental functions computed in f64 and
    rounded (IREE's f32 approximations lose digits that NumPy keeps)."""
    funcs, meta = [], {}
    for k, g in graphs.items():
        fe = FunctionEmitter(g, file, iree)
        funcs.append(fe.function(k))
        meta[k] = {"checks": [list(c) for c in fe.checks]}
    return "module @gradc {\n" + indent(funcs) + "\n}\n", meta
