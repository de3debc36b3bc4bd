"""Convolutions' products image by image (plan.Chunk): the columns of one image at a time.

A convolution is im2col and a product (ops_nn.conv), and its adjoints are products with the
columns and col2im. Stored whole, the columns of a batch are C*k*k times the input (14 MB for
32 images of 16x28x28 with a 3x3 kernel), written once and read by every product, so the
products wait on memory. Here each thread takes a share of the images and, for each, writes that
image's columns into a scratch block of its own that stays in cache, multiplies it, and moves on:
the batch's columns never exist at once.

The block holds one image's columns as rows (c, kernel offsets) by columns (output positions),
so that a row is a shifted, strided copy of one input row: the copies and the col2im sums are
contiguous loops; where a whole plane of a row is one shifted run of the input (_planar),
one loop per plane. The products read the block with BLAS's transpose flags:

  fwd  out[n] (HW x O)   = cols_n^T @ B
  dw   out (CKK x O)    += cols_n @ G[n]      (a thread's images into its own partial, then summed)
  dx   block (CKK x HW)  = op(B)^T @ G[n]^T,  then col2im of the block into dx[n]
"""
from __future__ import annotations

from llvmlite import ir

from ..element import ONE, ZERO
from ..products import product
from ..scalar import I64, LLTYPES
from .blas import gemm_function

I32 = ir.IntType(32)
ALIGN = 16                        # a thread's block starts on a cache line


def _dims(chunk):
    """(x or dx node's value, C, kernel, out sizes, stride, padding, dilation) of a chunk."""
    n = chunk.cols
    kw = n.kw
    r = len(kw["kernel"])
    if chunk.kind == "dx":
        cols = n.ins[0]                        # [N, *out, C, *k]
        return n.out, n.out.shape[1], kw["kernel"], cols.shape[1:1 + r], kw["stride"], kw["padding"], kw["dilation"]
    x = n.ins[0]
    return x, x.shape[1], kw["kernel"], n.out.shape[1:1 + r], kw["stride"], kw["padding"], kw["dilation"]


def block_shape(chunk) -> tuple:
    """One image's columns as the block holds them: (C, *kernel, *out)."""
    _, c, kernel, out, *_ = _dims(chunk)
    return (c,) + tuple(kernel) + tuple(out)


def per_thread(L, chunk):
    """Elements of one thread's block, rounded up to a cache line of any dtype."""
    e = L.entry
    s = L.size(block_shape(chunk))
    return e.and_(e.add(s, ir.Constant(I64, ALIGN - 1)), ir.Constant(I64, -ALIGN))


def same_columns(a, b) -> bool:
    """Whether two Chunk steps can share one pass over the images: the same columns (one fill
    of the block per image for both products) and the same multiply-adds, so the same split."""
    return a.kind != "dx" and b.kind != "dx" and a.cols is b.cols and _work(a) == _work(b)


def _work(chunk):
    n = chunk.mm
    return tuple(sorted(map(str, n.ins[0].shape + n.ins[1].shape[-1:])))


def _split(L, chunk):
    """Whether the threads share the images: several threads, enough multiply-adds."""
    x = _dims(chunk)[0]
    p = product(L.plan, chunk.mm)
    e = L.entry
    return L._share(e.mul(e.mul(L.size(p.m), L.size(p.k)), L.size(p.n)), L.dim(x.shape[0]))


def emit_chunks(L, chunks, part):
    """Chunk steps over the same columns, one pass over the images (part 1: a dw's partials
    summed)."""
    if part == 1:
        for chunk in chunks:
            _combine(L, chunk)
        return
    first = chunks[0]
    x, c, kernel, out, *_ = _dims(first)
    split = _split(L, first)
    lo, hi = L._part(L.dim(x.shape[0]), split)
    t = LLTYPES[x.dtype]
    b = L.b
    block = b.gep(L.extra[("chunk", first.root)], [b.mul(L.tid, per_thread(L, first))], source_etype=t)
    hw = L.size(out)
    ckk = L.size((c,) + tuple(kernel))
    targets = {}
    for chunk in chunks:
        if chunk.kind == "dw":
            n = chunk.root
            mn = L.size(n.out.shape)
            target = b.select(split, b.gep(L.extra[("partial", n)], [b.mul(L.tid, mn)], source_etype=t),
                              L.bufs[n.out])
            with L.when(b.and_(b.icmp_signed("==", lo, hi), b.or_(split, L.is_first))):
                with L.loop(mn) as j:           # no images: the sum of none
                    L.b.store(ir.Constant(t, 0.0), L.b.gep(target, [j], source_etype=t))
            targets[chunk.root] = target
    with L.loop(hi, lo) as i:
        if first.kind != "dx":
            _fill(L, first, i, block)
        for chunk in chunks:
            _product(L, chunk, i, lo, block, hw, ckk, targets.get(chunk.root))


def _product(L, chunk, i, lo, block, hw, ckk, target):
    """Image i's part of the chunk's product, its block of columns made."""
    n = chunk.root
    x = _dims(chunk)[0]
    p = product(L.plan, chunk.mm)
    M, K, N = L.size(p.m), L.size(p.k), L.size(p.n)
    flag = lambda v: ir.Constant(I32, int(v))
    b = L.b
    ldb = K if p.tb else N                      # B's row length as stored
    if chunk.kind == "fwd" and chunk.root is chunk.mm:
        # out[i] (HW x O) = block^T @ op(B)
        b.call(gemm_function(L.module, x.dtype), [flag(1), flag(p.tb), hw, N, ckk, block, hw,
                                                  L.bufs[p.b], ldb, _rows(L, n.out, i, hw, N), N])
    elif chunk.kind == "fwd":
        # out[i] (O x HW), channels first = op(B)^T @ block
        b.call(gemm_function(L.module, x.dtype), [flag(not p.tb), flag(0), N, hw, ckk, L.bufs[p.b], ldb,
                                                  block, hw, _rows(L, n.out, i, hw, N), hw])
    elif chunk.kind == "dw":
        g, ldg, tg = _image_rows(L, chunk, p.b, p.tb, i, hw, N, K)
        with b.if_else(b.icmp_signed("==", i, lo)) as (then, other):
            for blk, acc in ((then, False), (other, True)):
                with blk:
                    b.call(gemm_function(L.module, x.dtype, acc),
                           [flag(0), flag(tg), ckk, N, hw, block, hw, g, ldg, target, N])
    else:
        # block[CKK, HW] = op(B)^T @ op(A)[image rows]^T; op(B) is [O, CKK], op(A) rows [HW, O]
        ga, lda, ta = _image_rows(L, chunk, p.a, p.ta, i, hw, K, M)
        b.call(gemm_function(L.module, x.dtype), [flag(not p.tb), flag(not ta), ckk, hw, K, L.bufs[p.b],
                                                  ldb, ga, lda, block, hw])
        _col2im(L, chunk, i, block)


def _rows(L, v, i, rows, width):
    """The first of image i's rows of v, a [images*rows, width] matrix."""
    return L.b.gep(L.bufs[v], [L.b.mul(L.b.mul(i, rows), width)], source_etype=LLTYPES[v.dtype])


def _image_rows(L, chunk, v, transposed, i, rows, width, total):
    """(pointer, leading dimension, transposed) of image i's rows of an operand [images*rows,
    width], stored as such, transposed as [width, total rows], or (chunk.nchw) channels first
    as [images, width, rows]."""
    if chunk.nchw is not None:
        return _rows(L, v, i, rows, width), rows, True
    if transposed:
        return L.b.gep(L.bufs[v], [L.b.mul(i, rows)], source_etype=LLTYPES[v.dtype]), total, True
    return _rows(L, v, i, rows, width), width, False


def _outer(L, chunk, idx, inner):
    """(flat index, channel, kernel offsets, whether the outer input positions are inside the
    input, those positions) of idx over (C, *kernel, *out[:-inner]): the output axes before the
    last `inner` ones are the block's outer loops."""
    x, c, kernel, out, stride, padding, dilation = _dims(chunk)
    space = x.shape[2:]
    r = len(kernel)
    ch, ks, os = idx[0], idx[1:1 + r], idx[1 + r:]
    b = L.b
    flat = L.offset((c,) + tuple(kernel) + tuple(out[:-inner]), idx)
    inside = ir.Constant(ir.IntType(1), 1)
    pos = []
    for a in range(r - inner):
        v = b.sub(b.add(b.mul(os[a], _c(stride[a])), b.mul(ks[a], _c(dilation[a]))), _c(padding[a]))
        inside = b.and_(inside, b.and_(b.icmp_signed(">=", v, ZERO), b.icmp_signed("<", v, L.dim(space[a]))))
        pos.append(v)
    return flat, ch, ks, inside, pos


def _rows_of_block(L, chunk, body):
    """body(flat row, whether the row's outer input positions are inside the input, those
    positions, the last kernel offset, the channel) for each row of the block: loops over the
    channels, the kernel offsets and the outer output axes."""
    _, c, kernel, out, *_ = _dims(chunk)

    def row(idx):
        flat, ch, ks, inside, pos = _outer(L, chunk, idx, 1)
        body(flat, inside, pos, ks[-1], ch)
    L.nest((c,) + tuple(kernel) + tuple(out[:-1]), row)


def _c(v):
    return ir.Constant(I64, v)


def _last_range(L, chunk, k, axis=-1):
    """[lo, hi) of the output axis (the last by default) whose input position o*s + k*d - p is
    inside the input, the position at o = 0, and the axis's length."""
    x, c, kernel, out, stride, padding, dilation = _dims(chunk)
    b = L.b
    s, d, p = stride[axis], dilation[axis], padding[axis]
    o_n, size = L.dim(out[axis]), L.dim(x.shape[axis])
    base = b.sub(b.mul(k, _c(d)), _c(p))                   # the position at o = 0
    neg = b.sub(ZERO, base)                                  # o >= ceil(-base / s)
    lo = b.select(b.icmp_signed("<=", neg, ZERO), ZERO, b.sdiv(b.add(neg, _c(s - 1)), _c(s)))
    top = b.sub(b.sub(size, ONE), base)                      # o <= floor((S - 1 - base) / s)
    hi = b.select(b.icmp_signed("<", top, ZERO), ZERO, b.add(b.sdiv(top, _c(s)), ONE))
    clamp = lambda v: b.select(b.icmp_signed("<", v, ZERO), ZERO, b.select(b.icmp_signed(">", v, o_n), o_n, v))
    lo, hi = clamp(lo), clamp(hi)
    hi = b.select(b.icmp_signed("<", hi, lo), lo, hi)
    return lo, hi, base, o_n


def _planar(chunk) -> bool:
    """Whether a row of the block over the last two output axes is one contiguous run of the
    input plane, shifted: stride 1 on both and the output as wide as the input (a "same"
    convolution). The rows then copy (and col2im adds) a whole plane at once, and only the
    positions outside the input are set to zero one by one."""
    x, c, kernel, out, stride, *_ = _dims(chunk)
    return len(kernel) >= 2 and stride[-1] == 1 and stride[-2] == 1 and out[-1] == x.shape[-1]


def _planes_of_block(L, chunk, body):
    """body(plane, channel, pos, source shift, [jlo, jhi), (row lo, row hi, col lo, col hi, width))
    for each plane of the block (a channel and kernel offset, outer output positions): the
    plane's elements [jlo, jhi) are input elements at j + shift of the input plane at pos (an
    empty run where the plane is all outside); within that run, the columns outside [col lo,
    col hi) of rows [row lo, row hi) are not."""
    _, c, kernel, out, *_ = _dims(chunk)

    def plane(idx):
        flat, ch, ks, inside, pos = _outer(L, chunk, idx, 2)
        hlo, hhi, hbase, _ = _last_range(L, chunk, ks[-2], -2)
        wlo, whi, wbase, width = _last_range(L, chunk, ks[-1], -1)
        b = L.b
        inside = b.and_(inside, b.and_(b.icmp_signed("<", hlo, hhi), b.icmp_signed("<", wlo, whi)))
        jlo = b.select(inside, b.add(b.mul(hlo, width), wlo), ZERO)
        jhi = b.select(inside, b.add(b.mul(b.sub(hhi, ONE), width), whi), ZERO)
        shift = b.add(b.mul(hbase, width), wbase)
        body(flat, ch, pos, shift, (jlo, jhi), (hlo, hhi, wlo, whi, width))
    L.nest((c,) + tuple(kernel) + tuple(out[:-2]), plane)


def _zero_columns(L, dst, t, rows):
    """dst's columns outside [col lo, col hi) set to zero in rows [row lo, row hi): a strided
    store down each such column (the few positions of a run that fall outside the input)."""
    hlo, hhi, wlo, whi, width = rows
    zero = ir.Constant(t, 0.0)
    for start, stop in ((ZERO, wlo), (whi, width)):
        with L.loop(stop, start) as col:
            with L.loop(hhi, hlo) as row:
                b = L.b
                b.store(zero, b.gep(dst, [b.add(b.mul(row, width), col)], source_etype=t))


def _fill_planes(L, chunk, i, block):
    """_fill for a _planar chunk: each plane one contiguous copy, then its outside zeroed."""
    x, c, kernel, out, *_ = _dims(chunk)
    t = LLTYPES[x.dtype]
    zero = ir.Constant(t, 0.0)
    area = L.size(out[-2:])

    def body(flat, ch, pos, shift, run, rows):
        b = L.b
        jlo, jhi = run
        dst = b.gep(block, [b.mul(flat, area)], source_etype=t)
        src = b.gep(L.bufs[x], [b.add(L.offset(x.shape, (i, ch) + tuple(pos) + (ZERO, ZERO)), shift)],
                    source_etype=t)
        with L.loop(jlo) as j:
            L.b.store(zero, L.b.gep(dst, [j], source_etype=t))
        with L.loop(jhi, jlo) as j:
            L.b.store(L.b.load(L.b.gep(src, [j], source_etype=t), typ=t), L.b.gep(dst, [j], source_etype=t))
        with L.loop(area, jhi) as j:
            L.b.store(zero, L.b.gep(dst, [j], source_etype=t))
        _zero_columns(L, dst, t, rows)
    _planes_of_block(L, chunk, body)


def _fill(L, chunk, i, block):
    """Image i's columns into the block: each row a strided copy of an input row, zeros outside."""
    if _planar(chunk):
        return _fill_planes(L, chunk, i, block)
    x, c, kernel, out, stride, *_ = _dims(chunk)
    t = LLTYPES[x.dtype]
    zero = ir.Constant(t, 0.0)
    s = stride[-1]

    def body(flat, inside, pos, k, ch):
        b = L.b
        lo, hi, base, o_n = _last_range(L, chunk, k)
        dst = b.gep(block, [b.mul(flat, o_n)], source_etype=t)
        lo = b.select(inside, lo, o_n)
        hi = b.select(inside, hi, o_n)
        with L.loop(lo) as o:
            L.b.store(zero, L.b.gep(dst, [o], source_etype=t))
        src = L.b.gep(L.bufs[x], [L.offset(x.shape, (i, ch) + tuple(pos) + (base,))], source_etype=t)
        with L.loop(hi, lo) as o:
            v = L.b.load(L.b.gep(src, [o if s == 1 else L.b.mul(o, _c(s))], source_etype=t), typ=t)
            L.b.store(v, L.b.gep(dst, [o], source_etype=t))
        with L.loop(o_n, hi) as o:
            L.b.store(zero, L.b.gep(dst, [o], source_etype=t))
    _rows_of_block(L, chunk, body)


def _col2im(L, chunk, i, block):
    """dx[i] = the block's rows added back where they were taken from (zero first)."""
    dx, c, kernel, out, stride, *_ = _dims(chunk)
    t = LLTYPES[dx.dtype]
    s = stride[-1]
    b = L.b
    img = L.size(dx.shape[1:])
    dst0 = b.gep(L.bufs[dx], [b.mul(i, img)], source_etype=t)
    with L.loop(img) as j:
        L.b.store(ir.Constant(t, 0.0), L.b.gep(dst0, [j], source_etype=t))
    if _planar(chunk):
        return _col2im_planes(L, chunk, i, block)

    def body(flat, inside, pos, k, ch):
        b = L.b
        lo, hi, base, o_n = _last_range(L, chunk, k)
        hi = b.select(inside, hi, lo)
        src = b.gep(block, [b.mul(flat, o_n)], source_etype=t)
        dst = b.gep(L.bufs[dx], [L.offset(dx.shape, (i, ch) + tuple(pos) + (base,))], source_etype=t)
        with L.loop(hi, lo) as o:
            p = L.b.gep(dst, [o if s == 1 else L.b.mul(o, _c(s))], source_etype=t)
            v = L.b.load(L.b.gep(src, [o], source_etype=t), typ=t)
            L.b.store(L.b.fadd(L.b.load(p, typ=t), v), p)
    _rows_of_block(L, chunk, body)


def _col2im_planes(L, chunk, i, block):
    """_col2im for a _planar chunk: the positions of each plane's run that are outside the
    input set to zero in the block (the block is scratch), then the run added back at once."""
    dx, c, kernel, out, *_ = _dims(chunk)
    t = LLTYPES[dx.dtype]
    area = L.size(out[-2:])

    def body(flat, ch, pos, shift, run, rows):
        b = L.b
        jlo, jhi = run
        src = b.gep(block, [b.mul(flat, area)], source_etype=t)
        _zero_columns(L, src, t, rows)
        dst = L.b.gep(L.bufs[dx], [L.b.add(L.offset(dx.shape, (i, ch) + tuple(pos) + (ZERO, ZERO)), shift)],
                      source_etype=t)
        with L.loop(jhi, jlo) as j:
            p = L.b.gep(dst, [j], source_etype=t)
            L.b.store(L.b.fadd(L.b.load(p, typ=t), L.b.load(L.b.gep(src, [j], source_etype=t), typ=t)), p)
    _planes_of_block(L, chunk, body)


def _combine(L, chunk):
    """A dw's result: the threads' partials added in thread order, each thread a share of it."""
    n = chunk.mm
    t = LLTYPES[n.out.dtype]
    split = _split(L, chunk)
    count = L.size(n.out.shape)
    part = L.extra[("partial", n)]
    with L.when(split):
        lo, hi = L._part(count, split)
        with L.loop(hi, lo) as j:
            b = L.b
            acc = L.entry.alloca(t)
            b.store(b.load(b.gep(part, [j], source_etype=t), typ=t), acc)
            with L.loop(L.nth, ONE) as k:
                q = L.b.gep(part, [L.b.add(L.b.mul(k, count), j)], source_etype=t)
                L.b.store(L.b.fadd(L.b.load(acc, typ=t), L.b.load(q, typ=t)), acc)
            L.b.store(L.b.load(acc, typ=t), L.b.gep(L.bufs[n.out], [j], source_etype=t))
