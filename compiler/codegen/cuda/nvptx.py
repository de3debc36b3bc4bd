"""The GPU target hook: kernel primitives as NVVM intrinsics, shared memory and libdevice calls."""
from __future__ import annotations

from llvmlite import ir

from . import mathlib
from .kernel import ELEMENT, I32, PTR, SIZES, Buf

TRIPLE = "nvptx64-nvidia-cuda"
VOID = ir.VoidType()
SHARED = 3                            # NVPTX's address space of shared memory


class CudaTarget:
    """Emits kernels for NVPTX: `define ptx_kernel void @k(...)`, which PTX makes an `.entry`."""

    name = "cuda"

    def __init__(self, ftz: bool = False):
        self.ftz = ftz

    def prepare(self, module: ir.Module):
        module.triple = TRIPLE
        # read by NVVMReflect, which answers libdevice's questions: flush denormals to zero
        # (its .ftz variants) or not, and an IEEE sqrtf (sqrt.rn, nvcc's default) rather than
        # sqrt.approx. LLVM 22 ignores the second flag; ptx.py sets its option as well
        for name, value in (("nvvm-reflect-ftz", self.ftz), ("nvvm-reflect-prec-sqrt", True)):
            flag = module.add_metadata([ir.Constant(I32, 4), name, ir.Constant(I32, int(value))])
            module.add_named_metadata("llvm.module.flags", flag)

    def declare(self, kb) -> ir.Function:
        types = [PTR if p.buffer else ELEMENT[p.dtype] for p in kb.kernel.params]
        fn = ir.Function(kb.module, ir.FunctionType(VOID, types), kb.kernel.name)
        fn.calling_convention = "ptx_kernel"
        return fn

    def start(self, kb) -> dict:
        args = {}
        for i, (p, a) in enumerate(zip(kb.kernel.params, kb.fn.args)):
            a.name = p.name
            args[p.name] = Buf(p.name, p.dtype, a, "global", i) if p.buffer else a
        return args

    def finish(self, kb):
        kb.b.ret_void()

    def index(self, kb, register: str, axis: int) -> ir.Value:
        name = f"llvm.nvvm.read.ptx.sreg.{register}.{'xyz'[axis]}"
        return kb.b.call(_declare(kb.module, name, I32, []), [])

    def barrier(self, kb, ident: int):
        # what __syncthreads() is; llvm.nvvm.barrier0 is upgraded to it
        fn = _declare(kb.module, "llvm.nvvm.barrier.cta.sync.aligned.all", VOID, [I32])
        kb.b.call(fn, [ir.Constant(I32, 0)])

    def shared(self, kb, s) -> ir.Value:
        gv = ir.GlobalVariable(kb.module, ir.ArrayType(ELEMENT[s.dtype], s.count),
                               f"{kb.kernel.name}.{s.name}", addrspace=SHARED)
        gv.linkage, gv.align = "internal", 16
        gv.initializer = ir.Constant(gv.value_type, ir.Undefined)
        zero = ir.Constant(I32, 0)
        return gv.gep([zero, zero])           # the first element's address, as loads and stores index it

    def math(self, kb, name: str, args: list) -> ir.Value:
        t = args[0].type
        fn = mathlib.declare(kb.module, mathlib.libdevice_name(name, t), t, len(args))
        return kb.b.call(fn, args)

    def load(self, kb, buf: Buf, index: ir.Value) -> ir.Value:
        p = kb.b.gep(buf.ptr, [index], source_etype=buf.type)
        return kb.b.load(p, typ=buf.type, align=SIZES[buf.dtype])

    def store(self, kb, buf: Buf, index: ir.Value, value: ir.Value):
        p = kb.b.gep(buf.ptr, [index], source_etype=buf.type)
        kb.b.store(value, p, align=SIZES[buf.dtype])

    def atomic_add(self, kb, buf: Buf, index: ir.Value, value: ir.Value):
        p = kb.b.gep(buf.ptr, [index], source_etype=buf.type)
        op = "fadd" if buf.dtype in ("f32", "f64") else "add"
        kb.b.atomic_rmw(op, p, value, "monotonic")


def _declare(module, name, ret, args):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name)
    return fn
