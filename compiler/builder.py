"""The emitter: builds graph nodes through the op registry, checking shapes as it goes."""
from __future__ import annotations

import itertools
from functools import partial

import numpy as np

from .ir import FLOATS, INTS, Graph, Node, ShapeError, Value
from .ops import COMPOSITES, OPS, broadcast_shapes

_ids = itertools.count(1)


def fresh(shape, dtype) -> Value:
    return Value(next(_ids), tuple(shape), dtype)


class Emitter:
    """Appends nodes in topological order; `e.mul(a, b)` emits op "mul", numbers become constants."""

    def __init__(self, nodes=(), loc=None):
        self.nodes = list(nodes)
        self.loc = loc

    def emit(self, op, *ins, **attrs) -> Value:
        ins = self._values(op, ins)
        attrs = tuple(sorted(attrs.items()))
        return self.add_node(op, ins, attrs, self.loc)

    def add_node(self, op, ins, attrs, loc) -> Value:
        try:
            shape, dtype = OPS[op].shape(*ins, **dict(attrs))
        except ShapeError as ex:
            raise ShapeError(f"{op}: {ex}") from None
        out = fresh(shape, dtype)
        self.nodes.append(Node(op, tuple(ins), out, attrs, loc))
        return out

    def __getattr__(self, name):
        op = name.rstrip("_")            # and_, or_, not_: Python keywords
        if op in OPS:
            return partial(self.emit, op)
        if op in COMPOSITES:
            return partial(COMPOSITES[op], self)
        raise AttributeError(name)

    def _values(self, op, ins):
        vals = [v for v in ins if isinstance(v, Value)]
        typed = [v.dtype for v in vals if v.dtype != "bool"] or [v.dtype for v in vals]
        out = []
        for v in ins:
            if isinstance(v, np.ndarray):          # an array literal
                dtype = typed[0] if typed else literal_dtype(v.flat[0].item() if v.size else 0.0)
                v = self.array(v, dtype)
            elif isinstance(v, str):             # a string literal is an option's value only
                raise ShapeError(f"expected an array value, got the string {v!r}")
            elif not isinstance(v, Value):
                v = self.const(v, typed[0] if typed else literal_dtype(v))
            out.append(v)
        return out

    def array(self, data: np.ndarray, dtype) -> Value:
        if data.dtype.kind == "f" and dtype in INTS and not np.all(np.mod(data, 1) == 0):
            raise ShapeError(f"a floating-point array literal cannot be used with {dtype} values; use cast")
        if dtype in INTS and data.size:
            for v in (data.min(), data.max()):
                check_int_range(v.item() if hasattr(v, "item") else v, dtype)
        return self.add_node("literal", (), (("data", tuple(data.ravel().tolist())), ("dtype", dtype),
                                             ("shape", data.shape)), self.loc)

    def const(self, value, dtype, shape=()) -> Value:
        if isinstance(value, float) and dtype in INTS and not value.is_integer():
            raise ShapeError(f"a floating-point literal ({value}) cannot be used with {dtype} values; use cast")
        if dtype == "bool":
            value = bool(value)
        elif dtype in INTS:
            value = int(value)
            check_int_range(value, dtype)
        else:
            value = float(value)
        return self.add_node("const", (), (("dtype", dtype), ("shape", tuple(shape)), ("value", value)),
                             self.loc)

    def zeros_like(self, x: Value) -> Value:
        return self.const(0, x.dtype, x.shape)

    def sum_to(self, g: Value, shape) -> Value:
        """Sum g over the axes that broadcasting added to a value of this shape."""
        shape = tuple(shape)
        if g.shape == shape:
            return g
        if broadcast_shapes(g.shape, shape) != g.shape:
            return self.broadcast_to(g, shape=shape)
        lead = len(g.shape) - len(shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                          if d == 1 and g.shape[lead + i] != 1)
        s = self.sum(g, axes=axes, keepdims=True)
        return self.reshape(s, shape=shape) if s.shape != shape else s

    def call(self, graph: Graph, *args) -> tuple:
        """Inline graph with its parameters bound to args; returns its outputs."""
        from .control import fresh_trips
        graph = fresh_trips(graph)
        env = dict(zip(graph.params, args))
        for n in graph.nodes:
            env[n.out] = self.add_node(n.op, tuple(env[i] for i in n.ins), n.attrs, n.loc)
        return tuple(env[o] for o in graph.outputs)


INT_RANGE = {"i32": (-2 ** 31, 2 ** 31 - 1), "i64": (-2 ** 63, 2 ** 63 - 1)}


def check_int_range(value: int, dtype: str):
    """A literal of an integer type must fit it: gradc never wraps a constant silently."""
    lo, hi = INT_RANGE[dtype]
    if not lo <= value <= hi:
        raise ShapeError(f"the integer literal {value} is out of range for {dtype} "
                         f"({lo} to {hi})")


def literal_dtype(v) -> str:
    if isinstance(v, bool):
        return "bool"
    return "i64" if isinstance(v, int) else "f64"


def is_float(v: Value) -> bool:
    return v.dtype in FLOATS
