"""Reductions (sum, max, min) as loops that consume their fused input chain element by element."""
from __future__ import annotations

from llvmlite import ir

from ..element import acc_dtype, reduction_combine, reduction_identity
from ..layout import ZERO
from ..scalar import I64, LLTYPES, STORE_TYPES

ONE = ir.Constant(I64, 1)


def split_axis(shape):
    """The axis whose range threads share: the outermost one not fixed at size 1, or None."""
    return next((a for a, d in enumerate(shape) if d != 1), None)


def _axes(n):
    x = n.ins[0]
    axes = tuple(n.attr("axes"))
    return axes, [a for a in range(len(x.shape)) if a not in axes]


def inner(n):
    """The reduced axes are innermost: one register accumulator per output element."""
    _, kept = _axes(n)
    return kept == list(range(len(kept)))


def reduce_mode(n):
    """("rows", a): threads own disjoint outputs; ("partials", a): they combine partial results."""
    a = split_axis(n.ins[0].shape)
    if a is None:
        return None, None
    return ("partials" if a in _axes(n)[0] else "rows"), a


def needs_scratch(n):
    """A walk in memory order accumulates into an f64 scratch when the result is f32."""
    return not inner(n) and acc_dtype(n) != n.out.dtype


def _identity(op, dtype):
    return reduction_identity(op, dtype)


def _combine(cg, op, acc, x, reassoc=False):
    r = reduction_combine(cg, op, acc, x)
    if reassoc and op == "sum" and x.type in (LLTYPES["f32"], LLTYPES["f64"]):
        # only the running sum may be reordered: LLVM then keeps several partial sums in
        # vector lanes, which is faster and, like NumPy's pairwise sum, more accurate
        r.flags.append("reassoc")
    return r


def inner_reduction(L, n, split, hooks):
    """n as part of a fused nest over x's shape: accumulate in a register per output element.

    Adds to hooks {level: ([before], [after])} and returns the body's update for one element.
    """
    x, out = n.ins[0], n.out
    _, kept = _axes(n)
    acc_dt = acc_dtype(n)
    t = LLTYPES[acc_dt]
    acc = L.entry.alloca(t)
    mode, _ = reduce_mode(n)
    cast = lambda r: L.cg.cast(r, out.dtype) if acc_dt != out.dtype else r

    def after(oidx):
        r = L.b.load(acc, typ=t)
        if mode != "partials":
            L.store(out, None, cast(r), L.b.gep(L.bufs[out], [L.offset(x.shape[:len(kept)], oidx)],
                                                source_etype=STORE_TYPES[out.dtype]))
            return
        # every kept axis has size 1: one value per thread, combined in the next phase
        with L.b.if_else(split) as (par, ser):
            with par:
                L.b.store(r, L.b.gep(L.extra[("partial", n)], [L.tid], source_etype=t))
            with ser:
                with L.when(L.is_first):
                    L.store(out, None, cast(r), L.bufs[out])
    before, afters = hooks.setdefault(len(kept), ([], []))
    before.append(lambda oidx: L.b.store(_identity(n.op, acc_dt), acc))
    afters.append(after)

    def update(idx, at=L, into=acc):
        """The element at idx added in; at, into: another function's lowering and its pointer to
        the accumulator (a segment of a nest, cpu/function.py)."""
        at.b.store(_combine(at.cg, n.op, at.b.load(into, typ=t), _value(at, n, idx), True), into)
    update.acc = acc
    return update


def emit_reduce(L, n, part):
    """Part 0: this thread's share of a reduction that walks x in memory order; part 1: combine."""
    x = n.ins[0]
    mode, a = reduce_mode(n)
    split = L.split_cond(x.shape, a)
    if part == 1:
        with L.when(split):
            _combine_partials(L, n)
        return
    if mode == "rows":
        _serial(L, n, {a: L.chunk(x.shape, a, split)})
    elif mode == "partials":
        with L.b.if_else(split) as (par, ser):
            with par:
                L.memo.append({})
                _partial(L, n, a)
                L.memo.pop()
            with ser:
                with L.when(L.is_first):
                    _serial(L, n, {})
    else:
        with L.when(L.is_first):
            _serial(L, n, {})


def _value(L, n, idx):
    v = L.elem(n.ins[0], idx)
    return L.cg.cast(v, acc_dtype(n)) if acc_dtype(n) != n.ins[0].dtype else v


def _out_index(n, idx):
    axes, kept = _axes(n)
    if n.attr("keepdims"):
        return tuple(ZERO if a in axes else idx[a] for a in range(len(idx)))
    return tuple(idx[a] for a in kept)


def _out_bounds(n, bounds):
    """The bounds on x's kept axis, moved to the same axis of the result."""
    _, kept = _axes(n)
    keep = n.attr("keepdims")
    return {(a if keep else kept.index(a)): r for a, r in bounds.items()}


def _serial(L, n, bounds):
    """The loops of one thread over the x range in bounds (kept axes only), into L.bufs[n.out]."""
    x, out = n.ins[0], n.out
    acc_dt = acc_dtype(n)
    cg = L.cg
    # accumulate into the result (or an f64 scratch) in x's memory order
    buf = L.extra[("acc", n)] if needs_scratch(n) else L.bufs[out]
    ob = _out_bounds(n, bounds)

    def at(oidx):
        return L.b.gep(buf, [L.offset(out.shape, oidx)], source_etype=LLTYPES[acc_dt])

    L.nest(out.shape, lambda oidx: L.b.store(_identity(n.op, acc_dt), at(oidx)), bounds=ob)

    def step(idx):
        p = at(_out_index(n, idx))
        L.b.store(_combine(cg, n.op, L.b.load(p, typ=LLTYPES[acc_dt]), _value(L, n, idx)), p)
    L.nest(x.shape, step, bounds=bounds)
    if buf is not L.bufs[out]:
        L.nest(out.shape, lambda oidx: L.store(out, oidx, cg.cast(L.b.load(at(oidx), typ=LLTYPES[acc_dt]),
                                                                   out.dtype)), bounds=ob)


def _partial(L, n, a):
    """This thread's chunk of the reduced axis a, into its own row of the partials buffer."""
    x, out = n.ins[0], n.out
    acc_dt = acc_dtype(n)
    t = LLTYPES[acc_dt]
    cg, b = L.cg, L.b
    count = L.size(out.shape)
    mine = b.gep(L.extra[("partial", n)], [b.mul(L.tid, count)], source_etype=t)
    bounds = {a: L.chunk(x.shape, a, ir.Constant(ir.IntType(1), 1))}
    at = lambda oidx: L.b.gep(mine, [L.offset(out.shape, oidx)], source_etype=t)
    L.nest(out.shape, lambda oidx: L.b.store(_identity(n.op, acc_dt), at(oidx)))

    def step(idx):
        p = at(_out_index(n, idx))
        L.b.store(_combine(cg, n.op, L.b.load(p, typ=t), _value(L, n, idx)), p)
    L.nest(x.shape, step, bounds=bounds)


def _combine_partials(L, n):
    """Each result element: the threads' partials combined in thread order (deterministic)."""
    out = n.out
    acc_dt = acc_dtype(n)
    t = LLTYPES[acc_dt]
    cg = L.cg
    count = L.size(out.shape)
    part = L.extra[("partial", n)]
    b_axis = split_axis(out.shape)
    bounds = {} if b_axis is None else {b_axis: L.chunk(out.shape, b_axis, ir.Constant(ir.IntType(1), 1))}

    def elem(oidx):
        b = L.b
        j = L.offset(out.shape, oidx)
        r = b.load(b.gep(part, [j], source_etype=t), typ=t)
        acc = L.entry.alloca(t)
        b.store(r, acc)
        with L.loop(L.nth, ONE) as k:
            p = L.b.gep(part, [L.b.add(L.b.mul(k, count), j)], source_etype=t)
            L.b.store(_combine(cg, n.op, L.b.load(acc, typ=t), L.b.load(p, typ=t)), acc)
        r = L.b.load(acc, typ=t)
        L.store(out, oidx, cg.cast(r, out.dtype) if acc_dt != out.dtype else r)
    if b_axis is None:
        with L.when(L.is_first):
            L.nest(out.shape, elem)
    else:
        L.nest(out.shape, elem, bounds=bounds)
