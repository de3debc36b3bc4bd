"""Typed scalar helpers for the ops' `lower=` rules: one LLVM value per element, NumPy semantics."""
from __future__ import annotations

from llvmlite import ir

from ...vocab import ITEMSIZE as SIZES  # noqa: F401  (bytes per element in memory)

LLTYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i32": ir.IntType(32),
           "i64": ir.IntType(64), "bool": ir.IntType(1)}
STORE_TYPES = dict(LLTYPES, bool=ir.IntType(8))      # NumPy keeps a bool in one byte
I64 = ir.IntType(64)

# llvm.* intrinsics where LLVM has them; the rest resolve to libm at load time
INTRINSICS = {"sqrt", "fabs", "pow", "floor", "copysign"}
LIBM = {"sin", "cos", "exp", "log", "tan", "tanh", "log1p", "expm1"}


class FastMathBuilder(ir.IRBuilder):
    """An IRBuilder whose floating-point arithmetic carries LLVM's `fast` flags: what fast-math
    means (reassociation, contraction to FMA, reciprocals, no NaN, infinity or signed zero)."""


def _fast(name):
    base = getattr(ir.IRBuilder, name)

    def op(self, *args, flags=(), **kw):
        return base(self, *args, flags=tuple(flags) + (() if "fast" in flags else ("fast",)), **kw)
    op.__name__ = name
    return op


for _op in ("fadd", "fsub", "fmul", "fdiv", "frem", "fneg"):
    setattr(FastMathBuilder, _op, _fast(_op))


def builder(block, fast_math: bool = False) -> ir.IRBuilder:
    """An IRBuilder at the end of block; with fast_math, one that marks floating-point arithmetic."""
    return FastMathBuilder(block) if fast_math else ir.IRBuilder(block)


def is_float(v) -> bool:
    return isinstance(v.type, (ir.FloatType, ir.DoubleType))


def is_bool(v) -> bool:
    return isinstance(v.type, ir.IntType) and v.type.width == 1


class Scalar:
    """The `cg` that lowering rules see: arithmetic that picks float, signed or bool forms."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder):
        self.module = module
        self.b = builder

    def c(self, value, like):
        """A constant of like's LLVM type."""
        return ir.Constant(like.type, bool(value) if is_bool(like) else
                           (float(value) if is_float(like) else int(value)))

    def func(self, name, ret, args):
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    def math(self, name, x):
        t = x.type
        if name in INTRINSICS:
            suffix = "f32" if isinstance(t, ir.FloatType) else "f64"
            fn = self.func(f"llvm.{name}.{suffix}", t, [t] * (2 if name in ("pow", "copysign") else 1))
        else:
            fn = self.func(name + ("f" if isinstance(t, ir.FloatType) else ""), t, [t])
        return fn

    def call(self, name, *xs):
        return self.b.call(self.math(name, xs[0]), list(xs))

    # ---- arithmetic

    def add(self, x, y):
        return self.b.fadd(x, y) if is_float(x) else self.b.add(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y) if is_float(x) else self.b.sub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y) if is_float(x) else self.b.mul(x, y)

    def div(self, x, y):
        if is_float(x):
            return self.b.fdiv(x, y)
        # NumPy divides integers as float64, then the declared dtype truncates
        d = ir.DoubleType()
        q = self.b.fdiv(self.b.sitofp(x, d), self.b.sitofp(y, d))
        return self.b.fptosi(q, x.type)

    def _int_divmod(self, x, y):
        """Floor quotient and remainder of integers; a divisor of 0 gives (0, 0) as NumPy, and
        MIN // -1 wraps as NumPy: no division instruction ever sees 0 or that overflow."""
        b, zero, one = self.b, self.c(0, x), self.c(1, x)
        y0, m1 = self.eq(y, zero), self.eq(y, self.c(-1, x))
        ys = b.select(b.or_(y0, m1), one, y)
        q, r = b.sdiv(x, ys), b.srem(x, ys)
        q = b.select(m1, b.neg(x), q)
        r = b.select(m1, zero, r)
        adj = b.and_(self.ne(r, zero), b.xor(self.lt(r, zero), self.lt(y, zero)))
        q = b.select(adj, b.sub(q, one), q)
        r = b.select(adj, b.add(r, y), r)
        return b.select(y0, zero, q), b.select(y0, zero, r)

    def _float_divmod(self, x, y):
        """NumPy's npy_divmod: fmod, then the quotient snapped to an integer, signs as Python."""
        b, zero, one = self.b, self.c(0, x), self.c(1, x)
        mod = b.frem(x, y)
        div = b.fdiv(b.fsub(x, mod), y)
        nz = b.fcmp_unordered("!=", mod, zero)
        adj = b.and_(nz, b.xor(b.fcmp_ordered("<", y, zero), b.fcmp_ordered("<", mod, zero)))
        mod = b.select(adj, b.fadd(mod, y), b.select(nz, mod, self.call("copysign", zero, y)))
        div = b.select(adj, b.fsub(div, one), div)
        fl = self.call("floor", div)
        fl = b.select(b.fcmp_ordered(">", b.fsub(div, fl), self.c(0.5, x)), b.fadd(fl, one), fl)
        q = b.select(b.fcmp_unordered("!=", div, zero), fl, self.call("copysign", zero, b.fdiv(x, y)))
        y0 = b.fcmp_ordered("==", y, zero)
        return b.select(y0, b.fdiv(x, y), q), b.select(y0, b.frem(x, y), mod)

    def floordiv(self, x, y):
        return (self._float_divmod if is_float(x) else self._int_divmod)(x, y)[0]

    def mod(self, x, y):
        return (self._float_divmod if is_float(x) else self._int_divmod)(x, y)[1]

    def neg(self, x):
        return self.b.fneg(x) if is_float(x) else self.b.neg(x)

    def pow(self, x, y):
        if is_float(x):
            return self.call("pow", x, y)
        d = ir.DoubleType()
        p = self.b.call(self.math("pow", ir.Constant(d, 0.0)), [self.b.sitofp(x, d), self.b.sitofp(y, d)])
        return self.b.fptosi(p, x.type)

    def abs(self, x):
        if is_float(x):
            return self.call("fabs", x)
        return self.b.select(self.lt(x, self.c(0, x)), self.b.neg(x), x)

    def sign(self, x):
        one, zero = self.c(1, x), self.c(0, x)
        s = self.b.select(self.gt(x, zero), one, self.b.select(self.lt(x, zero), self.neg(one), zero))
        return self.b.select(self.ne(x, x), x, s) if is_float(x) else s

    # ---- comparisons (ordered, as C and NumPy: anything with nan is false except !=)

    def cmp(self, op, x, y):
        if is_float(x):
            return self.b.fcmp_unordered(op, x, y) if op == "!=" else self.b.fcmp_ordered(op, x, y)
        if is_bool(x):
            return self.b.icmp_unsigned(op, x, y)
        return self.b.icmp_signed(op, x, y)

    def lt(self, x, y):
        return self.cmp("<", x, y)

    def le(self, x, y):
        return self.cmp("<=", x, y)

    def gt(self, x, y):
        return self.cmp(">", x, y)

    def ge(self, x, y):
        return self.cmp(">=", x, y)

    def eq(self, x, y):
        return self.cmp("==", x, y)

    def ne(self, x, y):
        return self.cmp("!=", x, y)

    def select(self, c, x, y):
        return self.b.select(c, x, y)

    def maximum(self, x, y):
        # np.maximum: x if x >= y or x is nan, else y (so nan propagates from either side)
        keep = self.b.or_(self.ge(x, y), self.ne(x, x)) if is_float(x) else self.ge(x, y)
        return self.b.select(keep, x, y)

    def minimum(self, x, y):
        keep = self.b.or_(self.le(x, y), self.ne(x, x)) if is_float(x) else self.le(x, y)
        return self.b.select(keep, x, y)

    def gmul(self, x, y):
        return self.b.select(self.eq(x, self.c(0, x)), self.c(0, x), self.mul(x, y))

    def tie(self, x, y):
        one, half, zero = self.c(1, x), self.c(0.5, x), self.c(0, x)
        return self.b.select(self.gt(x, y), one, self.b.select(self.eq(x, y), half, zero))

    def sigmoid(self, x):
        one = self.c(1, x)
        t = self.call("exp", self.neg(self.abs(x)))
        d = self.b.fadd(one, t)
        return self.b.select(self.ge(x, self.c(0, x)), self.b.fdiv(one, d), self.b.fdiv(t, d))

    def softplus(self, x):
        # np.logaddexp(0, x): log(2) at 0, else the larger side plus log1p(exp(-|x|))
        zero = self.c(0, x)
        tail = self.call("log1p", self.call("exp", self.neg(self.abs(x))))
        pos = self.b.fadd(x, tail)
        r = self.b.select(self.gt(x, zero), pos, tail)
        r = self.b.select(self.eq(x, zero), self.c(0.6931471805599453, x), r)
        return self.b.select(self.ne(x, x), x, r)

    def cast(self, x, dtype):
        t = LLTYPES[dtype]
        if x.type == t:
            return x
        if dtype == "bool":
            return self.ne(x, self.c(0, x))
        if is_bool(x):
            return self.b.uitofp(x, t) if dtype in ("f32", "f64") else self.b.zext(x, t)
        if is_float(x):
            if dtype in ("f32", "f64"):
                return self.b.fpext(x, t) if dtype == "f64" else self.b.fptrunc(x, t)
            return self.b.fptosi(x, t)
        if dtype in ("f32", "f64"):
            return self.b.sitofp(x, t)
        return self.b.sext(x, t) if t.width > x.type.width else self.b.trunc(x, t)
