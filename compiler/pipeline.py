"""From source text to lowered, differentiated and optimized graphs: the stages `--emit` names."""
from __future__ import annotations

from ..frontend.parse import parse
from .autodiff import strip_detach
from .control import map_bodies, merge_saves
from .lower_ast import Module, lower_program
from .rules import inline_rules
from .passes import PIPELINE


def lower(source: str, file: str = "<source>") -> Module:
    """Parse and lower: graphs with their derivatives, before optimization (`grad-ir`)."""
    return lower_program(parse(source, file), file, source)


def optimize(g, print_after=None, verify=None):
    """The optimized graph (`opt-ir`): calls of functions with rules inline, detach and hook become
    aliases, then the PIPELINE passes;
    verify runs after each pass, and print_after names a pass whose result is printed."""
    g = merge_saves(g)          # before the bodies are rewritten: it knows them by identity
    g = inline_rules(g)         # a function with rules of its own runs its body
    g = strip_detach(g)
    g = map_bodies(g, lambda b: optimize(b, verify=verify))     # loop and branch bodies first
    for name, fn in PIPELINE:
        g = fn(g)
        if verify is not None:
            verify(g)
        if print_after == name:
            print(f"// after {name}\n{g}")
    return g
