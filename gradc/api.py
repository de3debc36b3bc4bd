"""The Python entry points: compile a .ad program, build and load compiled modules, call functions."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from .compiler import interp
from .compiler.checks import requirements
from .compiler.pipeline import lower, optimize
from .frontend.diagnostics import CompileError, InternalError, internal_error, render
from .frontend.source import read_source_file
from .runtime import artifact
from .compiler.ops import CheckFailed
from .runtime.module import Function, Module, Signature, check_failed
from .backends import BACKENDS, Options, TargetUnavailable, backend, module_stem

VERSION = "0.1.0"
TARGETS = tuple(BACKENDS)
DEFAULT_TARGET = "cpu"


class GradcWarning(UserWarning):
    """A warning about a .ad program, such as a gradient that is always zero."""


def read_source(src) -> tuple[str, str]:
    """(text, file name) of a path or of source text."""
    if isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src
                                        and src.strip().endswith(".ad")):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"no such .ad file: {path}")
        return read_source_file(path), str(path)
    if not isinstance(src, str):
        raise TypeError(f"gradc.compile takes a path or source text, not {type(src).__name__}")
    return src, "<source>"


def signature(g) -> Signature:
    from .compiler import records as R
    records = None
    if g.layout:
        records = {"params": [[n, en[0], list(en[1])] if en else [n, None, None] for n, en, _ in R.user_params(g)],
                   "outputs": [[en[0], list(en[1])] if en else None for en in R.output_entries(g)],
                   "out_tuple": g.out_tuple}
    return Signature(g.name, [(n, p.dtype, p.shape) for n, p in zip(g.param_names, g.params)],
                     [(o.dtype, o.shape) for o in g.outputs], g.out_tuple or records is not None,
                     requirements(g), records)


def lower_checked(text, file, record=None):
    """Lower a program; compile errors come back rendered with the source line."""
    try:
        mod = lower(text, file)
    except CompileError as ex:
        ex.args = (ex.render({file: text}),)
        raise
    for msg, loc in mod.diagnostics.warnings:
        rendered = render("warning", msg, loc, (), {file: text})
        if record is not None:
            record.append(rendered)
        warnings.warn(rendered, GradcWarning, stacklevel=4)   # the caller of compile or build
    return mod


def target_available(target: str) -> tuple:
    """(usable here, why not) for a target name."""
    b = BACKENDS.get(target) if isinstance(target, str) else None
    if b is None:
        return False, f"unknown target {target!r}"
    return b.available()


def _backend(target):
    """The backend of target, or TargetUnavailable (a ValueError) saying why it cannot run here."""
    return backend(target)


@contextmanager
def compiling(file):
    """Any exception but a CompileError while gradc compiles is gradc's fault: an InternalError."""
    try:
        yield
    except (CompileError, InternalError, TargetUnavailable):   # iree without its extra, say
        raise
    except Exception as ex:
        raise internal_error(ex, Path(file).name, VERSION) from ex


def _optimized(text, file, record=None) -> tuple:
    """(the lowered module, its graphs after the optimization passes)."""
    with compiling(file):
        mod = lower_checked(text, file, record=record)
        return mod, {k: optimize(g) for k, g in mod.graphs.items()}


def _options(options, fast_math, gpu_arch, link=True, cpu=None, cpu_features="") -> Options:
    if options is not None:
        if not isinstance(options, Options):
            raise TypeError(f"options must be a gradc.Options, not {type(options).__name__}")
        return options
    return Options(fast_math=bool(fast_math), gpu_arch=gpu_arch, link=link, cpu=cpu, cpu_features=cpu_features)


def compile(src, target: str = DEFAULT_TARGET, cache: bool = True, fast_math: bool = False,
            gpu_arch: str = "sm_80", options: Options | None = None, cpu: str | None = None,
            cpu_features: str = "") -> Module:
    """Compile a .ad program (a path or source text) into a module of callable functions.

    target: "cpu" (the default) runs native code, cached on disk ($GRADC_CACHE_DIR or
    ~/.cache/gradc); "reference" runs the NumPy evaluator; "cuda" runs on an NVIDIA GPU (PTX
    for gpu_arch); "cuda-sim" runs the same kernels on the CPU in a grid simulator.
    fast_math=True lets the native code reassociate and contract floating-point arithmetic and
    assume finite values (opt-in: results then differ from the exact ones in the last bits, or
    more near inf/nan). cpu names a CPU to compile for instead of this one (tuning; the
    instruction set is this machine's less what that CPU lacks), cpu_features turns LLVM
    features on or off ("-avx512f"). options (a gradc.Options) replaces all of these.
    """
    b = _backend(target)
    opts = _options(options, fast_math, gpu_arch, True, cpu, cpu_features)
    text, file = read_source(src)
    name = module_stem(file)
    if not b.native:
        mod, graphs = _optimized(text, file)
        functions = {k: Function(signature(mod.graphs[k]), _reference(g), Path(file).name)
                     for k, g in graphs.items()}
        return Module(name, functions, target)
    from . import cache as disk
    ckey = (target, b.cache_options(opts))
    data = disk.get(text, file, ckey) if cache else None
    if data is not None:
        try:
            header, obj = artifact.unpack(data, file)
            artifact.check_compatible(header, target, b.host_facts(opts), VERSION, file)
            module = _load(name, header, obj, file)
        except artifact.ArtifactError:
            pass                             # a damaged or edited cache entry: compile again over it
        else:
            for w in header.get("warnings", ()):
                warnings.warn(w, GradcWarning, stacklevel=2)
            return module
    # linking pays only for a module that later processes load; cache=False writes nothing
    data = build_bytes(text, file, target=target, options=dataclasses.replace(opts, link=cache))
    header, obj = artifact.unpack(data, file)
    if cache:
        if target == "cpu" and not header.get("cpu_chosen") and \
                any(header[k] != _host()[k] for k in ("triple", "cpu", "features")):
            _host(refresh=True)              # the remembered host description was stale or damaged
        disk.put(text, file, data, ckey)
    return _load(name, header, obj, file)


def build_bytes(text: str, file: str = "<source>", link: bool = True, fast_math: bool = False,
                target: str = "cpu", options: Options | None = None) -> bytes:
    """Compile source text to the bytes of a .gcm module for target.

    For cpu, with link, the module also holds a shared library (where a system linker is
    found), which loads without LLVM; the object files are always there for MCJIT. A cuda
    module holds the PTX and launch plans, a cuda-sim module the simulator's kernels.
    """
    b = backend(target, need_available=False)
    if not b.native:
        raise ValueError(f"target {target!r} makes no module files; choose one of: "
                         f"{', '.join(k for k, v in BACKENDS.items() if v.native)}")
    opts = _options(options, fast_math, "sm_80", link)
    seen = []
    mod, graphs = _optimized(text, file, record=seen)
    facts = {
        "gradc_version": VERSION, "target": target, "fast_math": opts.fast_math,
        **b.build_facts(opts),
        "source_name": Path(file).name if file != "<source>" else None,
        "source_hash": hashlib.sha256(text.encode()).hexdigest(),
        "warnings": seen,
    }
    sigs = {k: signature(mod.graphs[k]).to_json() for k in graphs}
    with compiling(file):
        try:
            functions, code = b.compile(graphs, Path(file).stem, opts, facts, sigs)
        except CompileError as ex:           # a construct the target cannot run yet
            ex.args = (ex.render({file: text}),)
            raise
    header = dict(facts, functions=functions)
    return artifact.pack(header, code)


def build(src, out=None, target: str = "cpu", fast_math: bool = False, key=None, gpu_arch: str = "sm_80",
          options: Options | None = None, cpu: str | None = None, cpu_features: str = "") -> Path:
    """Compile a program into one .gcm file (next to the source unless out is given).

    target: cpu (this machine's CPU), cuda (PTX for gpu_arch: builds without a GPU) or
    cuda-sim. key (bytes, or the path of a key file) signs it: gradc.load(path, key=) then checks it.
    """
    b = backend(target, need_available=False)      # a cuda module builds without a GPU
    if not b.native:
        raise ValueError(f"gradc.build makes native modules; target {target!r} is not one (use cpu, cuda or cuda-sim)")
    if key is not None:
        artifact.read_key(key)               # a bad key fails before the compile, not after
    text, file = read_source(src)
    if out is None:
        out = Path(file).with_suffix(".gcm") if file != "<source>" else Path("module.gcm")
    data = build_bytes(text, file, target=target,
                       options=_options(options, fast_math, gpu_arch, True, cpu, cpu_features))
    artifact.write_atomic(out, data if key is None else artifact.sign(data, key))
    return Path(out)


def load(path, key=None) -> Module:
    """Load a .gcm module built on this machine by this gradc version; nothing is recompiled.

    A module is native code: loading one runs it in this process. Load only files you trust;
    with key (bytes, or the path of a key file), a file not signed with it is refused before
    any of its code is looked at.
    """
    header, obj = artifact.read(path, key)
    target = header.get("target")
    b = BACKENDS.get(target) if isinstance(target, str) else None
    if b is None or not b.native:
        raise artifact.ArtifactMismatch(f"{path}: built for target {target!r}, which this gradc does not load")
    # a GPU module depends on nothing of this host (the driver compiles its PTX): only the
    # version and the target are checked, and no LLVM is loaded to do it; an iree module is
    # machine code for this CPU and IREE's version
    facts = _host() if target == "cpu" else b.host_facts(Options()) if target == "iree" else {}
    try:
        artifact.check_compatible(header, target, facts, VERSION, str(path))
    except artifact.ArtifactMismatch:
        if target != "cpu":
            raise
        # the remembered description of this machine may be what is wrong: ask LLVM once more
        artifact.check_compatible(header, target, _host(refresh=True), VERSION, str(path))
    _backend(target)                          # cuda without a driver: say so before loading
    return _load(Path(path).stem, header, obj, str(path))


def emit(src, stage: str, target: str = "cpu", optimized: bool = True, fast_math: bool = False,
         gpu_arch: str = "sm_80", options: Options | None = None, cpu: str | None = None,
         cpu_features: str = "") -> str:
    """A printable stage of a program's code for target: `gradc build --target T --emit STAGE`.

    cpu: llvm (after -O3 unless optimized=False), asm; cuda: llvm (the NVPTX module), ptx;
    cuda-sim: llvm (the simulator's kernels), ptx (the same PTX as cuda); iree: mlir (upstream
    MLIR, emitted without IREE installed). Needs no GPU.
    """
    b = backend(target, need_available=False)
    if stage not in b.stages:
        shown = ", ".join(b.stages) or "none"
        raise ValueError(f"--emit {stage} is not a stage of target {target!r} (its stages: {shown})")
    opts = _options(options, fast_math, gpu_arch, True, cpu, cpu_features)
    text, file = read_source(src)
    graphs = _optimized(text, file)[1]
    with compiling(file):
        if target == "cpu" and stage == "llvm" and not optimized:
            from .compiler.codegen import emit_llvm as emit_cpu
            return emit_cpu(graphs, Path(file).stem, False, opts.fast_math)
        return b.emit(stage, graphs, Path(file).stem, opts)


def memory_report(src, function: str | None = None, **sizes) -> str:
    """What each function's reverse passes store per loop iteration and in all, what they
    recompute, and the peak scratch memory of a call: bytes as formulas of the dimensions and,
    for the sizes given (memory_report("rnn.ad", T=100, B=64, H=256)), as numbers.
    `gradc build --emit memory` prints the same."""
    from .compiler.memory import report
    text, file = read_source(src)
    graphs = _optimized(text, file)[1]
    if function is not None:
        if function not in graphs:
            raise ValueError(f"{file} has no function {function!r} (it has: {', '.join(graphs)})")
        graphs = {function: graphs[function]}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"the size {k}={v!r} must be a non-negative integer")
    return report(graphs, sizes)


def emit_llvm(src, optimized: bool = True, fast_math: bool = False) -> str:
    """The LLVM IR of a program (after -O3 unless optimized=False): `gradc build --emit llvm`."""
    return emit(src, "llvm", "cpu", optimized, fast_math)


def emit_asm(src, fast_math: bool = False) -> str:
    """The host assembly of a program: `gradc build --emit asm`."""
    return emit(src, "asm", "cpu", fast_math=fast_math)


def emit_ptx(src, gpu_arch: str = "sm_80") -> str:
    """The PTX of a program's kernels: `gradc build --target cuda --emit ptx`."""
    return emit(src, "ptx", "cuda", gpu_arch=gpu_arch)


def emit_mlir(src) -> str:
    """The optimized graphs of every function, derivatives included, as one module of upstream
    MLIR (func, arith, math, tensor, linalg, scf): `gradc build --emit mlir`. Needs no IREE."""
    return emit(src, "mlir", "iree")


def _host(refresh: bool = False):
    from .runtime.host import host
    return host(refresh)


def _load(name, header, code, file="<bytes>") -> Module:
    """Load a module's code after checking that it keeps the header's promises (runtime/trust.py)."""
    b = BACKENDS[header["target"]]
    try:
        return Module(name, b.load(name, header, code, file), header["target"])
    except (KeyError, TypeError, ValueError, LookupError, OSError) as ex:
        raise artifact.ArtifactError(f"{file}: corrupted gradc module ({type(ex).__name__}: {ex})") from None


def _reference(g):
    def execute(arrays, dims):
        try:
            return interp.run(g, arrays)
        except CheckFailed as ex:          # the reference side of the error channel
            raise check_failed(g.name, *ex.args) from None
    return execute


def set_num_threads(n: int):
    """Threads that large loops of native code may use from the next call on (1: one thread).

    The default is GRADC_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs this process may run on.
    """
    from .runtime.cpu import set_num_threads as set_n
    set_n(n)


def get_num_threads() -> int:
    from .runtime.cpu import get_num_threads as get_n
    return get_n()
