"""The words every part of gradc shares: dtypes, type strings, dimensions and source locations.

The frontend, the compiler and the runtime all import them from here, so a dtype or a
dimension means one thing everywhere (and a module file's signatures parse as the compiler
wrote them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

DTYPES = ("f32", "f64", "i32", "i64", "bool")
FLOATS = ("f32", "f64")
INTS = ("i32", "i64")
NP_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "bool": np.bool_}
ITEMSIZE = {"f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}      # bytes in memory (a bool: one)


@dataclass(frozen=True, slots=True)
class Loc:
    """A position in a source file: what every diagnostic and every IR node points at."""
    file: str
    line: int
    col: int

    def __str__(self):
        return f"{self.file}:{self.line}:{self.col}"


def type_str(shape, dtype) -> str:
    """"f32[N, 3]", or "f32" for a scalar."""
    return f"{dtype}[{', '.join(str(d) for d in shape)}]" if shape else dtype


# Symbolic dimensions: a name, optionally with a constant offset ("N", "N-1", "N+3"); a name
# starting with # is the trip count of a loop (compiler/control.py), never a parameter's.
_DIM = re.compile(r"^(#?[A-Za-z_][A-Za-z_0-9]*)([+-]\d+)?$")


def dim_parts(d):
    """(symbol, offset) of a symbolic dim ("N-1" -> ("N", -1)); (None, d) of a constant one.
    ValueError for a string that is not a dimension."""
    if isinstance(d, int):
        return None, d
    m = _DIM.match(d) if isinstance(d, str) else None
    if m is None:
        raise ValueError(f"not a dimension: {d!r}")
    return m.group(1), int(m.group(2) or 0)


def dim_add(d, k: int):
    """The dimension d + k, kept symbolic where d is."""
    sym, off = dim_parts(d)
    if sym is None:
        return off + k
    off += k
    return sym if off == 0 else f"{sym}{off:+d}"


def dim_value(d, env: dict) -> int:
    """The size of dimension d when the symbols have the sizes in env."""
    sym, off = dim_parts(d)
    return off if sym is None else env[sym] + off


def concrete(shape, env: dict) -> tuple:
    return tuple(dim_value(d, env) for d in shape)


def symbols(shape) -> set:
    return {dim_parts(d)[0] for d in shape if not isinstance(d, int)}


def python_abi() -> str:
    """This interpreter's object layout, which native CPython entries depend on: implementation,
    version and ABI flags (free threading changes the object header), e.g. 'cpython-311'."""
    import sys
    import sysconfig
    flags = sysconfig.get_config_var("ABIFLAGS") or getattr(sys, "abiflags", "")
    return f"{sys.implementation.cache_tag}{flags}"
