"""CPython entries: a scalar function called straight from the interpreter, no ctypes per call.

`ptr SYMBOL.py(ptr self, ptr args, i64 nargs, ptr kwnames)` has the METH_FASTCALL|METH_KEYWORDS
signature. It takes Python floats, ints within +-2**53 and NumPy scalars of the parameter's
dtype, calls SYMBOL.scalar, and returns NumPy scalars of the results' dtypes (a tuple of them
where there are several; the runtime uses the entry where that is what the function returns). Any other call (keywords, a wrong count, other types, a
failed run-time check) goes to `self`, the Python callable the runtime wraps the entry with,
so every error message is the checked path's own.

The entry calls CPython through a table of addresses the runtime fills at load time
(runtime/fastcall.py, PYAPI), so the code names no CPython symbol; it relies on the object
layout of the CPython that compiled it, which SYMBOL.pyabi names (python_abi()).
"""
from __future__ import annotations

from llvmlite import ir

from ...ir import Graph
from ....vocab import python_abi
from ..scalar import I64, LLTYPES
from .blas import _Callee

PTR = ir.PointerType()
I32 = ir.IntType(32)
I8 = ir.IntType(8)
F64 = LLTYPES["f64"]
# the slots of SYMBOL.pyapi, in order (runtime/fastcall.py fills them)
PYAPI = ("float", "int", "float64", "float32", "alloc_float64", "alloc_float32", "PyLong_AsLongLongAndOverflow",
         "PyObject_Vectorcall", "PyTuple_New", "PyTuple_SetItem", "Py_DecRef")
SLOT = 8                # scalar result i at out + SLOT*i (direct.py)
RECORD = 16             # the error record after the results
OB_TYPE = 8             # offsetof(PyObject, ob_type)
VALUE = 16              # offsetof(PyFloatObject, ob_fval), and of a NumPy scalar's obval
EXACT_INT = 2 ** 53


def add_python_entry(module: ir.Module, g: Graph, scalar: ir.Function, name: str):
    """Define NAME.py (calling scalar, the NAME.scalar entry), its table NAME.pyapi and NAME.pyabi."""
    tag = bytearray(python_abi().encode() + b"\0")
    abi = ir.GlobalVariable(module, ir.ArrayType(I8, len(tag)), f"{name}.pyabi")
    abi.initializer, abi.global_constant = ir.Constant(ir.ArrayType(I8, len(tag)), tag), True
    table = ir.GlobalVariable(module, ir.ArrayType(PTR, len(PYAPI)), f"{name}.pyapi")
    table.initializer = ir.Constant(ir.ArrayType(PTR, len(PYAPI)), None)

    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64, PTR]), f"{name}.py")
    self_, args, nargs, kwnames = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fallback = fn.append_basic_block("fallback")

    def api(slot):
        return b.load(b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, PYAPI.index(slot))],
                            source_etype=table.value_type), typ=PTR)

    def at(p, offset, ty):
        return b.load(b.gep(p, [ir.Constant(I64, offset)], source_etype=I8), typ=ty)

    def otherwise(cond, label):
        """Go on in a new block where cond is false; to fallback where it is true."""
        nxt = fn.append_basic_block(label)
        b.cbranch(cond, fallback, nxt)
        b.position_at_end(nxt)

    n_in, n_out = len(g.params), len(g.outputs)
    otherwise(b.or_(b.icmp_unsigned("!=", kwnames, ir.Constant(PTR, None)),
                    b.icmp_signed("!=", nargs, ir.Constant(I64, n_in))), "count")
    overflow = b.alloca(I32)
    values = []
    for i, v in enumerate(g.params):
        a = b.load(b.gep(args, [ir.Constant(I64, i)], source_etype=PTR), typ=PTR)
        t = at(a, OB_TYPE, PTR)
        is_num, is_int, done = (fn.append_basic_block(f"arg{i}.{k}") for k in ("num", "int", "ok"))
        # a Python float, or a NumPy scalar of the parameter's own dtype: the value is in the object
        own = "float64" if v.dtype == "f64" else "float32"
        b.cbranch(b.or_(b.icmp_unsigned("==", t, api("float")), b.icmp_unsigned("==", t, api(own))), is_num, is_int)
        b.position_at_end(is_num)
        x = at(a, VALUE, F64)
        if v.dtype == "f32":
            # a Python float is a double at VALUE; a NumPy float32 a float there
            x = b.select(b.icmp_unsigned("==", t, api("float")), x, b.fpext(at(a, VALUE, LLTYPES["f32"]), F64))
        b.branch(done)
        num_block = b.block
        b.position_at_end(is_int)
        otherwise(b.icmp_unsigned("!=", t, api("int")), f"arg{i}.long")   # bool too: the checked way
        n = b.call(_Callee(api("PyLong_AsLongLongAndOverflow"), ir.FunctionType(I64, [PTR, PTR])), [a, overflow])
        big = b.or_(b.icmp_signed("!=", b.load(overflow, typ=I32), ir.Constant(I32, 0)),
                    b.icmp_unsigned(">", b.add(n, ir.Constant(I64, EXACT_INT)), ir.Constant(I64, 2 * EXACT_INT)))
        otherwise(big, f"arg{i}.exact")       # out of range, or an error set: the checked way clears it
        y = b.sitofp(n, F64)
        b.branch(done)
        int_block = b.block
        b.position_at_end(done)
        phi = b.phi(F64)
        phi.add_incoming(x, num_block)
        phi.add_incoming(y, int_block)
        values.append(phi)

    out = b.alloca(I8, size=SLOT * n_out + RECORD)
    status = b.call(scalar, values + [out])
    otherwise(b.icmp_unsigned("!=", status, ir.Constant(I32, 0)), "boxed")   # the checked path raises

    alloc = ir.FunctionType(PTR, [PTR, I64])
    boxes = []
    for i, v in enumerate(g.outputs):
        kind = "float64" if v.dtype == "f64" else "float32"
        o = b.call(_Callee(api("alloc_" + kind), alloc), [api(kind), ir.Constant(I64, 0)])
        _unless_null(b, fn, o, boxes, api, f"box{i}")
        ty = LLTYPES[v.dtype]
        b.store(at(out, SLOT * i, ty), b.gep(o, [ir.Constant(I64, VALUE)], source_etype=I8))
        boxes.append(o)
    if n_out == 1:
        b.ret(boxes[0])
    else:
        t = b.call(_Callee(api("PyTuple_New"), ir.FunctionType(PTR, [I64])), [ir.Constant(I64, n_out)])
        _unless_null(b, fn, t, boxes, api, "tuple")
        set_item = _Callee(api("PyTuple_SetItem"), ir.FunctionType(I32, [PTR, I64, PTR]))
        for i, o in enumerate(boxes):
            b.call(set_item, [t, ir.Constant(I64, i), o])     # steals the reference
        b.ret(t)

    b.position_at_end(fallback)
    call = _Callee(api("PyObject_Vectorcall"), ir.FunctionType(PTR, [PTR, PTR, I64, PTR]))
    b.ret(b.call(call, [self_, args, nargs, kwnames]))


def _unless_null(b, fn, obj, owned, api, label):
    """Return NULL (the Python error is set) after dropping the references in owned, when obj is NULL."""
    null, ok = fn.append_basic_block(label + ".null"), fn.append_basic_block(label)
    b.cbranch(b.icmp_unsigned("==", obj, ir.Constant(PTR, None)), null, ok)
    b.position_at_end(null)
    dec = _Callee(api("Py_DecRef"), ir.FunctionType(ir.VoidType(), [PTR]))
    for o in owned:
        b.call(dec, [o])
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(ok)
