"""The pieces of MLIR text every part of the emitter writes: types, maps, symbols, locations."""
from __future__ import annotations

import re

from ....frontend.diagnostics import CompileError
from .scalar import ELEM


def ttype(shape, dtype) -> str:
    """The tensor type of a value: `?` for a symbolic dimension, a bool held as i8."""
    dims = "".join(f"{d}x" if isinstance(d, int) else "?x" for d in shape)
    return f"tensor<{dims}{ELEM[dtype]}>"


def amap(n, exprs) -> str:
    loops = ", ".join(f"d{k}" for k in range(n))
    return f"affine_map<({loops}) -> ({', '.join(exprs)})>"


def indent(lines, by="  ") -> str:
    return "\n".join(by + ln.replace("\n", "\n" + by) for ln in lines)


def symbol(name: str) -> str:
    """A function name as an MLIR symbol: bare where it is an identifier, else quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$.]*", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def loc_text(loc) -> str:
    if loc is None:
        return ""
    name = str(loc.file).replace("\\", "\\\\").replace('"', '\\"')
    return f' loc("{name}":{loc.line}:{loc.col})'


class Unsupported(CompileError):
    """A construct the MLIR output (or the iree target) cannot express yet."""
    unsupported = True
