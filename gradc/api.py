"""The Python entry points: compile a .ad program, build and load compiled modules, call functions."""
from __future__ import annotations

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

VERSION = "0.1.0"
TARGETS = ("cpu", "reference")
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
    return Signature(g.name, [(n, p.dtype, p.shape) for n, p in zip(g.param_names, g.params)],
                     [(o.dtype, o.shape) for o in g.outputs], g.out_tuple, requirements(g))


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
    if target in TARGETS:
        return True, ""
    return False, f"unknown target {target!r}"


def _check_target(target):
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")


@contextmanager
def compiling(file):
    """Any exception but a CompileError while gradc compiles is gradc's fault: an InternalError."""
    try:
        yield
    except (CompileError, InternalError):
        raise
    except Exception as ex:
        raise internal_error(ex, Path(file).name, VERSION) from ex


def _optimized(text, file, record=None) -> tuple:
    """(the lowered module, its graphs after the optimization passes)."""
    with compiling(file):
        mod = lower_checked(text, file, record=record)
        return mod, {k: optimize(g) for k, g in mod.graphs.items()}


def compile(src, target: str = DEFAULT_TARGET, cache: bool = True, fast_math: bool = False) -> Module:
    """Compile a .ad program (a path or source text) into a module of callable functions.

    target="cpu" (the default) runs native code, cached on disk ($GRADC_CACHE_DIR or
    ~/.cache/gradc); target="reference" runs the NumPy evaluator. fast_math=True lets the
    native code reassociate and contract floating-point arithmetic and assume finite values
    (opt-in: results then differ from the exact ones in the last bits, or more near inf/nan).
    """
    _check_target(target)
    text, file = read_source(src)
    name = Path(file).stem if file != "<source>" else "module"
    if target == "reference":
        mod, graphs = _optimized(text, file)
        functions = {k: Function(signature(mod.graphs[k]), _reference(g), Path(file).name)
                     for k, g in graphs.items()}
        return Module(name, functions, target)
    from . import cache as disk
    options = "fast-math" if fast_math else ""
    data = disk.get(text, file, options) if cache else None
    if data is not None:
        try:
            header, obj = artifact.unpack(data, file)
            artifact.check_compatible(header, _host(), VERSION, file)
            module = _load_native(name, header, obj, file)
        except artifact.ArtifactError:
            pass                             # a damaged or edited cache entry: compile again over it
        else:
            for w in header.get("warnings", ()):
                warnings.warn(w, GradcWarning, stacklevel=2)
            return module
    # linking pays only for a module that later processes load; cache=False writes nothing
    data = build_bytes(text, file, link=cache, fast_math=fast_math)
    header, obj = artifact.unpack(data, file)
    if cache:
        if any(header[k] != _host()[k] for k in ("triple", "cpu", "features")):
            _host(refresh=True)              # the remembered host description was stale or damaged
        disk.put(text, file, data, options)
    return _load_native(name, header, obj, file)


def build_bytes(text: str, file: str = "<source>", link: bool = True, fast_math: bool = False) -> bytes:
    """Compile source text to the bytes of a .gcm module for this machine.

    With link, the module also holds a shared library (where a system linker is found), which
    loads without LLVM; the object files are always there for MCJIT.
    """
    from .compiler.codegen import compile_graphs
    from .runtime.libs import tune_malloc
    seen = []
    mod, graphs = _optimized(text, file, record=seen)
    # LLVM's threads (one per function) allocate fast enough for glibc's growing and
    # trimming of the heap to serialize them: a fifth of the compile time on 2 cores
    tune_malloc()
    from .compiler.codegen import host_cpu
    from .runtime.trust import describe
    triple, cpu, features = host_cpu()
    facts = {
        "gradc_version": VERSION, "target": "cpu", "fast_math": fast_math,
        "triple": triple, "cpu": cpu, "features": features,
        "source_name": Path(file).name if file != "<source>" else None,
        "source_hash": hashlib.sha256(text.encode()).hexdigest(),
        "warnings": seen,
    }

    sigs = {k: signature(mod.graphs[k]).to_json() for k in graphs}

    def entry(k, compiled_entry) -> dict:
        return {"signature": sigs[k], "symbol": compiled_entry[0],
                "dims": list(compiled_entry[1]), "checks": compiled_entry[2]}
    # each function's code carries a digest of its header entry and of the facts (runtime/trust.py)
    with compiling(file):
        compiled = compile_graphs(graphs, Path(file).stem, link=link, fast_math=fast_math,
                                  describe=lambda k, e: describe(facts, entry(k, e)))
    header = dict(facts, functions=[entry(k, compiled.entries[k]) for k in graphs])
    return artifact.pack(header, artifact.Code(compiled.objects, compiled.shared))


def build(src, out=None, target: str = "cpu", fast_math: bool = False, key=None) -> Path:
    """Compile a program into one .gcm file (next to the source unless out is given).

    key (bytes, or the path of a key file) signs it: gradc.load(path, key=) then checks it.
    """
    if target != "cpu":
        raise ValueError(f"gradc.build makes native modules; target {target!r} is not one (use cpu)")
    if key is not None:
        artifact.read_key(key)               # a bad key fails before the compile, not after
    text, file = read_source(src)
    if out is None:
        out = Path(file).with_suffix(".gcm") if file != "<source>" else Path("module.gcm")
    data = build_bytes(text, file, fast_math=fast_math)
    artifact.write_atomic(out, data if key is None else artifact.sign(data, key))
    return Path(out)


def load(path, key=None) -> Module:
    """Load a .gcm module built on this machine by this gradc version; nothing is recompiled.

    A module is native code: loading one runs it in this process. Load only files you trust;
    with key (bytes, or the path of a key file), a file not signed with it is refused before
    any of its code is looked at.
    """
    header, obj = artifact.read(path, key)
    try:
        artifact.check_compatible(header, _host(), VERSION, str(path))
    except artifact.ArtifactMismatch:
        # the remembered description of this machine may be what is wrong: ask LLVM once more
        artifact.check_compatible(header, _host(refresh=True), VERSION, str(path))
    return _load_native(Path(path).stem, header, obj, str(path))


def emit_llvm(src, optimized: bool = True, fast_math: bool = False) -> str:
    """The LLVM IR of a program (after -O3 unless optimized=False): `gradc build --emit llvm`."""
    from .compiler.codegen import emit_llvm as emit
    text, file = read_source(src)
    graphs = _optimized(text, file)[1]
    with compiling(file):
        return emit(graphs, Path(file).stem, optimized, fast_math)


def emit_asm(src, fast_math: bool = False) -> str:
    """The host assembly of a program: `gradc build --emit asm`."""
    from .compiler.codegen import emit_asm as emit
    text, file = read_source(src)
    graphs = _optimized(text, file)[1]
    with compiling(file):
        return emit(graphs, Path(file).stem, fast_math)


def _host(refresh: bool = False):
    from .runtime.host import host
    return host(refresh)


def _load_native(name, header, code, file="<bytes>") -> Module:
    """Map a module's code after checking that it keeps the header's promises (runtime/trust.py)."""
    from .runtime.cpu import load_native
    from .runtime.trust import check_code
    check_code(header, code, file)
    try:
        return load_native(name, code, header["functions"])
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
