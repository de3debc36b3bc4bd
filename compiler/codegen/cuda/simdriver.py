"""The grid driver of the simulator, in LLVM IR: every block's threads started, resumed past each barrier together."""
from __future__ import annotations

from llvmlite import ir

from .kernel import I1, I8, I32, I64, PTR, loop
from .simcontext import DIVERGED, DONE, LAUNCH, THREAD

VOID = ir.VoidType()
DESTROY = "gradc.sim.destroy"
DRIVER = "gradc_sim_grid"
OK, FAULTED, DIVERGENT = 0, 1, 2       # what the driver returns


def _fn(module, name, ret, args):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name)
    return fn


def _c(v, t=I64):
    return ir.Constant(t, v)


def _product(b, launch, field):
    x, y, z = (b.zext(LAUNCH.load(b, launch, field, i), I64) for i in range(3))
    return b.mul(b.mul(x, y), z)


def _split(b, flat, launch, field):
    """flat index -> (x, y, z) within LAUNCH.field's extents, x fastest, as CUDA numbers threads."""
    nx, ny = (b.zext(LAUNCH.load(b, launch, field, i), I64) for i in range(2))
    rest = b.udiv(flat, nx)
    return [b.trunc(v, I32) for v in (b.urem(flat, nx), b.urem(rest, ny), b.udiv(rest, ny))]


def _thread(b, threads, t):
    return b.gep(threads, [t], source_etype=THREAD.type)


class _Callee:
    """A function pointer that llvmlite's call() accepts: it wants a function type to call through."""

    def __init__(self, value, ftype):
        self.value, self.function_type = value, ftype
        self.type = PTR

    def get_reference(self):
        return self.value.get_reference()


def _define_destroy(module):
    """void destroy(threads, n): every coroutine of a block freed, wherever it stopped (null: none)."""
    fn = module.globals.get(DESTROY)
    if fn is not None:
        return fn
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, I64]), DESTROY)
    fn.linkage = "internal"
    threads, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    coro_destroy = _fn(module, "llvm.coro.destroy", VOID, [PTR])
    with loop(b, _c(0), n, _c(1)) as t:
        handle = THREAD.load(b, _thread(b, threads, t), "handle")
        with b.if_then(b.icmp_unsigned("!=", handle, ir.Constant(PTR, None))):
            b.call(coro_destroy, [handle])
    b.ret_void()
    return fn


def add_driver(module: ir.Module) -> ir.Function:
    """`i32 gradc_sim_grid(ptr kernel, ptr launch, ptr threads)`: run a kernel over the launch's grid.

    kernel is a simulator kernel, `ptr (ptr thread)`: a coroutine's ramp, which returns its
    handle, or a kernel without barriers, which returns null. One driver serves every kernel,
    since resuming and destroying a coroutine goes through its frame, whoever compiled it.
    threads holds one Thread record per thread of a block. Blocks run one after another, so
    the launch's one shared space serves each in turn; it is filled with 0xff bytes (NaN for
    floats) before each block, so a read of shared memory nothing wrote shows up. Returns OK,
    FAULTED (a thread's load or store was out of bounds: the launch says where) or DIVERGENT
    (a thread returned or waited elsewhere while another waited at a barrier).
    """
    destroy = _define_destroy(module)
    resume = _fn(module, "llvm.coro.resume", VOID, [PTR])
    memset = _fn(module, "llvm.memset.p0.i64", VOID, [PTR, I8, I64, I1])
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR]), DRIVER)
    ramp, launch, threads = fn.args
    ramp.name, launch.name, threads.name = "kernel", "launch", "threads"
    ramp_type = ir.FunctionType(PTR, [PTR])
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    done_at, odd_at, count_at = (b.alloca(I64) for _ in range(3))
    nt, nb = _product(b, launch, "ntid"), _product(b, launch, "nctaid")
    fail = fn.append_basic_block("fail")
    with loop(b, _c(0), nb, _c(1)) as blk:
        for axis, v in enumerate(_split(b, blk, launch, "nctaid")):
            LAUNCH.store(b, v, launch, "ctaid", axis)
        b.call(memset, [LAUNCH.load(b, launch, "shared"), _c(0xff, I8),
                        LAUNCH.load(b, launch, "shared_bytes"), _c(0, I1)])
        with loop(b, _c(0), nt, _c(1)) as t:
            th = _thread(b, threads, t)
            for axis, v in enumerate(_split(b, t, launch, "ntid")):
                THREAD.store(b, v, th, "tid", axis)
            THREAD.store(b, launch, th, "launch")
            THREAD.store(b, _c(0, I32), th, "barrier")
            # the coroutine runs to its first barrier or its end
            THREAD.store(b, b.call(_Callee(ramp, ramp_type), [th]), th, "handle")
        LAUNCH.add(b, nt, launch, "threads_run")
        rounds = fn.append_basic_block("round")
        next_block = fn.append_basic_block("block.done")
        b.branch(rounds)
        b.position_at_end(rounds)
        faulted = b.icmp_signed("!=", LAUNCH.load(b, launch, "err_kind"), _c(0, I32))
        with b.if_then(faulted, likely=False):
            b.call(destroy, [threads, nt])
            b.ret(_c(FAULTED, I32))
        # where is every thread: all at one barrier, all returned, or diverged
        first = THREAD.load(b, threads, "barrier")
        for slot, init in ((done_at, 0), (odd_at, -1), (count_at, 0)):
            b.store(_c(init), slot)
        with loop(b, _c(0), nt, _c(1)) as t:
            bar = THREAD.load(b, _thread(b, threads, t), "barrier")
            is_done = b.zext(b.icmp_signed("==", bar, _c(DONE, I32)), I64)
            b.store(b.add(b.load(done_at, typ=I64), is_done), done_at)
            same = b.icmp_signed("==", bar, first)
            b.store(b.add(b.load(count_at, typ=I64), b.zext(same, I64)), count_at)
            first_odd = b.and_(b.not_(same), b.icmp_signed("<", b.load(odd_at, typ=I64), _c(0)))
            b.store(b.select(first_odd, t, b.load(odd_at, typ=I64)), odd_at)
        all_done = b.icmp_signed("==", b.load(done_at, typ=I64), nt)
        resume_all = fn.append_basic_block("resume")
        check = fn.append_basic_block("check")
        b.cbranch(all_done, next_block, check)
        b.position_at_end(check)
        odd = b.load(odd_at, typ=I64)
        b.cbranch(b.icmp_signed(">=", odd, _c(0)), fail, resume_all)
        b.position_at_end(resume_all)
        with loop(b, _c(0), nt, _c(1)) as t:
            b.call(resume, [THREAD.load(b, _thread(b, threads, t), "handle")])
        b.branch(rounds)
        b.position_at_end(next_block)
        b.call(destroy, [threads, nt])
    b.ret(_c(OK, I32))

    # a divergence: record thread 0's barrier, the first thread elsewhere, and how many wait with thread 0
    b.position_at_end(fail)
    odd = b.load(odd_at, typ=I64)
    th = _thread(b, threads, odd)
    LAUNCH.store(b, _c(DIVERGED, I32), launch, "err_kind")
    LAUNCH.store(b, THREAD.load(b, threads, "barrier"), launch, "err_barrier")
    LAUNCH.store(b, THREAD.load(b, th, "barrier"), launch, "err_other")
    LAUNCH.store(b, b.trunc(b.load(count_at, typ=I64), I32), launch, "err_count")
    for axis in range(3):
        LAUNCH.store(b, THREAD.load(b, th, "tid", axis), launch, "err_tid", axis)
        LAUNCH.store(b, LAUNCH.load(b, launch, "ctaid", axis), launch, "err_ctaid", axis)
    b.call(destroy, [threads, nt])
    b.ret(_c(DIVERGENT, I32))
    return fn
