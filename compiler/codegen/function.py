"""Lower one optimized graph to an LLVM function: a loop nest per planned root, fused chains inline."""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from ..ir import Graph, dim_parts
from ..ops import OPS
from .blas import gemm_function
from .layout import INDEX_MAPS, ZERO, broadcast_index
from .plan import make_plan
from .reduce import emit_reduce
from .scalar import I64, LLTYPES, SIZES, STORE_TYPES, Scalar

PTR = ir.PointerType()
I32 = ir.IntType(32)
ONE = ir.Constant(I64, 1)


def symbol(name: str) -> str:
    """The exported symbol of a graph; prefixed so a function named `sin` cannot shadow libm."""
    return f"gradc_fn_{name}"


def lower_graph(module: ir.Module, g: Graph) -> tuple:
    """Add `i32 gradc_fn_NAME(ptr inputs, ptr dims, ptr outputs)`; returns (symbol, dim names)."""
    plan = make_plan(g)
    body_ty = ir.FunctionType(I32, [PTR] * (len(g.params) + len(g.outputs)) + [I64] * len(plan.syms))
    body = ir.Function(module, body_ty, f"{symbol(g.name)}.body")
    body.linkage = "internal"
    for a in body.args[:len(g.params) + len(g.outputs)]:
        a.add_attribute("noalias")        # the runtime never passes overlapping buffers
    FunctionLowering(module, g, plan, body).emit()

    entry = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR]), symbol(g.name))
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    ins, dims, outs = entry.args
    at = lambda p, i, t: b.load(b.gep(p, [ir.Constant(I64, i)], source_etype=t), typ=t)
    args = [at(ins, i, PTR) for i in range(len(g.params))]
    args += [at(outs, i, PTR) for i in range(len(g.outputs))]
    args += [at(dims, i, I64) for i in range(len(plan.syms))]
    b.ret(b.call(body, args))
    return symbol(g.name), plan.syms


class FunctionLowering:
    def __init__(self, module, g, plan, fn):
        self.module, self.g, self.plan, self.fn = module, g, plan, fn
        self.entry_block = fn.append_basic_block("entry")
        self.entry = ir.IRBuilder(self.entry_block)
        self.b = ir.IRBuilder(fn.append_basic_block("start"))
        self.cg = Scalar(module, self.b)
        n_in = len(g.params)
        self.syms = dict(zip(plan.syms, fn.args[n_in + len(g.outputs):]))
        self.bufs = dict(zip(g.params, fn.args[:n_in]))
        self.outs = fn.args[n_in:n_in + len(g.outputs)]
        self.memo = [{}]
        self.dims = {}
        self.slots = {}                 # temp value -> alloca slot holding its malloc'd pointer
        self.all_slots = []

    # ---- dims and buffers

    def dim(self, d):
        sym, off = dim_parts(d)
        if sym is None:
            return ir.Constant(I64, off)
        if d not in self.dims:
            v = self.syms[sym]
            if off == 0:
                self.dims[d] = v
            else:
                # N-1 with N = 0 is an empty slice in NumPy, not a negative size
                a = self.entry.add(v, ir.Constant(I64, off))
                self.dims[d] = self.entry.select(self.entry.icmp_signed("<", a, ZERO), ZERO, a)
        return self.dims[d]

    def size(self, shape):
        n = ONE
        for d in shape:
            n = self.entry.mul(n, self.dim(d))
        return n

    def offset(self, shape, idx):
        """Row-major linear offset of idx (Horner form, so unit dims add nothing)."""
        flat = ZERO
        for d, i in zip(shape, idx):
            if d == 1:
                continue
            flat = self.b.add(self.b.mul(flat, self.dim(d)), i) if flat is not ZERO else i
        return flat

    def ptr(self, v, idx):
        return self.b.gep(self.bufs[v], [self.offset(v.shape, idx)], inbounds=True,
                          source_etype=STORE_TYPES[v.dtype])

    def load(self, v, idx):
        x = self.b.load(self.ptr(v, idx), typ=STORE_TYPES[v.dtype])
        return self.b.trunc(x, LLTYPES["bool"]) if v.dtype == "bool" else x

    def store(self, v, idx, x, ptr=None):
        if v.dtype == "bool":
            x = self.b.zext(x, STORE_TYPES["bool"])
        self.b.store(x, ptr if ptr is not None else self.ptr(v, idx))

    def malloc(self, nbytes):
        """A temporary buffer; its pointer sits in a slot that the failure path frees."""
        slot = self.entry.alloca(PTR)
        self.entry.store(ir.Constant(PTR, None), slot)
        fn = self.cg.func("malloc", PTR, [I64])
        p = self.b.call(fn, [self.b.add(nbytes, ONE)])     # +1: malloc(0) may return NULL
        ok = self.b.append_basic_block("alloc.ok")
        self.b.cbranch(self.b.icmp_unsigned("==", p, ir.Constant(PTR, None)), self.fail, ok)
        self.b.position_at_end(ok)
        self.b.store(p, slot)
        self.all_slots.append(slot)
        return p, slot

    def free(self, slot):
        self.b.call(self.cg.func("free", ir.VoidType(), [PTR]), [self.b.load(slot, typ=PTR)])
        self.b.store(ir.Constant(PTR, None), slot)

    # ---- control flow

    @contextmanager
    def loop(self, count):
        b = self.b
        pre = b.block
        head, body, done = (b.append_basic_block(s) for s in ("loop", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64)
        i.add_incoming(ZERO, pre)
        b.cbranch(b.icmp_signed("<", i, count), body, done)
        b.position_at_end(body)
        self.memo.append({})
        yield i
        self.memo.pop()
        i.add_incoming(b.add(i, ONE), b.block)
        b.branch(head)
        b.position_at_end(done)

    def nest(self, shape, body, idx=()):
        """Loops over shape (innermost last, where memory is contiguous) around body(idx)."""
        if len(idx) == len(shape):
            return body(idx)
        with self.loop(self.dim(shape[len(idx)])) as i:
            self.nest(shape, body, idx + (i,))

    def branch(self, cond, then, other):
        """then() if cond else other(), each in its own block; values merge in a phi."""
        b = self.b
        t, e, join = (b.append_basic_block(s) for s in ("then", "else", "join"))
        b.cbranch(cond, t, e)
        vals = []
        for blk, f in ((t, then), (e, other)):
            b.position_at_end(blk)
            self.memo.append({})
            vals.append((f(), b.block))
            self.memo.pop()
            b.branch(join)
        b.position_at_end(join)
        phi = b.phi(vals[0][0].type)
        for v, blk in vals:
            phi.add_incoming(v, blk)
        return phi

    # ---- elements

    def elem(self, v, idx):
        key = (v, tuple(map(id, idx)))
        for scope in reversed(self.memo):
            if key in scope:
                return scope[key]
        x = self.load(v, idx) if v in self.bufs else self.node_elem(self.plan.producers[v], idx)
        self.memo[-1][key] = x
        return x

    def node_elem(self, n, idx):
        if n.op in INDEX_MAPS:
            return INDEX_MAPS[n.op](self, n, idx)
        t = LLTYPES[n.out.dtype]
        if n.op == "const":
            return ir.Constant(t, bool(n.attr("value")) if n.out.dtype == "bool" else n.attr("value"))
        if n.op == "literal":
            return self.literal(n, idx)
        if n.op == "numel":
            count = ONE
            for a in n.attr("axes"):
                count = self.entry.mul(count, self.dim(n.ins[0].shape[a]))
            return self.cg.cast(count, n.out.dtype)
        elems = [self.elem(x, broadcast_index(x.shape, n.out.shape, idx)) for x in n.ins]
        return OPS[n.op].lower(self.cg, *elems, **n.kw)

    def literal(self, n, idx):
        data = n.attr("data")
        t = STORE_TYPES[n.out.dtype]
        arr = ir.ArrayType(t, len(data))
        gv = ir.GlobalVariable(self.module, arr, self.module.get_unique_name("literal"))
        gv.linkage, gv.global_constant = "internal", True
        gv.initializer = ir.Constant(arr, [int(x) if n.out.dtype == "bool" else x for x in data])
        x = self.b.load(self.b.gep(gv, [ZERO, self.offset(n.out.shape, idx)], inbounds=True,
                                   source_etype=arr), typ=t)
        return self.b.trunc(x, LLTYPES["bool"]) if n.out.dtype == "bool" else x

    # ---- the function

    def emit(self):
        g, plan = self.g, self.plan
        self.fail = self.fn.append_basic_block("fail")
        start = self.b.block
        storage = {}                  # a root that is an output is computed in the output buffer
        for v, o in zip(g.outputs, self.outs):
            if v not in g.params and v not in storage:
                storage[v] = o
        last = {}                     # buffer -> the last step that reads it
        for step, n in enumerate(plan.roots):
            for r in plan.reads[n.out]:
                last[r] = step
        for step, n in enumerate(plan.roots):
            v = n.out
            if v in storage:
                self.bufs[v] = storage[v]
            else:
                nbytes = self.entry.mul(self.size(v.shape), ir.Constant(I64, SIZES[v.dtype]))
                self.bufs[v], self.slots[v] = self.malloc(nbytes)
            self.root(n)
            for t in [t for t in self.slots if last.get(t) == step and not self._read_at_end(t)]:
                self.free(self.slots.pop(t))
        for v, o in zip(g.outputs, self.outs):
            if storage.get(v) is not o:
                def copy(idx, v=v, o=o):
                    self.store(v, idx, self.elem(v, idx), self.b.gep(o, [self.offset(v.shape, idx)],
                                                                   source_etype=STORE_TYPES[v.dtype]))
                self.nest(v.shape, copy)
                self.memo = [{}]
        for t in list(self.slots):
            self.free(self.slots.pop(t))
        self.b.ret(ir.Constant(I32, 0))
        self.entry.branch(start)
        fb = ir.IRBuilder(self.fail)
        for slot in self.all_slots:
            fb.call(self.cg.func("free", ir.VoidType(), [PTR]), [fb.load(slot, typ=PTR)])
        fb.ret(ir.Constant(I32, 1))

    def _read_at_end(self, t):
        return t in self.g.outputs or any(t in rs for k, rs in self.plan.reads.items()
                                          if isinstance(k, tuple))

    def root(self, n):
        kind = OPS[n.op].kind
        self.memo = [{}]
        if kind == "reduce":
            emit_reduce(self, n)
        elif kind == "matmul":
            (a, ta), (bm, tb) = self.plan.matmul_operands[n]
            m, k = n.ins[0].shape
            nn = n.ins[1].shape[1]
            fn = gemm_function(self.module, n.out.dtype)
            args = [ir.Constant(I32, int(ta)), ir.Constant(I32, int(tb)), self.dim(m), self.dim(nn),
                    self.dim(k), self.bufs[a], self.dim(a.shape[1]), self.bufs[bm], self.dim(bm.shape[1]),
                    self.bufs[n.out], self.dim(nn)]
            self.b.call(fn, args)
        else:
            self.nest(n.out.shape, lambda idx: self.store(n.out, idx, self.node_elem(n, idx)))
        self.memo = [{}]
