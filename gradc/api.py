"""The Python entry points: compile a .ad program and call its functions."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from .compiler import interp
from .compiler.pipeline import lower, optimize
from .frontend.diagnostics import CompileError, render
from .runtime.module import Function, Module, Signature

TARGETS = ("reference",)


class GradcWarning(UserWarning):
    """A warning about a .ad program, such as a gradient that is always zero."""


def read_source(src) -> tuple[str, str]:
    """(text, file name) of a path or of source text."""
    if isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src
                                        and src.strip().endswith(".ad")):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"no such .ad file: {path}")
        return path.read_text(), str(path)
    if not isinstance(src, str):
        raise TypeError(f"gradc.compile takes a path or source text, not {type(src).__name__}")
    return src, "<source>"


def signature(g) -> Signature:
    return Signature(g.name, [(n, p.dtype, p.shape) for n, p in zip(g.param_names, g.params)],
                     [(o.dtype, o.shape) for o in g.outputs], g.out_tuple)


def lower_checked(text, file):
    """Lower a program; compile errors come back rendered with the source line."""
    try:
        mod = lower(text, file)
    except CompileError as ex:
        ex.args = (ex.render({file: text}),)
        raise
    for msg, loc in mod.diagnostics.warnings:
        warnings.warn(render("warning", msg, loc, (), {file: text}), GradcWarning, stacklevel=3)
    return mod


def compile(src, target: str = "reference") -> Module:
    """Compile a .ad program (a path or source text) into a module of callable functions."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    text, file = read_source(src)
    mod = lower_checked(text, file)
    functions = {}
    for name, g in mod.graphs.items():
        opt = optimize(g)
        functions[name] = Function(signature(g), _reference(opt), Path(file).name)
    return Module(Path(file).stem, functions, target)


def _reference(g):
    def execute(arrays, dims):
        return interp.run(g, arrays)
    return execute
