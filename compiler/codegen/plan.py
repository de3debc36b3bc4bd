"""Fusion plan: which values get a buffer; everything else is recomputed inside its consumer's loop."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, symbols
from ..ops import OPS
from ..ops_nn import is_block_swap, operand_blocks

# a value made of at most this many cheap instructions (OpDef.cheap) is recomputed where needed
RECOMPUTE_MAX = 8


@dataclass
class Plan:
    """Roots (values with a buffer) in topological order and how each is read."""
    producers: dict
    roots: list                                 # nodes whose result is materialized, in order
    buffers: set                                # values held in memory: params and roots
    matmul_operands: dict = field(default_factory=dict)   # matmul node -> ((value, transposed), ...)
    reads: dict = field(default_factory=dict)   # root value -> buffer values its loop reads
    syms: tuple = ()                            # the dims array: symbol names, sorted


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


def make_plan(g: Graph) -> Plan:
    prod = {n.out: n for n in g.nodes}
    params = set(g.params)
    outputs = set(g.outputs)

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
    owners = {}              # value -> roots whose loops compute it inline
    need_buffer = set()
    mat = set()
    operands = {}
    for n in reversed(g.nodes):
        v = n.out
        own = owners.get(v, set())
        if not (v in outputs or v in need_buffer or own):
            continue
        kind = OPS[n.op].kind
        if v in outputs or v in need_buffer or kind in ("reduce", "matmul", "scatter") or \
                (len(own) > 1 and v not in cheap) or v in reread:
            mat.add(v)
            own = {v}
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
            for x, _ in ops:
                if x not in params:
                    need_buffer.add(x)
            operands[n] = tuple(ops)
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

    roots = [n for n in g.nodes if n.out in mat]
    buffers = params | mat
    reads = {}
    via = {}                 # non-buffer value -> buffers its computation reads
    for n in g.nodes:
        if n in operands:
            r = {x for x, _ in operands[n]}
        elif OPS[n.op].kind == "source":
            r = set()
        else:
            r = set()
            for i in n.ins:
                r |= {i} if i in buffers else via.get(i, set())
        if n.out in mat:
            reads[n.out] = r
        else:
            via[n.out] = r
    for o in g.outputs:
        if o not in buffers:
            reads.setdefault(("out", o), via.get(o, set()))
    syms = set()
    for v in g.params:
        syms |= symbols(v.shape)
    for n in g.nodes:
        syms |= symbols(n.out.shape)
    return Plan(prod, roots, buffers, operands, reads, tuple(sorted(syms)))
