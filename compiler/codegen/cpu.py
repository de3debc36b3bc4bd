"""The CPU backend: optimized graphs to an LLVM module, then -O3 host-CPU object code or assembly."""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
import threading

import llvmlite.binding as llvm
from llvmlite import ir

from .parallel import lower_graph
from .vecmath import add_vector_variants

_init_lock = threading.Lock()
_initialized = False


def init_llvm():
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            if vector_math_library():
                # loops over sin, exp, log... call glibc's vector variants (within 4 ulp of libm)
                llvm.set_option("", "--vector-library=LIBMVEC-X86")
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


def build_ir(graphs: dict, name: str = "gradc") -> tuple:
    """(llvmlite ir.Module, {function name: (symbol, dim names)}) of optimized graphs."""
    module = ir.Module(name=name)
    entries = {}
    for fname, g in graphs.items():
        entries[fname] = lower_graph(module, g)
    return module, entries


def optimize_ir(text: str, tm, speed: int = 3):
    """Parse LLVM IR and run the -O3 pipeline (loop and SLP vectorization on)."""
    init_llvm()
    if vector_math_library():
        text = add_vector_variants(text, tm.feature_string if hasattr(tm, "feature_string") else host_cpu()[2])
    mod = llvm.parse_assembly(text)
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
    pb.getModulePassManager().run(mod, pb)
    return mod


class Compiled:
    """A module compiled for this CPU: object code plus what the loader needs to call it."""

    def __init__(self, obj: bytes, entries: dict, triple: str, cpu: str, features: str):
        self.obj, self.entries = obj, entries
        self.triple, self.cpu, self.features = triple, cpu, features


def compile_graphs(graphs: dict, name: str = "gradc", opt: int = 3) -> Compiled:
    module, entries = build_ir(graphs, name)
    tm = target_machine(opt=opt)
    mod = optimize_ir(str(module), tm, opt)
    triple, cpu, feats = host_cpu()
    return Compiled(tm.emit_object(mod), entries, triple, cpu, feats)


def emit_llvm(graphs: dict, name: str = "gradc", optimized: bool = True) -> str:
    module, _ = build_ir(graphs, name)
    if not optimized:
        return str(module)
    return str(optimize_ir(str(module), target_machine()))


def emit_asm(graphs: dict, name: str = "gradc") -> str:
    tm = target_machine()
    module, _ = build_ir(graphs, name)
    return tm.emit_assembly(optimize_ir(str(module), tm))
