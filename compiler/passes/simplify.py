"""Algebraic simplification: identities that hold exactly in IEEE arithmetic, and one that
rounds no worse (c / exp(b) -> c * exp(-b))."""
from __future__ import annotations

from ..ir import Graph, use_counts
from .rewrite import rewrite


def _finite_nonzero(consts, v) -> bool:
    return v in consts and consts[v] != 0 and abs(consts[v]) != float("inf") and consts[v] == consts[v]


def _reciprocal_exp(n, emit, consts, made, uses):
    """c / exp(b) -> c * exp(-b) (c / exp(b) alone using that exp) for a finite non-zero constant
    c: no division, in the value nor in its derivative (-c * exp(-b), where the quotient's is
    c / exp(b) / exp(b) * exp(b)). The two agree where exp(b) is 0, inf or NaN; elsewhere each
    rounds twice (once where c is 1), and exp(-b) keeps the subnormal results that c / exp(b)
    makes 0 (exp(b) being inf)."""
    if n.op != "div" or not _finite_nonzero(consts, n.ins[0]):
        return None
    e = made.get(n.ins[1])
    if e is None or e.op != "exp" or uses.get(e.out, 0) != 1:
        return None
    b = e.ins[0]
    neg = emit("neg", (b,), (), b.shape, b.dtype, n.loc)
    ex = emit("exp", (neg,), (), b.shape, b.dtype, e.loc)
    if consts[n.ins[0]] == 1 and b.shape == n.out.shape and b.dtype == n.out.dtype:
        return ex
    return emit("mul", (n.ins[0], ex), (), n.out.shape, n.out.dtype, n.loc)


def before_derivatives(g: Graph) -> Graph:
    """The rewrites of simplify that change what differentiation derives (_reciprocal_exp), on a
    function about to be differentiated: its derivative then gets them too."""
    consts, made, uses = {}, {}, use_counts(g)

    def step(n, emit):
        made[n.out] = n
        if n.op == "const":
            consts[n.out] = n.attr("value")
            return None
        return _reciprocal_exp(n, emit, consts, made, uses)

    return rewrite(g, step)


def simplify(g: Graph) -> Graph:
    """x+0, x-0, x*1, x/1, x**1, --x, x**2 -> x*x, no-op layout and casts, where(c, a, a),
    where with a constant condition,
    pad(a) + pad(b) -> pad(a + b), c / exp(b) -> c * exp(-b)."""
    consts = {}            # value -> scalar of a uniform constant
    made = {}              # value -> node that made it
    uses = use_counts(g)

    def is_c(v, k):
        return v in consts and consts[v] == k and not isinstance(consts[v], bool)

    def finite_nonzero(v):
        return _finite_nonzero(consts, v)

    def same(n, v):
        return v if v.shape == n.out.shape and v.dtype == n.out.dtype else None

    def step(n, emit):
        made[n.out] = n
        if n.op == "const":
            consts[n.out] = n.attr("value")
            return None
        ins = n.ins
        if n.op == "add":
            if is_c(ins[1], 0) or is_c(ins[0], 0):
                return same(n, ins[0]) if is_c(ins[1], 0) else same(n, ins[1])
            pa, pb = made.get(ins[0]), made.get(ins[1])
            if pa is not None and pb is not None and pa.op == pb.op == "pad" and pa.attrs == pb.attrs \
                    and pa.ins[0].shape == pb.ins[0].shape:
                # pad(a) + pad(b) = pad(a + b): the zeros add up to zeros
                inner = emit("add", (pa.ins[0], pb.ins[0]), (), pa.ins[0].shape, n.out.dtype, n.loc)
                return emit("pad", (inner,), pa.attrs, n.out.shape, n.out.dtype, n.loc)
            return None
        if n.op == "sub" and is_c(ins[1], 0):
            return same(n, ins[0])
        if n.op in ("mul", "gmul"):
            if is_c(ins[1], 1):
                return same(n, ins[0])
            if is_c(ins[0], 1):
                return same(n, ins[1])
            if n.op == "gmul" and is_c(ins[0], 0):
                return same(n, ins[0])
            if n.op == "gmul" and (finite_nonzero(ins[1]) or ins[0] in consts and consts[ins[0]] != 0):
                return emit("mul", ins, (), n.out.shape, n.out.dtype, n.loc)   # the guard cannot fire
            if n.op == "mul" and is_c(ins[1], -1):
                return emit("neg", ins[:1], (), n.out.shape, n.out.dtype, n.loc) if same(n, ins[0]) else None
        if n.op == "div" and is_c(ins[1], 1):
            return same(n, ins[0])
        if n.op == "div":
            return _reciprocal_exp(n, emit, consts, made, uses)
        if n.op == "pow":
            if is_c(ins[1], 1):
                return same(n, ins[0])
            if is_c(ins[1], 0):
                return emit("const", (), (("dtype", n.out.dtype), ("shape", n.out.shape), ("value", 1.0)),
                            n.out.shape, n.out.dtype, n.loc)
            if is_c(ins[1], 2) and same(n, ins[0]):
                return emit("mul", (ins[0], ins[0]), (), n.out.shape, n.out.dtype, n.loc)
        if n.op == "neg" and ins[0] in made and made[ins[0]].op == "neg":
            return made[ins[0]].ins[0]
        if n.op in ("reshape", "broadcast_to", "cast") and ins[0].shape == n.out.shape and \
                ins[0].dtype == n.out.dtype:
            return ins[0]
        if n.op == "reshape" and ins[0] in made and made[ins[0]].op == "reshape":
            return emit("reshape", made[ins[0]].ins, n.attrs, n.out.shape, n.out.dtype, n.loc)
        if n.op == "transpose" and n.attr("perm") == tuple(range(len(n.out.shape))):
            return ins[0]
        if n.op == "sum" and not n.attr("axes"):
            return same(n, ins[0])
        if n.op == "where" and ins[1] == ins[2]:
            return same(n, ins[1])
        if n.op == "where" and ins[0] in consts:
            return same(n, ins[1] if consts[ins[0]] else ins[2])
        return None

    return rewrite(g, step)
