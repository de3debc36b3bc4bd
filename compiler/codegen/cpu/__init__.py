"""The CPU backend: optimized graphs to an LLVM module, then -O3 host-CPU object code or assembly."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import llvmlite.binding as llvm
from llvmlite import ir
from llvmlite.binding import ffi

from ...control import has_control
from .blas import BLAS_GLOBALS, BLAS_THREAD_GLOBALS, GEMV_GLOBALS, ILP64_GLOBAL
from .link import link_shared
from .driver import lower_program_graph
from .parallel import OMP_GLOBALS, THREADS_GLOBAL, lower_graph
from .vecmath import add_vector_variants
from .mathlib import attach_far_variants, inline_far_variants
from .merge import merge_identical

# what the loader patches (runtime/libs.py), in every module's copy
LOADER_GLOBALS = (*OMP_GLOBALS, THREADS_GLOBAL, *BLAS_GLOBALS.values(), *GEMV_GLOBALS.values(), ILP64_GLOBAL,
                  *BLAS_THREAD_GLOBALS)

_init_lock = threading.Lock()
_initialized = False

# -O3 less three things that cost compile time and bought no speed: on the cold compile of W4's
# gradient module (0.35 s of LLVM) and every benchmark's calls (docs/native.md), measured one
# at a time. Non-trivial loop unswitching copied each loop with a loop-invariant condition in it
# (a gradient's zero guard on a scalar), and the vectorizer and code generator then did each
# copy: 0.09 s. A vectorized epilogue per vectorized loop: 0.05 s. Loop strength reduction (the
# x86 addressing modes take the index as it is): 0.06 s. LLVM's options are the process's:
# the GPU target's compile runs strength reduction itself (cuda/ptx.py).
COMPILE_TIME_OPTIONS = ("-unswitch-threshold=1", "-enable-epilogue-vectorization=false", "-disable-lsr")


def init_llvm():
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            if vector_math_library():
                # loops over sin, exp, log... call glibc's vector variants (within 4 ulp of libm)
                llvm.set_option("", "--vector-library=LIBMVEC-X86")
            for option in COMPILE_TIME_OPTIONS:
                llvm.set_option("", option)
            _initialized = True


def vector_math_library():
    """glibc's libmvec where it serves this machine (x86-64 Linux), else None."""
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL("libmvec.so.1")
    except OSError:
        return ctypes.util.find_library("mvec")
    return "libmvec.so.1"


def host_cpu() -> tuple:
    """(triple, cpu name, feature string) of this machine: what an artifact must match."""
    init_llvm()
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def target_machine(cpu=None, features=None, opt=3):
    triple, host, feats = host_cpu()
    target = llvm.Target.from_triple(triple)
    # pic + the JIT's default code model: the object is mapped anywhere by MCJIT at load
    return target.create_target_machine(cpu=cpu or host, features=feats if features is None else features,
                                        opt=opt, reloc="pic", codemodel="jitdefault")


def build_ir(graphs: dict, name: str = "gradc", fast_math: bool = False, inline_math: bool = True) -> tuple:
    """(llvmlite ir.Module, {function name: (symbol, dim names)}) of optimized graphs.
    inline_math: float32 exp, sin and cos written out in the loops (mathlib.py), else libm's."""
    module = ir.Module(name=name)
    module.inline_math = inline_math
    entries = {}
    for fname, g in graphs.items():
        # a function with loops or branches gets a driver that runs its blocks (driver.py)
        entries[fname] = lower_program_graph(module, g, fast_math) if has_control(g) else \
            lower_graph(module, g, fast_math)
    return module, entries


def optimize_ir(text: str, tm, speed: int = 3, context=None, features=None):
    """Parse LLVM IR and run the -O3 pipeline (loop and SLP vectorization on); features: those of
    the target machine (this machine's by default), which pick libmvec's vector variants."""
    init_llvm()
    text = attach_far_variants(text)
    if vector_math_library():
        text = add_vector_variants(text, features if features is not None else host_cpu()[2])
    mod = llvm.parse_assembly(text, context=context)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=speed)
    pto.loop_vectorization = speed >= 2
    pto.slp_vectorization = speed >= 2
    # unrolling vectorized loops again made no measurable difference in the benchmarks,
    # and cost a fifth of the compile time
    pto.loop_unrolling = False
    pb = llvm.create_pass_builder(tm, pto)
    _unlocked("LLVMPY_RunNewModulePassManager")(pb.getModulePassManager(), mod, pb)
    inline_far_variants(mod, tm, pto)
    return mod


def _unlocked(name):
    """An llvmlite C entry point without the lock llvmlite puts around every call.

    That lock serializes all LLVM work in the process; a module in its own LLVMContext,
    optimized and emitted by its own target machine, is safe to work on beside another (as
    LLVM's own parallel code generation does), so the two long calls skip it.
    """
    fn = getattr(ffi.lib, name)
    return getattr(fn, "_cfn", fn)


def emit_object(tm, mod) -> bytes:
    with ffi.OutputString() as err:
        buf = _unlocked("LLVMPY_TargetMachineEmitToMemory")(tm, mod, 1, err)
        if not buf:
            raise RuntimeError(str(err))
    try:
        return ctypes.string_at(ffi.lib.LLVMPY_GetBufferStart(buf), ffi.lib.LLVMPY_GetBufferSize(buf))
    finally:
        ffi.lib.LLVMPY_DisposeMemoryBuffer(buf)


class Compiled:
    """A module compiled for this CPU: object code plus what the loader needs to call it."""

    def __init__(self, objects: list, entries: dict, triple: str, cpu: str, features: str, shared=None):
        self.objects, self.shared, self.entries = tuple(objects), shared, entries
        self.triple, self.cpu, self.features = triple, cpu, features

    @property
    def obj(self) -> tuple:
        return self.objects


_LOADER_NAME = re.compile(r'@"?(' + "|".join(map(re.escape, LOADER_GLOBALS)) + r')"?(?=[^\w."])')


def copy_name(name: str, i: int) -> str:
    """The name of module i's copy of a loader global (runtime/libs.py patches every copy)."""
    return name if i == 0 else f"{name}.{i}"


def inline_math(features: str) -> bool:
    """Whether the written-out float32 functions (mathlib.py) pay on this feature set: with
    AVX-512 they beat libmvec's; with AVX2 alone the vectorizer gives their loops half-width
    vectors (the float64 sums beside them) and libmvec's are faster (docs/native.md)."""
    return "+avx512f" in features.split(",")


def _split(graphs: dict, order: list, name: str, describe=None, fast_math=False, inline=True):
    """One LLVM module per function, as text, yielded as built: (function name, text, entry).

    Each keeps its own copy of the globals the loader patches, renamed apart, so every object
    stands alone: MCJIT resolved one object's GOT-relative references against another's GOT
    when several that referred to each other shared an engine. describe(name, entry), where
    given, gives bytes the object carries as the constant SYMBOL.desc (runtime/trust.py).
    """
    for i, fname in enumerate(order):
        module, entries = build_ir({fname: graphs[fname]}, f"{name}.{fname}", fast_math, inline)
        if describe is not None:
            _add_constant(module, entries[fname][0] + ".desc", describe(fname, entries[fname]))
        text = module_text(module)
        if i:
            text = _LOADER_NAME.sub(lambda m: f'@"{copy_name(m.group(1), i)}"', text)
        yield fname, text, entries[fname]


_HINT = re.compile(r'^(!\d+) = !\{\s*!"gradc\.interleave\.\d+"\s*\}$', re.M)
_HINT_NOMASK = re.compile(r'^(!\d+) = !\{\s*!"gradc\.interleave\.nomask\.\d+"\s*\}$', re.M)


def module_text(module) -> str:
    """The LLVM text of a built module as it is compiled: loop hints as loop IDs, functions with
    the same body merged."""
    return merge_identical(loop_metadata(str(module)))


def loop_metadata(text: str) -> str:
    """The module's text with each loop hint (function.interleave_hint) made a loop ID:
    distinct, referring to itself, with the interleave count, and the loop's tail done by the
    vector body under a mask (no scalar copy of a long body for the last few elements)."""
    from .function import NEST_INTERLEAVE, SEGMENT_INTERLEAVE
    if "gradc.interleave." not in text:
        return text
    text = _HINT.sub(lambda m: f"{m.group(1)} = distinct !{{{m.group(1)}, !{10 ** 9}, !{10 ** 9 + 1}}}", text)
    text = _HINT_NOMASK.sub(lambda m: f"{m.group(1)} = distinct !{{{m.group(1)}, !{10 ** 9 + 2}}}", text)
    return text + f'\n!{10 ** 9} = !{{!"llvm.loop.interleave.count", i32 {SEGMENT_INTERLEAVE}}}\n' \
        f'!{10 ** 9 + 1} = !{{!"llvm.loop.vectorize.predicate.enable", i1 true}}\n' \
        f'!{10 ** 9 + 2} = !{{!"llvm.loop.interleave.count", i32 {NEST_INTERLEAVE}}}\n'


def _add_constant(module, name: str, data: bytes):
    ty = ir.ArrayType(ir.IntType(8), len(data))
    g = ir.GlobalVariable(module, ty, name=name)
    g.global_constant = True
    g.initializer = ir.Constant(ty, bytearray(data))


def _compile_one(text: str, opt: int, cpu=None, features=None) -> bytes:
    tm = target_machine(cpu, features, opt=opt)
    return emit_object(tm, optimize_ir(text, tm, opt, llvm.create_context(), features))


def compile_graphs(graphs: dict, name: str = "gradc", opt: int = 3, link: bool = True,
                   fast_math: bool = False, describe=None, cpu=None, features=None) -> Compiled:
    """Object code of optimized graphs, one object file per function, compiled on parallel threads.

    With link, also the objects linked into one shared library (None when no linker is found).
    describe: see _split. cpu, features: what to compile for (this machine's by default).
    """
    init_llvm()
    triple, host, feats = host_cpu()
    # the largest function first: it bounds the wall time, so it should start first
    order = sorted(graphs, key=lambda k: -len(graphs[k].nodes))
    workers = max(1, min(len(order), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures, entries = {}, {}
        inline = inline_math(features if features is not None else feats)
        for fname, text, entry in _split(graphs, order, name, describe, fast_math, inline):
            entries[fname] = entry
            futures[fname] = pool.submit(_compile_one, text, opt, cpu, features)
        objects = [futures[k].result() for k in order]
        if not objects:
            # a program without functions: one empty object, so its module file is like any other
            objects = [_compile_one(str(build_ir({}, name)[0]), opt, cpu, features)]
    return Compiled(objects, {k: entries[k] for k in graphs}, triple, cpu or host, features or feats,
                    link_shared(objects) if link else None)


def emit_llvm(graphs: dict, name: str = "gradc", optimized: bool = True, fast_math: bool = False,
              cpu=None, features=None) -> str:
    module, _ = build_ir(graphs, name, fast_math, inline_math(features if features is not None else host_cpu()[2]))
    text = module_text(module)
    if not optimized:
        return text
    return str(optimize_ir(text, target_machine(cpu, features), features=features))


def emit_asm(graphs: dict, name: str = "gradc", fast_math: bool = False, cpu=None, features=None) -> str:
    tm = target_machine(cpu, features)
    module, _ = build_ir(graphs, name, fast_math, inline_math(features if features is not None else host_cpu()[2]))
    return tm.emit_assembly(optimize_ir(module_text(module), tm, features=features))
