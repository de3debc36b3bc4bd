"""Fusion plan: which values get a buffer; everything else is recomputed inside its consumer's loop."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, symbols
from ..ops import OPS
from ..ops_nn import is_block_swap, mkn_of, operand_blocks

# a value made of at most this many cheap instructions (OpDef.cheap) is recomputed where needed
RECOMPUTE_MAX = 8
# a loop nest's body is cut into segments of about this many instructions (a call to a math
# function counts CALL_COST), each a loop of its own over a tile of elements: LLVM's vectorizer
# and register allocator take time quadratic in the length of a loop's body
SEGMENT_MAX = 160
CALL_COST = 8


@dataclass
class Plan:
    """Roots (values with a buffer) in topological order and how each is read."""
    producers: dict
    roots: list                                 # nodes whose result is materialized, in order
    buffers: set                                # values held in memory: params and roots
    matmul_operands: dict = field(default_factory=dict)   # matmul node -> ((value, transposed), ...)
    reads: dict = field(default_factory=dict)   # root value -> buffer values its loop reads
    syms: tuple = ()                            # the dims array: symbol names, sorted
    chunked: dict = field(default_factory=dict)  # root node -> Chunk: a product done image by image
    keys: dict = field(default_factory=dict)    # root value -> its nest's key (make_plan's nests)
    levels: dict = field(default_factory=dict)  # root value -> its nest's depth in barriers
    tiles: dict = field(default_factory=dict)   # nest (key[:3]) -> Tiles: values kept per tile
    aliases: dict = field(default_factory=dict)  # output -> the root whose elements it reshapes
    kept: set = field(default_factory=set)      # the values of all tiles


@dataclass
class Chunk:
    """A convolution's product done one image at a time, its columns never stored whole.

    kind "fwd": the root is matmul(im2col(x), B): each image's columns are written to a scratch
    block that stays in cache, then multiplied. "dw": the root is matmul(transpose(im2col(x)), G),
    a sum over images: each image's columns times its rows of G, added up. "dx": the root is
    col2im(matmul(G, B)): each image's columns of the product go to a scratch block and are
    summed back into that image at once. cols: the im2col node (fwd, dw) or the col2im node
    (dx); mm: the product; root: the node the step computes (fwd: the product, or the transpose
    to [N, O, *out] that conv puts after it, which the step then writes directly).
    nchw: for dw and dx, the image-major operand (G) read in its [N, O, *out] source through the
    transpose that made it."""
    kind: str
    cols: object
    mm: object
    root: object
    nchw: object = None


@dataclass
class Tiles:
    """The values a segmented nest keeps for one tile of its innermost axis (tile elements long,
    in a per-thread scratch block), read back by its later segments."""
    tile: int
    values: list


def tile_length(count: int) -> int:
    """Elements per tile: a divisor of the threads' split alignment, smaller when many values
    are kept, so that a tile's values stay in the core's caches."""
    return 256 if count <= 64 else 128 if count <= 128 else 64


def _to_channels_last(n, r):
    return n is not None and n.op == "transpose" and tuple(n.attr("perm")) == (0,) + tuple(range(2, 2 + r)) + (1,)


def _to_channels_first(n, r):
    return n is not None and n.op == "transpose" and tuple(n.attr("perm")) == (0, 1 + r) + tuple(range(1, 1 + r))


def _is_t2(n, blocks):
    """Whether n transposes a matrix operand of these (first, second) groups in place."""
    return n is not None and n.op == "transpose" and is_block_swap(n.attr("perm"), *blocks)


def _same_elements(prod, x, outputs):
    """The value whose buffer holds x's elements in x's order: x, or the source of its as_shape."""
    p = prod.get(x)
    while p is not None and p.op == "as_shape" and x not in outputs:
        x = p.ins[0]
        p = prod.get(x)
    return x


def _conv_chunks(g, prod, outputs) -> dict:
    """The products of convolutions (ops_nn.conv, groups 1) that can run image by image: the
    columns read only by such products, the product of columns read only by col2im."""
    users = {}
    for n in g.nodes:
        for x in n.ins:
            users.setdefault(x, []).append(n)
    out = {}
    for n in g.nodes:
        if n.op not in ("im2col", "col2im") or n.attr("groups") != 1 or n.out.dtype not in ("f32", "f64"):
            continue
        r = len(n.attr("kernel"))
        if n.op == "col2im":
            m = prod.get(n.ins[0])
            if m is not None and m.op == "matmul" and n.ins[0] not in outputs and users[n.ins[0]] == [n] \
                    and mkn_of(m) == (1 + r, 1, 1 + r) and len(m.ins[0].shape) == 2 + r \
                    and len(m.ins[1].shape) == 2 + r:
                out[n] = Chunk("dx", n, m, n, _nchw_source(prod, m.ins[0], r, outputs))
            continue
        if n.out in outputs:
            continue
        found = []
        for u in users.get(n.out, []):
            if u.op == "matmul" and u.ins[0] is n.out and u.ins[1] is not n.out and \
                    mkn_of(u) == (1 + r, 1 + r, 1) and len(u.ins[1].shape) == 2 + r:
                after = users.get(u.out, [])
                if u.out not in outputs and len(after) == 1 and _to_channels_first(after[0], r):
                    found.append(Chunk("fwd", n, u, after[0]))
                else:
                    found.append(Chunk("fwd", n, u, u))
                continue
            t = u if u.op == "transpose" and is_block_swap(u.attr("perm"), 1 + r, 1 + r) and \
                u.out not in outputs else None
            uses = users.get(t.out, []) if t is not None else []
            if t is None or not uses:
                break
            if not all(m.op == "matmul" and m.ins[0] is t.out and m.ins[1] is not t.out and
                       mkn_of(m) == (1 + r, 1 + r, 1) and len(m.ins[1].shape) == 2 + r for m in uses):
                break
            found += [Chunk("dw", n, m, m, _nchw_source(prod, m.ins[1], r, outputs)) for m in uses]
        else:
            for c in found:
                out[c.root] = c
    return out


def _nchw_source(prod, v, r, outputs):
    """The [N, O, *out] value that v, a [N, *out, O] operand, transposes, or None."""
    p = prod.get(v)
    return p.ins[0] if v not in outputs and _to_channels_last(p, r) else None


def make_plan(g: Graph, chunk: bool = False, nests: bool = False) -> Plan:
    """chunk: convolutions' products image by image (a backend that lowers Chunk steps);
    nests: roots with the same key share one loop nest (a backend whose schedule fuses them)."""
    prod = {n.out: n for n in g.nodes}
    params = set(g.params)
    outputs = set(g.outputs)
    chunked = _conv_chunks(g, prod, outputs) if chunk else {}
    # the columns those products make per image, and the products summed back by col2im
    per_image = {c.cols.out for c in chunked.values() if c.kind != "dx"}
    per_image |= {c.mm.out for c in chunked.values() if c.root is not c.mm}
    by_mm = {c.mm: c for c in chunked.values()}
    roots_of = {c.root.out for c in chunked.values()}

    # cheap values are recomputed wherever they are needed rather than stored
    cheap = set(params)
    flops = {}               # value -> arithmetic its recomputation repeats, where that is little
    for n in g.nodes:
        kind = OPS[n.op].kind
        ins_cheap = all(i in cheap for i in n.ins)
        cost = OPS[n.op].cheap
        if kind in ("reduce", "matmul", "source", "scatter"):
            cheap.add(n.out)
        elif ins_cheap and (cost == 0 or all(d == 1 for d in n.out.shape)):
            cheap.add(n.out)
            flops[n.out] = sum(flops.get(i, 0) for i in n.ins)
        elif ins_cheap and cost is not None:
            # a few flops again in each loop cost less than writing the value and reading it back
            f = cost + sum(flops.get(i, 0) for i in n.ins)
            if f <= RECOMPUTE_MAX:
                cheap.add(n.out)
                flops[n.out] = f

    # a layout op that is not cheap (it sums many elements per element: col2im, the scans) is
    # stored once: its consumers (the windows of a pooling adjoint, say) may read each element
    # several times
    reread = {n.out for n in g.nodes if OPS[n.op].kind == "layout" and OPS[n.op].cheap is None}
    ctx = (g, prod, params, outputs, cheap, reread, per_image, by_mm, roots_of)
    mat, operands, _ = _materialize(ctx, lambda v: v)
    reads, pointwise = _reads(g, params | mat, mat, operands, per_image, chunked)
    keys, levels, tiles = {}, {}, {}
    if nests:
        # roots over one iteration space that depend on each other only element by element
        # share a loop nest (a key): what several of them need is computed there once, for all
        keys, levels = _nest_keys(g, prod, mat, reads, pointwise, chunked)
        mat, operands, owners = _materialize(ctx, lambda v: keys.get(v, v))
        reads, pointwise = _reads(g, params | mat, mat, operands, per_image, chunked)
        seg, cuts = _segments(g, mat, keys, owners, cheap, chunked)
        if any(k[3] for k in seg.values()):
            # a long body in segments: what a later segment reads from an earlier one is stored
            # for the tile, unless it is cheap to compute again
            mat, operands, _ = _materialize(ctx, lambda v: seg.get(v, keys.get(v, v)),
                                            {v: k for v, k in seg.items() if v in cuts})
            reads, pointwise = _reads(g, params | mat, mat, operands, per_image, chunked)
            keys = {v: seg.get(v, keys.get(v)) for v in mat if v in seg or v in keys}
            for v, k in keys.items():
                levels.setdefault(v, k[2] if k[0] == "nest" else 0)
            tiles = _tiles(g, mat, keys, reads, outputs, operands)
    aliases = _aliases(g, prod, mat, params, outputs, chunked) if nests else {}
    mat -= set(aliases)
    if aliases:
        reads, pointwise = _reads(g, params | mat, mat, operands, per_image, chunked)
    roots = [n for n in g.nodes if n.out in mat]
    buffers = params | mat
    syms = set()
    for v in g.params:
        syms |= symbols(v.shape)
    for n in g.nodes:
        syms |= symbols(n.out.shape)
    return Plan(prod, roots, buffers, operands, reads, tuple(sorted(syms)), chunked,
                {v: keys[v] for v in mat if v in keys}, levels, tiles, aliases,
                {v for t in tiles.values() for v in t.values})


def _materialize(ctx, key_of, cut=None):
    """(values that get a buffer, matmul node -> its operands as read, value -> keys of the
    nests computing it inline): walking back from the outputs, a value is stored where it must
    be (outputs, reductions, products and what they read) or where loop nests of several keys
    (key_of(root)) would each compute it again and it is not cheap. cut: value -> its segment's
    key; a value not cheap that a later segment reads is stored too."""
    g, prod, params, outputs, cheap, reread, per_image, by_mm, roots_of = ctx
    owners = {}              # value -> keys of the roots whose loops compute it inline
    need_buffer = set()
    mat = set()
    operands = {}
    for n in reversed(g.nodes):
        v = n.out
        own = owners.get(v, set())
        if not (v in outputs or v in need_buffer or own):
            continue
        kind = OPS[n.op].kind
        if v in per_image:
            pass                                  # computed inside a Chunk step, image by image
        elif v in outputs or v in need_buffer or kind in ("reduce", "matmul", "scatter") or \
                (len({_nest_of(k) for k in own}) > 1 and v not in cheap) or v in reread or v in roots_of or \
                (cut is not None and v in cut and v not in cheap and own != {cut[v]}):
            mat.add(v)
            own = {key_of(v)}
        if kind == "matmul":
            ops = []
            for x, blocks in zip(n.ins, operand_blocks(n)):
                p = prod.get(x)
                # a transposed operand is read in place: BLAS takes the transpose flag; so is
                # one under as_shape (the same elements, its dims named otherwise)
                if _is_t2(p, blocks) and x not in outputs:
                    ops.append((_same_elements(prod, p.ins[0], outputs), True))
                else:
                    ops.append((_same_elements(prod, x, outputs), False))
            c = by_mm.get(n)
            if c is not None and c.nchw is not None:     # G read in its [N, O, *out] source
                k = 0 if c.kind == "dx" else 1
                ops[k] = (c.nchw, False)
            for x, _ in ops:
                if x in per_image:               # columns made per image from im2col's input
                    owners.setdefault(x, set()).update(own)
                elif x not in params:
                    need_buffer.add(x)
            operands[n] = tuple(ops)
        elif v in per_image and n.op == "im2col":
            if n.ins[0] not in params:
                need_buffer.add(n.ins[0])         # the Chunk step copies windows of it
        elif kind != "source":
            if kind == "check" and n.ins[0] not in params:
                need_buffer.add(n.ins[0])         # the entry tests the values in memory
            for x in n.ins:
                if x not in params:
                    owners.setdefault(x, set()).update(own)
    # need_buffer may name values seen after their consumers (a transposed operand's source)
    for n in g.nodes:
        if n.out in need_buffer:
            mat.add(n.out)
    return mat, operands, owners


def _aliases(g, prod, mat, params, outputs, chunked) -> dict:
    """output -> root: an output that only reshapes a root read by nothing else is that root's
    elements in row-major order; the root's step writes the output directly (no copy, no loop
    of its own: a layer's bias gradient, sum(g, axis=0) reshaped to [H])."""
    uses = {}
    for n in g.nodes:
        for x in n.ins:
            uses[x] = uses.get(x, 0) + 1
    out = {}
    for o in dict.fromkeys(g.outputs):
        n = prod.get(o)
        if n is None or n.op != "reshape" or o in params or g.outputs.count(o) != 1:
            continue
        x = n.ins[0]
        if x in mat and x not in outputs and x not in params and uses.get(x) == 1 and \
                prod[x] not in chunked and x not in out.values():
            out[o] = x
    return out


def _nest_of(key):
    """The nest of a key: a segment's key without its segment."""
    return key[:3] if isinstance(key, tuple) and key[0] == "nest" else key


def _pointwise(n, x, chunked=None) -> bool:
    """Whether n reads x's element at the index of the loop computing n: an elementwise op
    without broadcast, or a reduction over x's innermost axes (its nest runs over x)."""
    d = OPS[n.op]
    if d.kind == "reduce":
        return chunked is not None and _nests(n, chunked)
    return d.kind == "elementwise" and d.index_map is None and x.shape == n.out.shape


def _reads(g, buffers, mat, operands, per_image, chunked):
    """(root value -> buffers its loop reads, root value -> those it reads only at its own index).
    An output that is not a buffer is a key ("out", value)."""
    reads, pointwise = {}, {}
    via, via_pw = {}, {}     # non-buffer value -> buffers its computation reads (only at its index)
    for n in g.nodes:
        if n in operands:
            r, pw = set(), set()
            for x, _ in operands[n]:
                r |= via.get(x, set()) if x in per_image else {x}
        elif OPS[n.op].kind == "source":
            r, pw = set(), set()
        else:
            r, pw, other = set(), set(), set()
            for i in n.ins:
                here = {i} if i in buffers else via.get(i, set())
                r |= here
                if _pointwise(n, i, chunked):
                    pw |= {i} if i in buffers else via_pw.get(i, set())
                    other |= set() if i in buffers else here - via_pw.get(i, set())
                else:
                    other |= here
            pw -= other
        if n.out in mat:
            reads[n.out], pointwise[n.out] = r, pw
        else:
            via[n.out], via_pw[n.out] = r, pw
    for o in g.outputs:
        if o not in buffers:
            reads.setdefault(("out", o), via.get(o, set()))
    return reads, pointwise


def nest_space(n):
    """The shape a root's loop nest runs over: a reduction's input, else the root's own."""
    return n.ins[0].shape if OPS[n.op].kind == "reduce" else n.out.shape


def _nests(n, chunked) -> bool:
    """Whether a root is computed by a fused loop nest (elementwise, layout, a reduction over its
    innermost axes) rather than a step of its own (products, scans, scatters, other reductions)."""
    kind = OPS[n.op].kind
    if n in chunked or (kind == "layout" and OPS[n.op].cheap is None):
        return False                      # a scan (a pass of its own), col2im
    if kind == "reduce":
        kept = [a for a in range(len(n.ins[0].shape)) if a not in n.attr("axes")]
        return kept == list(range(len(kept)))
    return kind in ("elementwise", "layout", "source")


def _nest_keys(g, prod, mat, reads, pointwise, chunked):
    """(root value -> key, root value -> level) for the roots of a fused loop nest.

    A root's level counts the barriers below it: reading a buffer raises it by one, unless the
    buffer is written by a fused root over the same space and read only at the loop's own index
    (then the element was computed earlier in the same iteration). Roots of one space and one
    level share a key: they depend on each other only element by element, and between keys
    every dependence raises the level, so keys ordered by level can be scheduled."""
    keys, levels = {}, {}
    for n in g.nodes:
        v = n.out
        if v not in mat:
            continue
        space, fused = nest_space(n), _nests(n, chunked)
        lv = 0
        for r in reads[v]:
            if r not in levels:
                continue                      # an input of the graph
            p = prod[r]
            same = fused and r in pointwise[v] and keys[r][0] == "nest" and keys[r][1] == space and \
                OPS[p.op].kind != "reduce"
            lv = max(lv, levels[r] + (0 if same else 1))
        levels[v] = lv
        keys[v] = ("nest", space, lv) if fused else ("step", v.id)
    return keys, levels


def _weight(n) -> int:
    """About how many instructions an element of n costs in a loop body."""
    d = OPS[n.op]
    if d.kind == "source":
        return 0
    return CALL_COST if d.cheap is None else max(1, d.cheap)


def _segments(g, mat, keys, owners, cheap, chunked) -> tuple:
    """(value -> (*its nest's key, segment), the values that may end a segment): the values each nest computes (its roots, and what
    only it computes inline), in program order, cut into segments of about SEGMENT_MAX. Only a
    value that every root reaches at the nest's own index (through elementwise ops) closes a
    segment: a later segment reads it back at the same index, from the tile."""
    users = {}
    for n in g.nodes:
        for x in n.ins:
            users.setdefault(x, []).append(n)
    # reached only at the loop's own index, from every root that needs it
    at_index = set()
    for n in reversed(g.nodes):
        v = n.out
        us = users.get(v, [])
        if us and v not in g.outputs and all(_pointwise(u, v, chunked) and (u.out in mat or u.out in at_index)
                                             for u in us):
            at_index.add(v)
    seg, weight, current = {}, {}, {}
    for n in g.nodes:
        v = n.out
        own = owners.get(v, set())
        k = keys.get(v) if v in mat else (next(iter(own)) if len(own) == 1 else None)
        if not isinstance(k, tuple) or k[0] != "nest" or not k[1] or k[1][-1] == 1:
            continue
        w = weight.get(k, 0) + _weight(n)
        if w > SEGMENT_MAX and (v in at_index or v in mat):
            current[k] = current.get(k, 0) + 1
            w = _weight(n)
        weight[k] = w
        seg[v] = k + (current.get(k, 0),)
    return seg, at_index


def _tiles(g, mat, keys, reads, outputs, operands) -> dict:
    """nest (key[:3]) -> Tiles: the values of a segmented nest that only its own later segments
    read (not outputs, not read by another step): kept for one tile, never stored whole."""
    readers = {}
    for v, r in reads.items():
        for x in r:
            readers.setdefault(x, []).append(v)
    for ops in operands.values():
        for x, _ in ops:
            readers.setdefault(x, []).append(None)
    groups = {}
    for n in g.nodes:
        v = n.out
        k = keys.get(v)
        if v not in mat or v in outputs or k is None or k[0] != "nest" or OPS[n.op].kind == "reduce":
            continue
        rs = readers.get(v, [])
        if rs and all(r is not None and not isinstance(r, tuple) and keys.get(r, ())[:3] == k[:3] and
                      keys[r][3] >= k[3] for r in rs):
            groups.setdefault(k[:3], []).append(v)
    return {k: Tiles(tile_length(len(vs)), vs) for k, vs in groups.items()}
