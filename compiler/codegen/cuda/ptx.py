"""PTX from kernels: NVPTX target machine, libdevice linked in, the O3 pipeline, then checks before code generation."""
from __future__ import annotations

import threading

import llvmlite.binding as llvm

from .kernel import build_module
from .nvptx import TRIPLE, CudaTarget
from .toolkit import libdevice_bitcode

ARCHS = ("sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
# The PTX ISA version written into every module. 7.8 (CUDA 11.8) is the first that has sm_90,
# so one version serves every arch here, and any driver from CUDA 11.8 on loads the PTX.
PTX_VERSION = 78
MIN_PTX = {"sm_80": 70, "sm_86": 71, "sm_87": 74, "sm_89": 78, "sm_90": 78}

# The llvm.* intrinsics that NVPTX selects. Any other one (llvm.sin, llvm.exp, llvm.pow...) makes
# instruction selection abort the whole process ("Cannot select: fsin"), so the optimized module
# is refused before code generation instead; math is libdevice's (__nv_sinf, ...), made internal
# and inlined, and whose own intrinsics are NVPTX's (llvm.nvvm.*) or in this set.
SELECTABLE = frozenset((
    "nvvm", "fabs", "sqrt", "fma", "fmuladd", "minnum", "maxnum", "minimum", "maximum", "floor",
    "ceil", "trunc", "rint", "nearbyint", "roundeven", "round", "copysign", "ctpop", "ctlz", "cttz",
    "bswap", "bitreverse", "abs", "smax", "smin", "umax", "umin", "fshl", "fshr", "sadd", "uadd",
    "ssub", "usub", "smul", "umul", "memcpy", "memmove", "memset", "lifetime", "assume", "expect",
    "invariant", "experimental", "dbg"))

_init_lock = threading.Lock()
_initialized = False


class KernelError(ValueError):
    """A kernel module that cannot become PTX; raised instead of letting LLVM abort the process."""


def _init():
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            # libdevice's sqrtf is sqrt.approx unless __CUDA_PREC_SQRT says otherwise, and
            # LLVM 22's NVVMReflect reads that from this option only (it affects nothing else)
            llvm.set_option("", "-nvvm-reflect-add=__CUDA_PREC_SQRT=1")
            _initialized = True


def target_machine(arch: str = "sm_80", ptx_version: int | None = None, opt: int = 3):
    """The NVPTX target machine for arch, with its PTX version set explicitly (+ptxNN)."""
    if arch not in ARCHS:
        raise ValueError(f"GPU architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    version = PTX_VERSION if ptx_version is None else ptx_version
    if version < MIN_PTX[arch]:
        raise ValueError(f"PTX version {version / 10:.1f} cannot target {arch}; "
                         f"it needs {MIN_PTX[arch] / 10:.1f} or later")
    _init()
    target = llvm.Target.from_triple(TRIPLE)
    return target.create_target_machine(cpu=arch, features=f"+ptx{version}", opt=opt)


def check_declarations(mod) -> None:
    """KernelError unless every function the module only declares is one NVPTX can select."""
    for fn in mod.functions:
        if not fn.is_declaration:
            continue
        name = fn.name
        if not name.startswith("llvm."):
            raise KernelError(f"the kernels call {name}, which nothing defines for the GPU "
                              f"(math goes through libdevice's __nv_* functions)")
        if name.split(".")[1] not in SELECTABLE:
            raise KernelError(f"the kernels call the intrinsic {name}, which NVPTX cannot compile "
                              f"(its math must be a libdevice call)")


def optimize(module_text: str, kernel_names, tm, opt: int = 3):
    """The module parsed, libdevice linked in, all but the kernels internal, -O<opt>: an llvm ModuleRef."""
    ctx = llvm.create_context()
    mod = llvm.parse_assembly(module_text, context=ctx)
    mod.triple = TRIPLE
    mod.data_layout = str(tm.target_data)
    if any(f.is_declaration and f.name.startswith("__nv_") for f in mod.functions):
        lib = llvm.parse_bitcode(libdevice_bitcode(), context=ctx)
        # libdevice says nvptx64-nvidia-gpulibs and an older layout; the linker wants them equal
        lib.triple, lib.data_layout = mod.triple, mod.data_layout
        # the linker copies a linkonce definition only where it is referenced: the few functions
        # used, not all 350 (the O3 pipeline took 0.23 s to drop them for one sqrtf)
        for f in lib.functions:
            if not f.is_declaration:
                f.linkage = "linkonce_odr"
        mod.link_in(lib)
    kernels = set(kernel_names)
    # internal: the optimizer inlines what is used and drops the rest
    for g in (*mod.functions, *mod.global_variables):
        if not g.is_declaration and g.name not in kernels:
            g.linkage = "internal"
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    if opt > 0:
        # the code generator's strength reduction, which the cpu target turns off for the whole
        # process (cpu.COMPILE_TIME_OPTIONS): the GPU's addresses are arithmetic of their own
        fpm = llvm.create_new_function_pass_manager()
        fpm.add_loop_simplify_pass()
        fpm.add_loop_strength_reduce_pass()
        for f in mod.functions:
            if not f.is_declaration:
                fpm.run(f, pb)
    return mod


def compile_ptx(module_text: str, kernel_names, arch: str = "sm_80", ptx_version: int | None = None,
                opt: int = 3) -> str:
    """PTX of an NVPTX kernel module; KernelError when a kernel would not come out as an `.entry`."""
    tm = target_machine(arch, ptx_version, opt)
    mod = optimize(module_text, kernel_names, tm, opt)
    check_declarations(mod)
    ptx = tm.emit_assembly(mod)
    for name in kernel_names:
        if f".entry {name}(" not in ptx:
            raise KernelError(f"kernel {name} is not an .entry of the PTX (not a ptx_kernel function?)")
    return ptx


def nvptx_ir(kernels, ftz: bool = False, name: str = "kernels") -> tuple:
    """(LLVM IR text for NVPTX, {kernel name: KernelInfo}) of kernels, before optimization."""
    module, infos = build_module(kernels, CudaTarget(ftz), name)
    return str(module), infos


def emit_ptx(kernels, arch: str = "sm_80", ptx_version: int | None = None, opt: int = 3,
             ftz: bool = False) -> str:
    """The PTX of kernels (Kernel objects) for arch."""
    text, infos = nvptx_ir(kernels, ftz)
    return compile_ptx(text, list(infos), arch, ptx_version, opt)


def emit_llvm(kernels, arch: str = "sm_80", ptx_version: int | None = None, opt: int = 3,
              ftz: bool = False) -> str:
    """The optimized LLVM IR that becomes the PTX: what `--emit llvm` shows for the GPU."""
    text, infos = nvptx_ir(kernels, ftz)
    return str(optimize(text, list(infos), target_machine(arch, ptx_version, opt), opt))
