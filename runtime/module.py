"""Compiled functions as Python callables: argument checks, output buffers, accumulation."""
from __future__ import annotations

import inspect

import numpy as np

from ..vocab import NP_DTYPES, dim_parts, dim_value, type_str  # noqa: F401

_TOO_HARD = getattr(np, "exceptions", np).TooHardError


# the exceptions a size requirement or a run-time check may raise (a module header names them)
ERRORS = {"IndexError": IndexError, "ValueError": ValueError}


class Signature:
    """A function's parameters and results: (name, dtype, shape) with symbolic dims as names.

    needs: the size requirements its ops put on the symbolic dims (compiler/checks.py), each
    {"error", "dim", "min", "message"}: dim must be at least min, or the call raises error with
    the message ("{size}" in it replaced by the actual size). Function.check tests them.

    records: None, or where records are among the parameters and results (params and outputs
    are then their fields one by one, and out_tuple is true): {"params": [[name, struct or None,
    fields or None], ...], "outputs": [[struct, fields] or None, ...], "out_tuple": bool, as the
    program sees it}; runtime/records.py packs and unpacks.
    """

    def __init__(self, name, params, outputs, out_tuple, needs=(), records=None):
        self.name = name
        if records is not None:
            from .records import check_layout
            check_layout(name, records)
        self.records = records
        self.params = tuple((n, d, tuple(s)) for n, d, s in params)
        self.outputs = tuple((d, tuple(s)) for d, s in outputs)
        self.out_tuple = out_tuple
        self.needs = tuple(dict(n) for n in needs)
        self._tests = []                  # (symbol, offset, least size, requirement), parsed once
        for n in self.needs:
            if n.get("error") not in ERRORS or not isinstance(n.get("min"), int) or \
                    not isinstance(n.get("dim"), str) or not isinstance(n.get("message"), str):
                raise ValueError(f"{name}: malformed size requirement {n!r:.200}")
            sym, off = dim_parts(n["dim"])
            self._tests.append((sym, off, n["min"] - off, n))

    def __str__(self):
        if self.records is not None:
            from .records import user_signature
            return user_signature(self)
        ps = ", ".join(f"{n}: {type_str(s, d)}" for n, d, s in self.params)
        outs = [type_str(s, d) for d, s in self.outputs]
        ret = f"({', '.join(outs)})" if self.out_tuple else outs[0]
        return f"{self.name}({ps}) -> {ret}"

    def to_json(self):
        d = {"name": self.name, "params": [list(p) for p in self.params],
             "outputs": [list(o) for o in self.outputs], "out_tuple": self.out_tuple,
             "needs": [dict(n) for n in self.needs]}
        if self.records is not None:
            d["records"] = self.records
        return d

    @classmethod
    def from_json(cls, d):
        return cls(d["name"], d["params"], d["outputs"], d["out_tuple"], d["needs"], d.get("records"))

    def check_needs(self, dims: dict):
        """Raise the first size requirement the bound dims break (IndexError or ValueError)."""
        for sym, off, least, n in self._tests:
            size = dims.get(sym)
            if size is not None and size < least:      # None: a dim no parameter binds by its name
                raise ERRORS[n["error"]](f"{self.name}: " + n["message"].replace("{size}", str(size + off)))

    def output_shapes(self, dims: dict) -> list:
        return [tuple(dim_value(x, dims) for x in s) for _, s in self.outputs]


def check_failed(fn_name: str, error: str, message: str, value) -> Exception:
    """The exception of a failed run-time check (the error channel, docs/internals.md): the same
    on every target. message has "{value}" where the offending value goes."""
    return ERRORS.get(error, ValueError)(f"{fn_name}: " + message.replace("{value}", str(value)))


def _kind(dtype):
    return {"f32": "f", "f64": "f", "i32": "i", "i64": "i", "bool": "b"}[dtype]


class Function:
    """One compiled function. Call it with NumPy arrays or Python numbers, by position or name."""

    def __init__(self, sig: Signature, execute, module_name="module"):
        self.sig = sig
        self._execute = execute           # (arrays, dims) -> list of arrays
        self.__name__ = sig.name
        self.__qualname__ = sig.name
        self.__doc__ = f"{sig}\n\nCompiled by gradc from {module_name}."
        # (a record's fields, p.W1, are no Python names: RecordFunction has the signature then)
        params = [inspect.Parameter(n if sig.records is None else f"_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for i, (n, _, _) in enumerate(sig.params)]
        params += [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None),
                   inspect.Parameter("accumulate", inspect.Parameter.KEYWORD_ONLY, default=False)]
        self.__signature__ = inspect.Signature(params)
        self._names = {n: i for i, (n, _, _) in enumerate(sig.params)}
        self._zero_d = [i for i, (_, s) in enumerate(sig.outputs) if not s]

    def __repr__(self):
        return f"<gradc function {self.sig}>"

    def _bind(self, args, kwargs):
        n = len(self.sig.params)
        if len(args) > n:
            raise TypeError(f"{self.sig.name}() takes {n} argument(s), but {len(args)} were given")
        vals = list(args) + [None] * (n - len(args))
        given = [True] * len(args) + [False] * (n - len(args))
        for k, v in kwargs.items():
            i = self._names.get(k)
            if i is None:
                raise TypeError(f"{self.sig.name}() got an unexpected argument '{k}'")
            if given[i]:
                raise TypeError(f"{self.sig.name}() got two values for '{k}'")
            vals[i], given[i] = v, True
        missing = [self.sig.params[i][0] for i in range(n) if not given[i]]
        if missing:
            raise TypeError(f"{self.sig.name}() is missing argument(s): {', '.join(missing)}")
        return vals

    def check(self, args, kwargs):
        """Arrays in the declared dtypes and the bound symbolic dims, or TypeError/ValueError."""
        vals = self._bind(args, kwargs)
        arrays, dims, origin = [], {}, {}
        for (name, dtype, shape), v in zip(self.sig.params, vals):
            arrays.append(self._convert(name, dtype, shape, v))
            a = arrays[-1]
            if a.ndim != len(shape):
                raise ValueError(f"{self.sig.name}: parameter '{name}' expects {type_str(shape, dtype)} "
                                 f"(rank {len(shape)}), got an array of shape {a.shape} (rank {a.ndim})")
            for axis, (want, got) in enumerate(zip(shape, a.shape)):
                if isinstance(want, int):
                    if want != got:
                        raise ValueError(f"{self.sig.name}: parameter '{name}' expects "
                                         f"{type_str(shape, dtype)}, got shape {a.shape}")
                elif want in dims and dims[want] != got:
                    raise ValueError(f"{self.sig.name}: dimension {want} is {dims[want]} from "
                                     f"{origin[want]}, but parameter '{name}' has {want} = {got} "
                                     f"(shape {a.shape})")
                else:
                    dims.setdefault(want, got)
                    origin.setdefault(want, f"parameter '{origin.get(want, name)}'")
        if self.sig.needs:
            self.sig.check_needs(dims)
        for _, s in self.sig.outputs:
            for d in s:
                if not isinstance(d, int) and dim_value(d, dims) < 0:
                    raise ValueError(f"{self.sig.name}: a result would have dimension {d} = "
                                     f"{dim_value(d, dims)}; the inputs are too small")
        return arrays, dims

    def _convert(self, name, dtype, shape, v):
        want = NP_DTYPES[dtype]
        if isinstance(v, np.ndarray) or np.isscalar(v) and isinstance(v, np.generic):
            a = np.asarray(v)
            if a.dtype != want:
                raise TypeError(f"{self.sig.name}: parameter '{name}' expects {type_str(shape, dtype)}, "
                                f"got an array of dtype {a.dtype} (convert it with .astype(np.{want.__name__}))")
            return a
        try:
            a = np.asarray(v)
        except (ValueError, TypeError):
            raise TypeError(f"{self.sig.name}: parameter '{name}' expects {type_str(shape, dtype)}, "
                            f"got {type(v).__name__}") from None
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise TypeError(f"{self.sig.name}: parameter '{name}' expects {type_str(shape, dtype)}, "
                            f"got {type(v).__name__} {v!r:.60}")
        kind = _kind(dtype)
        if (kind == "i" and a.dtype.kind == "f") or (kind == "b" and a.dtype.kind != "b"):
            raise TypeError(f"{self.sig.name}: parameter '{name}' expects {type_str(shape, dtype)}, "
                            f"got {a.dtype.name} values {v!r:.60}")
        if kind == "i" and a.size and not np.can_cast(a.dtype, want):
            # astype would wrap 2**32 + 1 to 1 without a word
            info = np.iinfo(want)
            for x in (a.min(), a.max()):
                if not info.min <= int(x) <= info.max:
                    raise ValueError(f"{self.sig.name}: parameter '{name}' expects "
                                     f"{type_str(shape, dtype)}, got the value {int(x)}, out of "
                                     f"the range of {dtype} ({info.min} to {info.max})")
        return a.astype(want)

    def __call__(self, *args, out=None, accumulate=False, **kwargs):
        arrays, dims = self.check(args, kwargs)
        results = self._execute(arrays, dims)
        if out is not None:
            results = self._into(out, results, accumulate)
            return tuple(results) if self.sig.out_tuple else results[0]
        if accumulate:
            raise ValueError(f"{self.sig.name}: accumulate=True needs out= buffers to add into")
        return self._results(results)

    def _results(self, results):
        """What a call returns: a scalar result as a NumPy scalar of its dtype, as NumPy's reductions give."""
        if self._zero_d:
            results = list(results)
            for i in self._zero_d:
                results[i] = results[i][()]
        return tuple(results) if self.sig.out_tuple else results[0]

    def _into(self, out, results, accumulate):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(results):
            raise ValueError(f"{self.sig.name}: out= needs {len(results)} array(s), got {len(outs)}")
        self._check_disjoint(outs)
        for i, (o, r) in enumerate(zip(outs, results)):
            if not isinstance(o, np.ndarray) or o.shape != r.shape or o.dtype != r.dtype:
                got = f"{o.dtype}{list(o.shape)}" if isinstance(o, np.ndarray) else type(o).__name__
                raise ValueError(f"{self.sig.name}: out[{i}] must be a {r.dtype} array of shape "
                                 f"{r.shape}, got {got}")
            if not o.flags.writeable:
                raise ValueError(f"{self.sig.name}: out[{i}] is read-only")
            if accumulate:
                o += r
            else:
                o[...] = r
        return list(outs)


    def _check_disjoint(self, outs):
        """Two out= buffers that share memory would each hold a result: ValueError. (A buffer that
        shares memory with an input is fine: results are computed before any is written.)"""
        arrays = [o for o in outs if isinstance(o, np.ndarray)]
        for i, a in enumerate(arrays):
            for j in range(i + 1, len(arrays)):
                if overlap(a, arrays[j]):
                    raise ValueError(f"{self.sig.name}: out[{i}] and out[{j}] share memory; "
                                     f"each result needs a buffer of its own")


def overlap(a, b) -> bool:
    """Whether two arrays share memory; a case too hard to decide exactly counts as sharing."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=10_000)
    except _TOO_HARD:
        return True


class Module:
    """A compiled module: every exported function is an attribute."""

    def __init__(self, name, functions: dict, target: str):
        self.__name__ = name
        self.target = target
        if any(f.sig.records is not None for f in functions.values()):
            from .records import RecordFunction       # imported only for programs with records
            functions = {k: RecordFunction(f) if f.sig.records is not None and not isinstance(f, RecordFunction)
                         else f for k, f in functions.items()}
        self._functions = dict(functions)
        self._records = {}
        for k, f in functions.items():
            setattr(self, k, f)
            self._records.update(getattr(f, "records", {}))
        for k, t in self._records.items():
            if k not in self._functions:
                setattr(self, k, t)        # m.Mlp(W1=..., ...): a record to pass in

    @property
    def records(self) -> dict:
        """{struct name: its named tuple type} of the records the functions take or return."""
        return dict(self._records)

    @property
    def functions(self) -> dict:
        return dict(self._functions)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._functions) | set(self._records))

    def __getattr__(self, name):
        raise AttributeError(f"module {self.__name__} has no function '{name}'; it has: "
                             f"{', '.join(self._functions) or 'none'}")

    def __repr__(self):
        lines = [f"<gradc module {self.__name__} ({self.target})"]
        lines += [f"  {f.sig}" for f in self._functions.values()]
        return "\n".join(lines) + ">"
