"""Functions with loops and branches: a native driver that runs the program's steps.

The driver has the entry's ABI, `i32 SYMBOL(ptr ins, ptr dims, ptr outs, ptr err)`. Each
straight-line block is a function of its own (parallel.py lowers it like any graph) and the
driver calls it; a loop is a native loop around the call of its body's function, the carried
state in two buffers that swap each iteration, the stacked results written row by row. The
trip count is read at run time: a new one never recompiles. Buffers crossing steps come from
one allocation per step, freed when the call ends; a failed check in a block (or a body)
returns its status with the check's index into the function's whole list.
"""
from __future__ import annotations

from dataclasses import replace

from llvmlite import ir

from ...control import has_control, result_types
from ..element import counted_loop
from ..scalar import I64, SIZES
from ..structured import Block, make_program
from .parallel import CHECK_FAILED, lower_graph, symbol
from .direct import add_direct_entries

PTR = ir.PointerType()
I32 = ir.IntType(32)
I8 = ir.IntType(8)
BIT = ir.IntType(1)
VOID = ir.VoidType()
ZERO = ir.Constant(I64, 0)
ONE = ir.Constant(I64, 1)


def _func(module, name, ret, args):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name)
    return fn


def lower_program_graph(module, g, fast_math=False) -> tuple:
    """(symbol, dim names, checks) of g's driver; g has control nodes."""
    prog = make_program(g)
    fn, checks = _lower(module, prog, fast_math, exported=True)
    add_direct_entries(module, g, fn, prog.syms)
    return fn.name, prog.syms, checks


def _callee(module, prog_or_graph, fast_math):
    """(function, its dims, its checks) for a body: a driver if it has steps of control, else a
    block compiled as any graph."""
    if not has_control(prog_or_graph.graph):
        return _block(module, replace(prog_or_graph.graph, name=prog_or_graph.name), fast_math)
    fn, checks = _lower(module, prog_or_graph, fast_math)
    return fn, prog_or_graph.syms, checks


def _block(module, g, fast_math):
    """A straight-line graph as the driver's own function (internal), whose arena the driver
    keeps from one call to the next."""
    name, syms, checks = lower_graph(module, g, fast_math, cached_arena=True)
    fn = module.globals[name]
    fn.linkage = "internal"
    return fn, syms, checks


class _Driver:
    def __init__(self, module, prog, fn, fast_math):
        self.module, self.prog, self.fn, self.fast_math = module, prog, fn, fast_math
        self.pre = ir.IRBuilder(fn.append_basic_block("allocas"))
        self.start = fn.append_basic_block("start")
        self.b = ir.IRBuilder(self.start)
        self.checks = []
        ins, dims, outs, err = fn.args
        self.err = err
        self.allocs = []             # alloca slots holding what to free at the end
        self.dims = {}
        for i, s in enumerate(prog.syms):
            self.dims[s] = self._load(dims, i, I64)
        self.env = {}
        for i, p in enumerate(prog.graph.params):
            self.env[p] = self._load(ins, i, PTR)
        self.outs = outs
        self.arenas = {}
        self.fail = fn.append_basic_block("failed")
        self.status = self._entry_alloca(I32)

    # -- helpers

    def _entry_alloca(self, ty, n=1):
        return self.pre.alloca(ty, size=n) if n != 1 else self.pre.alloca(ty)

    def _load(self, arr, i, ty):
        b = self.b
        return b.load(b.gep(arr, [ir.Constant(I64, i)], source_etype=ty), typ=ty)

    def dim(self, d):
        if isinstance(d, int):
            return ir.Constant(I64, d)
        from ...ir import dim_parts
        sym, off = dim_parts(d)
        v = self.dims[sym]
        if off:
            v = self.b.add(v, ir.Constant(I64, off))
            v = self.b.select(self.b.icmp_signed("<", v, ZERO), ZERO, v)
        return v

    def nbytes(self, shape, dtype):
        b = self.b
        n = ir.Constant(I64, SIZES[dtype])
        for d in shape:
            n = b.mul(n, self.dim(d))
        return n

    def malloc(self, size):
        """A buffer of size bytes (at least one), freed when the function returns."""
        b = self.b
        size = b.select(b.icmp_signed("<", size, ONE), ONE, size)
        p = b.call(_func(self.module, "malloc", PTR, [I64]), [size])
        slot = self._entry_alloca(PTR)
        self.pre.store(ir.Constant(PTR, None), slot)
        b.store(p, slot)
        self.allocs.append(slot)
        ok = self.fn.append_basic_block("allocated")
        nomem = self.fn.append_basic_block("no_memory")
        b.cbranch(b.icmp_unsigned("==", p, ir.Constant(PTR, None)), nomem, ok)
        b.position_at_end(nomem)
        b.store(ir.Constant(I32, 1), self.status)
        b.branch(self.fail)
        b.position_at_end(ok)
        return p

    def memcpy(self, dst, src, n):
        f = _func(self.module, "llvm.memcpy.p0.p0.i64", VOID, [PTR, PTR, I64, BIT])
        self.b.call(f, [dst, src, n, ir.Constant(BIT, 0)])

    def ptrs(self, values):
        b = self.b
        arr = self._entry_alloca(PTR, max(len(values), 1))
        for i, v in enumerate(values):
            b.store(v, b.gep(arr, [ir.Constant(I64, i)], source_etype=PTR))
        return arr

    def i64s(self, values):
        b = self.b
        arr = self._entry_alloca(I64, max(len(values), 1))
        for i, v in enumerate(values):
            b.store(v, b.gep(arr, [ir.Constant(I64, i)], source_etype=I64))
        return arr

    def call(self, callee, ins, outs):
        """Call a block or body function; on a non-zero status, give the check's index in this
        function's list and return the status."""
        fn, syms, checks = callee
        b = self.b
        offset = len(self.checks)
        self.checks += checks
        args = [self.ptrs(ins), self.i64s([self.dim(s) for s in syms]), self.ptrs(outs), self.err]
        if len(fn.args) == 5:
            args.append(self.arena_of(fn))
        st = b.call(fn, args)
        bad = self.fn.append_basic_block("step_failed")
        ok = self.fn.append_basic_block("step_ok")
        b.cbranch(b.icmp_signed("!=", st, ir.Constant(I32, 0)), bad, ok)
        b.position_at_end(bad)
        if offset:
            with b.if_then(b.icmp_signed("==", st, ir.Constant(I32, CHECK_FAILED))):
                p = b.gep(self.err, [ZERO], source_etype=I64)
                b.store(b.add(b.load(p, typ=I64), ir.Constant(I64, offset)), p)
        b.store(st, self.status)
        b.branch(self.fail)
        b.position_at_end(ok)

    def arena_of(self, fn):
        """The {ptr, capacity} pair holding a block's arena between its calls, freed at the end."""
        if fn.name not in self.arenas:
            slot = self._entry_alloca(I64, 2)
            self.pre.store(ZERO, self.pre.gep(slot, [ZERO], source_etype=I64))
            self.pre.store(ZERO, self.pre.gep(slot, [ONE], source_etype=I64))
            self.arenas[fn.name] = slot
        return self.arenas[fn.name]

    def value(self, v):
        if v in self.env:
            return self.env[v]
        raise KeyError(f"internal: no buffer for %{v.id}")

    # -- steps

    def block(self, step: Block):
        g = step.graph
        callee = _block(self.module, g, self.fast_math)
        outs = [self.malloc(self.nbytes(o.shape, o.dtype)) for o in g.outputs]
        self.call(callee, [self.value(p) for p in g.params], outs)
        for o, p in zip(g.outputs, outs):
            self.env[o] = p

    def control(self, step: Control):
        n = step.node
        getattr(self, "c_" + n.op)(step, n)

    def _bind_parts(self, step, ptrs):
        for v, p in zip(step.parts, ptrs):
            if v is not None:
                self.env[v] = p

    def c_for(self, step, n):
        b = self.b
        kw = n.kw
        nc = len(n.ins) - 2 - kw["n_caps"]
        lo = b.load(self.value(n.ins[0]), typ=I64)
        hi = b.load(self.value(n.ins[1]), typ=I64)
        trips = b.sub(hi, lo)
        trips = b.select(b.icmp_signed("<", trips, ZERO), ZERO, trips)
        self.dims[kw["trip"]] = trips
        body = step.programs["body"]
        callee = _callee(self.module, body, self.fast_math)
        carry = n.ins[2:2 + nc]
        caps = [self.value(x) for x in n.ins[2 + nc:]]
        cur = [self._entry_alloca(PTR) for _ in carry]
        nxt = [self._entry_alloca(PTR) for _ in carry]
        sizes = [self.nbytes(x.shape, x.dtype) for x in carry]
        for x, c, s, q in zip(carry, cur, sizes, nxt):
            a = self.malloc(s)
            self.memcpy(a, self.value(x), s)
            b.store(a, c)
            b.store(self.malloc(s), q)
        ys = body.graph.outputs[nc:]
        rows = [self.nbytes(y.shape, y.dtype) for y in ys]
        # a trip count whose stack would not fit in memory (row * trips past 2**62) is out of
        # memory, not a wrapped size
        for r in rows:
            limit = b.udiv(ir.Constant(I64, 1 << 62), b.select(b.icmp_signed("<", r, ONE), ONE, r))
            too_big = self.fn.append_basic_block("stack_too_big")
            fits = self.fn.append_basic_block("stack_fits")
            b.cbranch(b.icmp_signed(">", trips, limit), too_big, fits)
            b.position_at_end(too_big)
            b.store(ir.Constant(I32, 1), self.status)
            b.branch(self.fail)
            b.position_at_end(fits)
        stacks = [self.malloc(b.mul(r, trips)) for r in rows]
        tbuf = self._entry_alloca(I64)
        with counted_loop(b, trips, prefix="for") as i:
            t = b.sub(b.sub(hi, ONE), i) if kw["reverse"] else b.add(lo, i)
            b.store(t, tbuf)
            row = b.sub(t, lo)
            outs = [b.load(q, typ=PTR) for q in nxt] + \
                [b.gep(s, [b.mul(row, r)], source_etype=I8) for s, r in zip(stacks, rows)]
            ins = [tbuf] + [b.load(c, typ=PTR) for c in cur] + caps
            self.call(callee, ins, outs)
            for c, q in zip(cur, nxt):
                x, y = b.load(c, typ=PTR), b.load(q, typ=PTR)
                b.store(y, c)
                b.store(x, q)
        self._bind_parts(step, [b.load(c, typ=PTR) for c in cur] + stacks)

    def c_while(self, step, n):
        b = self.b
        kw = n.kw
        nc = len(n.ins) - kw["n_caps"]
        body = _callee(self.module, step.programs["body"], self.fast_math)
        cond = _callee(self.module, step.programs["cond"], self.fast_math)
        carry = n.ins[:nc]
        caps = [self.value(x) for x in n.ins[nc:]]
        cur = [self._entry_alloca(PTR) for _ in carry]
        nxt = [self._entry_alloca(PTR) for _ in carry]
        for x, c, q in zip(carry, cur, nxt):
            s = self.nbytes(x.shape, x.dtype)
            a = self.malloc(s)
            self.memcpy(a, self.value(x), s)
            b.store(a, c)
            b.store(self.malloc(s), q)
        count = self.malloc(ir.Constant(I64, 8))
        b.store(ZERO, count)
        flag = self._entry_alloca(I8)
        head, loop, done = (self.fn.append_basic_block(f"while_{s}") for s in ("head", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        self.call(cond, [b.load(c, typ=PTR) for c in cur] + caps, [flag])
        b.cbranch(b.icmp_unsigned("!=", b.load(flag, typ=I8), ir.Constant(I8, 0)), loop, done)
        b.position_at_end(loop)
        self.call(body, [b.load(c, typ=PTR) for c in cur] + caps, [b.load(q, typ=PTR) for q in nxt])
        for c, q in zip(cur, nxt):
            x, y = b.load(c, typ=PTR), b.load(q, typ=PTR)
            b.store(y, c)
            b.store(x, q)
        b.store(b.add(b.load(count, typ=I64), ONE), count)
        b.branch(head)
        b.position_at_end(done)
        self._bind_parts(step, [b.load(c, typ=PTR) for c in cur] + [count])

    def c_if(self, step, n):
        b = self.b
        caps = [self.value(x) for x in n.ins[1:]]
        outs = [self.malloc(self.nbytes(s, d)) for s, d in result_types(n)]
        then = _callee(self.module, step.programs["then"], self.fast_math)
        orelse = _callee(self.module, step.programs["orelse"], self.fast_math)
        c = b.load(self.value(n.ins[0]), typ=I8)
        with b.if_else(b.icmp_unsigned("!=", c, ir.Constant(I8, 0))) as (yes, no):
            with yes:
                self.call(then, caps, outs)
            with no:
                self.call(orelse, caps, outs)
        self._bind_parts(step, outs)

    # -- the end

    def finish(self):
        b = self.b
        g = self.prog.graph
        for i, o in enumerate(g.outputs):
            dst = self._load(self.outs, i, PTR)
            self.memcpy(dst, self.value(o), self.nbytes(o.shape, o.dtype))
        b.store(ir.Constant(I32, 0), self.status)
        b.branch(self.fail)
        b.position_at_end(self.fail)
        free = _func(self.module, "free", VOID, [PTR])
        for slot in self.allocs:
            b.call(free, [b.load(slot, typ=PTR)])
        for slot in self.arenas.values():
            b.call(free, [b.load(slot, typ=PTR)])
        b.ret(b.load(self.status, typ=I32))
        self.pre.branch(self.start)


def _lower(module, prog, fast_math, exported=False):
    name = symbol(prog.name) if exported else symbol(prog.name) + ".driver"
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR]), name)
    if not exported:
        fn.linkage = "internal"
    d = _Driver(module, prog, fn, fast_math)
    for step in prog.steps:
        if isinstance(step, Block):
            d.block(step)
        else:
            d.control(step)
    d.finish()
    return fn, d.checks


__all__ = ["lower_program_graph", "make_program"]
