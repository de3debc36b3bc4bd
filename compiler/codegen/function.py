"""Lower a phase of a graph to an LLVM function: a loop nest per planned root, fused chains inline."""
from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from llvmlite import ir

from ..ir import dim_parts
from ..ops import OPS
from .blas import counted_loop, gemm_function
from .layout import INDEX_MAPS, ZERO, broadcast_index
from .reduce import emit_reduce, inner, inner_reduction, split_axis
from .scalar import I64, LLTYPES, STORE_TYPES, Scalar

PTR = ir.PointerType()
I32 = ir.IntType(32)
ONE = ir.Constant(I64, 1)
# below this many iterations a loop nest runs on one thread: waking others costs more
PARALLEL_MIN = 1 << 16
# a split of the innermost axis starts at a multiple of this, so every thread's vector loop
# and scalar remainder cover the same elements as one thread's would: identical results
ALIGN = 256
ROW_ALIGN = 64


class FunctionLowering:
    """Builds one function; bufs: value -> pointer, syms: dim name -> i64, tid/nth: this thread."""

    def __init__(self, module, g, plan, fn, bufs, syms, outs=(), tid=None, nth=None, extra=None):
        self.module, self.g, self.plan, self.fn = module, g, plan, fn
        self.entry_block = fn.append_basic_block("entry")
        self.entry = ir.IRBuilder(self.entry_block)
        self.start = fn.append_basic_block("start")
        self.b = ir.IRBuilder(self.start)
        self.cg = Scalar(module, self.b)
        self.syms, self.bufs, self.outs = dict(syms), dict(bufs), list(outs)
        self.tid = tid if tid is not None else ZERO
        self.nth = nth if nth is not None else ONE
        self.is_first = self.entry.icmp_signed("==", self.tid, ZERO)
        self.extra = extra or {}            # ("partial" | "acc", node) -> scratch pointer
        self.memo = [{}]
        self.dims = {}

    def finish(self, ret=None):
        self.b.ret(ret) if ret is not None else self.b.ret_void()
        self.entry.branch(self.start)

    # ---- dims and buffers

    def dim(self, d):
        sym, off = dim_parts(d)
        if sym is None:
            return ir.Constant(I64, off)
        if d not in self.dims:
            v = self.syms[sym]
            if off == 0:
                self.dims[d] = v
            else:
                # N-1 with N = 0 is an empty slice in NumPy, not a negative size
                a = self.entry.add(v, ir.Constant(I64, off))
                self.dims[d] = self.entry.select(self.entry.icmp_signed("<", a, ZERO), ZERO, a)
        return self.dims[d]

    def size(self, shape):
        n = ONE
        for d in shape:
            n = self.entry.mul(n, self.dim(d))
        return n

    def offset(self, shape, idx):
        """Row-major linear offset of idx (Horner form, so unit dims add nothing)."""
        flat = ZERO
        for d, i in zip(shape, idx):
            if d == 1:
                continue
            flat = self.b.add(self.b.mul(flat, self.dim(d)), i) if flat is not ZERO else i
        return flat

    def ptr(self, v, idx):
        return self.b.gep(self.bufs[v], [self.offset(v.shape, idx)], inbounds=True,
                          source_etype=STORE_TYPES[v.dtype])

    def load(self, v, idx):
        x = self.b.load(self.ptr(v, idx), typ=STORE_TYPES[v.dtype])
        return self.b.trunc(x, LLTYPES["bool"]) if v.dtype == "bool" else x

    def store(self, v, idx, x, ptr=None):
        if v.dtype == "bool":
            x = self.b.zext(x, STORE_TYPES["bool"])
        self.b.store(x, ptr if ptr is not None else self.ptr(v, idx))

    # ---- control flow

    @contextmanager
    def loop(self, count, start=ZERO):
        with counted_loop(self.b, count, start) as i:
            self.memo.append({})          # element values computed in the body stay in it
            yield i
            self.memo.pop()

    def nest(self, shape, body, idx=(), bounds=None, hooks=None):
        """Loops over shape (innermost last, where memory is contiguous) around body(idx).

        bounds: {axis: (lo, hi)} narrows an axis to this thread's share; hooks: {depth:
        ([before], [after])} run around the loops at that depth (a reduction's accumulator).
        """
        k = len(idx)
        before, after = (hooks or {}).get(k, ((), ()))
        for f in before:
            f(idx)
        if k == len(shape):
            body(idx)
        else:
            lo, hi = (bounds or {}).get(k, (ZERO, self.dim(shape[k])))
            with self.loop(hi, lo) as i:
                self.nest(shape, body, idx + (i,), bounds, hooks)
        for f in after:
            f(idx)

    # ---- threads

    def split_cond(self, shape, axis):
        """Whether threads share this nest: several of them, enough work, an axis to cut."""
        if axis is None:
            return ir.Constant(ir.IntType(1), 0)
        e = self.entry
        big = e.icmp_signed(">=", self.size(shape), ir.Constant(I64, PARALLEL_MIN))
        cut = e.icmp_signed(">=", self.dim(shape[axis]), ir.Constant(I64, 2))
        return e.and_(e.and_(e.icmp_signed(">", self.nth, ONE), big), cut)

    def chunk(self, shape, axis, split):
        """(lo, hi) of this thread on axis: a contiguous share if split, else all on thread 0."""
        e = self.entry
        n = self.dim(shape[axis])
        per = e.sdiv(e.add(n, e.sub(self.nth, ONE)), self.nth)
        if all(isinstance(d, int) for d in shape[axis + 1:]):
            # LLVM unrolls inner loops of fixed size, and may then vectorize this one
            align = ALIGN if axis == len(shape) - 1 else ROW_ALIGN
            per = e.and_(e.add(per, ir.Constant(I64, align - 1)), ir.Constant(I64, -align))
        umin = lambda x, y: e.select(e.icmp_signed("<", x, y), x, y)
        lo = umin(e.mul(self.tid, per), n)
        hi = umin(e.add(lo, per), n)
        return e.select(split, lo, ZERO), e.select(split, hi, e.select(self.is_first, n, ZERO))

    @contextmanager
    def when(self, cond):
        """A block run only if cond; values made inside stay inside."""
        with self.b.if_then(cond):
            self.memo.append({})
            yield
            self.memo.pop()

    def branch(self, cond, then, other):
        """then() if cond else other(), each in its own block; values merge in a phi."""
        return self.cases([lambda: cond], [then, other])

    def cases(self, conds, makers):
        """makers[i]() for the first i whose conds[i]() holds, else makers[-1](); each in its own
        block, the conditions tested one after another; the values merge in a phi."""
        b = self.b
        join = b.append_basic_block("join")
        vals = []
        for i, make in enumerate(makers):
            if i < len(conds):
                then, other = b.append_basic_block("then"), b.append_basic_block("else")
                b.cbranch(conds[i](), then, other)
                b.position_at_end(then)
            self.memo.append({})
            vals.append((make(), b.block))
            self.memo.pop()
            b.branch(join)
            if i < len(conds):
                b.position_at_end(other)
        b.position_at_end(join)
        phi = b.phi(vals[0][0].type)
        for v, blk in vals:
            phi.add_incoming(v, blk)
        return phi

    # ---- elements

    def elem(self, v, idx):
        """The element of v at idx: loaded from its buffer, or computed inline from its inputs."""
        return self._run(self._elem_steps(v, idx))

    def node_elem(self, n, idx):
        return self._run(self._node_steps(n, idx))

    def _run(self, steps):
        """Drive element generators with an explicit stack: each yields (value, idx) for an input
        element it needs and is sent the result, so a fused chain of thousands of ops does not
        recurse (Python's stack ends near 1,000 frames)."""
        stack, sent = [steps], None
        while stack:
            try:
                want = stack[-1].send(sent)
            except StopIteration as done:
                stack.pop()
                sent = done.value
                continue
            sent = self._memo(*want)
            if sent is None:
                stack.append(self._elem_steps(*want))
        return sent

    def _memo(self, v, idx):
        key = (v, tuple(map(id, idx)))
        for scope in reversed(self.memo):
            if key in scope:
                return scope[key]
        return None

    def _elem_steps(self, v, idx):
        x = self._memo(v, idx)
        if x is not None:
            return x
        x = self.load(v, idx) if v in self.bufs else (yield from self._node_steps(self.plan.producers[v], idx))
        self.memo[-1][(v, tuple(map(id, idx)))] = x
        return x

    def _node_steps(self, n, idx):
        if n.op in INDEX_MAPS:
            x = INDEX_MAPS[n.op](self, n, idx)
            return (yield from x) if isinstance(x, Generator) else x
        t = LLTYPES[n.out.dtype]
        if n.op == "const":
            return ir.Constant(t, bool(n.attr("value")) if n.out.dtype == "bool" else n.attr("value"))
        if n.op == "literal":
            return self.literal(n, idx)
        if n.op == "numel":
            count = ONE
            for a in n.attr("axes"):
                count = self.entry.mul(count, self.dim(n.ins[0].shape[a]))
            return self.cg.cast(count, n.out.dtype)
        elems = []
        for x in n.ins:
            elems.append((yield x, broadcast_index(x.shape, n.out.shape, idx)))
        return OPS[n.op].lower(self.cg, *elems, **n.kw)

    def literal(self, n, idx):
        data = n.attr("data")
        t = STORE_TYPES[n.out.dtype]
        arr = ir.ArrayType(t, len(data))
        gv = ir.GlobalVariable(self.module, arr, self.module.get_unique_name("literal"))
        gv.linkage, gv.global_constant = "internal", True
        gv.initializer = ir.Constant(arr, [int(x) if n.out.dtype == "bool" else x for x in data])
        x = self.b.load(self.b.gep(gv, [ZERO, self.offset(n.out.shape, idx)], inbounds=True,
                                   source_etype=arr), typ=t)
        return self.b.trunc(x, LLTYPES["bool"]) if n.out.dtype == "bool" else x

    # ---- steps

    def step(self, steps, part):
        """Steps of a phase (schedule.py): fused loops, a reduction's walk or combine, a matmul."""
        self.memo = [{}]
        n = steps[0].node
        kind = OPS[n.op].kind if n is not None else None
        if kind == "matmul":
            self.matmul(n)
        elif kind == "reduce" and (part == 1 or not inner(n)):
            emit_reduce(self, n, part)
        else:
            self.fused(steps)
        self.memo = [{}]

    def fused(self, steps):
        """Steps over one shape share a loop nest, so the values they have in common are computed once."""
        shape = steps[0].space
        a = split_axis(shape)
        split = self.split_cond(shape, a)
        hooks, parts = {}, []
        for s in steps:
            v, n = s.value, s.node
            if n is not None and OPS[n.op].kind == "reduce":
                parts.append(inner_reduction(self, n, split, hooks))
                continue
            dest = self.bufs[v] if n is not None else self.outs[s.out]
            elem = (lambda idx, n=n: self.node_elem(n, idx)) if n is not None else \
                (lambda idx, v=v: self.elem(v, idx))
            parts.append(lambda idx, v=v, dest=dest, elem=elem: self.store(
                v, idx, elem(idx), self.b.gep(dest, [self.offset(v.shape, idx)], source_etype=STORE_TYPES[v.dtype])))

        def body(idx):
            for f in parts:
                f(idx)
        if a is None:
            with self.when(self.is_first):
                self.nest(shape, body, hooks=hooks)
            return
        self.nest(shape, body, bounds={a: self.chunk(shape, a, split)}, hooks=hooks)

    def matmul(self, n):
        (a, ta), (bm, tb) = self.plan.matmul_operands[n]
        m, k = n.ins[0].shape
        nn = n.ins[1].shape[1]
        fn = gemm_function(self.module, n.out.dtype)
        args = [ir.Constant(I32, int(ta)), ir.Constant(I32, int(tb)), self.dim(m), self.dim(nn),
                self.dim(k), self.bufs[a], self.dim(a.shape[1]), self.bufs[bm], self.dim(bm.shape[1]),
                self.bufs[n.out], self.dim(nn)]
        self.b.call(fn, args)
