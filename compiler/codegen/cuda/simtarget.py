"""The simulator's target hook: each kernel a coroutine over one thread, its barriers suspend points.

The kernel `k` becomes `ptr @k(ptr thread)`, an LLVM switched-resume coroutine: it runs until its
first barrier and returns its handle; the driver resumes it past each barrier. LLVM's CoroSplit
keeps the values that live across a barrier in the coroutine's frame, so barriers may sit in
loops and branches. Indices come from the thread and launch records, math from the C library,
shared memory from the launch's per-block space, and every load or store is checked against
its buffer's size and counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from . import mathlib
from .kernel import ELEMENT, I1, I8, I32, I64, PTR, SIZES, Buf
from .simcontext import DONE, GLOBAL_LOAD, GLOBAL_STORE, LAUNCH, SHARED_LOAD, SHARED_STORE, THREAD

VOID = ir.VoidType()
FAULT = "gradc.sim.fault"


def symbol(kernel: str) -> str:
    """The simulator function of a kernel, named apart from the C library's (a kernel may be `sin`)."""
    return f"gradc.sim.{kernel}"


class TokenType(ir.Type):
    """LLVM's `token` type, which llvmlite.ir lacks; its one constant is `none`."""

    def _to_string(self):
        return "token"

    def format_constant(self, value):
        return "none"

    def __eq__(self, other):
        return isinstance(other, TokenType)

    def __hash__(self):
        return hash(TokenType)


TOKEN = TokenType()
NONE = ir.Constant(TOKEN, None)


class _CoroAttributes(ir.values.FunctionAttributes):
    _known = ir.values.FunctionAttributes._known | {"presplitcoroutine"}


@dataclass
class _State:
    thread: ir.Value
    launch: ir.Value
    sizes: dict                      # parameter number -> its buffer's element count
    cleanup: ir.Block | None = None  # made at the first barrier: a kernel without is no coroutine
    suspend: ir.Block | None = None


def _declare(module, name, ret, args):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name)
    return fn


class SimTarget:
    """Emits kernels as host coroutines for the grid simulator (simdriver.py runs them).

    A kernel without barriers never suspends: it stays a plain function that returns null, and
    costs neither a coroutine frame nor CoroSplit's work.
    """

    name = "cuda-sim"

    def prepare(self, module: ir.Module):
        _define_fault(module)

    def declare(self, kb) -> ir.Function:
        fn = ir.Function(kb.module, ir.FunctionType(PTR, [PTR]), symbol(kb.kernel.name))
        fn.args[0].name = "thread"
        return fn

    def start(self, kb) -> dict:
        b = kb.b
        thread = kb.fn.args[0]
        launch = THREAD.load(b, thread, "launch")
        slots, sizes_at = LAUNCH.load(b, launch, "args"), LAUNCH.load(b, launch, "sizes")
        args, sizes = {}, {}
        for i, p in enumerate(kb.kernel.params):
            slot = b.gep(slots, [ir.Constant(I64, i)], source_etype=I64)
            if p.buffer:
                ptr = b.load(slot, typ=PTR, name=p.name)
                sizes[i] = b.load(b.gep(sizes_at, [ir.Constant(I64, i)], source_etype=I64), typ=I64)
                args[p.name] = Buf(p.name, p.dtype, ptr, "global", i)
            else:
                # the low bytes of the slot: the value as Python packed it, little-endian
                args[p.name] = b.load(slot, typ=ELEMENT[p.dtype], name=p.name)
        kb.state = _State(thread, launch, sizes)
        return args

    def finish(self, kb):
        b, st = kb.b, kb.state
        THREAD.store(b, ir.Constant(I32, DONE), st.thread, "barrier")
        if st.cleanup is None:
            b.ret(ir.Constant(PTR, None))
            return
        m = kb.module
        kb.fn.attributes = _CoroAttributes(["presplitcoroutine"])
        # the coroutine's start, put before everything else now that it is known to be one
        b.position_at_start(kb.entry)
        coro_id = b.call(_declare(m, "llvm.coro.id", TOKEN, [I32, PTR, PTR, PTR]),
                         [ir.Constant(I32, 16)] + [ir.Constant(PTR, None)] * 3)
        size = b.call(_declare(m, "llvm.coro.size.i64", I64, []), [])
        mem = b.call(_declare(m, "malloc", PTR, [I64]), [size])
        handle = b.call(_declare(m, "llvm.coro.begin", PTR, [TOKEN, PTR]), [coro_id, mem])
        b.position_at_end(kb.exit)
        final = self._suspend(kb, final=True)
        trap = kb.fn.append_basic_block("coro.resumed.after.end")
        final.add_case(ir.Constant(I8, 0), trap)
        b.position_at_end(trap)
        b.unreachable()
        b.position_at_end(st.cleanup)
        mem = b.call(_declare(m, "llvm.coro.free", PTR, [TOKEN, PTR]), [coro_id, handle])
        b.call(_declare(m, "free", VOID, [PTR]), [mem])
        b.branch(st.suspend)
        b.position_at_end(st.suspend)
        b.call(_declare(m, "llvm.coro.end", VOID, [PTR, I1, TOKEN]), [handle, ir.Constant(I1, 0), NONE])
        b.ret(handle)

    def _suspend(self, kb, final: bool):
        """coro.suspend and its switch (destroy: cleanup; suspended: return); case 0 is the caller's."""
        b, m, st = kb.b, kb.module, kb.state
        if st.cleanup is None:
            st.cleanup = kb.fn.append_basic_block("coro.cleanup")
            st.suspend = kb.fn.append_basic_block("coro.suspend")
        s = b.call(_declare(m, "llvm.coro.suspend", I8, [TOKEN, I1]), [NONE, ir.Constant(I1, int(final))])
        sw = b.switch(s, st.suspend)
        sw.add_case(ir.Constant(I8, 1), st.cleanup)
        return sw

    def index(self, kb, register: str, axis: int) -> ir.Value:
        if register == "tid":
            return THREAD.load(kb.b, kb.state.thread, "tid", axis)
        return LAUNCH.load(kb.b, kb.state.launch, register, axis)

    def barrier(self, kb, ident: int):
        THREAD.store(kb.b, ir.Constant(I32, ident), kb.state.thread, "barrier")
        sw = self._suspend(kb, final=False)
        resumed = kb.fn.append_basic_block(f"barrier{ident}.resumed")
        sw.add_case(ir.Constant(I8, 0), resumed)
        kb.b.position_at_end(resumed)

    def shared(self, kb, s) -> ir.Value:
        b = kb.b
        with b.goto_block(kb.entry):
            base = LAUNCH.load(b, kb.state.launch, "shared")
            return b.gep(base, [ir.Constant(I64, s.offset)], source_etype=I8, name=s.name)

    def math(self, kb, name: str, args: list) -> ir.Value:
        t = args[0].type
        return kb.b.call(mathlib.declare(kb.module, mathlib.host_name(name, t), t, len(args)), args)

    def load(self, kb, buf: Buf, index: ir.Value) -> ir.Value:
        p = self._address(kb, buf, index, GLOBAL_LOAD if buf.space == "global" else SHARED_LOAD)
        if buf.space == "global":
            LAUNCH.add(kb.b, ir.Constant(I64, SIZES[buf.dtype]), kb.state.launch, "bytes_loaded")
        return kb.b.load(p, typ=buf.type, align=SIZES[buf.dtype])

    def store(self, kb, buf: Buf, index: ir.Value, value: ir.Value):
        p = self._address(kb, buf, index, GLOBAL_STORE if buf.space == "global" else SHARED_STORE)
        if buf.space == "global":
            LAUNCH.add(kb.b, ir.Constant(I64, SIZES[buf.dtype]), kb.state.launch, "bytes_stored")
        kb.b.store(value, p, align=SIZES[buf.dtype])

    def atomic_add(self, kb, buf: Buf, index: ir.Value, value: ir.Value):
        # blocks run one after another and a thread runs on until a barrier: a plain
        # read-modify-write is atomic here; counted as the load and the store it is
        p = self._address(kb, buf, index, GLOBAL_STORE)
        for field in ("bytes_loaded", "bytes_stored"):
            LAUNCH.add(kb.b, ir.Constant(I64, SIZES[buf.dtype]), kb.state.launch, field)
        old = kb.b.load(p, typ=buf.type, align=SIZES[buf.dtype])
        new = kb.b.fadd(old, value) if buf.dtype in ("f32", "f64") else kb.b.add(old, value)
        kb.b.store(new, p, align=SIZES[buf.dtype])

    def _address(self, kb, buf: Buf, index: ir.Value, kind: int) -> ir.Value:
        """&buf[index], after a check that records the first fault of the launch and ends the thread."""
        b, st = kb.b, kb.state
        size = st.sizes[buf.number] if buf.space == "global" else ir.Constant(I64, buf.count)
        # unsigned: a negative index is out of bounds too
        with b.if_then(b.icmp_unsigned(">=", index, size), likely=False):
            b.call(kb.module.globals[FAULT], [st.thread, ir.Constant(I32, kind),
                                               ir.Constant(I32, buf.number), index])
            b.branch(kb.exit)
        return b.gep(buf.ptr, [index], source_etype=buf.type)


def _define_fault(module: ir.Module):
    """void fault(thread, kind, what, index): the first fault of a launch, with where it happened."""
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, I32, I32, I64]), FAULT)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    fn.attributes.add("cold")
    thread, kind, what, index = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    launch = THREAD.load(b, thread, "launch")
    first = b.icmp_signed("==", LAUNCH.load(b, launch, "err_kind"), ir.Constant(I32, 0))
    with b.if_then(first):
        LAUNCH.store(b, kind, launch, "err_kind")
        LAUNCH.store(b, what, launch, "err_what")
        LAUNCH.store(b, index, launch, "err_index")
        for axis in range(3):
            LAUNCH.store(b, THREAD.load(b, thread, "tid", axis), launch, "err_tid", axis)
            LAUNCH.store(b, LAUNCH.load(b, launch, "ctaid", axis), launch, "err_ctaid", axis)
    b.ret_void()
