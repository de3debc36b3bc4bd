"""Products, convolution and pooling: batched and grouped matmul, im2col, windows, einsum, conv, pools."""
from __future__ import annotations

import math

import numpy as np

from .ir import FLOATS, ShapeError, dim_add, dim_parts
from .ops import Need, broadcast_shapes, composite, defop, _linear, _same_dtype, _t

# ---- matmul: C[*batch, *M, *N] = sum over *K of A[*batch_a, *M, *K] B[*batch_b, *K, *N]
#
# mkn = (nm, nk, nn) counts the axes of each group (1, 1, 1 for a plain product; 0 for the
# missing side of a vector). A group is one axis of the matrix BLAS sees, its size the product
# of the group's dims, so reshapes of symbolic dims are never needed. The batch dims lead and
# broadcast as NumPy's matmul does.

PLAIN = (1, 1, 1)


def mkn_of(n) -> tuple:
    return tuple(n.attr("mkn", PLAIN))


def _split(shape, first, second):
    """(batch, first group, second group) of an operand's shape."""
    r = len(shape)
    return shape[:r - first - second], shape[r - first - second:r - second], shape[r - second:]


def _matmul_rule(x, y, mkn=PLAIN):
    nm, nk, nn = mkn
    dt = _same_dtype("@", (x, y), FLOATS)
    bad = ShapeError(f"@: cannot multiply {_t(x)} by {_t(y)}")
    if len(x.shape) < nm + nk or len(y.shape) < nk + nn:
        raise bad
    ba, m, ka = _split(x.shape, nm, nk)
    bb, kb, n = _split(y.shape, nk, nn)
    if ka != kb:
        raise bad
    try:
        batch = broadcast_shapes(ba, bb)
    except ShapeError:
        raise ShapeError(f"@: cannot broadcast the batch dimensions of {_t(x)} and {_t(y)}") from None
    return batch + m + n, dt


def _matmul_ref(x, y, mkn=PLAIN):
    nm, nk, nn = mkn
    ba, m, k = _split(x.shape, nm, nk)
    bb, _, n = _split(y.shape, nk, nn)
    a = x.reshape(ba + (math.prod(m), math.prod(k)))
    b = y.reshape(bb + (math.prod(k), math.prod(n)))
    out = np.matmul(a, b)
    return out.reshape(out.shape[:-2] + m + n)


def swap_blocks(e, x, p, q):
    """x with its last two blocks of axes (p axes, then q axes) swapped: the matrix transpose of a
    grouped operand. Read in place by the products (plan.py, matmul_operands)."""
    if p == 0 or q == 0:
        return x
    r = len(x.shape)
    nb = r - p - q
    return e.transpose(x, perm=tuple(range(nb)) + tuple(range(nb + p, r)) + tuple(range(nb, nb + p)))


def is_block_swap(perm, p, q) -> bool:
    """Whether transpose perm makes an operand of blocks (p, q) from a source of blocks (q, p)."""
    r = len(perm)
    nb = r - p - q
    return p > 0 and q > 0 and nb >= 0 and tuple(perm) == tuple(range(nb)) + tuple(range(nb + q, r)) + tuple(range(nb, nb + q))


def operand_blocks(n) -> tuple:
    """((first, second) group sizes) of each operand of a matmul node: (M, K) and (K, N)."""
    nm, nk, nn = mkn_of(n)
    return (nm, nk), (nk, nn)


def mm(e, a, b, mkn=PLAIN):
    mkn = tuple(mkn)
    return e.matmul(a, b) if mkn == PLAIN else e.matmul(a, b, mkn=mkn)


def _matmul_vjp(e, g, z, x, y, mkn=PLAIN):
    nm, nk, nn = mkn
    dx = mm(e, g, swap_blocks(e, y, nk, nn), (nm, nn, nk))
    dy = mm(e, swap_blocks(e, x, nm, nk), g, (nk, nm, nn))
    return e.sum_to(dx, x.shape), e.sum_to(dy, y.shape)


def _matmul_jvp(e, ts, z, x, y, mkn=PLAIN):
    tx, ty = ts
    a = mm(e, tx, y, mkn) if tx is not None else None
    b = mm(e, x, ty, mkn) if ty is not None else None
    return b if a is None else a if b is None else e.add(a, b)


defop("matmul", _matmul_rule, _matmul_ref, vjp=_matmul_vjp, jvp=_matmul_jvp, kind="matmul")


# ---- sliding windows: the layout ops under convolution and pooling
#
# The last r axes of x are spatial. Output size per axis, as PyTorch: (S + 2p - d(k-1) - 1)//s + 1.
# A symbolic size needs stride 1 (S + 2p - d(k-1) is a dimension; a quotient is not).


def out_size(d, k, s, p, dil, what="the kernel"):
    span = dil * (k - 1) + 1
    sym, size = dim_parts(d)
    if sym is None:
        if size + 2 * p < span:
            raise ShapeError(f"{what} ({span} wide with dilation) is larger than the padded input "
                             f"({size} + 2*{p})")
        return (size + 2 * p - span) // s + 1
    if s != 1:
        raise ShapeError(f"a stride of {s} on the symbolic dimension {d} is not supported "
                         "(the output size would be a quotient); use a fixed size")
    return dim_add(d, 2 * p - span + 1)


def _win_needs(x, kernel, stride, padding, dilation, **_):
    r = len(kernel)
    out = []
    for i in range(r):
        axis = len(x.shape) - r + i
        span = dilation[i] * (kernel[i] - 1) + 1
        least = span - 2 * padding[i]
        if isinstance(x.shape[axis], int) or least <= 0:
            continue
        out.append(Need("ValueError", x, axis, least, "the kernel", message=(
            f"the kernel ({span} wide with dilation {dilation[i]}, padding {padding[i]}) is larger "
            f"than the padded input: axis {axis} of {{owner}}{{at}} needs at least {least} "
            "elements, but has size {size}")))
    return out


def out_sizes(shape, kernel, stride, padding, dilation):
    """The output sizes of the windows over the last len(kernel) axes of shape."""
    r = len(kernel)
    if len(shape) < r:
        raise ShapeError(f"expected at least {r} axes")
    return tuple(out_size(shape[len(shape) - r + i], kernel[i], stride[i], padding[i], dilation[i])
                 for i in range(r))


def _padded(x, padding, fill, r):
    pads = [(0, 0)] * (x.ndim - r) + [(p, p) for p in padding]
    return np.pad(x, pads, constant_values=fill)


def _window_slices(offset, stride, dilation, out):
    return tuple(slice(k * d, k * d + s * (o - 1) + 1, s) for k, s, d, o in zip(offset, stride, dilation, out))


def _unpad(padding, shape):
    return tuple(slice(p, p + s) for p, s in zip(padding, shape))


# window: at each output position o the element x[..., o*s + offset*d - p] (fill outside x): one
# kernel offset of every window; unwindow puts the elements back (its adjoint, zeros elsewhere)
def _window_rule(x, offset, kernel, stride, padding, dilation, fill):
    r = len(kernel)
    return x.shape[:len(x.shape) - r] + out_sizes(x.shape, kernel, stride, padding, dilation), x.dtype


def _window_ref(x, offset, kernel, stride, padding, dilation, fill):
    r = len(kernel)
    out = out_sizes(x.shape, kernel, stride, padding, dilation)
    xp = _padded(x, padding, fill, r)
    return np.array(xp[(Ellipsis,) + _window_slices(offset, stride, dilation, out)])


def _unwindow_rule(g, offset, kernel, stride, padding, dilation, shape):
    r = len(kernel)
    if len(g.shape) < r or tuple(g.shape[len(g.shape) - r:]) != out_sizes(shape, kernel, stride, padding, dilation):
        raise ShapeError(f"unwindow: {_t(g)} is not the windows of an input of size {list(shape)}")
    return g.shape[:len(g.shape) - r] + tuple(shape), g.dtype


def _unwindow_ref(g, offset, kernel, stride, padding, dilation, shape):
    r = len(kernel)
    out = g.shape[g.ndim - r:]
    xp = np.zeros(g.shape[:g.ndim - r] + tuple(s + 2 * p for s, p in zip(shape, padding)), g.dtype)
    xp[(Ellipsis,) + _window_slices(offset, stride, dilation, out)] = g
    return np.array(xp[(Ellipsis,) + _unpad(padding, shape)])


def _spatial_of(x, kernel):
    return x.shape[len(x.shape) - len(kernel):]


# the tangent of a window is the window of the tangent, zero where the fill stands (not -inf)
defop("window", _window_rule, _window_ref,
      vjp=lambda e, g, z, x, fill, **kw: (e.unwindow(g, shape=_spatial_of(x, kw["kernel"]), **kw),),
      jvp=lambda e, ts, z, x, fill, **kw: e.window(ts[0], fill=0.0, **kw),
      kind="layout", needs=_win_needs, cheap=0)
_linear("unwindow", _unwindow_rule, _unwindow_ref,
        lambda e, g, z, x, shape, **kw: (e.window(g, fill=0.0, **kw),))


# im2col: x[N, C, *S] -> cols[N, *O, C, *k] (groups 1) or cols[G, N, *O, C/G, *k]: every window
# of every channel, laid out so that a convolution is one product of cols by the weights;
# col2im sums the windows back (its adjoint)
def _im2col_rule(x, kernel, stride, padding, dilation, groups):
    if len(x.shape) != 2 + len(kernel):
        raise ShapeError(f"im2col: expected {2 + len(kernel)} axes, got {_t(x)}")
    n, c = x.shape[:2]
    out = out_sizes(x.shape, kernel, stride, padding, dilation)
    if groups == 1:
        return (n,) + out + (c,) + tuple(kernel), x.dtype
    if not isinstance(c, int) or c % groups:
        raise ShapeError(f"im2col: {groups} groups do not divide {c} channels")
    return (groups, n) + out + (c // groups,) + tuple(kernel), x.dtype


def _im2col_ref(x, kernel, stride, padding, dilation, groups):
    r = len(kernel)
    n, c = x.shape[:2]
    out = out_sizes(x.shape, kernel, stride, padding, dilation)
    xp = _padded(x, padding, 0, r)
    cols = np.zeros((n,) + out + (c,) + tuple(kernel), x.dtype)
    for k in np.ndindex(*kernel):
        piece = xp[(slice(None), slice(None)) + _window_slices(k, stride, dilation, out)]
        cols[(Ellipsis,) + k] = np.moveaxis(piece, 1, -1)
    if groups == 1:
        return cols
    cols = cols.reshape((n,) + out + (groups, c // groups) + tuple(kernel))
    return np.ascontiguousarray(np.moveaxis(cols, 1 + r, 0))


def _col2im_rule(c, kernel, stride, padding, dilation, groups, shape):
    want, _ = _im2col_rule(type(c)(0, tuple(shape), c.dtype), kernel, stride, padding, dilation, groups)
    if tuple(c.shape) != want:
        raise ShapeError(f"col2im: expected columns of shape {list(want)}, got {_t(c)}")
    return tuple(shape), c.dtype


def _col2im_ref(cols, kernel, stride, padding, dilation, groups, shape):
    r = len(kernel)
    if groups > 1:
        cols = np.moveaxis(cols, 0, 1 + r)
        cols = cols.reshape(cols.shape[:1 + r] + (shape[1],) + tuple(kernel))
    out = cols.shape[1:1 + r]
    xp = np.zeros(tuple(shape[:2]) + tuple(s + 2 * p for s, p in zip(shape[2:], padding)), cols.dtype)
    for k in np.ndindex(*kernel):
        xp[(slice(None), slice(None)) + _window_slices(k, stride, dilation, out)] += \
            np.moveaxis(cols[(Ellipsis,) + k], -1, 1)
    return np.array(xp[(slice(None), slice(None)) + _unpad(padding, shape[2:])])


_linear("im2col", _im2col_rule, _im2col_ref,
        lambda e, g, z, x, **kw: (e.col2im(g, shape=x.shape, **kw),), needs=_win_needs)
# col2im sums a window's worth of elements: worth storing where several loops read it (cheap=None)
defop("col2im", _col2im_rule, _col2im_ref,
      vjp=lambda e, g, z, c, shape, **kw: (e.im2col(g, **kw),),
      jvp=lambda e, ts, z, c, **kw: e.col2im(ts[0], **kw), kind="layout")


# max pooling by the winner's index. pool_max(x): the maximum of each window; pool_argmax(x)
# -> i32 per window: the position in the window (row-major over the kernel offsets) of its
# first maximum, a nan winning over anything before it (the chain of where(x_k > m or
# x_k != x_k, x_k, m)), padding -inf. pool_gather(x, idx) is the window's element at idx (fill
# where that is padding); pool_scatter(g, idx) its adjoint: each element of an input of spatial
# size `shape` sums the g of the windows whose winner it is (one window at most when
# stride >= kernel and dilation 1).
def _pool_win(kernel, stride, padding, dilation):
    return dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)


def _pool_argmax_rule(x, kernel, stride, padding, dilation, name="pool_argmax"):
    if x.dtype not in FLOATS:
        raise ShapeError(f"{name}: expected floats, got {_t(x)}")
    r = len(kernel)
    return x.shape[:len(x.shape) - r] + out_sizes(x.shape, kernel, stride, padding, dilation), "i32"


def _pool_max_rule(x, kernel, stride, padding, dilation):
    shape, _ = _pool_argmax_rule(x, kernel, stride, padding, dilation, "pool_max")
    return shape, x.dtype


def _pool_max_ref(x, kernel, stride, padding, dilation):
    return _pool_scan(x, kernel, stride, padding, dilation)[0]


def _pool_argmax_ref(x, kernel, stride, padding, dilation):
    return _pool_scan(x, kernel, stride, padding, dilation)[1]


def _pool_scan(x, kernel, stride, padding, dilation):
    r = len(kernel)
    out = out_sizes(x.shape, kernel, stride, padding, dilation)
    xp = _padded(x, padding, -np.inf, r)
    best = arg = None
    for j, k in enumerate(np.ndindex(*kernel)):
        v = xp[(Ellipsis,) + _window_slices(k, stride, dilation, out)]
        if best is None:
            best, arg = v, np.zeros(v.shape, np.int32)
        else:
            win = (v > best) | np.isnan(v)
            best, arg = np.where(win, v, best), np.where(win, np.int32(j), arg)
    return np.array(best, x.dtype), arg.astype(np.int32)


def _pool_idx_check(name, idx, lead, out):
    if idx.dtype != "i32" or tuple(idx.shape) != tuple(lead) + tuple(out):
        raise ShapeError(f"{name}: the winners must be i32{list(tuple(lead) + tuple(out))}, got {_t(idx)}")


def _pool_gather_rule(x, idx, kernel, stride, padding, dilation, fill):
    r = len(kernel)
    if len(x.shape) < r:
        raise ShapeError(f"pool_gather: expected at least {r} axes, got {_t(x)}")
    lead = x.shape[:len(x.shape) - r]
    _pool_idx_check("pool_gather", idx, lead, out_sizes(x.shape, kernel, stride, padding, dilation))
    return tuple(idx.shape), x.dtype


def _pool_gather_ref(x, idx, kernel, stride, padding, dilation, fill):
    r = len(kernel)
    out = idx.shape[idx.ndim - r:]
    xp = _padded(x, padding, fill, r)
    res = np.zeros(idx.shape, x.dtype)
    for j, k in enumerate(np.ndindex(*kernel)):
        res = np.where(idx == j, xp[(Ellipsis,) + _window_slices(k, stride, dilation, out)], res)
    return res.astype(x.dtype)


def _pool_scatter_rule(g, idx, kernel, stride, padding, dilation, shape):
    r = len(kernel)
    if len(g.shape) < r or tuple(g.shape[len(g.shape) - r:]) != out_sizes(shape, kernel, stride, padding, dilation):
        raise ShapeError(f"pool_scatter: {_t(g)} is not the windows of an input of size {list(shape)}")
    _pool_idx_check("pool_scatter", idx, (), g.shape)
    return g.shape[:len(g.shape) - r] + tuple(shape), g.dtype


def _pool_scatter_ref(g, idx, kernel, stride, padding, dilation, shape):
    r = len(kernel)
    out = g.shape[g.ndim - r:]
    xp = np.zeros(g.shape[:g.ndim - r] + tuple(s + 2 * p for s, p in zip(shape, padding)), g.dtype)
    for j, k in enumerate(np.ndindex(*kernel)):
        xp[(Ellipsis,) + _window_slices(k, stride, dilation, out)] += np.where(idx == j, g, 0).astype(g.dtype)
    return np.array(xp[(Ellipsis,) + _unpad(padding, shape)])


defop("pool_argmax", _pool_argmax_rule, _pool_argmax_ref, kind="layout", needs=_win_needs)
# the maximum itself: its adjoint and tangent find the winners again, in the loop that computes
# the maximum where both are wanted (the same shape, the same reads)
defop("pool_max", _pool_max_rule, _pool_max_ref,
      vjp=lambda e, g, z, x, **kw: (e.pool_scatter(g, e.pool_argmax(x, **kw), shape=_spatial_of(x, kw["kernel"]),
                                                   **kw),),
      jvp=lambda e, ts, z, x, **kw: e.pool_gather(ts[0], e.pool_argmax(x, **kw), fill=0.0, **kw),
      kind="layout", needs=_win_needs)
defop("pool_gather", _pool_gather_rule, _pool_gather_ref,
      vjp=lambda e, g, z, x, idx, kernel, stride, padding, dilation, fill: (
          e.pool_scatter(g, idx, shape=_spatial_of(x, kernel), **_pool_win(kernel, stride, padding, dilation)),
          None),
      jvp=lambda e, ts, z, x, idx, fill, **kw: (
          None if ts[0] is None else e.pool_gather(ts[0], idx, fill=0.0, **kw)),
      kind="layout", needs=lambda x, idx, **kw: _win_needs(x, **kw))
defop("pool_scatter", _pool_scatter_rule, _pool_scatter_ref,
      vjp=lambda e, g, z, gz, idx, shape, **kw: (e.pool_gather(g, idx, fill=0.0, **kw), None),
      jvp=lambda e, ts, z, g, idx, **kw: None if ts[0] is None else e.pool_scatter(ts[0], idx, **kw),
      kind="layout", cheap=0)


# ---- composites: convolution, pooling, einsum


@composite
def conv(e, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's conv1d/conv2d: x[N, C, *S], w[O, C/groups, *k] -> [N, O, *out]: im2col, then one
    product of every window by the weights (a batch of groups products when groups > 1)."""
    r = len(w.shape) - 2
    kernel = tuple(w.shape[2:])
    win = dict(kernel=kernel, stride=_per_axis(stride, r), padding=_per_axis(padding, r),
               dilation=_per_axis(dilation, r), groups=groups)
    cols = e.im2col(x, **win)
    n, o = x.shape[0], w.shape[0]
    if groups == 1:
        y = mm(e, cols, swap_blocks(e, w, 1, 1 + r), (1 + r, 1 + r, 1))     # [N, *out, O]
        y = e.transpose(y, perm=(0, 1 + r) + tuple(range(1, 1 + r)))
    else:
        wg = e.reshape(w, shape=(groups, o // groups) + tuple(w.shape[1:]))
        y = mm(e, cols, swap_blocks(e, wg, 1, 1 + r), (1 + r, 1 + r, 1))    # [G, N, *out, O/G]
        y = e.transpose(y, perm=(1, 0, 2 + r) + tuple(range(2, 2 + r)))
        y = e.reshape(y, shape=(n, o) + tuple(y.shape[3:]))
    if b is not None:
        y = e.add(y, e.reshape(b, shape=(o,) + (1,) * r))
    return y


def _per_axis(v, r):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * r


@composite
def max_pool(e, x, kernel, stride=None, padding=0, dilation=1):
    """The maximum of each window: the first maximum in row-major order (PyTorch's rule; padding
    is -inf, and a nan wins as in PyTorch) found once by pool_argmax, its index kept, and the
    element read back by pool_gather, whose adjoint sends each window's gradient to its winner
    alone. Integer inputs take the chain of where(x_k > m, x_k, m) over the window's offsets."""
    kernel = tuple(kernel)
    win = _pool_window(kernel, stride, padding, dilation)
    if x.dtype in FLOATS:
        return e.pool_max(x, **win)
    m = None
    for k in np.ndindex(*kernel):
        v = e.window(x, offset=tuple(k), fill=-math.inf, **win)
        m = v if m is None else e.where(e.or_(e.gt(v, m), e.ne(v, v)), v, m)
    return m


@composite
def avg_pool(e, x, kernel, stride=None, padding=0):
    """The mean of each window, zero padding counted (PyTorch's count_include_pad=True)."""
    kernel = tuple(kernel)
    win = _pool_window(kernel, stride, padding, 1)
    s = None
    for k in np.ndindex(*kernel):
        v = e.window(x, offset=tuple(k), fill=0.0, **win)
        s = v if s is None else e.add(s, v)
    return e.div(s, float(math.prod(kernel)))


def _pool_window(kernel, stride, padding, dilation):
    r = len(kernel)
    return dict(kernel=tuple(kernel), stride=tuple(kernel) if stride is None else _per_axis(stride, r),
                padding=_per_axis(padding, r), dilation=_per_axis(dilation, r))


def parse_einsum(spec: str, ranks) -> tuple:
    """(input letter strings, output letters) of an einsum spec for operands of these ranks, or
    ShapeError("spec", message) / ShapeError(operand index, message)."""
    text = spec.replace(" ", "")
    if "." in text:
        raise ShapeError("spec", "einsum: '...' (ellipsis) is not supported; name every axis")
    if text.count("->") > 1:
        raise ShapeError("spec", "einsum: the spec has more than one '->'")
    lhs, arrow, out = text.partition("->")
    ins = lhs.split(",")
    for part in ins + [out]:
        bad = [c for c in part if not c.isalpha() or not c.isascii()]
        if bad:
            raise ShapeError("spec", f"einsum: '{bad[0]}' is not an index letter (a-z, A-Z)")
    if len(ins) != len(ranks):
        raise ShapeError("spec", f"einsum: the spec names {len(ins)} operand{'s' * (len(ins) != 1)}, "
                                 f"but {len(ranks)} {'are' if len(ranks) != 1 else 'is'} given")
    if not arrow:              # implicit output: the letters seen once, in alphabetical order
        letters = "".join(ins)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    seen = set("".join(ins))
    for c in out:
        if c not in seen:
            raise ShapeError("spec", f"einsum: the output letter '{c}' is in no operand")
        if out.count(c) > 1:
            raise ShapeError("spec", f"einsum: the output letter '{c}' appears twice")
    for i, (part, rank) in enumerate(zip(ins, ranks)):
        if len(part) != rank:
            raise ShapeError(i, f"einsum: operand {i} has {rank} ax{'es' if rank != 1 else 'is'} but "
                                f"the spec names {len(part)} ('{part}')")
    return ins, out


def einsum_sizes(ins, shapes) -> dict:
    """The size of each letter; ShapeError(operand index, message) where two differ (1 broadcasts)."""
    sizes, where = {}, {}
    for i, (part, shape) in enumerate(zip(ins, shapes)):
        for c, d in zip(part, shape):
            if c not in sizes or (sizes[c] == 1 and d != 1):
                sizes[c], where[c] = d, i
            elif d != sizes[c] and d != 1:
                raise ShapeError(i, f"einsum: index '{c}' has size {sizes[c]} in operand {where[c]} "
                                    f"but {d} in operand {i}")
    return sizes


@composite
def einsum(e, *xs, spec):
    """NumPy's einsum without ellipsis: repeated letters take diagonals, letters in one operand
    only are summed first, then operands are contracted pairwise, each pair as one (batched)
    product: batch letters, contracted letters and each side's free letters grouped (dot_general
    style), or a broadcast multiply where nothing is contracted."""
    ins, out = parse_einsum(spec, [len(x.shape) for x in xs])
    sizes = einsum_sizes(ins, [x.shape for x in xs])
    ops = []
    for x, part in zip(xs, ins):
        full = tuple(sizes[c] for c in part)
        if full != tuple(x.shape):
            x = e.broadcast_to(x, shape=full)
        ops.append(_diagonal(e, x, part))
    for i, (x, part) in enumerate(ops):            # letters no one else needs: summed at once
        others = set(out).union(*(set(p) for j, (_, p) in enumerate(ops) if j != i))
        ops[i] = _sum_letters(e, x, part, [c for c in part if c not in others])
    x, part = ops[0]
    for i in range(1, len(ops)):
        y, q = ops[i]
        keep = set(out).union(*(set(p) for _, p in ops[i + 1:]))
        x, part = _contract(e, x, part, y, q, keep)
    return _arrange(e, x, part, out)


def _arrange(e, x, part, order):
    perm = tuple(part.index(c) for c in order)
    return x if perm == tuple(range(len(part))) else e.transpose(x, perm=perm)


def _sum_letters(e, x, part, letters):
    if not letters:
        return x, part
    axes = tuple(part.index(c) for c in letters)
    return e.sum(x, axes=tuple(sorted(axes)), keepdims=False), "".join(c for c in part if c not in letters)


def _diagonal(e, x, part):
    """x with each repeated letter's axes reduced to their diagonal: (x, letters)."""
    while len(set(part)) != len(part):
        c = next(c for c in part if part.count(c) > 1)
        a = part.index(c)
        b = part.index(c, a + 1)
        n = x.shape[a]
        if not isinstance(n, int):
            raise ShapeError(f"einsum: the repeated index '{c}' needs a fixed size, got {n}")
        mask_shape = tuple(n if k in (a, b) else 1 for k in range(len(part)))
        eye = np.eye(n, dtype=bool).reshape(mask_shape)
        x = e.sum(e.where(e.array(eye, "bool"), x, 0), axes=(b,), keepdims=False)
        part = part[:b] + part[b + 1:]
    return x, part


def _contract(e, x, p, y, q, keep):
    """x (letters p) and y (letters q) combined, keeping the letters in keep: (value, letters)."""
    x, p = _sum_letters(e, x, p, [c for c in p if c not in q and c not in keep])
    y, q = _sum_letters(e, y, q, [c for c in q if c not in p and c not in keep])
    batch = [c for c in p if c in q and c in keep]
    con = [c for c in p if c in q and c not in keep]
    fx = [c for c in p if c not in q]
    fy = [c for c in q if c not in p]
    if con and (fx or fy):
        a = _arrange(e, x, p, batch + fx + con)
        b = _arrange(e, y, q, batch + con + fy)
        return mm(e, a, b, (len(fx), len(con), len(fy))), "".join(batch + fx + fy)
    # nothing to multiply as matrices: a broadcast product, summed over the contracted letters
    order = batch + fx + fy + con
    a = e.reshape(_arrange(e, x, p, [c for c in order if c in p]),
                  shape=tuple(x.shape[p.index(c)] if c in p else 1 for c in order))
    b = e.reshape(_arrange(e, y, q, [c for c in order if c in q]),
                  shape=tuple(y.shape[q.index(c)] if c in q else 1 for c in order))
    z = e.mul(a, b)
    if con:
        z = e.sum(z, axes=tuple(range(len(order) - len(con), len(order))), keepdims=False)
    return z, "".join(batch + fx + fy)


def matmul_of(e, a, b):
    """a @ b with NumPy's rules: a vector operand is a matrix of one row (one column) whose axis
    then goes; batch dims broadcast; a batched a times a matrix b is one product of more rows."""
    nm = 0 if len(a.shape) == 1 else 1
    nn = 0 if len(b.shape) == 1 else 1
    if len(b.shape) <= 2 and len(a.shape) >= 3:
        nm = len(a.shape) - 1
    return mm(e, a, b, (nm, 1, nn))
