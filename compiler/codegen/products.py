"""The layout of a (batched, grouped) matrix product, as the backends' product loops see it."""
from __future__ import annotations

from dataclasses import dataclass

from ..ops_nn import mkn_of
from .layout import ZERO         # the one zero index: element lookups compare indices by identity


@dataclass
class Product:
    """C[*batch, M, N] = op(A)[*, M, K] @ op(B)[*, K, N], each group of axes one matrix axis."""
    a: object           # the buffer read for A (a transposed operand's source: ta)
    ta: bool
    b: object
    tb: bool
    batch: tuple        # the result's batch dims
    a_batch: tuple      # each operand's own batch dims: a 1 (or a missing leading axis) broadcasts
    b_batch: tuple
    m: tuple            # the dims of each group
    k: tuple
    n: tuple

    @property
    def folds(self) -> bool:
        """B is the same matrix for every batch and A's batches follow one another in memory:
        the batch is more rows of one product."""
        return (not self.ta and all(d == 1 for d in self.b_batch) and self.a_batch == self.batch)


def product(plan, n) -> Product:
    (a, ta), (b, tb) = plan.matmul_operands[n]
    nm, nk, nn = mkn_of(n)
    x, y = n.ins
    ra, rb = len(x.shape), len(y.shape)
    nb = len(n.out.shape) - nm - nn
    return Product(a, ta, b, tb, n.out.shape[:nb], x.shape[:ra - nm - nk], y.shape[:rb - nk - nn],
                   x.shape[ra - nm - nk:ra - nk], x.shape[ra - nk:], y.shape[rb - nn:])


def batch_offset(L, b, idx, own, batch):
    """The index of an operand's matrix for the result's batch multi-index idx (broadcasting)."""
    lead = len(batch) - len(own)
    flat = ZERO
    for k, d in enumerate(own):
        if d == 1:
            continue
        i = idx[lead + k]
        flat = i if flat is ZERO else b.add(b.mul(flat, L.dim(d)), i)
    return flat


def unflatten(L, b, flat, shape):
    """The multi-index of a row-major flat index over shape."""
    idx = [ZERO] * len(shape)
    for k in range(len(shape) - 1, -1, -1):
        d = shape[k]
        if d == 1:
            continue
        if k == 0:
            idx[k] = flat
        else:
            n = L.dim(d)
            idx[k] = b.urem(flat, n)
            flat = b.udiv(flat, n)
    return tuple(idx)
