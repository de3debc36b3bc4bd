"""Records (`struct`): compile-time values made of named fields, flattened in graphs.

A record is a value of the lowering, like a tuple: its fields are IR values. A graph takes and
returns the fields one by one (a parameter `p` of a record type is the parameters `p.W1`,
`p.b1`, ...); its `layout` keeps the structure for the signature, the runtime and the
derivative transforms: `(params, outputs)`, one entry per parameter or output as the program
sees it, `None` for an array value and `(struct, field names)` for a record of that many
consecutive flat values.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..frontend.diagnostics import CompileError
from .ir import FLOATS, Value, type_str


@dataclass(frozen=True)
class Struct:
    """A declared record type: its fields' names and declared types, in order."""
    name: str
    fields: tuple             # (name, dims, dtype)
    loc: object = None

    @property
    def names(self) -> tuple:
        return tuple(f[0] for f in self.fields)


@dataclass(frozen=True)
class RecordValue:
    struct: str
    names: tuple
    values: tuple             # Values, in field order

    def get(self, name):
        return self.values[self.names.index(name)] if name in self.names else None


@dataclass(frozen=True)
class RecordType:
    """A record argument's type, as instantiate keys and parameters take it."""
    struct: str
    names: tuple
    types: tuple              # (shape, dtype) per field


def type_of(v):
    if isinstance(v, RecordValue):
        return RecordType(v.struct, v.names, tuple((x.shape, x.dtype) for x in v.values))
    return (v.shape, v.dtype)


def flat_types(types) -> list:
    out = []
    for t in types:
        out += list(t.types) if isinstance(t, RecordType) else [t]
    return out


def flatten(vals) -> list:
    out = []
    for v in vals:
        out += list(v.values) if isinstance(v, RecordValue) else [v]
    return out


def entry(v):
    """The layout entry of one value."""
    return (v.struct, v.names) if isinstance(v, RecordValue) else None


def width(e) -> int:
    return 1 if e is None else len(e[1])


def group(flat, entries) -> list:
    """Flat values back into values and records, by layout entries."""
    out, k = [], 0
    for en in entries:
        if en is None:
            out.append(flat[k])
        else:
            out.append(RecordValue(en[0], tuple(en[1]), tuple(flat[k:k + len(en[1])])))
        k += width(en)
    out += list(flat[k:])
    return out


def param_entries(g) -> list:
    return list(g.layout[0]) if g.layout else [None] * len(g.params)


def output_entries(g) -> list:
    return list(g.layout[1]) if g.layout else [None] * len(g.outputs)


def has_records(layout) -> bool:
    return bool(layout) and any(en is not None for part in layout for en in part)


def user_params(g) -> list:
    """(name, entry, flat values) of each parameter as the program sees it."""
    out, k = [], 0
    for en in param_entries(g):
        w = width(en)
        name = g.param_names[k] if en is None else g.param_names[k].split(".")[0]
        out.append((name, en, g.params[k:k + w]))
        k += w
    return out


def expand_wrt(g, wrt) -> tuple:
    """Flat names of the wrt names (a record parameter stands for all its fields), and a layout
    entry for each wrt name."""
    records = {name: en for name, en, _ in user_params(g) if en is not None}
    flat, entries = [], []
    for name in wrt:
        en = records.get(name)
        if en is None:
            flat.append(name)
            entries.append(None)
            continue
        flat += [f"{name}.{f}" for f in en[1]]
        entries.append(en)
    return tuple(flat), entries


def check_record(struct: Struct, v, what, loc, dims=None):
    """v is a record of struct whose fields have the declared types (dims bound as they go)."""
    if not isinstance(v, RecordValue) or v.struct != struct.name:
        got = f"a record of type {v.struct}" if isinstance(v, RecordValue) else (
            f"a value of type {v.type}" if isinstance(v, Value) else "something else")
        raise CompileError(f"{what}: expected a record of type {struct.name}, got {got}", loc)
    dims = {} if dims is None else dims
    for (name, wdims, wdtype), x in zip(struct.fields, v.values):
        if not fits(x, wdims, wdtype, dims):
            raise CompileError(f"{what}: field {name} of {struct.name} is {type_str(wdims, wdtype)}, "
                               f"got {x.type}", loc)
    return dims


def fits(x: Value, wdims, wdtype, dims: dict) -> bool:
    """Whether x has the declared type, binding its dimension names in dims."""
    ok = x.dtype == wdtype and len(x.shape) == len(wdims)
    for wd, d in zip(wdims, x.shape) if ok else ():
        ok = ok and (wd == d if isinstance(wd, int) else dims.setdefault(wd, d) == d)
    return ok


def is_float_record(v) -> bool:
    return isinstance(v, RecordValue) and all(x.dtype in FLOATS for x in v.values)
