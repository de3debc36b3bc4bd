"""Lower a phase of a graph to an LLVM function: a loop nest per planned root, fused chains inline."""
from __future__ import annotations

from llvmlite import ir

from ...ops import OPS
from .blas import gemm_function
from .conv import emit_chunks
from ..element import ONE, ElementLowering, counted_loop
from ..products import batch_offset, product, unflatten
from ..layout import ZERO
from .reduce import emit_reduce, inner, inner_reduction, split_axis
from ..scalar import I64, STORE_TYPES, Scalar, builder

PTR = ir.PointerType()
I32 = ir.IntType(32)
# below this many iterations a loop nest runs on one thread: waking others costs more
PARALLEL_MIN = 1 << 16
# a split of the innermost axis starts at a multiple of this, so every thread's vector loop
# and scalar remainder cover the same elements as one thread's would: identical results
ALIGN = 256
ROW_ALIGN = 64
# a product of at least this many multiply-adds is shared among the threads of a region
MATMUL_SPLIT_MIN = 1 << 18
# the scans and how each combines (Scalar's method): a pass of their own (FunctionLowering.scan)
SCANS = {"cumsum": "add", "cumprod": "mul"}


class FunctionLowering(ElementLowering):
    """Builds one function; bufs: value -> pointer, syms: dim name -> i64, tid/nth: this thread."""

    def __init__(self, module, g, plan, fn, bufs, syms, outs=(), tid=None, nth=None, extra=None,
                 fast_math=False):
        self.entry_block = fn.append_basic_block("entry")
        self.start = fn.append_basic_block("start")
        b = builder(self.start, fast_math)       # fast-math: flags on every floating-point instruction
        self.setup(module, g, plan, fn, b, ir.IRBuilder(self.entry_block), Scalar(module, b), syms, bufs)
        self.outs = list(outs)
        self.tid = tid if tid is not None else ZERO
        self.nth = nth if nth is not None else ONE
        self.is_first = self.entry.icmp_signed("==", self.tid, ZERO)
        self.extra = extra or {}            # ("partial" | "acc", node) -> scratch pointer

    def finish(self, ret=None):
        self.b.ret(ret) if ret is not None else self.b.ret_void()
        self.entry.branch(self.start)

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

    # ---- steps

    def step(self, steps, part):
        """Steps of a phase (schedule.py): fused loops, a reduction's walk or combine, a matmul."""
        self.memo = [{}]
        n = steps[0].node
        kind = OPS[n.op].kind if n is not None else None
        if steps[0].chunk is not None:
            emit_chunks(self, [s.chunk for s in steps], part)
        elif n is not None and n.op in SCANS:
            self.scan(n)
        elif kind == "matmul":
            self.matmul(n)
        elif kind == "scatter":
            self.scatter(n)
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
            elem = (lambda idx, n=n: self.root_elem(n, idx)) if n is not None else \
                (lambda idx, v=v: self.elem(v, idx))
            parts.append(lambda idx, v=v, dest=dest, elem=elem: self.store(
                v, idx, elem(idx), self.b.gep(dest, [self.offset(v.shape, idx)], source_etype=STORE_TYPES[v.dtype])))

        def body(idx):
            for f in parts:
                f(idx)
        # where the steps read shifted slices (pads), the innermost loop is split at their edges
        roots = [s.node.ins[0] if s.node is not None and OPS[s.node.op].kind == "reduce" else
                 (s.node.out if s.node is not None else s.value) for s in steps]
        inner = self._interior(roots, shape, steps)
        if a is None:
            with self.when(self.is_first):
                self.nest(shape, body, hooks=hooks, inner=inner)
            return
        self.nest(shape, body, bounds={a: self.chunk(shape, a, split)}, hooks=hooks, inner=inner)

    def root_elem(self, n, idx):
        """A root's element in its nest; the roots after it in the nest read it from here."""
        x = self.node_elem(n, idx)
        self.memo[-1][(n.out, tuple(map(id, idx)))] = x
        return x

    def _interior(self, roots, shape, steps):
        # the steps' own values are being computed, not read: their buffers do not stop the walk
        own = {s.node.out for s in steps if s.node is not None}
        bufs = self.bufs
        self.bufs = {v: p for v, p in bufs.items() if v not in own}
        try:
            return self.pad_interior(roots, shape)
        finally:
            self.bufs = bufs

    def scan(self, n):
        """cumsum, cumprod: each element the one before it along the axis (after it, reversed)
        combined with its input, in one pass: O(n) where an element's own loop is O(n^2). The
        first elements along the axis are a nest of their own, so the rest runs without a test
        and vectorizes over the axes after it."""
        x, out, axis = n.ins[0], n.out, n.attr("axis")
        rev = bool(n.attr("reverse", False))
        combine = getattr(self.cg, SCANS[n.op])
        shape = out.shape
        d = self.dim(shape[axis])

        def at(idx, first):
            b = self.b
            i = idx[axis]
            j = b.sub(b.sub(d, ONE), i) if rev else i
            here = tuple(idx[:axis]) + (j,) + tuple(idx[axis + 1:])
            v = self.elem(x, here)
            if not first:
                prev = b.add(j, ONE) if rev else b.sub(j, ONE)
                v = combine(self.load(out, tuple(idx[:axis]) + (prev,) + tuple(idx[axis + 1:])), v)
            self.store(out, here, v)

        def run(bounds):
            self.nest(shape, lambda idx: at(idx, True), bounds={**bounds, axis: (ZERO, self.entry.select(
                self.entry.icmp_signed(">", d, ZERO), ONE, ZERO))})
            self.memo = [{}]
            self.nest(shape, lambda idx: at(idx, False), bounds={**bounds, axis: (ONE, d)})
        a = split_axis(shape)
        if a is None or a == axis:
            with self.when(self.is_first):
                run({})
            return
        run({a: self.chunk(shape, a, self.split_cond(shape, a))})

    def scatter(self, n):
        """n's first input copied, then each element of its updates (last input) added where the
        op's index map sends it: one pass in order, O(size of input + size of updates)."""
        base, upd, out = n.ins[0], n.ins[-1], n.out
        self.nest(out.shape, lambda idx: self.store(out, idx, self.elem(base, idx)))
        self.memo = [{}]
        target = OPS[n.op].index_map

        def add(uidx):
            j = self._run(target(self, n, uidx))
            p = self.ptr(out, j)
            self.store(out, j, self.cg.add(self.load(out, j), self.elem(upd, uidx)), p)
        self.nest(upd.shape, add)

    def matmul(self, n):
        """One gemm per batch (none for an unbatched product, or one whose batch is more rows).
        In a parallel region the threads share the work: the batches, else the rows of the
        product (its columns where it has fewer rows), each thread one contiguous part."""
        p = product(self.plan, n)
        t = STORE_TYPES[n.out.dtype]
        e = self.entry
        M, K, N = self.size(p.m), self.size(p.k), self.size(p.n)
        fn = gemm_function(self.module, n.out.dtype)
        lda = M if p.ta else K
        ldb = K if p.tb else N
        flags = [ir.Constant(I32, int(p.ta)), ir.Constant(I32, int(p.tb))]
        A, B, C = self.bufs[p.a], self.bufs[p.b], self.bufs[n.out]
        b = self.b
        if not p.batch or p.folds:
            rows = e.mul(self.size(p.batch), M) if p.batch else M
            work = e.mul(e.mul(rows, N), K)
            by_rows = e.icmp_signed(">=", rows, N)
            length = e.select(by_rows, rows, N)
            split = self._share(work, length)
            lo, hi = self._part(length, split)
            part = e.sub(hi, lo)
            a_off = e.select(by_rows, lo if p.ta else e.mul(lo, lda), ZERO)
            b_off = e.select(by_rows, ZERO, e.mul(lo, ldb) if p.tb else lo)
            c_off = e.select(by_rows, e.mul(lo, N), lo)
            pa = b.gep(A, [a_off], source_etype=t)
            pb = b.gep(B, [b_off], source_etype=t)
            pc = b.gep(C, [c_off], source_etype=t)
            b.call(fn, flags + [e.select(by_rows, part, rows), e.select(by_rows, N, part), K,
                                pa, lda, pb, ldb, pc, N])
            return
        mk, kn, mn = e.mul(M, K), e.mul(K, N), e.mul(M, N)
        total = self.size(p.batch)
        lo, hi = self._part(total, self._share(e.mul(e.mul(total, mn), K), total))
        with counted_loop(b, e.sub(hi, lo), prefix="batch.") as j:
            i = b.add(j, lo)
            idx = unflatten(self, b, i, p.batch)
            pa = b.gep(A, [b.mul(batch_offset(self, b, idx, p.a_batch, p.batch), mk)], source_etype=t)
            pb = b.gep(B, [b.mul(batch_offset(self, b, idx, p.b_batch, p.batch), kn)], source_etype=t)
            pc = b.gep(C, [b.mul(i, mn)], source_etype=t)
            b.call(fn, flags + [M, N, K, pa, lda, pb, ldb, pc, N])

    def _share(self, work, length):
        """Whether the threads share a product: several of them, enough multiply-adds, and
        something to cut."""
        e = self.entry
        big = e.icmp_signed(">=", work, ir.Constant(I64, MATMUL_SPLIT_MIN))
        return e.and_(e.and_(e.icmp_signed(">", self.nth, ONE), big), e.icmp_signed(">=", length, ir.Constant(I64, 2)))

    def _part(self, length, split):
        """(lo, hi) of this thread's contiguous part of range(length): all on thread 0 unless split."""
        e = self.entry
        per = e.sdiv(e.add(length, e.sub(self.nth, ONE)), self.nth)
        umin = lambda x, y: e.select(e.icmp_signed("<", x, y), x, y)
        lo = umin(e.mul(self.tid, per), length)
        hi = umin(e.add(lo, per), length)
        return e.select(split, lo, ZERO), e.select(split, hi, e.select(self.is_first, length, ZERO))
