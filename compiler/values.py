"""Compile-time values of the lowering besides IR values: dimension names, dtypes, functions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frontend import ast as A


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


@dataclass(eq=False)
class UserFn(FnValue):
    defn: A.FnDef
    module: "Lowering"

    @property
    def name(self):
        return self.defn.name

    @property
    def typed(self) -> bool:
        return all(p.type is not None for p in self.defn.params)


@dataclass(eq=False)
class Derived(FnValue):
    kind: str
    base: FnValue
    wrt: tuple
    wrt_locs: tuple
    loc: object
    base_loc: object
    name: str = ""
    checkpoint: int = 0           # checkpoint=: 0 none, -1 every ceil(sqrt(n))-th state, k every k-th
    axes: object = 0              # vmap's axes=: 0, None, or a tuple of them (one per parameter)
    axes_loc: object = None
    mode: str = ""                # jacobian's mode=: "forward", "reverse", or "" (by the sizes)


def is_const(x):
    """A compile-time constant: a Python number or bool, or an array literal."""
    return isinstance(x, (bool, int, float, np.ndarray))
