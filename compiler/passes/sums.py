"""Sums read a transposed copy that is stored anyway.

A value that is both summed and transposed into a matrix operand BLAS cannot read in place
(the NCHW -> NHWC gradient of a convolution, whose bias gradient is its sum) would be stored
twice: once for the sum, once transposed for the product. Summing the transposed copy instead
(over the same axes, renumbered; the few elements of the result transposed back) leaves the value
one reader, so it is computed inside the transposing loop and never stored. Only the order in
which the sum adds its terms changes.
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import OPS
from ..ops_nn import is_block_swap, operand_blocks
from .rewrite import rewrite


def _stored_transposes(g: Graph) -> dict:
    """value -> a transpose node of it that feeds a product as an operand BLAS cannot read in place."""
    made = {n.out: n for n in g.nodes}
    out = {}
    for n in g.nodes:
        if OPS[n.op].kind != "matmul":
            continue
        for x, blocks in zip(n.ins, operand_blocks(n)):
            t = made.get(x)
            if t is not None and t.op == "transpose" and not is_block_swap(t.attr("perm"), *blocks):
                out.setdefault(t.ins[0], t)
    return out


def sum_transposed(g: Graph) -> Graph:
    ts = _stored_transposes(g)
    if not ts:
        return g

    def step(n, emit):
        if n.op != "sum" or n.ins[0] not in ts:
            return None
        x, t = n.ins[0], ts[n.ins[0]]
        perm, axes = t.attr("perm"), set(n.attr("axes"))
        if not axes:
            return None
        tv = emit("transpose", (x,), t.attrs, t.out.shape, t.out.dtype, n.loc)   # cse merges it with t
        t_axes = tuple(j for j, p in enumerate(perm) if p in axes)
        kept = tuple(1 if j in t_axes else d for j, d in enumerate(t.out.shape))
        s = emit("sum", (tv,), (("axes", t_axes), ("keepdims", True)), kept, n.out.dtype, n.loc)
        inv = tuple(perm.index(k) for k in range(len(perm)))
        back = tuple(kept[inv[k]] for k in range(len(perm)))
        s = emit("transpose", (s,), (("perm", inv),), back, n.out.dtype, n.loc)
        if tuple(n.out.shape) != back:
            s = emit("reshape", (s,), (("shape", tuple(n.out.shape)),), n.out.shape, n.out.dtype, n.loc)
        return s

    return rewrite(g, step)
