"""Batching (vmap): a graph transform that maps a function over a new leading axis, one rule per op.

`batch_graph(g, mapped, size)` gives the graph of g applied to every row of its mapped
parameters at once: each of those gets a leading axis of `size` (an int or a symbol), and every
value computed from one of them carries the batch on axis 0 too. Values computed from unmapped
parameters only stay as they are (computed once). Each op's batching rule is its registry
entry's `batch` field, `(b, node, ins, mapped) -> (value, mapped)`; the rules for the kinds of
op (elementwise, reductions, layout, matmul, loops and branches) are here. An op without one
goes through `fallback`: a `for` loop over the batch around that one op, its results stacked,
correct for any op the day it lands.
"""
from __future__ import annotations

from dataclasses import replace

from .ir import Graph, ShapeError, Value, graph_symbols, type_str
from .ops import OPS, defop, index_map

TUPLE = "tuple"
FULL = ("s", None, None, None)          # a slice spec entry that keeps a whole axis


class BatchError(Exception):
    """A value the batching transform cannot map (the message says which and why)."""


class Batch:
    """What a batching rule works with: the emitter its nodes go into and the batch size."""

    def __init__(self, e, size):
        self.e = e
        self.size = size

    def emit(self, n, ins, **attrs):
        """Node n again on new inputs, with some attributes replaced."""
        kw = dict(n.attrs)
        kw.update(attrs)
        return self.e.add_node(n.op, tuple(ins), tuple(sorted(kw.items())), n.loc)

    def lift(self, v: Value) -> Value:
        """An unmapped value broadcast over the batch."""
        return self.e.broadcast_to(v, shape=(self.size,) + v.shape)

    def align(self, v: Value, rank: int) -> Value:
        """A mapped value whose rows have fewer than rank axes, with unit axes after the batch
        axis, so NumPy broadcasting lines its row up with values of that rank."""
        row = v.shape[1:]
        if len(row) >= rank:
            return v
        return self.e.reshape(v, shape=(v.shape[0],) + (1,) * (rank - len(row)) + row)

    def mask(self, active: Value, like: Value) -> Value:
        """A (size,) bool mask shaped to select between rows of values like `like`."""
        return self.align(active, len(like.shape) - 1)

    def lanes(self, ins, mapped) -> Value:
        """The batch size as an i64 scalar at run time."""
        if isinstance(self.size, int):
            return self.e.const(self.size, "i64")
        v = next(v for v, m in zip(ins, mapped) if m)
        return self.e.numel(v, axes=(0,), dtype="i64")


# ---- the transform


def batch_nodes(b: Batch, g: Graph, args) -> tuple:
    """g's nodes batched into b.e, its params bound to args [(value, mapped)]: (the outputs as
    (value, mapped), the map from g's values to theirs). A tuple-valued node maps to the list of
    its parts when it is batched, as a batched tuple's `item`s take them out."""
    env = dict(zip(g.params, args))
    e = b.e
    for n in g.nodes:
        if n.op == "item":
            t = env[n.ins[0]]
            if isinstance(t, list):
                env[n.out] = t[n.attr("index")]
            else:
                env[n.out] = (e.add_node("item", (t[0],), n.attrs, n.loc), False)
            continue
        ins = [env[i] for i in n.ins]
        vals = tuple(v for v, _ in ins)
        flags = [m for _, m in ins]
        if not any(flags):
            env[n.out] = (e.add_node(n.op, vals, n.attrs, n.loc), False)
            continue
        saved, e.loc = e.loc, n.loc
        try:
            rule = OPS[n.op].batch or fallback
            env[n.out] = rule(b, n, list(vals), flags)
        except ShapeError as ex:
            raise BatchError(f"cannot batch {n.op}: {ex}") from None
        finally:
            e.loc = saved
    return [env[o] for o in g.outputs], env


def batch_graph(g: Graph, mapped, size, force=None, name=None) -> tuple:
    """(g batched over its mapped params, which of its outputs are mapped). force[i]: output i
    must be mapped (an unmapped one is broadcast over the batch)."""
    from .builder import Emitter, fresh
    from .control import merge_saves
    # a forward loop and the storing copy a reverse pass made of it are one loop first: once
    # batched apart, they could no longer be told to be the same
    g = merge_saves(g)
    params = [fresh((size,) + p.shape if m else p.shape, p.dtype) for p, m in zip(g.params, mapped)]
    e = Emitter()
    b = Batch(e, size)
    outs, env = batch_nodes(b, g, list(zip(params, mapped)))
    if force is not None:
        outs = [(b.lift(v), True) if f and not m else (v, m) for (v, m), f in zip(outs, force)]
    names = tuple((k, env[v][0]) for k, v in g.names if v in env and not isinstance(env[v], list))
    out = Graph(name or g.name, tuple(params), tuple(e.nodes), tuple(v for v, _ in outs),
                g.param_names, names, g.out_tuple)
    return out, [m for _, m in outs]


def vmap(g: Graph, mapped, name, size) -> Graph:
    """g mapped over axis 0 of the params in mapped, every output mapped (JAX's out_axes=0)."""
    out, _ = batch_graph(g, mapped, size, force=[True] * len(g.outputs), name=name)
    return out


def new_dim(g: Graph, base="B") -> str:
    """A dimension name g does not use, for the batch axis: B, else B1, B2, ..."""
    used = graph_symbols(g, bodies=True)
    k = 0
    while (base if k == 0 else f"{base}{k}") in used:
        k += 1
    return base if k == 0 else f"{base}{k}"


# ---- the fallback: a loop over the batch around one op


def fallback(b: Batch, n, ins, mapped):
    """Op n on each row of its mapped inputs in turn, in a `for` loop over the batch, the rows
    of its result stacked: correct for any op (a rule of its own is faster)."""
    from .builder import Emitter, fresh
    from .control import emit_control, new_trip
    if n.out.dtype == TUPLE:
        raise BatchError(f"op {n.op} has no batching rule")
    e = b.e
    t = fresh((), "i64")
    caps = [fresh(v.shape, v.dtype) for v in ins]
    be = Emitter(loc=n.loc)
    rows = [be.dyn_slice(c, t, axis=0, size=1, keep=False) if m else c for c, m in zip(caps, mapped)]
    out = be.add_node(n.op, tuple(rows), n.attrs, n.loc)
    body = Graph(f"{n.op}.lanes", (t,) + tuple(caps), tuple(be.nodes), (out,))
    trip = new_trip()
    (stacked,) = emit_control(e, "for", [e.const(0, "i64"), b.lanes(ins, mapped)] + list(ins), body=body,
                              n_caps=len(ins), trip=trip, reverse=False, saves=0, checkpoint=0)
    return e.as_shape(stacked, shape=(b.size,) + out.shape), True


# ---- rules by kind of op


def elementwise(b, n, ins, mapped):
    """Elementwise ops (NumPy broadcasting): a mapped operand's row gets the unit axes that put
    it where broadcasting puts it; unmapped operands broadcast against the batch as they are."""
    rank = max(len(x.shape) for x in n.ins)
    return b.emit(n, [b.align(v, rank) if m else v for v, m in zip(ins, mapped)]), True


def reduction(b, n, ins, mapped):
    """Reductions over `axes`: the same axes, one further on."""
    return b.emit(n, ins, axes=tuple(a + 1 for a in n.attr("axes"))), True


def _numel(b, n, ins, mapped):
    # the size of axes of the row: the same for every row, so not mapped
    return b.emit(n, ins, axes=tuple(a + 1 for a in n.attr("axes"))), False


def _with_shape(b, n, ins, mapped):
    return b.emit(n, ins, shape=(b.size,) + tuple(n.attr("shape"))), True


def _broadcast_to(b, n, ins, mapped):
    shape = tuple(n.attr("shape"))
    return b.emit(n, [b.align(ins[0], len(shape))], shape=(b.size,) + shape), True


def _transpose(b, n, ins, mapped):
    return b.emit(n, ins, perm=(0,) + tuple(p + 1 for p in n.attr("perm"))), True


def _slice(b, n, ins, mapped):
    return b.emit(n, ins, spec=(FULL,) + tuple(n.attr("spec"))), True


def _pad(b, n, ins, mapped):
    return b.emit(n, ins, spec=(FULL,) + tuple(n.attr("spec")), shape=(b.size,) + tuple(n.attr("shape"))), True


def _concat(b, n, ins, mapped):
    vals = [v if m else b.lift(v) for v, m in zip(ins, mapped)]
    return b.emit(n, vals, axis=n.attr("axis") + 1), True


def _dyn(b, n, ins, mapped):
    if mapped[1]:                 # a run-time index that differs from row to row
        return fallback(b, n, ins, mapped)
    return b.emit(n, ins, axis=n.attr("axis") + 1), True


def _matmul(b, n, ins, mapped):
    """x @ y on rows: the batch axis becomes a leading batch dimension of the product (the
    mapped operands' batch dims padded with unit axes after it, so they line up), except where
    x alone is mapped and nothing else batches: then the batch joins x's row group and the
    whole map is one plain product of more rows."""
    from .ops_nn import mkn_of, mm
    nm, nk, nn = mkn_of(n)
    x, y = n.ins
    nbx, nby = len(x.shape) - nm - nk, len(y.shape) - nk - nn
    if mapped[0] and not mapped[1] and nbx == 0 and nby == 0:
        return mm(b.e, ins[0], ins[1], (nm + 1, nk, nn)), True
    nb = max(nbx, nby)
    vals = []
    for v, m, own, nbv in zip(ins, mapped, n.ins, (nbx, nby)):
        if m and nbv < nb:
            v = b.e.reshape(v, shape=(v.shape[0],) + (1,) * (nb - nbv) + own.shape)
        vals.append(v)
    return mm(b.e, vals[0], vals[1], (nm, nk, nn)), True


def _axis_on(n):
    a = n.attr("axis")
    return a + 1 if a >= 0 else a


def _scan(b, n, ins, mapped):
    return b.emit(n, ins, axis=_axis_on(n)), True


def _take(b, n, ins, mapped):
    if not mapped[1]:
        return b.emit(n, ins, axis=_axis_on(n)), True
    if not mapped[0] and n.attr("axis") == 0:      # rows of indices into one table: the batch leads
        return b.emit(n, ins), True
    return fallback(b, n, ins, mapped)


def _index_add(b, n, ins, mapped):
    if mapped[1]:
        return fallback(b, n, ins, mapped)
    x, idx, v = ins
    return b.emit(n, [x if mapped[0] else b.lift(x), idx, v if mapped[2] else b.lift(v)],
                  axis=_axis_on(n)), True


def _along(b, n, ins, mapped):
    """take_along_axis and its scatter: off the axis the operands broadcast, so an unmapped one
    gets a unit batch axis (a scatter's x, which is the result's shape, is broadcast instead)."""
    vals = []
    for k, (v, m) in enumerate(zip(ins, mapped)):
        if not m:
            v = b.lift(v) if k == 0 and len(ins) == 3 else b.e.reshape(v, shape=(1,) + v.shape)
        vals.append(v)
    return b.emit(n, vals, axis=_axis_on(n)), True


def _hook(b, n, ins, mapped):
    # the hook's function sees the batched gradient
    fn = n.attr("fn")
    g, _ = batch_graph(fn, [True] * len(fn.params), b.size, force=[True] * len(fn.outputs))
    return b.emit(n, ins, fn=g), True


# ---- loops and branches: their bodies batched


def _carried(body, lead, flags, nc, size):
    """Which carried values must be mapped: those mapped on entry, and those the body makes
    mapped from a mapped capture (to a fixed point). flags: the params' (after `lead` leading
    ones: carried, then captured)."""
    flags = list(flags)
    while True:
        _, outs = batch_graph(body, flags, size)
        grow = [i for i in range(nc) if outs[i] and not flags[lead + i]]
        if not grow:
            return flags
        for i in grow:
            flags[lead + i] = True


def _parts(b, tup_node, flags, transpose_ys=()):
    from .control import items, result_types
    parts = items(b.e, tup_node.out, result_types(tup_node))
    out = []
    for i, (v, m) in enumerate(zip(parts, flags)):
        if i in transpose_ys and m:           # (trip, size, ...) -> (size, trip, ...)
            v = b.e.transpose(v, perm=(1, 0) + tuple(range(2, len(v.shape))))
        out.append((v, m))
    return out


def _for(b, n, ins, mapped):
    kw = n.kw
    body, n_caps = kw["body"], kw["n_caps"]
    rest, mrest = ins[2:], mapped[2:]
    nc = len(rest) - n_caps
    if mapped[0] or mapped[1]:
        return _for_masked(b, n, ins, mapped)
    flags = _carried(body, 1, [False] + list(mrest), nc, b.size)
    ny = len(body.outputs) - nc
    g, outs = batch_graph(body, flags, b.size, force=flags[1:1 + nc] + [False] * ny)
    init = [b.lift(v) if flags[1 + i] and not mrest[i] else v for i, v in enumerate(rest[:nc])]
    b.emit(n, ins[:2] + init + list(rest[nc:]), body=g)
    return _parts(b, b.e.nodes[-1], outs, transpose_ys=range(nc, nc + ny))


def _for_masked(b, n, ins, mapped):
    """A `for` whose bounds differ from row to row: one loop over i in 0..max(stop - start),
    each row at t = start + i while i < its own count; a row past it keeps its state, and its
    stacked values are zeros. reverse runs i down, so each row's t runs down from its stop - 1."""
    from .builder import Emitter, fresh
    kw = n.kw
    e = b.e
    body, n_caps = kw["body"], kw["n_caps"]
    rest, mrest = ins[2:], mapped[2:]
    nc = len(rest) - n_caps
    ny = len(body.outputs) - nc
    start, stop = [v if m else b.lift(v) for v, m in zip(ins[:2], mapped[:2])]
    count = e.maximum(e.sub(stop, start), 0)
    # the longest row's count (0 for an empty batch: the 0 joins the rows, max needs one)
    most = e.max(e.concat(count, e.const(0, "i64", (1,)), axis=0), axes=(0,), keepdims=False)
    carry = [v if m else b.lift(v) for v, m in zip(rest[:nc], mrest[:nc])]
    caps = list(rest[nc:])
    i = fresh((), "i64")
    pc = [fresh(v.shape, v.dtype) for v in carry]
    pk = [fresh(v.shape, v.dtype) for v in caps]
    ps, pn = fresh(start.shape, "i64"), fresh(count.shape, "i64")
    be = Emitter(loc=n.loc)
    bb = Batch(be, b.size)
    t = be.add(ps, i)
    active = be.lt(i, pn)
    outs, _ = batch_nodes(bb, body, [(t, True)] + [(c, True) for c in pc] + list(zip(pk, mrest[nc:])))
    new = []
    for k, (v, m) in enumerate(outs):
        v = v if m else bb.lift(v)
        old = pc[k] if k < nc else 0
        new.append(be.where(bb.mask(active, v), v, old))
    names = body.param_names
    g = Graph(body.name + ".masked", (i,) + tuple(pc) + tuple(pk) + (ps, pn), tuple(be.nodes), tuple(new),
              (names[:1] + names[1:1 + nc] + names[1 + nc:] + ("start", "count")) if len(names) == len(body.params) else ())
    b.emit(n, [e.const(0, "i64"), most] + carry + caps + [start, count], body=g, n_caps=n_caps + 2)
    return _parts(b, e.nodes[-1], [True] * (nc + ny), transpose_ys=range(nc, nc + ny))


def _while(b, n, ins, mapped):
    from .builder import Emitter, fresh
    kw = n.kw
    cond, body, n_caps = kw["cond"], kw["body"], kw["n_caps"]
    nc = len(ins) - n_caps
    e = b.e
    flags = _carried(body, 0, mapped, nc, b.size)
    cg, (cm,) = batch_graph(cond, flags, b.size)
    if not cm:
        g, _ = batch_graph(body, flags, b.size, force=flags[:nc])
        init = [b.lift(v) if flags[i] and not mapped[i] else v for i, v in enumerate(ins[:nc])]
        b.emit(n, init + ins[nc:], cond=cg, body=g)
        return _parts(b, e.nodes[-1], flags[:nc] + [False])
    # a condition that differs from row to row: run while any row is active; a row whose
    # condition fails keeps its state, and its own count of iterations stops
    carry = [v if m else b.lift(v) for v, m in zip(ins[:nc], mapped[:nc])]
    caps = list(ins[nc:])
    capf = list(mapped[nc:])
    count = e.const(0, "i64", (b.size,))

    def params():
        return [fresh(v.shape, v.dtype) for v in carry], fresh(count.shape, "i64"), \
            [fresh(v.shape, v.dtype) for v in caps]

    def row_cond(bb, pc, pk):
        (c, m), = batch_nodes(bb, cond, [(v, True) for v in pc] + list(zip(pk, capf)))[0]
        return c if m else bb.lift(c)

    pc, pn, pk = params()
    ce = Emitter(loc=n.loc)
    c = row_cond(Batch(ce, b.size), pc, pk)
    anyc = ce.gt(ce.sum(ce.cast(c, dtype="i64"), axes=(0,), keepdims=False), 0)
    cg = Graph(cond.name + ".any", tuple(pc) + (pn,) + tuple(pk), tuple(ce.nodes), (anyc,))
    pc, pn, pk = params()
    be = Emitter(loc=n.loc)
    bb = Batch(be, b.size)
    active = row_cond(bb, pc, pk)
    outs, _ = batch_nodes(bb, body, [(v, True) for v in pc] + list(zip(pk, capf)))
    new = [be.where(bb.mask(active, pc[k]), v if m else bb.lift(v), pc[k]) for k, (v, m) in enumerate(outs)]
    new.append(be.add(pn, be.cast(active, dtype="i64")))
    g = Graph(body.name + ".masked", tuple(pc) + (pn,) + tuple(pk), tuple(be.nodes), tuple(new))
    b.emit(n, carry + [count] + caps, cond=cg, body=g)
    parts = _parts(b, e.nodes[-1], [True] * (nc + 1) + [False])
    return parts[:nc] + [parts[nc]]          # each row's own count is the trip count


def _if(b, n, ins, mapped):
    from .control import fresh_trips
    then, orelse = n.attr("then"), n.attr("orelse")
    caps, capf = ins[1:], mapped[1:]
    e = b.e
    if not mapped[0]:
        fa = batch_graph(then, capf, b.size)[1]
        fb = batch_graph(orelse, capf, b.size)[1]
        force = [x or y for x, y in zip(fa, fb)]
        gt, _ = batch_graph(then, capf, b.size, force=force)
        gf, _ = batch_graph(orelse, capf, b.size, force=force)
        b.emit(n, ins, then=gt, orelse=gf)
        return _parts(b, e.nodes[-1], force)
    # a condition that differs from row to row: both branches run, each row takes its own
    args = list(zip(caps, capf))
    ta, _ = batch_nodes(b, fresh_trips(then), args)
    tb, _ = batch_nodes(b, fresh_trips(orelse), args)
    out = []
    for (x, mx), (y, my) in zip(ta, tb):
        x, y = (x if mx else b.lift(x)), (y if my else b.lift(y))
        out.append((e.where(b.mask(ins[0], x), x, y), True))
    return out


# ---- as_shape: a value's elements under a shape whose dims are equal at run time


def _as_shape_rule(x, *like, shape):
    shape = tuple(shape)
    if len(shape) != len(x.shape) or any(isinstance(a, int) and isinstance(d, int) and a != d
                                         for a, d in zip(x.shape, shape)):
        raise ShapeError(f"as_shape: {type_str(x.shape, x.dtype)} cannot be read as {type_str(shape, x.dtype)}")
    return shape, x.dtype


def _as_shape_ref(x, *like, shape):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"internal: as_shape of an array of shape {x.shape} to {tuple(shape)}")
    return x


def _as_shape_batch(b, n, ins, mapped):
    if not mapped[0]:
        return b.emit(n, ins), False
    return b.emit(n, ins, shape=(b.size,) + tuple(n.attr("shape"))), True


# as_shape(x, shape): x itself, typed with dims the compiler knows are equal to x's at run time
# (a loop over the batch stacks rows on its trip count, which is the batch size). Its cotangent
# goes back to the trip count's shape: the value stacked there comes along as a second input,
# not read, so the loop that binds the trip count stays wherever the cotangent is computed
defop("as_shape", _as_shape_rule, _as_shape_ref,
      vjp=lambda e, g, z, x, *like, shape: (e.as_shape(g, x, shape=x.shape),) + (None,) * len(like),
      jvp=lambda e, ts, z, x, *like, shape: e.as_shape(ts[0], *like, shape=shape) if ts[0] is not None else None,
      kind="layout", cheap=0, batch=_as_shape_batch)


@index_map("as_shape")
def _as_shape_map(L, n, idx):
    return (yield n.ins[0], idx)


# ---- the rules of the ops of compiler/ops.py and compiler/control.py

def _set(names, rule):
    for name in names:
        OPS[name] = replace(OPS[name], batch=rule)


_set(("neg", "sin", "cos", "tan", "exp", "log", "log1p", "expm1", "sqrt", "tanh", "sigmoid", "softplus",
      "abs", "relu", "sign", "add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum",
      "gmul", "tie", "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not", "where", "clamp", "cast",
      "detach", "check_range", "one_hot", "erf"), elementwise)
_set(("cumsum", "cumprod"), _scan)
_set(("take",), _take)
_set(("index_add",), _index_add)
_set(("take_along_axis", "index_add_along"), _along)
_set(("sum", "max", "min"), reduction)
_set(("numel",), _numel)
_set(("reshape",), _with_shape)
_set(("broadcast_to",), _broadcast_to)
_set(("transpose",), _transpose)
_set(("slice",), _slice)
_set(("pad",), _pad)
_set(("concat",), _concat)
_set(("dyn_slice", "dyn_unslice"), _dyn)
_set(("matmul",), _matmul)
_set(("hook",), _hook)
_set(("for",), _for)
_set(("while",), _while)
_set(("if",), _if)


def _pool(b, n, ins, mapped):
    """Max pooling by the winner's index: the batch one more leading axis of every operand."""
    return b.emit(n, [v if m else b.lift(v) for v, m in zip(ins, mapped)]), True


_set(("pool_max", "pool_argmax", "pool_gather", "pool_scatter"), _pool)
