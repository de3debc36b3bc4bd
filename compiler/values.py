"""Compile-time values of the lowering besides IR values: dimension names, dtypes, functions."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DimRef:
    """A dimension name of the enclosing function's signature, bound to its size."""
    name: str
    value: object


@dataclass(frozen=True)
class DType:
    """A dtype named in an expression, as in cast(x, f64)."""
    name: str


class FnValue:
    """A function as a value: a user fn (UserFn) or a derivative transform of one (Derived)."""
    name: str
