"""The math functions a kernel may call by name, and what each target calls for them."""
from __future__ import annotations

from llvmlite import ir

# name -> number of arguments; C semantics (round: halfway cases away from zero, as C's round)
FUNCTIONS = {
    **{n: 1 for n in (
        "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
        "atanh", "exp", "exp2", "exp10", "expm1", "log", "log2", "log10", "log1p", "sqrt",
        "cbrt", "erf", "erfc", "floor", "ceil", "trunc", "round", "rint", "fabs")},
    **{n: 2 for n in ("pow", "atan2", "fmod", "fmin", "fmax", "hypot", "copysign")},
}


def suffix(t: ir.Type) -> str:
    """The C suffix of a floating-point LLVM type: "f" for float, "" for double."""
    if isinstance(t, ir.FloatType):
        return "f"
    if isinstance(t, ir.DoubleType):
        return ""
    raise TypeError(f"math functions take f32 or f64 values, not {t}")


def check(name: str, args) -> ir.Type:
    """The type of a call of `name` on args, or TypeError/ValueError saying what is wrong."""
    arity = FUNCTIONS.get(name)
    if arity is None:
        raise ValueError(f"kernel math: no function {name!r}; known: {', '.join(sorted(FUNCTIONS))}")
    if len(args) != arity:
        raise TypeError(f"kernel math: {name} takes {arity} argument(s), got {len(args)}")
    t = args[0].type
    suffix(t)
    if any(a.type != t for a in args):
        raise TypeError(f"kernel math: the arguments of {name} differ in type")
    return t


def libdevice_name(name: str, t: ir.Type) -> str:
    """libdevice's function: __nv_sinf for f32, __nv_sin for f64."""
    return f"__nv_{name}{suffix(t)}"


def host_name(name: str, t: ir.Type) -> str:
    """The C library's function: sinf for f32, sin for f64."""
    return f"{name}{suffix(t)}"


def declare(module: ir.Module, symbol: str, t: ir.Type, arity: int) -> ir.Function:
    """The declaration of `t symbol(t, ...)` in module, added once."""
    fn = module.globals.get(symbol)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(t, [t] * arity), symbol)
    return fn
