"""Records across the Python boundary: a dict, dataclass or named tuple in, a named tuple out.

A compiled function takes and returns a record's fields one by one (parameters `p.W1`,
`p.b1`, ...); its Signature's `records` keeps the structure, and RecordFunction packs and
unpacks around the flat function.
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
import keyword
import threading
from collections.abc import Mapping

_types = {}
_lock = threading.Lock()


def record_type(struct: str, fields) -> type:
    """The named tuple type of a struct: one class per name and fields in a process, so two
    modules (or a module loaded twice) give the same type."""
    key = (struct, tuple(fields))
    with _lock:
        t = _types.get(key)
        if t is None:
            t = _types[key] = collections.namedtuple(struct, fields)
            t.__module__ = "gradc.records"
            t.__doc__ = f"The gradc record {struct} {{{', '.join(fields)}}}."
        return t


def check_layout(name, records):
    """A signature's `records` as a module header stores it, or ValueError."""
    def entry(e, with_name):
        if with_name:
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)):
                return False
            e = e[1:]
        if e is None or e == [None, None]:
            return True
        return (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and e[0].isidentifier()
                and not keyword.iskeyword(e[0]) and isinstance(e[1], list) and e[1] and
                all(isinstance(f, str) and f.isidentifier() and not f.startswith("_") and
                    not keyword.iskeyword(f) for f in e[1]) and len(set(e[1])) == len(e[1]))
    ok = isinstance(records, dict) and isinstance(records.get("params"), list) and \
        isinstance(records.get("outputs"), list) and isinstance(records.get("out_tuple"), bool) and \
        all(entry(e, True) for e in records["params"]) and all(entry(e, False) for e in records["outputs"])
    if not ok:
        raise ValueError(f"{name}: malformed record layout {records!r:.200}")


def width(entry) -> int:
    return 1 if entry is None or entry[0] is None else len(entry[1])


def user_signature(sig) -> str:
    """loss(p: Mlp, x: f32[N, D]) -> Mlp: the signature as the program wrote it."""
    from ..vocab import type_str
    rec, k, ps = sig.records, 0, []
    for name, struct, fields in rec["params"]:
        if struct is None:
            _, d, s = sig.params[k]
            ps.append(f"{name}: {type_str(s, d)}")
            k += 1
        else:
            ps.append(f"{name}: {struct}")
            k += len(fields)
    outs, k = [], 0
    for e in rec["outputs"]:
        if e is None:
            d, s = sig.outputs[k]
            outs.append(type_str(s, d))
        else:
            outs.append(e[0])
        k += width(e)
    ret = f"({', '.join(outs)})" if rec["out_tuple"] else outs[0]
    return f"{sig.name}({', '.join(ps)}) -> {ret}"


def struct_fields(sig) -> dict:
    """{struct: "W1: f32[D, H], b1: ..."} of the records in a signature."""
    from ..vocab import type_str
    out, k = {}, 0
    for _, struct, fields in sig.records["params"]:
        if struct is None:
            k += 1
            continue
        out.setdefault(struct, ", ".join(f"{f}: {type_str(s, d)}" for f, (_, d, s) in
                                         zip(fields, sig.params[k:k + len(fields)])))
        k += len(fields)
    return out


class RecordFunction:
    """A compiled function whose parameters or results include records."""

    def __init__(self, inner):
        self._f = inner
        self.sig = inner.sig
        rec = inner.sig.records
        self._params = [(n, s, tuple(f) if f else None) for n, s, f in rec["params"]]
        self._outputs = [None if e is None else (e[0], tuple(e[1])) for e in rec["outputs"]]
        self._out_tuple = rec["out_tuple"]
        self.__name__ = self.__qualname__ = inner.sig.name
        text = user_signature(inner.sig)
        structs = "".join(f"\n  {k} {{{v}}}" for k, v in struct_fields(inner.sig).items())
        self.__doc__ = text + ("\n\nRecords:" + structs if structs else "") + \
            "\n\nA record is passed as a dict, dataclass or named tuple with its field names, and comes " \
            "back as a named tuple."
        self._text = text
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n, _, _ in self._params]
        params += [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None),
                   inspect.Parameter("accumulate", inspect.Parameter.KEYWORD_ONLY, default=False)]
        self.__signature__ = inspect.Signature(params)
        self._names = {n: i for i, (n, _, _) in enumerate(self._params)}

    def __repr__(self):
        return f"<gradc function {self._text}>"

    @property
    def records(self) -> dict:
        """{struct name: its named tuple type} of the records this function takes or returns."""
        out = {s: record_type(s, f) for _, s, f in self._params if s is not None}
        out.update({e[0]: record_type(*e) for e in self._outputs if e is not None})
        return out

    def _bind(self, args, kwargs):
        n, name = len(self._params), self.sig.name
        if len(args) > n:
            raise TypeError(f"{name}() takes {n} argument(s), but {len(args)} were given")
        vals = list(args) + [None] * (n - len(args))
        given = [True] * len(args) + [False] * (n - len(args))
        for k, v in kwargs.items():
            i = self._names.get(k)
            if i is None:
                raise TypeError(f"{name}() got an unexpected argument '{k}'")
            if given[i]:
                raise TypeError(f"{name}() got two values for '{k}'")
            vals[i], given[i] = v, True
        missing = [self._params[i][0] for i in range(n) if not given[i]]
        if missing:
            raise TypeError(f"{name}() is missing argument(s): {', '.join(missing)}")
        return vals

    def fields(self, what, struct, fields, v) -> list:
        """The field values of a record given as a dict, a dataclass or a named tuple."""
        if isinstance(v, Mapping):
            d = v
        elif isinstance(v, tuple) and hasattr(v, "_fields"):
            d = dict(zip(v._fields, v))
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            d = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        else:
            raise TypeError(f"{self.sig.name}: {what} expects a {struct} record (a dict, dataclass or "
                            f"named tuple with the fields {', '.join(fields)}), got {type(v).__name__}")
        missing = [f for f in fields if f not in d]
        if missing:
            raise TypeError(f"{self.sig.name}: {what} ({struct}) is missing the field(s) "
                            f"{', '.join(missing)}")
        extra = [k for k in d if k not in fields]
        if extra:
            raise TypeError(f"{self.sig.name}: {what} ({struct}) has no field {extra[0]!r}; its fields are "
                            f"{', '.join(fields)}")
        return [d[f] for f in fields]

    def _flat_out(self, out):
        entries = out if self._out_tuple else (out,)
        if self._out_tuple and (not isinstance(entries, (tuple, list)) or len(entries) != len(self._outputs)
                                or hasattr(entries, "_fields")):
            raise ValueError(f"{self.sig.name}: out= needs {len(self._outputs)} entries, one per result")
        flat = []
        for i, (e, o) in enumerate(zip(self._outputs, entries)):
            flat += [o] if e is None else self.fields(f"out[{i}]", e[0], e[1], o)
        return tuple(flat)

    def group(self, results) -> list:
        out, k = [], 0
        for e in self._outputs:
            if e is None:
                out.append(results[k])
                k += 1
            else:
                out.append(record_type(*e)(*results[k:k + len(e[1])]))
                k += len(e[1])
        return out

    def __call__(self, *args, out=None, accumulate=False, **kwargs):
        flat = []
        for (name, struct, fields), v in zip(self._params, self._bind(args, kwargs)):
            flat += [v] if struct is None else self.fields(f"parameter '{name}'", struct, fields, v)
        if out is not None:
            out = self._flat_out(out)
        res = self._f(*flat, out=out, accumulate=accumulate)
        res = self.group(res if isinstance(res, (tuple, list)) else (res,))
        return tuple(res) if self._out_tuple else res[0]
