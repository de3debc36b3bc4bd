"""Reductions (sum, max, min) as loops that consume their fused input chain element by element."""
from __future__ import annotations

from llvmlite import ir

from .layout import ZERO
from .scalar import I64, LLTYPES, SIZES, STORE_TYPES

# f32 sums accumulate in f64: closer to NumPy's pairwise sums than a long f32 running sum
ACC_DTYPE = {("sum", "f32"): "f64"}


def _identity(op, dtype):
    t = LLTYPES[dtype]
    if op == "sum":
        return ir.Constant(t, 0)
    if dtype in ("f32", "f64"):
        return ir.Constant(t, float("-inf") if op == "max" else float("inf"))
    bits = t.width
    return ir.Constant(t, -(1 << (bits - 1)) if op == "max" else (1 << (bits - 1)) - 1)


def _combine(cg, op, acc, x, reassoc=False):
    if op == "sum":
        r = cg.add(acc, x)
        if reassoc and x.type in (LLTYPES["f32"], LLTYPES["f64"]):
            # only the running sum may be reordered: LLVM then keeps several partial sums in
            # vector lanes, which is faster and, like NumPy's pairwise sum, more accurate
            r.flags.append("reassoc")
        return r
    # nan wins, as in np.max; otherwise the larger (smaller) value
    better = cg.gt(x, acc) if op == "max" else cg.lt(x, acc)
    if x.type in (LLTYPES["f32"], LLTYPES["f64"]):
        better = cg.b.or_(better, cg.ne(x, x))
    return cg.b.select(better, x, acc)


def emit_reduce(L, n):
    """Emit the loops of n = sum/max/min(x, axes, keepdims) into L.bufs[n.out]."""
    x = n.ins[0]
    axes, keep = tuple(n.attr("axes")), n.attr("keepdims")
    rank = len(x.shape)
    kept = [a for a in range(rank) if a not in axes]
    acc_dt = ACC_DTYPE.get((n.op, x.dtype), x.dtype)
    cg, b = L.cg, L.b

    def out_index(idx):
        if keep:
            return tuple(ZERO if a in axes else idx[a] for a in range(rank))
        return tuple(idx[a] for a in kept)

    def value(idx):
        v = L.elem(x, idx)
        return cg.cast(v, acc_dt) if acc_dt != x.dtype else v

    if kept == list(range(len(kept))):
        # reduced axes innermost: a register accumulator per output element
        acc = L.entry.alloca(LLTYPES[acc_dt])

        def outer(oidx):
            L.b.store(_identity(n.op, acc_dt), acc)

            def inner(idx):
                L.b.store(_combine(cg, n.op, L.b.load(acc, typ=acc.allocated_type), value(idx), True), acc)
            L.nest(x.shape, inner, oidx)
            r = L.b.load(acc, typ=acc.allocated_type)
            L.store(n.out, None, cg.cast(r, n.out.dtype) if acc_dt != n.out.dtype else r,
                    L.b.gep(L.bufs[n.out], [L.offset(x.shape[:len(kept)], oidx)],
                            source_etype=STORE_TYPES[n.out.dtype]))
        L.nest(x.shape[:len(kept)], outer)
        return

    # otherwise walk x in memory order and accumulate into the result (or an f64 scratch)
    out = n.out
    if acc_dt != out.dtype:
        nbytes = L.entry.mul(L.size(out.shape), ir.Constant(I64, SIZES[acc_dt]))
        buf, slot = L.malloc(nbytes)
    else:
        buf, slot = L.bufs[out], None

    def at(oidx):
        return L.b.gep(buf, [L.offset(out.shape, oidx)], source_etype=LLTYPES[acc_dt])

    L.nest(out.shape, lambda oidx: L.b.store(_identity(n.op, acc_dt), at(oidx)))

    def step(idx):
        p = at(out_index(idx))
        L.b.store(_combine(cg, n.op, L.b.load(p, typ=LLTYPES[acc_dt]), value(idx)), p)
    L.nest(x.shape, step)
    if slot is not None:
        L.nest(out.shape, lambda oidx: L.store(out, oidx, cg.cast(L.b.load(at(oidx), typ=LLTYPES[acc_dt]), out.dtype)))
        L.free(slot)
