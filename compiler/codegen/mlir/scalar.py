"""Scalar MLIR (arith, math, scf) behind the IRBuilder calls that the ops' lower= rules and the
layout ops' index maps make: the same rules write LLVM for cpu and cuda and MLIR text here."""
from __future__ import annotations

import math
import struct

from llvmlite import ir

from ..scalar import I64, LLTYPES, Scalar

MLIR_TYPES = {"float": "f32", "double": "f64", "i1": "i1", "i8": "i8", "i32": "i32", "i64": "i64"}
# how a tensor holds a dtype (a bool is a byte, as NumPy keeps it)
ELEM = {"f32": "f32", "f64": "f64", "i32": "i32", "i64": "i64", "bool": "i8"}
MATH = {"sin": "math.sin", "cos": "math.cos", "tan": "math.tan", "exp": "math.exp", "log": "math.log",
        "log1p": "math.log1p", "expm1": "math.expm1", "sqrt": "math.sqrt", "tanh": "math.tanh",
        "fabs": "math.absf", "pow": "math.powf", "floor": "math.floor", "copysign": "math.copysign",
        "erf": "math.erf"}
FCMP = {"<": "olt", "<=": "ole", ">": "ogt", ">=": "oge", "==": "oeq", "!=": "one"}
FCMP_U = {"<": "ult", "<=": "ule", ">": "ugt", ">=": "uge", "==": "ueq", "!=": "une"}
ICMP_S = {"<": "slt", "<=": "sle", ">": "sgt", ">=": "sge", "==": "eq", "!=": "ne"}
EXACT = {"fabs", "floor", "copysign", "sqrt"}     # correctly rounded in every precision
ICMP_U = {"<": "ult", "<=": "ule", ">": "ugt", ">=": "uge", "==": "eq", "!=": "ne"}


def mtype(t) -> str:
    """The MLIR name of an llvmlite scalar type."""
    return MLIR_TYPES[str(t)]


def const_text(value, t) -> str:
    """An arith.constant's value and type: floats bit-exact in hex (inf and nan too)."""
    name = mtype(t)
    if name == "f64":
        return f"0x{struct.unpack('<Q', struct.pack('<d', float(value)))[0]:016X} : f64"
    if name == "f32":
        return f"0x{struct.unpack('<I', struct.pack('<f', float(value)))[0]:08X} : f32"
    if name == "i1":
        return "true" if value else "false"
    return f"{int(value)} : {name}"


class MV:
    """A scalar SSA value: its name and its llvmlite type (what the shared rules test)."""
    __slots__ = ("name", "type", "loop_dim")

    def __init__(self, name, type_, loop_dim=None):
        self.name, self.type, self.loop_dim = name, type_, loop_dim

    def __repr__(self):
        return self.name


class Names:
    """Fresh SSA names for one function."""

    def __init__(self):
        self.n = 0
        self.cells = []             # every Cell made, for the loops that must carry them
        self.alive = []             # every value made: the element memo keys on id(), which a
        # value that Python freed would hand on to the next one

    def keep(self, v):
        self.alive.append(v)
        return v

    def __call__(self, prefix="v"):
        self.n += 1
        return f"%{prefix}{self.n}"


class Builder:
    """IRBuilder-shaped: each call appends one MLIR operation to `lines` and returns its value."""

    def __init__(self, names: Names, lines: list):
        self.names, self.lines = names, lines

    def v(self, x) -> str:
        if isinstance(x, MV):
            return x.name
        if isinstance(x, ir.Constant):
            name = self.names("c")
            self.lines.append(f"{name} = arith.constant {const_text(x.constant, x.type)}")
            return name
        raise TypeError(f"not a scalar value: {x!r}")

    def op(self, text, t) -> MV:
        name = self.names()
        self.lines.append(f"{name} = {text}")
        return self.names.keep(MV(name, t))

    def _bin(self, opname, x, y):
        return self.op(f"{opname} {self.v(x)}, {self.v(y)} : {mtype(x.type)}", x.type)

    def _cast(self, opname, x, t):
        if x.type == t:
            return x
        return self.op(f"{opname} {self.v(x)} : {mtype(x.type)} to {mtype(t)}", t)

    # integers (those of two operands: BINARY, after the class)
    def neg(self, x):
        return self.sub(ir.Constant(x.type, 0), x)

    def not_(self, x):
        return self.xor(x, ir.Constant(x.type, -1 if x.type.width > 1 else 1))

    # floats (those of two operands: BINARY)
    def fneg(self, x, **_):
        return self.op(f"arith.negf {self.v(x)} : {mtype(x.type)}", x.type)

    # comparisons and selection
    def _cmp(self, opname, table, op, x, y):
        return self.op(f"{opname} {table[op]}, {self.v(x)}, {self.v(y)} : {mtype(x.type)}", LLTYPES["bool"])

    def fcmp_ordered(self, op, x, y, **_):
        return self._cmp("arith.cmpf", FCMP, op, x, y)

    def fcmp_unordered(self, op, x, y, **_):
        return self._cmp("arith.cmpf", FCMP_U, op, x, y)

    def icmp_signed(self, op, x, y):
        return self._cmp("arith.cmpi", ICMP_S, op, x, y)

    def icmp_unsigned(self, op, x, y):
        return self._cmp("arith.cmpi", ICMP_U, op, x, y)

    def select(self, c, x, y):
        t = x.type if isinstance(x, (MV, ir.Constant)) else y.type
        return self.op(f"arith.select {self.v(c)}, {self.v(x)}, {self.v(y)} : {mtype(t)}", t)

    # conversions
    def sext(self, x, t):
        return self._cast("arith.extsi", x, t)

    def zext(self, x, t):
        return self._cast("arith.extui", x, t)

    def trunc(self, x, t):
        return self._cast("arith.trunci", x, t)

    def sitofp(self, x, t):
        return self._cast("arith.sitofp", x, t)

    def uitofp(self, x, t):
        return self._cast("arith.uitofp", x, t)

    def fptosi(self, x, t):
        return self._cast("arith.fptosi", x, t)

    def fpext(self, x, t):
        return self._cast("arith.extf", x, t)

    def fptrunc(self, x, t):
        return self._cast("arith.truncf", x, t)

    # math: fn is the name Scalar.math gives back
    def call(self, fn, args):
        args = list(args)
        t = args[0].type
        return self.op(f"{MATH[fn]} {', '.join(self.v(a) for a in args)} : {mtype(t)}", t)

    # a mutable scalar (gather.py's scans accumulate in one): a Cell the loops carry
    def alloca(self, t):
        c = Cell(t)
        self.names.cells.append(c)
        return c

    def store(self, x, cell):
        cell.value = x

    def load(self, cell, typ=None):
        return cell.value


# the arithmetic that is one MLIR operation on two operands of one type: Builder.NAME(x, y)
BINARY = {
    "add": "arith.addi",
    "sub": "arith.subi",
    "mul": "arith.muli",
    "sdiv": "arith.divsi",
    "srem": "arith.remsi",
    "udiv": "arith.divui",
    "urem": "arith.remui",
    "and_": "arith.andi",
    "or_": "arith.ori",
    "xor": "arith.xori",
    "fadd": "arith.addf",
    "fsub": "arith.subf",
    "fmul": "arith.mulf",
    "fdiv": "arith.divf",
    "frem": "arith.remf",
}


def _binary(name, opname):
    def op(self, x, y, **_):
        return self._bin(opname, x, y)
    op.__name__ = name
    return op


for _name, _opname in BINARY.items():
    setattr(Builder, _name, _binary(_name, _opname))


class Cell:
    __slots__ = ("type", "value")

    def __init__(self, t):
        self.type, self.value = t, None


class MScalar(Scalar):
    """Scalar's NumPy semantics written as arith and math operations."""

    def __init__(self, b: Builder, f64_math: bool = False):
        self.module = None
        self.b = b
        self.f64_math = f64_math

    def math(self, name, x):
        return name

    def call(self, name, *xs):
        if name == "erf" and (str(xs[0].type) == "double" or self.f64_math):
            x = xs[0]
            if str(x.type) == "float":
                return self.b.fptrunc(self.erf64(self.b.fpext(x, ir.DoubleType())), x.type)
            return self.erf64(x)
        if self.f64_math and str(xs[0].type) == "float" and name not in EXACT:
            # f32 math through the f64 function, rounded once: the C library's accuracy where a
            # compiler's own f32 approximations lose digits (IREE's sin at 4e4 loses three)
            d = ir.DoubleType()
            return self.b.fptrunc(self.b.call(name, [self.b.fpext(x, d) for x in xs]), xs[0].type)
        return self.b.call(name, xs)


    def erf64(self, x):
        """erf in f64 from arithmetic and exp (IREE has no f64 erf on the CPU): its Maclaurin
        series below 2.5, the continued fraction of erfc above; within 3e-15 of the C library."""
        b, d = self.b, x.type
        ax = self.call("fabs", x)
        z = b.fmul(ax, ax)
        acc = ir.Constant(d, 0.0)
        for k in reversed(range(45)):
            acc = b.fadd(b.fmul(acc, z), ir.Constant(d, (-1) ** k / (math.factorial(k) * (2 * k + 1))))
        small = b.fmul(b.fmul(ir.Constant(d, 2 / math.sqrt(math.pi)), ax), acc)
        big_x = self.maximum(ax, ir.Constant(d, 2.5))
        t = big_x
        for k in reversed(range(1, 60)):
            t = b.fadd(big_x, b.fdiv(ir.Constant(d, k / 2), t))
        tail = b.fdiv(self.call("exp", b.fneg(b.fmul(big_x, big_x))), b.fmul(ir.Constant(d, math.sqrt(math.pi)), t))
        big = b.fsub(ir.Constant(d, 1.0), tail)
        r = b.select(b.fcmp_ordered("<", ax, ir.Constant(d, 2.5)), small, big)
        return self.call("copysign", r, x)


def index_of(b: Builder, x) -> str:
    """An i64 (or narrower) value as an MLIR index."""
    if isinstance(x, ir.Constant):
        name = b.names("c")
        b.lines.append(f"{name} = arith.constant {int(x.constant)} : index")
        return name
    if x.type != I64:
        x = b.sext(x, I64)
    name = b.names("ix")
    b.lines.append(f"{name} = arith.index_cast {x.name} : i64 to index")
    return name
