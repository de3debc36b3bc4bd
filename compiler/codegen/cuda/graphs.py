"""Kernels from optimized graphs: one kernel per fused loop nest, block-tree reductions, tiled products.

The fusion plan (codegen/plan.py) says which values get a buffer; everything else is computed
inline, element by element, by the element lowering that the CPU backend uses too (through a
`cg` whose math is the target's: libdevice on the GPU, the C library in the simulator). Roots
are grouped into kernels in topological order; each function gets a launch PLAN that the
runtime (runtime/cuda.py) executes: docs/cuda.md describes both. A function with loops or
branches gets a structured plan of such plans, one per block and body (program.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from llvmlite import ir

from ..element import ElementLowering, acc_dtype, reduction_combine as _combine, reduction_identity as _identity
from ..layout import ZERO
from ..plan import make_plan
from ..products import batch_offset, product, unflatten
from ..scalar import LLTYPES, Scalar, is_float
from .kernel import I64, Kernel, Param

BLOCK = 256                 # threads per block of elementwise and reduction kernels (a power of 2)
# matrix products: a block of TILE_THREADS threads makes a BM x BN tile of the result, each thread
# MICRO x MICRO outputs, from BM x BK and BK x BN operand tiles in shared memory
BM = BN = 64
BK = 16
MICRO = 4
TILE_THREADS = (BM // MICRO) * (BN // MICRO)
CHUNK = 2048                # a reduction splits its extent into chunks of at least this many elements...
TARGET_BLOCKS = 1024        # ...while its outputs alone give fewer blocks than this
MAX_GRID = 2 ** 31 - 1


class GpuScalar(Scalar):
    """The element `cg` of a kernel: math by name through the target (libdevice or the C library)."""

    def __init__(self, module, builder, kb):
        super().__init__(module, builder)
        self.kb = kb

    def call(self, name, *xs):
        return self.kb.math(name, *xs)

    def math(self, name, x):
        raise NotImplementedError(f"kernels call math by name (cg.call), not through {name!r} declarations")

    def pow(self, x, y):
        if is_float(x):
            return self.kb.math("pow", x, y)
        d = ir.DoubleType()
        p = self.kb.math("pow", self.b.sitofp(x, d), self.b.sitofp(y, d))
        return self.b.fptosi(p, x.type)


class KernelLowering(ElementLowering):
    """The element lowering of a graph inside one kernel: buffers are the kernel's Bufs, every
    load and store goes through the KernelBuilder (bounds-checked and counted in the simulator)."""

    def __init__(self, kb, g, plan, bufs: dict, syms: dict):
        self.kb = kb
        # values hoisted out of every loop (dims, sizes) go in the block the body starts in
        entry = ir.IRBuilder(kb.b.block)
        self.start = kb.fn.append_basic_block("start")
        kb.b.position_at_end(self.start)
        self.setup(kb.module, g, plan, kb.fn, kb.b, entry, GpuScalar(kb.module, kb.b, kb), syms, bufs)

    def finish(self, ret=None):
        self.entry.branch(self.start)

    def ptr(self, v, idx):
        raise NotImplementedError("kernel buffers are accessed through load and store")

    def load(self, v, idx):
        return self.load_buf(self.bufs[v], v.dtype, self.offset(v.shape, idx))

    def load_buf(self, buf, dtype, index):
        x = self.kb.load(buf, index)
        return self.b.trunc(x, LLTYPES["bool"]) if dtype == "bool" else x

    def store_buf(self, buf, dtype, index, x):
        if dtype == "bool":
            x = self.b.zext(x, ir.IntType(8))
        self.kb.store(buf, index, x)

    def unflatten(self, flat, shape):
        """The multi-index of a row-major flat index over shape (unit dims cost nothing)."""
        idx = [None] * len(shape)
        rest = flat
        for k in range(len(shape) - 1, -1, -1):
            d = shape[k]
            if d == 1:
                idx[k] = ZERO
            elif k == 0:
                idx[k] = rest
            else:
                n = self.dim(d)
                idx[k] = self.b.urem(rest, n)
                rest = self.b.udiv(rest, n)
        return tuple(idx)

    def scope(self):
        return _Scope(self.memo)


class _Scope:
    def __init__(self, memo):
        self.memo = memo

    def __enter__(self):
        self.memo.append({})

    def __exit__(self, *exc):
        self.memo.pop()


# ---- sizes as the PLAN's SIZE expressions


def _prod(dims):
    e = 1
    for d in dims:
        if d == 1:
            continue
        e = d if e == 1 else ["*", e, d]
    return e


def _cdiv(a, b):
    return ["cdiv", a, b]


def _block_size(space) -> int:
    """Threads per block of a grid-stride kernel over space: BLOCK, or for a small space of fixed
    size the power of two that covers it (at least a warp), so no block is mostly idle."""
    if all(isinstance(d, int) for d in space):
        n = 1
        for d in space:
            n *= d
        return max(32, min(BLOCK, 1 << max(n - 1, 0).bit_length()))
    return BLOCK


# ---- what a function's kernels are made of


@dataclass
class Group:
    """One kernel's work: elementwise steps over one space, or a reduction (with the elementwise
    steps over its input's space), or a matrix product."""
    kind: str                                   # "map", "reduce" or "matmul"
    space: tuple
    steps: list = field(default_factory=list)   # [(value, node or None, destination value key)]
    node: object = None                         # the reduction or the product
    writes: set = field(default_factory=set)


def _space(n, OPS):
    """The iteration space of a root's loop: its input's shape for a reduction, else its own."""
    return n.ins[0].shape if OPS[n.op].kind == "reduce" else n.out.shape


def _recompute_reads(g, plan):
    """Which buffers each root's loop (and each output copy) reads, for the plan's buffers."""
    via, reads = {}, {}
    for n in g.nodes:
        if n in plan.matmul_operands:
            r = {x for x, _ in plan.matmul_operands[n]}
        else:
            r = set()
            for i in n.ins:
                r |= {i} if i in plan.buffers else via.get(i, set())
        (reads if n.out in plan.buffers and n.out not in g.params else via)[n.out] = r
    for o in g.outputs:
        if o not in plan.buffers:
            reads[("out", o)] = via.get(o, set())
    plan.reads = reads


def gpu_plan(g):
    """The fusion plan, with fewer buffers: a value the CPU stores because several loops use it
    is computed inline instead when every one of those loops runs over its own shape, so one
    kernel can compute it once per element for all of them (no round trip through memory)."""
    from ...ops import OPS
    plan = make_plan(g)
    fixed = set(g.outputs) | set(g.params)
    for ops in plan.matmul_operands.values():      # the products the plan computes (a product no
        fixed |= {x for x, _ in ops}                # output reads the data of has no entry)
    for n in g.nodes:
        if OPS[n.op].kind == "check":
            fixed.add(n.ins[0])
    changed = True
    while changed:
        changed = False
        users = {}
        for v, r in plan.reads.items():
            for x in r:
                users.setdefault(x, []).append(v)
        for n in list(plan.roots):
            v = n.out
            if v in fixed or OPS[n.op].kind in ("reduce", "matmul", "scatter"):
                continue
            spaces = []
            for u in users.get(v, []):
                if isinstance(u, tuple):
                    spaces.append(u[1].shape)
                else:
                    un = plan.producers[u]
                    spaces.append(None if OPS[un.op].kind == "matmul" else _space(un, OPS))
            if spaces and all(sp == v.shape for sp in spaces):
                plan.roots.remove(n)
                plan.buffers.discard(v)
                _recompute_reads(g, plan)
                changed = True
                break
    return plan


class FunctionKernels:
    """The kernels and the launch PLAN of one optimized graph."""

    def __init__(self, g, prefix: str):
        self.g, self.prefix = g, prefix
        self.plan = gpu_plan(g)
        self.kernels, self.steps = [], []
        self._outputs()
        self._group()
        self._epilogues()
        self._place_checks()
        self._layout()
        for grp in self.groups:
            self._emit(grp)
            for n in self.checks_after.get(id(grp), ()):
                self._check(n)

    # -- buffers: parameters, outputs, temporaries; every kernel takes them all

    def _outputs(self):
        g, plan = self.g, self.plan
        self.dest = {}                      # value -> ("in"|"out"|"tmp", index)
        for i, v in enumerate(g.params):
            self.dest.setdefault(v, ("in", i))
        self.copies = []                    # outputs written by a copy: (value, output index)
        for i, v in enumerate(g.outputs):
            if v in self.dest or v not in plan.buffers:
                self.copies.append((v, i))
            else:
                self.dest[v] = ("out", i)
        self.unstored = set()               # products whose consumers take them in their epilogue

    def _layout(self):
        g, plan = self.g, self.plan
        self.temps = []
        for n in plan.roots:
            if n.out not in self.dest and n.out not in self.unstored:
                self.dest[n.out] = ("tmp", len(self.temps))
                self.temps.append({"dtype": n.out.dtype, "count": _prod(n.out.shape)})
        self.base = [Param(f"in{i}", v.dtype) for i, v in enumerate(g.params)]
        self.base += [Param(f"out{i}", v.dtype) for i, v in enumerate(g.outputs)]
        self.base += [Param(f"tmp{j}", t["dtype"]) for j, t in enumerate(self.temps)]
        self.base += [Param(f"dim_{s}", "i64", buffer=False) for s in plan.syms]
        self.base_args = [["in", i] for i in range(len(g.params))]
        self.base_args += [["out", i] for i in range(len(g.outputs))]
        self.base_args += [["tmp", j] for j in range(len(self.temps))]
        self.base_args += [["size", s] for s in plan.syms]

    def _param(self, key):
        kind, i = key
        return f"{kind}{i}"

    # -- roots into kernels, in topological order; a kernel never reads what it writes

    def _group(self):
        from ...ops import OPS
        plan = self.plan
        self.groups, cur = [], None
        checks = [n for n in self.g.nodes if OPS[n.op].kind == "check"]
        for n in plan.roots:
            kind = OPS[n.op].kind
            reads = plan.reads[n.out]
            if kind in ("matmul", "scatter"):
                cur = None
                self.groups.append(Group(kind, n.out.shape, node=n, writes={n.out}))
                continue
            space = n.ins[0].shape if kind == "reduce" else n.out.shape
            fits = cur is not None and not (reads & cur.writes) and cur.space == space and \
                (kind != "reduce" or cur.node is None)
            if not fits:
                cur = Group("map", space)
                self.groups.append(cur)
            if kind == "reduce":
                cur.kind, cur.node = "reduce", n
            else:
                cur.steps.append((n.out, n, None))
            cur.writes.add(n.out)
        for v, i in self.copies:
            reads = {v} if v in plan.buffers else plan.reads.get(("out", v), set())
            if cur is None or cur.kind in ("matmul", "scatter") or cur.space != v.shape or reads & cur.writes:
                cur = Group("map", v.shape)
                self.groups.append(cur)
            cur.steps.append((v, None, ("out", i)))
        self.pending_checks = checks

    def _place_checks(self):
        """A check runs right after the kernel that writes its operand (first, for a parameter)."""
        self.checks_after = {}
        for n in self.pending_checks:
            x = n.ins[0]
            if x in self.g.params:
                self._check(n)
                continue
            grp = next(grp for grp in self.groups if x in grp.writes)
            self.checks_after.setdefault(id(grp), []).append(n)

    def _epilogues(self):
        """A product whose only readers are the elementwise steps of the next kernel, over its own
        shape and at its own index (bias, activation), hands them each element as it is made:
        they run in the product's kernel, and the product never goes to memory."""
        from ...ops import OPS
        consumers = {}
        for n in self.g.nodes:
            for x in n.ins:
                consumers.setdefault(x, []).append(n)
        outputs = set(self.g.outputs)
        for i in range(len(self.groups) - 1, -1, -1):
            grp = self.groups[i]
            if grp.kind != "matmul" or i + 1 == len(self.groups):
                continue
            nxt, mm = self.groups[i + 1], grp.node.out
            if nxt.kind != "map" or nxt.space != mm.shape or mm in outputs:
                continue
            steps = {v for v, n, _ in nxt.steps if n is not None}
            if any(n is None for _, n, _ in nxt.steps):
                continue
            ok, todo, seen = True, [mm], set()
            while todo and ok:
                for c in consumers.get(todo.pop(), ()):
                    if c.out in seen:
                        continue
                    seen.add(c.out)
                    if OPS[c.op].kind != "elementwise" or c.out.shape != mm.shape or \
                            (c.out in self.plan.buffers and c.out not in steps):
                        ok = False
                        break
                    if c.out not in self.plan.buffers:
                        todo.append(c.out)
            if ok and seen:
                grp.steps = nxt.steps
                grp.writes |= nxt.writes
                self.unstored.add(mm)
                del self.groups[i + 1]

    def _check(self, n):
        x = n.ins[0]
        hi = n.attr("hi")
        self.steps.append({"check": {"error": n.attr("error"), "message": n.attr("message")},
                           "arg": list(self.dest[x]), "dtype": x.dtype, "count": _prod(x.shape),
                           "lo": int(n.attr("lo")), "hi": hi})

    # -- kernels

    def _kernel(self, body, extra=()):
        name = f"{self.prefix}__k{len(self.kernels)}"
        params = tuple(self.base) + tuple(Param(p, "i64", buffer=False) for p in extra)
        self.kernels.append(Kernel(name, params, body))
        return name

    def _lowering(self, kb):
        bufs = {v: kb.arg(self._param(key)) for v, key in self.dest.items()}
        syms = {s: kb.arg(f"dim_{s}") for s in self.plan.syms}
        return KernelLowering(kb, self.g, self.plan, bufs, syms)

    def _launch(self, name, grid, block, extra=()):
        self.steps.append({"launch": name, "grid": ["min", grid, MAX_GRID], "block": block,
                           "args": self.base_args + [["size", e] for e in extra]})

    def _emit(self, grp):
        if grp.kind == "matmul":
            self._matmul(grp.node, grp.steps)
        elif grp.kind == "reduce":
            self._reduce(grp)
        elif grp.kind == "scatter":
            self._scatter(grp.node)
        else:
            self._map(grp)

    def _store_steps(self, L, steps, idx):
        for v, n, key in steps:
            key = key or self.dest[v]
            x = L.node_elem(n, idx) if n is not None else L.elem(v, idx)
            L.store_buf(L.kb.arg(self._param(key)), v.dtype, L.offset(v.shape, idx), x)

    def _map(self, grp):
        """Elementwise steps over one space: a grid-stride loop over its flattened elements."""
        space, steps = grp.space, grp.steps

        def body(kb):
            L = self._lowering(kb)
            count = L.size(space)
            with kb.grid_stride(count) as i:
                with L.scope():
                    self._store_steps(L, steps, L.unflatten(i, space))
            L.finish()
        name = self._kernel(body)
        block = _block_size(space)
        self._launch(name, _cdiv(_prod(space), block), block)

    def _scatter(self, n):
        """A scatter: one kernel copies its first input into the result, a second adds each
        element of the updates (its last input) where the op's index map sends it, with an
        atomic add (repeated indices add up, in an order the hardware picks)."""
        from ...ops import OPS
        base, upd, out = n.ins[0], n.ins[-1], n.out
        key = self.dest[out]
        target = OPS[n.op].index_map

        def copy(kb):
            L = self._lowering(kb)
            with kb.grid_stride(L.size(out.shape)) as i:
                with L.scope():
                    idx = L.unflatten(i, out.shape)
                    L.store_buf(kb.arg(self._param(key)), out.dtype, L.offset(out.shape, idx), L.elem(base, idx))
            L.finish()

        def add(kb):
            L = self._lowering(kb)
            with kb.grid_stride(L.size(upd.shape)) as i:
                with L.scope():
                    uidx = L.unflatten(i, upd.shape)
                    j = L._run(target(L, n, uidx))
                    kb.atomic_add(kb.arg(self._param(key)), L.offset(out.shape, j), L.elem(upd, uidx))
            L.finish()
        for body, space in ((copy, out.shape), (add, upd.shape)):
            block = _block_size(space)
            self._launch(self._kernel(body), _cdiv(_prod(space), block), block)

    def _reduce(self, grp):
        """A reduction: blocks of BLOCK threads, one per (output, chunk), accumulate their share,
        combine it in a tree in shared memory and write a partial result; a second kernel combines
        each output's partials in order. No atomics: the same input gives the same bits."""
        n, steps = grp.node, grp.steps
        x = n.ins[0]
        axes = tuple(n.attr("axes"))
        kept = [a for a in range(len(x.shape)) if a not in axes]
        red = [a for a in axes]
        kept_shape = tuple(x.shape[a] for a in kept)
        red_shape = tuple(x.shape[a] for a in red)
        acc_dt = acc_dtype(n)
        M, R = _prod(kept_shape), _prod(red_shape)
        chunks = ["max", 1, ["min", _cdiv(R, CHUNK), _cdiv(TARGET_BLOCKS, ["max", M, 1])]]
        partial = len(self.temps)
        self.temps.append({"dtype": acc_dt, "count": ["*", M, chunks]})
        # the partials buffer is this kernel's own parameter, after the shared ones
        op = n.op

        def first(kb):
            L = self._lowering(kb)
            b, cg = kb.b, L.cg
            G = kb.arg("chunks")
            part = kb.arg("partials")
            m, r = L.size(kept_shape), L.size(red_shape)
            blocks = L.entry.mul(m, G)
            tid = b.zext(kb.tid(), I64)
            nt = b.zext(kb.ntid(), I64)
            shared = kb.shared("tree", acc_dt, BLOCK)
            acc = kb.local(LLTYPES[acc_dt])
            ident = _identity(op, acc_dt)
            with kb.loop(b.zext(kb.ctaid(), I64), blocks, b.zext(kb.nctaid(), I64)) as blk:
                o, c = b.udiv(blk, G), b.urem(blk, G)
                b.store(ident, acc)
                oidx = L.unflatten(o, kept_shape)
                with kb.loop(b.add(b.mul(c, nt), tid), r, b.mul(G, nt)) as j:
                    ridx = L.unflatten(j, red_shape)
                    idx = [None] * len(x.shape)
                    for a, v in zip(kept, oidx):
                        idx[a] = v
                    for a, v in zip(red, ridx):
                        idx[a] = v
                    idx = tuple(idx)
                    with L.scope():
                        v = cg.cast(L.elem(x, idx), acc_dt)
                        b.store(_combine(cg, op, b.load(acc, typ=LLTYPES[acc_dt]), v), acc)
                        self._store_steps(L, steps, idx)
                kb.store(shared, tid, b.load(acc, typ=LLTYPES[acc_dt]))
                kb.barrier("partial sums stored")
                s = BLOCK // 2
                while s:
                    with kb.if_then(b.icmp_unsigned("<", tid, ir.Constant(I64, s))):
                        u = kb.load(shared, tid)
                        w = kb.load(shared, b.add(tid, ir.Constant(I64, s)))
                        kb.store(shared, tid, _combine(cg, op, u, w))
                    kb.barrier(f"tree level {s}")
                    s //= 2
                with kb.if_then(b.icmp_unsigned("==", tid, ZERO)):
                    kb.store(part, blk, kb.load(shared, ZERO))
                kb.barrier("tree read")
            L.finish()

        out_key = self.dest[n.out]

        def second(kb):
            L = self._lowering(kb)
            b, cg = kb.b, L.cg
            G = kb.arg("chunks")
            part = kb.arg("partials")
            m = L.size(kept_shape)
            acc = kb.local(LLTYPES[acc_dt])
            with kb.grid_stride(m) as o:
                b.store(_identity(op, acc_dt), acc)
                with kb.loop(ZERO, G, 1) as c:
                    v = kb.load(part, b.add(b.mul(o, G), c))
                    b.store(_combine(cg, op, b.load(acc, typ=LLTYPES[acc_dt]), v), acc)
                L.store_buf(kb.arg(self._param(out_key)), n.out.dtype, o,
                            cg.cast(b.load(acc, typ=LLTYPES[acc_dt]), n.out.dtype))
            L.finish()

        k1 = self._reduce_kernel(first, acc_dt)
        k2 = self._reduce_kernel(second, acc_dt)
        self._launch_reduce(k1, ["*", M, chunks], BLOCK, chunks, partial)
        self._launch_reduce(k2, _cdiv(M, BLOCK), BLOCK, chunks, partial)

    def _reduce_kernel(self, body, acc_dt):
        name = f"{self.prefix}__k{len(self.kernels)}"
        params = tuple(self.base) + (Param("chunks", "i64", buffer=False), Param("partials", acc_dt))
        self.kernels.append(Kernel(name, params, body))
        return name

    def _launch_reduce(self, name, grid, block, chunks, partial):
        self.steps.append({"launch": name, "grid": ["min", grid, MAX_GRID], "block": block,
                           "args": self.base_args + [["size", chunks], ["tmp", partial]]})

    def _matmul(self, n, epilogue=()):
        """C = A @ B: each block of TILE_THREADS threads makes a BM x BN tile of C, each thread a
        MICRO x MICRO block of it in registers, from BM x BK and BK x BN tiles of A and B staged in
        shared memory. An operand that is a transpose is read in place, its index map swapped.
        The epilogue's steps (bias, activation) take each element as it is made."""
        p = product(self.plan, n)
        a, ta, bm, tb = p.a, p.ta, p.b, p.tb
        mm, dt = n.out, n.out.dtype
        akey, bkey = self.dest[a], self.dest[bm]
        ckey = None if mm in self.unstored else self.dest[mm]
        side = BM // MICRO                          # threads along a tile's side (16)
        nb = len(p.batch)

        def c64(v):
            return ir.Constant(I64, v)

        def body(kb):
            L = self._lowering(kb)
            b, e = kb.b, L.entry
            M, K, N = L.size(p.m), L.size(p.k), L.size(p.n)
            tiles_n = e.udiv(e.add(N, c64(BN - 1)), c64(BN))
            per = e.mul(e.udiv(e.add(M, c64(BM - 1)), c64(BM)), tiles_n)      # tiles of one product
            tiles = e.mul(per, L.size(p.batch))
            tid = b.zext(kb.tid(), I64)
            tx, ty = b.urem(tid, c64(side)), b.udiv(tid, c64(side))
            As, Bs = kb.shared("a_tile", dt, BM * BK), kb.shared("b_tile", dt, BK * BN)
            A, B = kb.arg(self._param(akey)), kb.arg(self._param(bkey))
            t = LLTYPES[dt]
            zero = ir.Constant(t, 0)
            acc = [[kb.local(t) for _ in range(MICRO)] for _ in range(MICRO)]
            tmp = kb.local(t)
            mk, kn, mn = e.mul(M, K), e.mul(K, N), e.mul(M, N)
            with kb.loop(b.zext(kb.ctaid(), I64), tiles, b.zext(kb.nctaid(), I64)) as flat:
                # the batch is the slowest grid dimension: its products' tiles follow one another
                bi, tile = (b.udiv(flat, per), b.urem(flat, per)) if nb else (ZERO, flat)
                bidx = unflatten(L, b, bi, p.batch)
                oa = b.mul(batch_offset(L, b, bidx, p.a_batch, p.batch), mk)
                ob = b.mul(batch_offset(L, b, bidx, p.b_batch, p.batch), kn)
                oc = b.mul(bi, mn)
                r0 = b.mul(b.udiv(tile, tiles_n), c64(BM))
                c0 = b.mul(b.urem(tile, tiles_n), c64(BN))
                for row in acc:
                    for slot in row:
                        b.store(zero, slot)
                with kb.loop(ZERO, K, BK) as k0:
                    # stage the tiles: each thread loads BM*BK/TILE_THREADS elements of each
                    for q in range(BM * BK // TILE_THREADS):
                        el = b.add(tid, c64(q * TILE_THREADS))
                        ar, ac = b.udiv(el, c64(BK)), b.urem(el, c64(BK))        # A tile: BM x BK
                        br, bc = b.udiv(el, c64(BN)), b.urem(el, c64(BN))        # B tile: BK x BN
                        gr, gk = b.add(r0, ar), b.add(k0, ac)
                        hk, hc = b.add(k0, br), b.add(c0, bc)
                        ia = b.add(oa, b.add(b.mul(gk, M), gr) if ta else b.add(b.mul(gr, K), gk))
                        ib = b.add(ob, b.add(b.mul(hc, K), hk) if tb else b.add(b.mul(hk, N), hc))
                        for buf, tilebuf, inside, index, at in (
                                (A, As, b.and_(b.icmp_unsigned("<", gr, M), b.icmp_unsigned("<", gk, K)), ia, el),
                                (B, Bs, b.and_(b.icmp_unsigned("<", hk, K), b.icmp_unsigned("<", hc, N)), ib, el)):
                            b.store(zero, tmp)
                            with kb.if_then(inside):
                                b.store(kb.load(buf, index), tmp)
                            kb.store(tilebuf, at, b.load(tmp, typ=t))
                    kb.barrier("tiles loaded")
                    with kb.loop(ZERO, c64(BK), 1) as kk:
                        av = [kb.load(As, b.add(b.mul(b.add(ty, c64(side * i)), c64(BK)), kk)) for i in range(MICRO)]
                        bv = [kb.load(Bs, b.add(b.mul(kk, c64(BN)), b.add(tx, c64(side * j)))) for j in range(MICRO)]
                        for i in range(MICRO):
                            for j in range(MICRO):
                                slot = acc[i][j]
                                b.store(b.fadd(b.load(slot, typ=t), b.fmul(av[i], bv[j])), slot)
                    kb.barrier("tiles used")
                for i in range(MICRO):
                    row = b.add(r0, b.add(ty, c64(side * i)))
                    for j in range(MICRO):
                        col = b.add(c0, b.add(tx, c64(side * j)))
                        inside = b.and_(b.icmp_unsigned("<", row, M), b.icmp_unsigned("<", col, N))
                        with kb.if_then(inside):
                            value = b.load(acc[i][j], typ=t)
                            if ckey is not None:
                                kb.store(kb.arg(self._param(ckey)), b.add(oc, b.add(b.mul(row, N), col)), value)
                            if epilogue:
                                # as the element lowering indexes it: a unit axis by a constant 0
                                idx = bidx + unflatten(L, b, row, p.m) + unflatten(L, b, col, p.n)
                                with L.scope():
                                    L.memo[-1][(mm, tuple(map(id, idx)))] = value
                                    self._store_steps(L, epilogue, idx)
            L.finish()
        name = self._kernel(body)
        self._launch(name, ["*", _prod(p.batch) if p.batch else 1,
                            ["*", _cdiv(_prod(p.m), BM), _cdiv(_prod(p.n), BN)]], TILE_THREADS)

    def plan_json(self) -> dict:
        return {"symbols": list(self.plan.syms), "temps": self.temps, "steps": self.steps}


def function_kernels(graphs: dict) -> tuple:
    """([Kernel], {function name: PLAN}) of optimized graphs. A graph with loops or branches
    gets a structured plan (program.py): a program of plain plans, one per block and body."""
    from ...control import has_control
    from .program import ProgramKernels
    kernels, plans, used = [], {}, set()

    def new_prefix(base):
        prefix, i = base, 1
        while prefix in used:
            i += 1
            prefix = f"{base}_{i}"
        used.add(prefix)
        return prefix
    for fname, g in graphs.items():
        # kernels are named after their function, as PTX allows: letters, digits and _
        prefix = new_prefix("gradc_" + re.sub(r"[^A-Za-z0-9_]", "_", fname))
        fk = ProgramKernels(g, prefix, new_prefix) if has_control(g) else FunctionKernels(g, prefix)
        kernels += fk.kernels
        plans[fname] = fk.plan_json()
    return kernels, plans


def compile_graphs(graphs: dict, name: str = "gradc", sim: bool = False, arch: str = "sm_80",
                   ptx_version: int | None = None, opt: int = 3) -> dict:
    """The code of a module for target cuda (PTX) or cuda-sim (the simulator's IR): see docs/cuda.md."""
    from .kernel import build_module
    from .ptx import PTX_VERSION, emit_ptx
    from .simtarget import SimTarget
    kernels, plans = function_kernels(graphs)
    code = {"arch": arch, "ptx_version": ptx_version or PTX_VERSION, "functions": plans}
    if sim:
        module, infos = build_module(kernels, SimTarget(), name)
        code["sim_ir"] = str(module)
    else:
        from .ptx import nvptx_ir
        _, infos = nvptx_ir(kernels, name=name) if kernels else ("", {})
        code["ptx"] = emit_ptx(kernels, arch, ptx_version, opt) if kernels else ""
    code["kernels"] = {k: info.to_json() for k, info in infos.items()}
    return code
