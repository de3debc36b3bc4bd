"""Direct entries: a function's arguments by value, so the runtime builds no pointer arrays per call."""
from __future__ import annotations

from llvmlite import ir

from ...ir import Graph
from ..scalar import I64, LLTYPES
from .pyentry import add_python_entry

PTR = ir.PointerType()
I32 = ir.IntType(32)
F64 = LLTYPES["f64"]
# scalar result i is stored at out + SLOT*i, in its own type (runtime/fastcall.py reads it there)
SLOT = 8


def add_direct_entries(module: ir.Module, g: Graph, entry: ir.Function, syms: tuple):
    """Wrap `i32 SYMBOL(ptr ins, ptr dims, ptr outs, ptr err)` in entries that take their
    arguments by value.

    `i32 SYMBOL.flat(ptr in..., ptr out..., i64 dim..., ptr err)` for every function; and, when
    every parameter and result is an f32/f64 scalar, `i32 SYMBOL.scalar(double..., ptr out)`,
    which takes the numbers themselves (f32 ones rounded here, once, as NumPy's astype does) and
    keeps the error record after the results (at out + SLOT*results), and then a CPython entry
    calling it (pyentry.py). err: two i64, written only when a run-time check fails (parallel.py).
    """
    n_in, n_out = len(g.params), len(g.outputs)
    flat = ir.Function(module, ir.FunctionType(I32, [PTR] * (n_in + n_out) + [I64] * len(syms) + [PTR]),
                       f"{entry.name}.flat")
    b = ir.IRBuilder(flat.append_basic_block("entry"))
    args = list(flat.args)
    b.ret(b.call(entry, [_array(b, args[:n_in], PTR), _array(b, args[n_in + n_out:-1], I64),
                         _array(b, args[n_in:n_in + n_out], PTR), args[-1]]))

    if syms or any(v.shape or v.dtype not in ("f32", "f64") for v in g.params + g.outputs):
        return
    fn = ir.Function(module, ir.FunctionType(I32, [F64] * n_in + [PTR]), f"{entry.name}.scalar")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ins = []
    for v, x in zip(g.params, fn.args):
        ins.append(b.alloca(LLTYPES[v.dtype]))
        b.store(x if v.dtype == "f64" else b.fptrunc(x, LLTYPES[v.dtype]), ins[-1])
    out = fn.args[-1]
    outs = [b.gep(out, [ir.Constant(I64, SLOT * i)], source_etype=ir.IntType(8)) for i in range(n_out)]
    err = b.gep(out, [ir.Constant(I64, SLOT * n_out)], source_etype=ir.IntType(8))
    b.ret(b.call(entry, [_array(b, ins, PTR), _array(b, [], I64), _array(b, outs, PTR), err]))
    add_python_entry(module, g, fn, entry.name)


def _array(b, values, ty):
    """A stack array holding values (one element even when empty: the callee may take its address)."""
    arr = b.alloca(ty, size=max(len(values), 1))
    for i, v in enumerate(values):
        b.store(v, b.gep(arr, [ir.Constant(I64, i)], source_etype=ty))
    return arr
