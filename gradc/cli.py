"""The gradc command: build, run, check and graph .ad programs."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

from .backends import ARCHS, CPUS, Options
from .frontend.diagnostics import CompileError, InternalError, internal_error

STAGES = ("ast", "ir", "grad-ir", "opt-ir", "mlir", "llvm", "asm", "ptx", "memory")


class UserError(Exception):
    """A mistake in the command line or the inputs: printed without a traceback, exit status 1."""


def _source(path) -> tuple[str, str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such file: {path}")
    from .frontend.source import read_source_file
    try:
        return read_source_file(p), str(path)
    except OSError as ex:
        raise UserError(f"cannot read {path}: {ex}") from None


def _warnings_to_stderr(fn, *args, **kwargs):
    """fn's result; the program's warnings go to stderr as plain diagnostics."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    for w in caught:
        print(str(w.message), file=sys.stderr)
    return result


def _lower(text, file):
    from .api import lower_checked
    return _warnings_to_stderr(lower_checked, text, file)


# ---- build

def _sizes(items) -> dict:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip().isdigit():
            raise UserError(f"--size {item}: expected DIM=N with N a non-negative integer")
        out[name.strip()] = int(value)
    return out


def cmd_build(args):
    text, file = _source(args.file)
    if args.emit == "ast":
        from .frontend.ast import dump
        from .frontend.parse import parse
        try:
            print(dump(parse(text, file)))
        except CompileError as ex:
            raise CompileError(ex.render({file: text})) from None
        return 0
    if args.emit in ("mlir", "llvm", "asm", "ptx"):
        return _emit_native(args, text, file)
    mod = _lower(text, file)
    from .compiler.pipeline import optimize
    from .compiler.verify import verify
    if args.emit == "memory":
        from .compiler.memory import report
        print(report({k: optimize(g) for k, g in mod.graphs.items()}, _sizes(args.size)))
        return 0
    if args.emit in ("ir", "grad-ir", "opt-ir"):
        for name, g in mod.graphs.items():
            if args.emit == "ir" and name in mod.derived:
                continue
            if args.emit == "opt-ir":
                g = optimize(g, print_after=args.print_after, verify=verify)
            print(g)
            print()
        return 0
    from . import api
    if not hasattr(api, "build"):
        names = ", ".join(mod.graphs)
        print(f"{file}: ok ({len(mod.graphs)} functions: {names})")
        return 0
    out = args.output or str(Path(file).with_suffix(".gcm"))
    key = None
    if args.sign_key:
        try:
            key = api.artifact.read_key(args.sign_key)
        except ValueError as ex:
            raise UserError(str(ex)) from None
    try:
        api.build(file, out, target=args.target, fast_math=args.fast_math, key=key, gpu_arch=args.gpu_arch,
                  **_cpu_options(args))
    except api.TargetUnavailable as ex:
        raise UserError(str(ex)) from None
    print(f"wrote {out}" + (" (signed)" if key else ""))
    return 0


def _emit_native(args, text, file):
    from . import api
    target = args.target
    if args.emit == "ptx" and target == "cpu" and not args.target_given:
        target = "cuda"                 # PTX is the cuda target's: no need to name it
    if args.emit == "mlir" and not args.target_given:
        target = "iree"                 # upstream MLIR, which the iree target compiles
    try:
        print(api.emit(file, args.emit, target, fast_math=args.fast_math, gpu_arch=args.gpu_arch,
                       **_cpu_options(args)))
    except ValueError as ex:
        if isinstance(ex, CompileError):
            raise
        raise UserError(str(ex)) from None
    return 0


# ---- run

def parse_value(text: str, name: str):
    """A command-line value: a number, a JSON list, or @file.npy."""
    if text.startswith("@"):
        try:
            return np.load(text[1:], allow_pickle=False)
        except (OSError, ValueError) as ex:
            raise UserError(f"{name}: cannot load {text[1:]}: {ex}") from None
    try:
        v = json.loads(text)
    except ValueError:
        raise UserError(f"{name}: cannot read {text!r} as a number or a JSON list") from None
    if not isinstance(v, (int, float, list, bool, dict)):
        raise UserError(f"{name}: expected a number, a JSON list or (for a record) a JSON object, got {text!r}")
    return v


def _is_record(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _jsonable(x):
    if _is_record(x):
        return {f: _jsonable(v) for f, v in zip(x._fields, x)}
    a = np.asarray(x)
    if a.dtype.kind == "f":
        return [_jsonable(v) for v in a] if a.ndim else _float(float(a))
    return a.tolist()


def _float(v):
    return v if np.isfinite(v) else str(v)


def _call(module, name, kwargs):
    f = module.functions.get(name)
    if f is None:
        raise UserError(f"no function '{name}' in the program; it has: {', '.join(module.functions)}")
    try:
        out = f(**kwargs)
    except (TypeError, ValueError, IndexError) as ex:       # bad arguments, or a failed check
        raise UserError(str(ex)) from None
    return list(out) if isinstance(out, tuple) and not _is_record(out) else [out]


def _format(outs) -> str:
    def one(o):
        if _is_record(o):
            return f"{type(o).__name__}(" + ", ".join(f"{f}={one(v)}" for f, v in zip(o._fields, o)) + ")"
        return np.array2string(np.asarray(o), precision=6, separator=", ", max_line_width=160)
    return ", ".join(one(o) for o in outs)


def _cpu_options(args) -> dict:
    return {"cpu": getattr(args, "cpu", None), "cpu_features": getattr(args, "cpu_features", "") or ""}


def _compile(path, target, fast_math=False, gpu_arch="sm_80", cpu=None, cpu_features=""):
    from . import api
    try:
        return _warnings_to_stderr(api.compile, path, target=target, fast_math=fast_math, gpu_arch=gpu_arch,
                                   cpu=cpu, cpu_features=cpu_features)
    except api.TargetUnavailable as ex:
        raise UserError(str(ex)) from None


def cmd_run(args):
    text, file = _source(args.file)
    target = args.target
    if args.func is None:
        return _run_examples(file, text, target, args.json, args.fast_math, args.gpu_arch, _cpu_options(args))
    kwargs = {}
    for item in args.values:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UserError(f"arguments are written NAME=VALUE, got {item!r}")
        if "." in name:            # p.W1=...: one field of the record p
            record, _, field = name.partition(".")
            kwargs.setdefault(record, {})
            if not isinstance(kwargs[record], dict):
                raise UserError(f"{name}: {record} is given as a whole and by its fields")
            kwargs[record][field] = parse_value(value, name)
            continue
        kwargs[name] = parse_value(value, name)
    module = _compile(file, target, args.fast_math, args.gpu_arch, **_cpu_options(args))
    outs = _call(module, args.func, kwargs)
    if args.json:
        print(json.dumps({"function": args.func, "outputs": [_jsonable(o) for o in outs]}))
    else:
        print(_format(outs))
    return 0


def _run_examples(file, text, target, as_json, fast_math=False, gpu_arch="sm_80", cpu_opts=None):
    cpu_opts = cpu_opts or {}
    from .frontend.examples import ExampleError, mismatch, parse_examples
    try:
        ex = parse_examples(text)
    except ExampleError as e:
        raise UserError(f"{file}: {e}") from None
    if ex.errors:
        try:
            _compile(file, target, fast_math, gpu_arch, **cpu_opts)
        except CompileError as err:
            print(str(err), file=sys.stderr)
            missing = [s for s in ex.errors if s not in str(err)]
            if missing:
                print(f"{file}: the error does not say: {missing[0]!r}", file=sys.stderr)
                return 1
            print(f"{file}: fails to compile, as expected")
            return 0
        print(f"{file}: expected a compile error, but it compiled", file=sys.stderr)
        return 1
    if not ex.calls:
        raise UserError(f"{file} carries no example calls (# CALL: lines); name a function to run")
    module = _compile(file, target, fast_math, gpu_arch, **cpu_opts)
    failed = 0
    for c in ex.calls:
        outs = _call(module, c.func, c.args)
        bad = mismatch(outs, c)
        failed += bad is not None
        args = ", ".join(f"{k}={json.dumps(v)}" for k, v in c.args.items())
        if as_json:
            print(json.dumps({"function": c.func, "outputs": [_jsonable(o) for o in outs]}))
        else:
            status = "" if c.expect is None else ("  ok" if bad is None else f"  MISMATCH: {bad}")
            print(f"{c.func}({args}) -> {_format(outs)}{status}")
    return 1 if failed else 0


# ---- check and graph

def cmd_check(args):
    from .check import check_program
    text, file = _source(args.file)
    mod = _lower(text, file)
    report, ok = check_program(mod, text, args.func, seed=args.seed, rtol=args.rtol,
                               at_examples=args.at_examples)
    print(report)
    return 0 if ok else 1


def cmd_graph(args):
    from .graph import to_dot, write_graph
    text, file = _source(args.file)
    mod = _lower(text, file)
    if args.func not in mod.graphs:
        raise UserError(f"no function '{args.func}' in {file}; it has: {', '.join(mod.graphs)}")
    dot = to_dot(mod, args.func, optimized=not args.unoptimized)
    if args.output is None:
        print(dot)
    else:
        write_graph(dot, args.output)
        print(f"wrote {args.output}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with 1, as other mistakes do: 2 says gradc itself failed."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def make_parser():
    p = _Parser(prog="gradc", description="Compile .ad programs and their derivatives.")
    p.add_argument("--version", action="version", version=f"gradc {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile a program (or print a stage with --emit)")
    b.add_argument("file")
    b.add_argument("-o", "--output")
    b.add_argument("--target", default=None, help="cpu (default), cuda, cuda-sim")
    b.add_argument("--gpu-arch", default="sm_80", choices=ARCHS,
                   help="the GPU architecture of target cuda's PTX (default sm_80)")
    b.add_argument("--fast-math", action="store_true", help="let native code reassociate and assume finite values")
    b.add_argument("--cpu", choices=CPUS, help="compile for this CPU instead of this machine's (cpu target)")
    b.add_argument("--cpu-features", metavar="FEATS", default="",
                       help="LLVM CPU features to turn on or off, e.g. -avx512f (cpu target)")
    b.add_argument("--emit", choices=STAGES)
    b.add_argument("--print-after", metavar="PASS", help="with --emit opt-ir: print the graph after PASS")
    b.add_argument("--size", metavar="DIM=N", action="append", default=[],
                   help="with --emit memory: a dimension's size, to give the bytes as numbers too")
    b.add_argument("--sign-key", metavar="FILE",
                   help="sign the module with the key in FILE (HMAC-SHA256); gradc.load(path, key=) checks it")
    r = sub.add_parser("run", help="run a function, or the example calls the program carries")
    r.add_argument("file")
    r.add_argument("func", nargs="?")
    r.add_argument("values", nargs="*", metavar="NAME=VALUE")
    r.add_argument("--target", default=None, help="cpu (default), reference, cuda, cuda-sim")
    r.add_argument("--gpu-arch", default="sm_80", choices=ARCHS, help="the GPU architecture for target cuda")
    r.add_argument("--fast-math", action="store_true", help="let native code reassociate and assume finite values")
    r.add_argument("--cpu", choices=CPUS, help="compile for this CPU instead of this machine's (cpu target)")
    r.add_argument("--cpu-features", metavar="FEATS", default="",
                       help="LLVM CPU features to turn on or off, e.g. -avx512f (cpu target)")
    r.add_argument("--json", action="store_true")
    c = sub.add_parser("check", help="compare gradients with central finite differences (float64)")
    c.add_argument("file")
    c.add_argument("func", nargs="?")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--rtol", type=float, default=1e-5)
    c.add_argument("--at-examples", action="store_true",
                   help="check at the values of the file's example calls, not at random points")
    g = sub.add_parser("graph", help="the forward and adjoint graph as Graphviz DOT, SVG or PNG")
    g.add_argument("file")
    g.add_argument("func")
    g.add_argument("-o", "--output")
    g.add_argument("--unoptimized", action="store_true",
                   help="every node of the graph before optimization, unused gradients included")
    return p


def _version():
    from . import __version__
    return __version__


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if hasattr(args, "target"):
            from . import api
            args.target_given = args.target is not None
            args.target = args.target or getattr(api, "DEFAULT_TARGET", api.TARGETS[0])
            if args.target not in api.TARGETS:
                raise UserError(f"unknown target {args.target!r}; choose one of: {', '.join(api.TARGETS)}")
        if getattr(args, "cpu_features", ""):
            try:
                Options(cpu_features=args.cpu_features)
            except ValueError as ex:
                raise UserError(str(ex)) from None
        if args.cmd == "run" and args.func is not None and "=" in args.func:
            raise UserError("name the function to call before its arguments: gradc run FILE FUNC NAME=VALUE")
        return {"build": cmd_build, "run": cmd_run, "check": cmd_check, "graph": cmd_graph}[args.cmd](args)
    except CompileError as ex:
        print(str(ex), file=sys.stderr)
        return 1
    except BrokenPipeError:              # `gradc ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")
        return 141
    except (UserError, OSError) as ex:
        print(f"gradc: error: {ex}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as ex:              # gradc's own fault: say so, and what to report
        cause = ex.__cause__ if isinstance(ex, InternalError) and ex.__cause__ is not None else ex
        command = shlex.join(["gradc"] + list(sys.argv[1:] if argv is None else argv))
        print(internal_error(cause, args.file, _version(), command), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
