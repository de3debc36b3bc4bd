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
from ..scalar import I64, SIZES, STORE_TYPES, builder
from .mathlib import CpuScalar

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


# a segment's loop is long (LLVM then interleaves nothing) and often one chain of dependent
# calls: copies of the body for consecutive vectors hide the calls' latency
SEGMENT_INTERLEAVE = 4
# a whole nest's loop whose calls form a chain (short enough not to be cut in segments): as
# many vectors at a time as LLVM takes for a short chain
NEST_INTERLEAVE = 4


def interleave_hint(module, masked=True):
    """Loop metadata asking for SEGMENT_INTERLEAVE vectors at a time (masked: and the tail done
    by the vector body under a mask); a placeholder that loop_metadata (cpu/__init__.py) makes
    the distinct, self-referring node LLVM wants."""
    kind = "interleave" if masked else "interleave.nomask"
    return module.add_metadata([ir.MetaDataString(module, f"gradc.{kind}.{len(module.metadata)}")])


# a fused nest with at least this many math calls gets the interleave hint where they form a
# chain (fewer: LLVM's own choice is kept); calls written out in the loop (mathlib.py: float32
# exp, sin, cos) are long chains of FMAs of their own, and two of them in a chain are enough
SERIAL_CALLS_MIN = 6
WRITTEN_CALLS_MIN = 2
WRITTEN_OUT = ("exp", "sin", "cos")


def _is_chain(depth, calls) -> bool:
    return calls > 0 and 2 * depth >= calls


def _serial_calls(L, parts) -> bool:
    """Whether most of the math calls of a loop's body depend on one another (a chain: the
    loop then runs at the calls' latency unless it is interleaved); independent calls overlap
    without, and interleaving them only adds register pressure."""
    return _is_chain(*_call_chain(L, parts)[:2])


def _long_chain(L, parts) -> bool:
    """A chain (_serial_calls) long enough for a whole nest's loop to be interleaved."""
    depth, calls, written = _call_chain(L, parts)
    return _is_chain(depth, calls) and (
        calls >= SERIAL_CALLS_MIN or (getattr(L.module, "inline_math", False) and written >= WRITTEN_CALLS_MIN))


def _call_chain(L, parts):
    """(the longest chain of dependent math calls, the calls, those of them written out in the
    loop) in the body of parts."""
    depth, calls, written = {}, set(), 0
    for p in parts:
        s = p.step
        if s.node is None:
            continue
        todo = [(s.node.ins[0] if OPS[s.node.op].kind == "reduce" else s.value, False)]
        while todo:
            v, ready = todo.pop()
            if v in depth:
                continue
            n = L.plan.producers.get(v)
            if n is None or (v in L.bufs and v is not s.value):
                depth[v] = 0
                continue
            if not ready:
                todo.append((v, True))
                todo.extend((x, False) for x in n.ins if x not in depth)
                continue
            call = OPS[n.op].cheap is None and OPS[n.op].kind == "elementwise"
            if call:
                calls.add(v)
                written += n.op in WRITTEN_OUT and v.dtype == "f32"
            depth[v] = int(call) + max((depth.get(x, 0) for x in n.ins), default=0)
    return max(depth.values(), default=0), len(calls), written


def tile_bytes(tiles) -> int:
    """Bytes of one thread's block for a segmented nest's tile (plan.Tiles), whole cache lines."""
    n = sum(tiles.tile * SIZES[v.dtype] for v in tiles.values)
    return (n + 63) // 64 * 64


class FunctionLowering(ElementLowering):
    """Builds one function; bufs: value -> pointer, syms: dim name -> i64, tid/nth: this thread."""

    def __init__(self, module, g, plan, fn, bufs, syms, outs=(), tid=None, nth=None, extra=None,
                 fast_math=False):
        self.entry_block = fn.append_basic_block("entry")
        self.start = fn.append_basic_block("start")
        b = builder(self.start, fast_math)       # fast-math: flags on every floating-point instruction
        self.fast_math = fast_math
        self.setup(module, g, plan, fn, b, ir.IRBuilder(self.entry_block), CpuScalar(module, b), syms, bufs)
        self.outs = list(outs)
        self.tid = tid if tid is not None else ZERO
        self.nth = nth if nth is not None else ONE
        self.is_first = self.entry.icmp_signed("==", self.tid, ZERO)
        self.extra = extra or {}            # ("partial" | "acc" | "tile", ...) -> scratch pointer
        self.tile = {}                      # value kept per tile -> its block (segmented nests)
        self.kept = plan.kept
        self.tile_start = None

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
        hooks, parts, segs = {}, [], []
        for s in steps:
            key = self.plan.keys.get(s.value) if s.node is not None else None
            segs.append(key[3] if key is not None and len(key) > 3 else (0 if s.node is not None else float("inf")))
            parts.append(self._nest_part(s, split, hooks))
        last = max([x for x in segs if x != float("inf")], default=0)
        segs = [last if x == float("inf") else x for x in segs]      # copies in the last segment
        if len(set(segs)) > 1 and shape and shape[-1] != 1:
            groups = {}
            for i in sorted(range(len(parts)), key=lambda i: segs[i]):
                groups.setdefault(segs[i], []).append(parts[i])
            nests = {self.plan.keys[s.value][:3] for s in steps if s.value in self.plan.keys}
            t = min([self.plan.tiles[k].tile for k in nests if k in self.plan.tiles] + [256])
            self.segmented(shape, a, split, hooks, list(groups.values()), t, nests)
            return

        def body(idx):
            for f in parts:
                f(idx)
        # where the steps read shifted slices (pads), the innermost loop is split at their edges
        roots = [s.node.ins[0] if s.node is not None and OPS[s.node.op].kind == "reduce" else
                 (s.node.out if s.node is not None else s.value) for s in steps]
        inner = self._interior(roots, shape, steps)
        # a chain of calls (a long elementwise chain's gradient) runs at their latency unless
        # the loop is interleaved, which LLVM does not do for a long body by itself
        if _long_chain(self, parts):
            self.innermost_hint = lambda: interleave_hint(self.module, masked=False)
        try:
            if a is None:
                with self.when(self.is_first):
                    self.nest(shape, body, hooks=hooks, inner=inner)
                return
            self.nest(shape, body, bounds={a: self.chunk(shape, a, split)}, hooks=hooks, inner=inner)
        finally:
            self.innermost_hint = None

    def _nest_part(self, s, split, hooks):
        """What the body of s's nest does for one element: part(idx, L) with L the lowering of
        the function the loop is in (self, or a segment's function); part.acc: a reduction's
        accumulator, which a segment's function gets as a pointer."""
        v, n = s.value, s.node
        if n is not None and OPS[n.op].kind == "reduce":
            update = inner_reduction(self, n, split, hooks)

            def part(idx, L=self, acc=None):
                update(idx, L, acc if acc is not None else update.acc)
            part.acc, part.step = update.acc, s
            return part
        if n is not None and v in self.kept:
            def part(idx, L=self, acc=None):
                L.store(v, idx, L.root_elem(n, idx))
        elif n is not None:
            def part(idx, L=self, acc=None):
                L.store(v, idx, L.root_elem(n, idx), L.b.gep(L.bufs[v], [L.offset(v.shape, idx)],
                                                              source_etype=STORE_TYPES[v.dtype]))
        else:
            def part(idx, L=self, acc=None):
                L.store(v, idx, L.elem(v, idx), L.b.gep(L.outs[s.out], [L.offset(v.shape, idx)],
                                                        source_etype=STORE_TYPES[v.dtype]))
        part.acc, part.step = None, s
        return part

    def root_elem(self, n, idx):
        """A root's element in its nest; the roots after it in the nest read it from here."""
        x = self.node_elem(n, idx)
        self.memo[-1][(n.out, tuple(map(id, idx)))] = x
        return x

    def segments(self, phase):
        """Before a phase's steps (schedule.py): the blocks its segmented nests keep per tile."""
        self.tile_blocks({self.plan.keys[s.value][:3] for steps, _ in phase for s in steps
                          if s.value in self.plan.keys})

    def tile_blocks(self, nests):
        for k in sorted(nests, key=str):
            t = self.plan.tiles.get(k)
            if t is None or ("tile", k) not in self.extra:
                continue
            e = self.entry
            block = e.gep(self.extra[("tile", k)], [e.mul(self.tid, ir.Constant(I64, tile_bytes(t)))],
                          source_etype=ir.IntType(8))
            off = 0
            for v in t.values:
                self.tile[v] = (block, off)
                self.bufs[v] = block
                off += t.tile * SIZES[v.dtype]

    def ptr(self, v, idx):
        at = self.tile.get(v)
        if at is None:
            return super().ptr(v, idx)
        # kept for the current tile of the innermost axis, at the element's place in it
        b = self.b
        i = b.add(b.mul(b.sub(idx[-1], self.tile_start), ir.Constant(I64, SIZES[v.dtype])), ir.Constant(I64, at[1]))
        return b.gep(at[0], [i], inbounds=True, source_etype=ir.IntType(8))

    def segmented(self, shape, a, split, hooks, groups, t, nests):
        """A nest whose body is cut in segments: the innermost axis in tiles, and each tile
        runs each segment's loop in turn, each segment a function of its own (LLVM's loop passes
        take time that grows with the size of the function around a loop); what a later segment
        reads of an earlier one is in the tile's block (self.tile), still in cache."""
        tile = ir.Constant(I64, t)
        last = len(shape) - 1
        bounds = {a: self.chunk(shape, a, split)} if a is not None else {}
        lo, hi = bounds.get(last, (ZERO, self.dim(shape[last])))
        fns = [self._segment_function(parts, last, nests) for parts in groups]

        def run(oidx):
            b = self.b
            count = b.sdiv(b.add(b.sub(hi, lo), ir.Constant(I64, t - 1)), tile)
            with self.loop(count) as j:
                t0 = b.add(lo, b.mul(j, tile))
                end = b.add(t0, tile)
                t1 = b.select(b.icmp_signed("<", end, hi), end, hi)
                for fn, accs in fns:
                    b.call(fn, self._words() + [t0, t1] + list(oidx) + accs)
        outer = {k: r for k, r in bounds.items() if k != last}
        if a is None:
            with self.when(self.is_first):
                self.nest(shape[:-1], run, hooks=hooks)
            return
        self.nest(shape[:-1], run, bounds=outer, hooks=hooks)

    def _words(self):
        """This function's arguments as a segment's function takes them."""
        return list(self.fn.args)

    def _segment_function(self, parts, rank, nests):
        """(function, its arguments after this function's own) for one segment: a loop over
        [t0, t1) of the innermost axis at the outer index it is given, the steps' parts in its
        body. Each value kept per tile that it reads or writes comes as a pointer of its own, so
        LLVM sees that they do not overlap (one block at offsets would keep it from
        interleaving the loop)."""
        accs = [p.acc for p in parts if p.acc is not None]
        kept = set()
        for p in parts:
            s = p.step
            if s.node is not None:
                kept |= ({s.value} | self.plan.reads[s.value]) & self.tile.keys()
        kept = sorted(kept, key=lambda v: v.id)
        own = list(self.fn.args)
        ty = ir.FunctionType(ir.VoidType(), [a.type for a in own] + [I64] * (2 + rank) +
                             [PTR] * (len(accs) + len(kept)))
        fn = ir.Function(self.module, ty, self.module.get_unique_name(self.fn.name + ".segment"))
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        for x in fn.args:
            if x.type == PTR:
                x.add_attribute("noalias")
        args = {a: x for a, x in zip(own, fn.args)}
        sub = lambda p: args.get(p, p)
        bufs = {v: sub(p) for v, p in self.bufs.items() if v not in self.tile}
        extra = {k: sub(p) for k, p in self.extra.items()}
        syms = {k: sub(p) for k, p in self.syms.items()}
        L = FunctionLowering(self.module, self.g, self.plan, fn, bufs, syms, [sub(p) for p in self.outs],
                             sub(self.tid), sub(self.nth), extra, self.fast_math)
        rest = fn.args[len(own):]
        t0, t1, oidx = rest[0], rest[1], tuple(rest[2:2 + rank])
        acc_args, tile_args = rest[2 + rank:2 + rank + len(accs)], rest[2 + rank + len(accs):]
        for v, x in zip(kept, tile_args):
            L.tile[v] = (x, 0)
            L.bufs[v] = x
        L.tile_start = t0
        acc_of = dict(zip(map(id, accs), acc_args))
        with L.loop(t1, t0, hint=interleave_hint(self.module) if _serial_calls(L, parts) else None) as i:
            idx = oidx + (i,)
            for p in parts:
                p(idx, L, acc_of.get(id(p.acc)) if p.acc is not None else None)
        L.finish()
        e = self.entry
        ptrs = [e.gep(self.tile[v][0], [ir.Constant(I64, self.tile[v][1])], source_etype=ir.IntType(8))
                for v in kept]
        return fn, accs + ptrs

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
