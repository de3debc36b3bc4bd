"""Lower one graph: a function per phase, run by one thread or by a libgomp team, and the entry."""
from __future__ import annotations

from llvmlite import ir

from ...ir import Graph
from ...ops import OPS
from ..element import acc_dtype, counted_loop
from .blas import BLAS_THREAD_GLOBALS, _Callee
from .conv import per_thread
from .direct import add_direct_entries
from .function import ONE, PARALLEL_MIN, PTR, FunctionLowering, tile_bytes
from ..plan import make_plan
from ..scalar import I64, LLTYPES, SIZES
from .schedule import make_schedule
from ..products import product

I32 = ir.IntType(32)
BIT = ir.IntType(1)
VOID = ir.VoidType()
# Globals the loader fills in (runtime/cpu.py): libgomp's entry points, null without it, and
# the address of the process-wide thread count that set_num_threads changes between calls
OMP_GLOBALS = ("gradc_gomp_parallel", "gradc_gomp_barrier", "gradc_omp_thread_num", "gradc_omp_num_threads")
THREADS_GLOBAL = "gradc_num_threads"
BLOCK = 64                    # arena blocks start on cache lines: threads never share one


def symbol(name: str) -> str:
    """The exported symbol of a graph; prefixed so a function named `sin` cannot shadow libm."""
    return f"gradc_fn_{name}"


def _globals(module):
    gvs = {}
    for name in OMP_GLOBALS + BLAS_THREAD_GLOBALS:
        gv = module.globals.get(name)
        if gv is None:
            gv = ir.GlobalVariable(module, PTR, name)
            gv.initializer = ir.Constant(PTR, None)
        gvs[name] = gv
    gv = module.globals.get(THREADS_GLOBAL)
    if gv is None:
        # points at a constant 1 until the loader points it at the runtime's setting
        one = ir.GlobalVariable(module, I32, "gradc.one_thread")
        one.initializer, one.global_constant, one.linkage = ir.Constant(I32, 1), True, "internal"
        gv = ir.GlobalVariable(module, PTR, THREADS_GLOBAL)
        gv.initializer = one
    gvs[THREADS_GLOBAL] = gv
    return gvs


def _call_ptr(b, gv, ret, args, values):
    return b.call(_Callee(b.load(gv, typ=PTR), ir.FunctionType(ret, args)), values)


def lower_graph(module: ir.Module, g: Graph, fast_math: bool = False, cached_arena: bool = False) -> tuple:
    """Add `i32 gradc_fn_NAME(ptr inputs, ptr dims, ptr outputs, ptr err)`; returns (symbol, dim
    names, run-time checks). The status: OK, NO_MEMORY, or CHECK_FAILED with err[0] the index of
    the failed check in the checks ([{"error", "message"}]) and err[1] the offending value.

    cached_arena: the entry takes a fifth argument, a {ptr, i64 capacity} pair its caller owns:
    the arena is taken from there, grown when too small, and left for the next call (a loop's
    driver calls its body once per iteration; the caller frees it). No direct entries then."""
    plan = make_plan(g, chunk=True, nests=True)
    sched = make_schedule(g, plan)
    gvs = _globals(module)
    n_in, n_out = len(g.params), len(g.outputs)
    n_ptr = n_in + n_out + len(sched.slots)
    n_words = n_ptr + len(plan.syms)
    name = symbol(g.name)

    def lowering(fn, args, tid=None, nth=None):
        ptrs = args[:n_ptr]
        bufs = dict(zip(g.params, ptrs[:n_in]))
        outs = ptrs[n_in:n_in + n_out]
        for v, i in sched.storage.items():
            bufs[v] = outs[i]
        extra = {}
        for key, s in sched.slot_of.items():
            (extra if isinstance(key, tuple) else bufs)[key] = ptrs[n_in + n_out + s]
        return FunctionLowering(module, g, plan, fn, bufs, dict(zip(plan.syms, args[n_ptr:n_words])), outs,
                                tid, nth, extra, fast_math)

    # a phase takes the buffers its steps read and write (as words of the context), all dims,
    # then (thread id, thread count): a phase with every buffer of a long program as an
    # argument made LLVM's interprocedural passes quadratic in the program's length
    absent = _absent(module)
    phase_words, phase_fns = [], []
    for k, phase in enumerate(sched.phases):
        used = _phase_words(plan, sched, phase, g, n_in, n_out)
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * len(used) + [I64] * (len(plan.syms) + 2)),
                         f"{name}.phase{k}")
        fn.linkage = "internal"
        # called from a parallel region and from the one-thread path: inlined, each phase's
        # loops would be vectorized twice, doubling compile time for nothing
        fn.attributes.add("noinline")
        for a in fn.args[:len(used)]:
            # the runtime never passes overlapping buffers; blocks sharing a slot live in
            # different phases, and threads write disjoint parts within one phase
            a.add_attribute("noalias")
        # a word the phase does not take stands for a symbol no object defines: a use of it
        # (a buffer the phase was thought not to need) fails when the module loads
        args = [absent] * n_ptr
        for j, w in enumerate(used):
            args[w] = fn.args[j]
        L = lowering(fn, args + list(fn.args[len(used):]), fn.args[-2], fn.args[-1])
        L.segments(phase)
        for steps, part in phase:
            L.step(steps, part)
        L.finish()
        phase_fns.append(fn)
        phase_words.append(used)

    # a region's body as libgomp runs it on each thread: unpack the context, phases, barriers
    regions = {}
    for r, (par, idxs) in enumerate(sched.segments):
        if not par:
            continue
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR]), f"{name}.region{r}")
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        ctx = fn.args[0]
        words = [b.load(b.gep(ctx, [ir.Constant(I64, i)], source_etype=PTR), typ=PTR) for i in range(n_words)]
        words[n_ptr:] = [b.ptrtoint(w, I64) for w in words[n_ptr:]]
        tid = b.sext(_call_ptr(b, gvs["gradc_omp_thread_num"], I32, [], []), I64)
        nth = b.sext(_call_ptr(b, gvs["gradc_omp_num_threads"], I32, [], []), I64)
        for j, i in enumerate(idxs):
            if j:
                _call_ptr(b, gvs["gradc_gomp_barrier"], VOID, [], [])
            b.call(phase_fns[i], [words[w] for w in phase_words[i]] + words[n_ptr:] + [tid, nth])
        b.ret_void()
        regions[r] = fn

    entry = ir.Function(module, ir.FunctionType(I32, [PTR] * (5 if cached_arena else 4)), name)
    checks = [n for n in g.nodes if OPS[n.op].kind == "check"]
    _emit_entry(entry, lowering, sched, plan, gvs, list(zip(phase_fns, phase_words)), regions, n_in, n_out, n_ptr,
                n_words, checks)
    if not cached_arena:
        add_direct_entries(module, g, entry, plan.syms)
    return name, plan.syms, [{"error": n.attr("error"), "message": n.attr("message")} for n in checks]


def _absent(module):
    gv = module.globals.get("gradc.absent")
    if gv is None:
        gv = ir.GlobalVariable(module, I64, "gradc.absent")
    return gv


def _phase_words(plan, sched, phase, g, n_in, n_out) -> list:
    """The context words (buffers: inputs, outputs, arena slots) a phase's steps read or write."""
    params = {v: i for i, v in enumerate(g.params)}
    words = set()

    def add(v):
        if v in params:
            words.add(params[v])
        elif v in sched.storage:
            words.add(n_in + sched.storage[v])
        elif v in sched.slot_of:
            words.add(n_in + n_out + sched.slot_of[v])
    for steps, _ in phase:
        for s in steps:
            if s.node is None:
                words.add(n_in + s.out)
            else:
                add(s.value)
                for kind in ("partial", "acc", "chunk"):
                    add((kind, s.node))
                key = plan.keys.get(s.value)
                if key is not None:
                    add(("tile", key[:3]))
            for r in (plan.reads[s.value] if s.node is not None else
                      ({s.value} if s.value in plan.buffers else plan.reads.get(("out", s.value), set()))):
                add(r)
    return sorted(words)


# the entry's status (runtime/cpu.py reads it)
OK, NO_MEMORY, CHECK_FAILED = 0, 1, 2


def _emit_check(L, b, entry, n, index, ptr, err, free):
    """If an element of n's input (at ptr) is outside [lo, hi): store (index, the first such
    value) in err, free the arena and return CHECK_FAILED. The scan is one vectorizable
    or-reduction; the second loop that finds the value runs only on failure."""
    x = n.ins[0]
    t = LLTYPES[x.dtype]
    lo, hi = n.attr("lo"), n.attr("hi")
    # compare in the values' own width where the bounds fit it: twice the lanes for i32
    ct = t if isinstance(hi, int) and -2 ** (t.width - 1) <= lo <= hi < 2 ** (t.width - 1) else I64
    lo_v = ir.Constant(ct, lo)
    hi_v = ir.Constant(ct, hi) if isinstance(hi, int) else L.dim(hi)
    count = L.size(x.shape)
    e = L.entry
    anyv, found, value = e.alloca(BIT), e.alloca(BIT), e.alloca(I64)

    def bad_at(i):
        v = b.load(b.gep(ptr, [i], source_etype=t), typ=t)
        w = v if ct is t else b.sext(v, I64)
        if lo == 0:               # one unsigned comparison: a negative value is a huge one
            bad = b.icmp_unsigned(">=", w, hi_v)
        else:
            bad = b.or_(b.icmp_signed("<", w, lo_v), b.icmp_signed(">=", w, hi_v))
        return (v if t == I64 else b.sext(v, I64)), bad

    b.store(ir.Constant(BIT, 0), anyv)
    with counted_loop(b, count, prefix="check") as i:
        b.store(b.or_(b.load(anyv, typ=BIT), bad_at(i)[1]), anyv)
    fail, ok = entry.append_basic_block("check_failed"), entry.append_basic_block("check_ok")
    b.cbranch(b.load(anyv, typ=BIT), fail, ok)
    b.position_at_end(fail)
    b.store(ir.Constant(BIT, 0), found)
    b.store(ir.Constant(I64, 0), value)
    with counted_loop(b, count, prefix="find") as i:
        v, bad = bad_at(i)
        first = b.and_(bad, b.not_(b.load(found, typ=BIT)))
        b.store(b.select(first, v, b.load(value, typ=I64)), value)
        b.store(b.or_(b.load(found, typ=BIT), bad), found)
    b.store(ir.Constant(I64, index), b.gep(err, [ir.Constant(I64, 0)], source_etype=I64))
    b.store(b.load(value, typ=I64), b.gep(err, [ir.Constant(I64, 1)], source_etype=I64))
    free()
    b.ret(ir.Constant(I32, CHECK_FAILED))
    b.position_at_end(ok)


def _emit_entry(entry, lowering, sched, plan, gvs, phase_fns, regions, n_in, n_out, n_ptr, n_words, checks):
    ins, dims, outs, err = entry.args[:4]
    cache = entry.args[4] if len(entry.args) > 4 else None
    pre = ir.IRBuilder(entry.append_basic_block("args"))
    at = lambda p, i, t: pre.load(pre.gep(p, [ir.Constant(I64, i)], source_etype=t), typ=t)
    args = [at(ins, i, PTR) for i in range(n_in)] + [at(outs, i, PTR) for i in range(n_out)]
    args += [ir.Constant(PTR, None)] * len(sched.slots)       # set below, once the arena exists
    args += [at(dims, i, I64) for i in range(len(plan.syms))]
    L = lowering(entry, args)
    pre.branch(L.entry_block)
    b, e = L.b, L.entry

    # the thread count: the runtime's setting where libgomp was found, else 1
    req = e.sext(e.load(e.load(gvs[THREADS_GLOBAL], typ=PTR), typ=I32), I64)
    req = e.select(e.icmp_signed("<", req, ONE), ONE, req)
    have = e.icmp_unsigned("!=", e.load(gvs["gradc_gomp_parallel"], typ=PTR), ir.Constant(PTR, None))
    nth = e.select(have, req, ONE)

    # one allocation holds every intermediate, per-thread partial and scratch
    if sched.slots:
        sizes = []
        for keys in sched.slots:
            size = ir.Constant(I64, 0)
            for key in keys:
                if isinstance(key, tuple) and key[0] == "chunk":
                    c = plan.chunked[key[1]]
                    s = e.mul(e.mul(per_thread(L, c), ir.Constant(I64, SIZES[c.mm.out.dtype])), nth)
                elif isinstance(key, tuple) and key[0] == "tile":
                    s = e.mul(ir.Constant(I64, tile_bytes(plan.tiles[key[1]])), nth)
                elif isinstance(key, tuple):
                    n = key[1]
                    s = e.mul(L.size(n.out.shape), ir.Constant(I64, SIZES[acc_dtype(n)]))
                    s = e.mul(s, nth) if key[0] == "partial" else s
                else:
                    s = e.mul(L.size(key.shape), ir.Constant(I64, SIZES[key.dtype]))
                size = e.select(e.icmp_unsigned(">", s, size), s, size)
            sizes.append(e.and_(e.add(size, ir.Constant(I64, BLOCK - 1)), ir.Constant(I64, -BLOCK)))
        total = ir.Constant(I64, BLOCK)
        for s in sizes:
            total = b.add(total, s)
        if cache is None:
            raw = b.call(L.cg.func("malloc", PTR, [I64]), [total])
        else:
            # the caller's block, grown to fit: a loop's body allocates once, not per iteration
            bufp = b.gep(cache, [ir.Constant(I64, 0)], source_etype=PTR)
            capp = b.gep(cache, [ir.Constant(I64, 1)], source_etype=I64)
            with b.if_then(b.icmp_unsigned("<", b.load(capp, typ=I64), total)):
                b.call(L.cg.func("free", VOID, [PTR]), [b.load(bufp, typ=PTR)])
                fresh_block = b.call(L.cg.func("malloc", PTR, [I64]), [total])
                b.store(fresh_block, bufp)
                got = b.icmp_unsigned("!=", fresh_block, ir.Constant(PTR, None))
                b.store(b.select(got, total, ir.Constant(I64, 0)), capp)
            raw = b.load(bufp, typ=PTR)
        fail, ok = entry.append_basic_block("fail"), entry.append_basic_block("ok")
        b.cbranch(b.icmp_unsigned("==", raw, ir.Constant(PTR, None)), fail, ok)
        ir.IRBuilder(fail).ret(ir.Constant(I32, NO_MEMORY))
        b.position_at_end(ok)
        skew = b.and_(b.sub(ir.Constant(I64, 0), b.ptrtoint(raw, I64)), ir.Constant(I64, BLOCK - 1))
        off = skew
        for k, s in enumerate(sizes):
            args[n_in + n_out + k] = b.gep(raw, [off], source_etype=ir.IntType(8))
            off = b.add(off, s)

    ctx = e.alloca(PTR, size=max(n_words, 1))       # the buffers, then the dims as pointer-sized words
    if regions:
        for i, v in enumerate(args):
            b.store(v if v.type == PTR else b.inttoptr(v, PTR), b.gep(ctx, [ir.Constant(I64, i)], source_etype=PTR))
    serial = lambda idxs: [b.call(phase_fns[i][0], [args[w] for w in phase_fns[i][1]] + args[n_ptr:] +
                                  [ir.Constant(I64, 0), ONE]) for i in idxs]

    def free():
        if sched.slots and cache is None:
            b.call(L.cg.func("free", VOID, [PTR]), [raw])

    def test(r):
        for n in sched.checks.get(r, ()):
            x = n.ins[0]
            if x in L.g.params:
                ptr = args[L.g.params.index(x)]
            elif x in sched.storage:
                ptr = args[n_in + sched.storage[x]]
            else:
                ptr = args[n_in + n_out + sched.slot_of[x]]
            _emit_check(L, b, entry, n, checks.index(n), ptr, err, free)

    test(-1)
    for r, (par, idxs) in enumerate(sched.segments):
        if not par:
            serial(idxs)
            test(r)
            continue
        work = ir.Constant(I64, 0)
        products = False
        for i in idxs:
            for steps, part in sched.phases[i]:
                if part == 0:
                    w = L.size(steps[0].space)
                    if steps[0].matmul:
                        products = True
                        w = b.mul(w, L.size(product(plan, steps[0].product_node).k))
                    work = b.add(work, w)
        go = b.and_(b.icmp_signed(">", nth, ONE), b.icmp_signed(">=", work, ir.Constant(I64, PARALLEL_MIN)))
        with b.if_else(go) as (par_blk, ser_blk):
            with par_blk:
                if products:
                    blas_single(b, gvs, True)
                _call_ptr(b, gvs["gradc_gomp_parallel"], VOID, [PTR, PTR, I32, I32],
                          [regions[r], ctx, b.trunc(nth, I32), ir.Constant(I32, 0)])
                if products:
                    blas_single(b, gvs, False)
            with ser_blk:
                serial(idxs)
        test(r)
    free()
    L.finish(ir.Constant(I32, OK))


def blas_single(b, gvs, enter: bool):
    """Around a parallel region that multiplies matrices: BLAS's own threads off while it runs.

    Each of gradc's threads calls BLAS for its share of a product; BLAS's threads, busy-waiting
    between products, would take the cores from them (on 2 cores a team of each made a CNN step
    slower than one thread). The process-wide record {lock, calls inside, saved count} counts
    the calls inside such regions, from every module and thread: the first in saves BLAS's
    thread count and sets it to 1, the last out puts it back. A spin lock (a few instructions
    are held under it) keeps the count and the setting in step. Nothing happens where the
    loader found no OpenBLAS thread control."""
    state = b.load(gvs["gradc_blas_state"], typ=PTR)
    get = b.load(gvs["gradc_blas_get_threads"], typ=PTR)
    put = b.load(gvs["gradc_blas_set_threads"], typ=PTR)
    have = b.and_(b.icmp_unsigned("!=", state, ir.Constant(PTR, None)),
                  b.and_(b.icmp_unsigned("!=", get, ir.Constant(PTR, None)),
                         b.icmp_unsigned("!=", put, ir.Constant(PTR, None))))
    fn = b.function
    with b.if_then(have):
        spin = fn.append_basic_block("blas.lock")
        held = fn.append_basic_block("blas.held")
        b.branch(spin)
        b.position_at_end(spin)
        got = b.cmpxchg(state, ir.Constant(I64, 0), ir.Constant(I64, 1), "acquire", "monotonic")
        b.cbranch(b.extract_value(got, 1), held, spin)
        b.position_at_end(held)
        count = b.gep(state, [ir.Constant(I64, 1)], source_etype=I64)
        saved = b.gep(state, [ir.Constant(I64, 2)], source_etype=I64)
        c = b.load(count, typ=I64)
        if enter:
            b.store(b.add(c, ONE), count)
            with b.if_then(b.icmp_signed("==", c, ir.Constant(I64, 0))):
                n = b.sext(b.call(_Callee(get, ir.FunctionType(I32, [])), []), I64)
                b.store(n, saved)
                with b.if_then(b.icmp_signed(">", n, ONE)):
                    b.call(_Callee(put, ir.FunctionType(VOID, [I32])), [ir.Constant(I32, 1)])
        else:
            c = b.sub(c, ONE)
            b.store(c, count)
            n = b.load(saved, typ=I64)
            with b.if_then(b.and_(b.icmp_signed("==", c, ir.Constant(I64, 0)), b.icmp_signed(">", n, ONE))):
                b.call(_Callee(put, ir.FunctionType(VOID, [I32])), [b.trunc(n, I32)])
        b.atomic_rmw("xchg", state, ir.Constant(I64, 0), "release")
