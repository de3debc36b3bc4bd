"""The element-level lowering both backends share: one element of a value at a multi-index, computed
inline from its fused chain through the ops' `lower=` rules and `cg`, or loaded from its buffer.

A backend subclasses ElementLowering: the CPU's FunctionLowering (cpu/function.py) adds loop
nests, threads and BLAS calls; the GPU's KernelLowering (cuda/graphs.py) routes loads and stores
through its KernelBuilder and math through libdevice.
"""
from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from llvmlite import ir

from ..ir import dim_parts
from ..ops import OPS
from .layout import ZERO, broadcast_index
from .scalar import I64, LLTYPES, STORE_TYPES

ONE = ir.Constant(I64, 1)


@contextmanager
def counted_loop(b, count, start=ZERO, prefix="", hint=None):
    """for (i = start; i < count; i++) around the body emitted inside the with block; hint:
    metadata for the loop's back edge (!llvm.loop)."""
    pre = b.block
    head, body, done = (b.append_basic_block(prefix + s) for s in ("loop", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, count), body, done)
    b.position_at_end(body)
    yield i
    i.add_incoming(b.add(i, ONE), b.block)
    br = b.branch(head)
    if hint is not None:
        br.set_metadata("llvm.loop", hint)
    b.position_at_end(done)


# f32 sums accumulate in f64: closer to NumPy's pairwise sums than a long f32 running sum
ACC_DTYPE = {("sum", "f32"): "f64"}


def acc_dtype(n):
    """The type a reduction node accumulates in."""
    return ACC_DTYPE.get((n.op, n.ins[0].dtype), n.ins[0].dtype)


def reduction_identity(op: str, dtype: str) -> ir.Constant:
    """The value a reduction starts from (OpDef.identity), as a constant of dtype."""
    v = OPS[op].identity(dtype)
    return ir.Constant(LLTYPES[dtype], float(v) if dtype in ("f32", "f64") else int(v))


def reduction_combine(cg, op: str, acc, x):
    """acc combined with x by the reduction op (OpDef.combine)."""
    return OPS[op].combine(cg, acc, x)


class ElementLowering:
    """Elements of a graph's values inside one LLVM function.

    Set by the subclass: module, g, plan, fn; b (the IRBuilder of the body) and entry (an
    IRBuilder whose values dominate the body: dims and sizes are computed there once); cg (the
    Scalar helper the ops' lower= rules get); syms (dim name -> i64 value); bufs (value ->
    its buffer). ptr/load/store are how a buffer is read and written: a backend may override them.
    """

    def setup(self, module, g, plan, fn, b, entry, cg, syms, bufs):
        self.module, self.g, self.plan, self.fn = module, g, plan, fn
        self.b, self.entry, self.cg = b, entry, cg
        self.syms, self.bufs = dict(syms), dict(bufs)
        self.memo = [{}]
        self.dims = {}

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
    def loop(self, count, start=ZERO, hint=None):
        with counted_loop(self.b, count, start, hint=hint) as i:
            self.memo.append({})          # element values computed in the body stay in it
            yield i
            self.memo.pop()

    assume_inside = frozenset()       # pad nodes whose innermost index is known to be in range
    innermost_hint = None             # () -> loop metadata for each innermost loop of a nest, or None

    def nest(self, shape, body, idx=(), bounds=None, hooks=None, inner=None):
        """Loops over shape (innermost last, where memory is contiguous) around body(idx).

        bounds: {axis: (lo, hi)} narrows an axis to this thread's share; hooks: {depth:
        ([before], [after])} run around the loops at that depth (a reduction's accumulator).
        inner: (pads, lo, hi): the innermost loop runs in three parts, the middle one over
        [lo, hi), where those pads read their input without a test (see pad_interior).
        """
        k = len(idx)
        before, after = (hooks or {}).get(k, ((), ()))
        for f in before:
            f(idx)
        if k == len(shape):
            body(idx)
        else:
            lo, hi = (bounds or {}).get(k, (ZERO, self.dim(shape[k])))
            if inner is not None and k == len(shape) - 1:
                pads, a, z = inner
                b = self.b
                m0 = b.select(b.icmp_signed("<", a, lo), lo, b.select(b.icmp_signed(">", a, hi), hi, a))
                m1 = b.select(b.icmp_signed("<", z, m0), m0, b.select(b.icmp_signed(">", z, hi), hi, z))
                for start, stop, inside in ((lo, m0, False), (m0, m1, True), (m1, hi, False)):
                    saved, self.assume_inside = self.assume_inside, (pads if inside else frozenset())
                    with self.loop(stop, start, hint=self.innermost_hint() if self.innermost_hint else None) as i:
                        self.nest(shape, body, idx + (i,), bounds, hooks)
                    self.assume_inside = saved
            else:
                last = k == len(shape) - 1 and self.innermost_hint is not None
                with self.loop(hi, lo, hint=self.innermost_hint() if last else None) as i:
                    self.nest(shape, body, idx + (i,), bounds, hooks, inner)
        for f in after:
            f(idx)

    def pad_interior(self, roots, shape):
        """(pads, lo, hi) for a loop nest over shape computing the values roots at its own index:
        the pads of those values' fused chains, reached at the loop's index, that slice their
        innermost axis with step 1; [lo, hi) is where every one of them is inside its input, so
        a loop over it reads them without a test (and vectorizes with plain loads, not masked
        ones). None when there is no such pad."""
        if not shape or shape[-1] == 1:
            return None
        seen, pads, todo = set(), [], list(roots)
        while todo:
            v = todo.pop()
            if v in seen or v in self.bufs or v.shape != tuple(shape):
                continue
            seen.add(v)
            n = self.plan.producers.get(v)
            if n is None:
                continue
            spec = n.attr("spec") if n.op == "pad" else None
            if spec is not None and len(spec) == len(shape) and spec[-1][0] == "s" and spec[-1][3] in (None, 1):
                pads.append(n)
            elif OPS[n.op].kind == "elementwise" and OPS[n.op].index_map is None:
                todo.extend(n.ins)
        if not pads:
            return None
        from .layout import _start
        e, lo, hi = self.entry, None, None
        for n in pads:
            start, _ = _start(self, shape[-1], n.attr("spec")[-1])
            end = e.add(start, self.dim(n.ins[0].shape[-1]))
            lo = start if lo is None else e.select(e.icmp_signed(">", start, lo), start, lo)
            hi = end if hi is None else e.select(e.icmp_signed("<", end, hi), end, hi)
        return frozenset(pads), lo, hi

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

    @staticmethod
    def _key(v, idx):
        """The element memo's key of value v at index idx (LLVM values: their identity)."""
        return v, tuple(map(id, idx))

    def _memo(self, v, idx):
        key = self._key(v, idx)
        for scope in reversed(self.memo):
            if key in scope:
                return scope[key]
        return None

    def _elem_steps(self, v, idx):
        x = self._memo(v, idx)
        if x is not None:
            return x
        x = self.load(v, idx) if v in self.bufs else (yield from self._node_steps(self.plan.producers[v], idx))
        self.memo[-1][self._key(v, idx)] = x
        return x

    def _node_steps(self, n, idx):
        index_map = OPS[n.op].index_map
        if index_map is not None:
            x = index_map(self, n, idx)
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

