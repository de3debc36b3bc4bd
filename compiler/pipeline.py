"""From source text to lowered, differentiated and optimized graphs: the stages `--emit` names."""
from __future__ import annotations

from ..frontend.parse import parse
from .autodiff import strip_detach
from .lower_ast import Module, lower_program
from .passes import PIPELINE


def frontend(source: str, file: str = "<source>"):
    return parse(source, file)


def lower(source: str, file: str = "<source>") -> Module:
    """Parse and lower: graphs with their derivatives, before optimization (`grad-ir`)."""
    return lower_program(parse(source, file), file, source)


def optimize(g, print_after=None, verify=None):
    g = strip_detach(g)
    for name, fn in PIPELINE:
        g = fn(g)
        if verify is not None:
            verify(g)
        if print_after == name:
            print(f"// after {name}\n{g}")
    return g


def compile_module(source: str, file: str = "<source>", opt: bool = True) -> Module:
    mod = lower(source, file)
    if opt:
        mod.graphs = {k: optimize(g) for k, g in mod.graphs.items()}
    return mod
