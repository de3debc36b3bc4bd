"""The table of backends: what each target compiles optimized graphs to, how it describes its host,
which stages it prints, and how it loads its code into callable functions.

Adding a backend is one entry here and one folder of code generation (compiler/codegen/<name>/);
docs/internals.md shows how. Options travel from the API and the command line down to code
generation and make the cache key.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .vocab import python_abi

ARCHS = ("sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
# CPUs --cpu may name (x86-64): LLVM tunes for the named one; the instruction set is this machine's,
# less what the named CPU lacks: AVX-512 for those of the first set
AVX2_CPUS = ("x86-64-v3", "haswell", "broadwell", "skylake", "alderlake", "znver1", "znver2", "znver3")
AVX512_CPUS = ("x86-64-v4", "skylake-avx512", "cascadelake", "icelake-server", "sapphirerapids",
               "znver4", "znver5")
CPUS = AVX2_CPUS + AVX512_CPUS
_FEATURES = re.compile(r"[+-][a-z0-9][a-z0-9._-]*(,[+-][a-z0-9][a-z0-9._-]*)*")


@dataclass(frozen=True)
class Options:
    """How to compile: optimization level, fast-math, the GPU architecture, linking a shared library;
    for the CPU, a CPU to tune for (cpu) and LLVM features to turn on or off ("-avx512f")."""
    opt_level: int = 3
    fast_math: bool = False
    gpu_arch: str = "sm_80"
    link: bool = True
    cpu: str | None = None
    cpu_features: str = ""

    def __post_init__(self):
        if self.opt_level not in (0, 1, 2, 3):
            raise ValueError(f"optimization level {self.opt_level!r}: choose 0, 1, 2 or 3")
        if self.gpu_arch not in ARCHS:
            raise ValueError(f"GPU architecture {self.gpu_arch!r}: choose one of {', '.join(ARCHS)}")
        if self.cpu is not None and self.cpu not in CPUS:
            raise ValueError(f"CPU {self.cpu!r}: choose one of {', '.join(CPUS)}")
        if self.cpu_features and not _FEATURES.fullmatch(self.cpu_features):
            raise ValueError(f"CPU features {self.cpu_features!r}: write them as LLVM does, "
                             f"+name or -name separated by commas (for example -avx512f)")

    def key(self) -> str:
        """What the options change in the code (linking adds a library, it changes no code)."""
        d = asdict(self)
        d.pop("link")
        return json.dumps(d, sort_keys=True)


class TargetUnavailable(ValueError):
    """A target that is unknown, or cannot run on this machine; the message says why."""


@dataclass
class Backend:
    """One target. compile(graphs, name, options, facts, sigs) -> (header functions, artifact Code);
    load(name, header, code, file) -> {function name: Function}; emit(stage, graphs, name, options)."""
    name: str
    runs_on: str
    stages: tuple = ()
    native: bool = True                 # makes module files (reference does not)
    option_fields: tuple = ()           # the Options fields that change its code
    host: object = None                 # (options, ask_llvm=False) -> dict: triple/arch/features/versions
    available: object = field(default=lambda: (True, ""))
    compile: object = None
    load: object = None
    emit: object = None

    def host_facts(self, options: Options) -> dict:
        return self.host(options) if self.host is not None else {}

    def build_facts(self, options: Options) -> dict:
        """What the code being compiled depends on, asked afresh (a module header records it)."""
        return self.host(options, ask_llvm=True) if self.host is not None else {}

    def cache_options(self, options: Options) -> str:
        return json.dumps({k: getattr(options, k) for k in self.option_fields}, sort_keys=True)


# ---- cpu


def _cpu_host(options, refresh=False, ask_llvm=False):
    """What cpu code depends on. For cache keys and load checks, this machine as remembered
    (runtime/host.py: no LLVM needed); for compiling (ask_llvm), as LLVM sees it now, so a
    damaged description file can never reach code generation."""
    if ask_llvm:
        from .compiler.codegen import host_cpu
        facts = dict(zip(("triple", "cpu", "features"), host_cpu()))
    else:
        from .runtime.host import host
        h = host(refresh)
        facts = {k: h[k] for k in ("triple", "cpu", "features")}
    # native CPython entries (compiler/codegen/cpu/pyentry.py) read this interpreter's objects
    facts["python"] = python_abi()
    if options.cpu is None and not options.cpu_features:
        return facts
    # code for another CPU: this machine's instruction set less what that CPU lacks, with the
    # changes asked for; it loads on any machine that has every feature it uses. The changes go
    # last: LLVM reads the list in order, and a later +fma would turn a removed avx on again
    feats, changes = {}, {}
    for f in facts["features"].split(","):
        if f:
            feats[f[1:]] = f[0]
    if options.cpu in AVX2_CPUS:
        changes.update({name: "-" for name, sign in feats.items()
                        if sign == "+" and name.startswith(("avx512", "avx10", "amx"))})
    for f in options.cpu_features.split(",") if options.cpu_features else ():
        changes[f[1:]] = f[0]
    feats = {**{k: v for k, v in feats.items() if k not in changes}, **changes}
    return {"triple": facts["triple"], "cpu": options.cpu or facts["cpu"],
            "features": ",".join(sign + name for name, sign in feats.items()), "python": facts["python"],
            "cpu_chosen": True}


def _cpu_compile(graphs, name, options, facts, sigs):
    from .compiler.codegen import compile_graphs
    from .runtime import artifact
    from .runtime.libs import tune_malloc
    from .runtime.trust import describe
    # LLVM's threads (one per function) allocate fast enough for glibc's growing and
    # trimming of the heap to serialize them: a fifth of the compile time on 2 cores
    tune_malloc()

    def entry(k, compiled_entry) -> dict:
        return {"signature": sigs[k], "symbol": compiled_entry[0],
                "dims": list(compiled_entry[1]), "checks": compiled_entry[2]}
    # each function's code carries a digest of its header entry and of the facts (runtime/trust.py)
    chosen = facts.get("cpu_chosen")
    compiled = compile_graphs(graphs, name, opt=options.opt_level, link=options.link,
                              fast_math=options.fast_math, cpu=facts["cpu"] if chosen else None,
                              features=facts["features"] if chosen else None,
                              describe=lambda k, e: describe(facts, entry(k, e)))
    functions = [entry(k, compiled.entries[k]) for k in graphs]
    return functions, artifact.Code(compiled.objects, compiled.shared)


def _cpu_load(name, header, code, file):
    from .runtime.cpu import load_native
    from .runtime.trust import check_code
    check_code(header, code, file)
    return load_native(name, code, header["functions"]).functions


def _cpu_emit(stage, graphs, name, options):
    from .compiler import codegen
    h = _cpu_host(options, ask_llvm=True)
    if stage == "llvm":
        return codegen.emit_llvm(graphs, name, True, options.fast_math, h["cpu"], h["features"])
    return codegen.emit_asm(graphs, name, options.fast_math, h["cpu"], h["features"])


# ---- cuda and cuda-sim: the same kernels and launch plans; PTX for a GPU, host IR for the simulator


def _cuda_host(options, ask_llvm=False):
    from .compiler.codegen.cuda.ptx import PTX_VERSION
    return {"gpu_arch": options.gpu_arch, "ptx_version": PTX_VERSION}


def _cuda_compile(sim):
    def compile_(graphs, name, options, facts, sigs):
        from .compiler.codegen.cuda.graphs import compile_graphs
        from .runtime import artifact
        code = compile_graphs(graphs, name, sim=sim, arch=options.gpu_arch, opt=options.opt_level)
        functions = [{"signature": sigs[k]} for k in graphs]
        return functions, artifact.Code((json.dumps(code, sort_keys=True).encode(),))
    return compile_


def _cuda_load(target):
    def load(name, header, code, file):
        from .runtime import cuda
        from .runtime.artifact import ArtifactError
        from .runtime.module import Signature
        try:
            data = json.loads(code.objects[0])
            sigs = {f["signature"]["name"]: Signature.from_json(f["signature"]) for f in header["functions"]}
            _check_code(data, header, sigs, target, file)
        except ArtifactError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as ex:
            raise ArtifactError(f"{file}: corrupted gradc module ({type(ex).__name__}: {ex})") from None
        return cuda.load(data, sigs, target, name)
    return load


def _check_code(data, header, sigs, target, file):
    """The code keeps the header's promises: its architecture, a plan per function, kernels for
    every launch."""
    from .runtime.artifact import ArtifactError
    if ("sim_ir" if target == "cuda-sim" else "ptx") not in data:
        raise ArtifactError(f"{file}: the module holds no code for target {target!r}")
    if (data["arch"], data["ptx_version"]) != (header.get("gpu_arch"), header.get("ptx_version")):
        raise ArtifactError(f"{file}: corrupted gradc module (its code is for {data['arch']}, PTX "
                            f"{data['ptx_version']}; its header says {header.get('gpu_arch')}, PTX "
                            f"{header.get('ptx_version')})")
    from .runtime.cuda_control import plan_launches
    kernels = data["kernels"]
    for k in sigs:
        for step in plan_launches(data["functions"][k]):
            if step["launch"] not in kernels:
                raise ArtifactError(f"{file}: function {k} launches a kernel the module lacks")


def _cuda_emit(stage, graphs, name, options):
    from .compiler.codegen.cuda import emit_llvm, emit_ptx
    from .compiler.codegen.cuda.graphs import function_kernels
    kernels, _ = function_kernels(graphs)
    if not kernels:
        return ""
    if stage == "ptx":
        return emit_ptx(kernels, options.gpu_arch, opt=options.opt_level)
    return emit_llvm(kernels, options.gpu_arch, opt=options.opt_level)


def _sim_emit(stage, graphs, name, options):
    from .compiler.codegen.cuda.graphs import function_kernels
    from .compiler.codegen.cuda.kernel import build_module
    from .compiler.codegen.cuda.simtarget import SimTarget
    return str(build_module(function_kernels(graphs)[0], SimTarget(), name)[0])


def _cuda_available():
    from .runtime.cuda import cuda_available
    return cuda_available()


# ---- iree: upstream MLIR compiled by IREE for the host CPU

def _iree_host(options, ask_llvm=False):
    from importlib.metadata import PackageNotFoundError, version
    from .runtime.host import host
    h = host()
    try:
        iree_version = version("iree-base-compiler")
    except PackageNotFoundError:          # without the extra: compiling then says what to install
        iree_version = None
    return {"triple": h["triple"], "cpu": h["cpu"], "features": h["features"], "iree_version": iree_version}


def _iree_available():
    from .runtime.iree import iree_available
    return iree_available()


def _iree_text(graphs, name, iree=False):
    from .compiler.codegen.mlir import emit_module
    return emit_module(graphs, name, iree=iree)


def _iree_compile(graphs, name, options, facts, sigs):
    from .compiler.codegen.mlir import compile_vmfb
    from .runtime import artifact
    from .runtime.iree import iree_available
    ok, why = iree_available()
    if not ok:
        raise TargetUnavailable(why)
    text, meta = _iree_text(graphs, name, iree=True)
    vmfb = compile_vmfb(text)
    functions = [{"signature": sigs[k]} for k in graphs]
    return functions, artifact.Code((vmfb, json.dumps(meta, sort_keys=True).encode()))


def _iree_load(name, header, code, file):
    from .runtime import iree
    from .runtime.module import Signature
    sigs = {f["signature"]["name"]: Signature.from_json(f["signature"]) for f in header["functions"]}
    return iree.load(code.objects[0], json.loads(code.objects[1]), sigs, name)


def _iree_emit(stage, graphs, name, options):
    return _iree_text(graphs, name)[0]


BACKENDS = {
    "reference": Backend("reference", "the CPU, NumPy (the optimized graphs interpreted)", native=False),
    "cpu": Backend("cpu", "the host CPU: LLVM machine code", ("llvm", "asm"),
                   option_fields=("opt_level", "fast_math", "cpu", "cpu_features"), host=_cpu_host, compile=_cpu_compile,
                   load=_cpu_load, emit=_cpu_emit),
    "cuda": Backend("cuda", "an NVIDIA GPU: PTX launched through PyCUDA or cuda-bindings", ("llvm", "ptx"),
                    option_fields=("opt_level", "gpu_arch"), host=_cuda_host, available=_cuda_available,
                    compile=_cuda_compile(False), load=_cuda_load("cuda"), emit=_cuda_emit),
    "cuda-sim": Backend("cuda-sim", "the host CPU: the cuda kernels run over the whole grid by a simulator",
                        ("llvm", "ptx"), option_fields=("opt_level", "gpu_arch"), host=_cuda_host,
                        compile=_cuda_compile(True), load=_cuda_load("cuda-sim"),
                        emit=lambda stage, *a: (_sim_emit if stage == "llvm" else _cuda_emit)(stage, *a)),
    "iree": Backend("iree", "the host CPU: upstream MLIR compiled by IREE", ("mlir",), host=_iree_host,
                    available=_iree_available, compile=_iree_compile, load=_iree_load, emit=_iree_emit),
}


def backend(target: str, need_available: bool = True) -> Backend:
    """The backend of a target name; TargetUnavailable for an unknown target or one that cannot run here."""
    b = BACKENDS.get(target) if isinstance(target, str) else None
    if b is None:
        raise TargetUnavailable(f"unknown target {target!r}; choose one of: {', '.join(BACKENDS)}")
    if need_available:
        ok, why = b.available()
        if not ok:
            raise TargetUnavailable(why)
    return b


def module_stem(file: str) -> str:
    return Path(file).stem if file != "<source>" else "module"
