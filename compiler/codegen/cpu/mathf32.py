"""f32 sin, cos and exp as vector code the loop vectorizer calls, inlined into the loop after it.

A loop over sinf(x) gets `gradc.sinf.vN` (N = 4, 8, 16) in place of a libmvec call: the
reduction runs in double (x - k*pi/2 with a two-part pi/2, exact enough for |x| <= 2**20),
the polynomials in float; sin and cos evaluate the same reduction and polynomials, so a loop
that needs both (a derivative of sin) computes them once after the inlining (GVN). Lanes
beyond 2**20, inf and NaN go to libm's sinf one by one, on a branch taken only when some lane
needs it. exp: k = rint(x/ln 2), a two-part ln 2, a degree-7 polynomial, and 2**k applied in
two halves so that subnormal results round once. Accuracy: docs/native.md (measured against
float64 by tests/test_vector_math.py).

The scalar entry points (`gradc.sinf` ...) stay calls to libm, for the loops' remainders.
"""
from __future__ import annotations

import math
import struct

FUNCTIONS = ("sinf", "cosf", "expf")
WIDTHS = (4, 8, 16)
BIG = 0x49800000                # 2**20: beyond it, libm
TINY = 0x39800000               # 2**-12: sin(x) is x in float (and keeps -0.0)


def _f32(v: float) -> str:
    """A float constant as LLVM writes it: the double of the value rounded to float."""
    v = struct.unpack("<f", struct.pack("<f", v))[0]
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", v))[0]


def _f64(v: float) -> str:
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", v))[0]


# pi/2 as double + double; 2/pi
PIO2_HI = math.pi / 2
PIO2_LO = 6.123233995736766e-17
TWO_OVER_PI = 2 / math.pi
MID = 0x42800000                # 64: up to here the reduction runs in float


def _split_pio2() -> tuple:
    """pi/2 as four floats, the first with 8 bits (k*P1 is exact for the k below MID)."""
    from fractions import Fraction
    rest = Fraction("1.5707963267948966192313216916397514420985846996875529104874722961")
    parts = []
    for first in (True, False, False, False):
        p = 1.5703125 if first else struct.unpack("<f", struct.pack("<f", float(rest)))[0]
        parts.append(p)
        rest -= Fraction(p)
    return tuple(parts)


PIO2_F32 = _split_pio2()
# sin r = r + r^3 (S1 + z S2 + ...), cos r = 1 + z (C1 + z C2 + ...), z = r^2, |r| <= pi/4
SIN = [-1 / 6, 1 / 120, -1 / 5040, 1 / 362880]
COS = [-1 / 2, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800]
LN2_HI, LN2_LO = 0.693145751953125, 1.428606765330187e-06     # LN2_HI: 16 bits, k*LN2_HI is exact
EXP = [1 / math.factorial(i) for i in range(8)]


class _Writer:
    """Numbered SSA values of one vector function's text, N lanes wide."""

    def __init__(self, n: int):
        self.n, self.lines, self.k, self.block = n, [], 0, "entry"

    def ty(self, t):
        return f"<{self.n} x {t}>"

    def c(self, t, v):
        """A splat constant of element type t."""
        text = _f32(v) if t == "float" else _f64(v) if t == "double" else str(int(v))
        return f"splat ({t} {text})"

    def __call__(self, text):
        self.k += 1
        self.lines.append(f"  %v{self.k} = {text}")
        return f"%v{self.k}"

    def branch(self, cond, then, join):
        """End the block: to then where cond holds, else to join (then's label is its name)."""
        self.lines.append(f"  br i1 {cond}, label %{then}, label %{join}")
        self.lines.append(f"{then}:")
        self.block = then

    def jump(self, label):
        self.lines.append(f"  br label %{label}")
        self.lines.append(f"{label}:")
        self.block = label

    def op(self, opcode, t, a, b):
        return self(f"{opcode} {self.ty(t)} {a}, {b}")

    def cast(self, opcode, a, t, to):
        return self(f"{opcode} {self.ty(t)} {a} to {self.ty(to)}")

    def sel(self, cond, t, a, b):
        return self(f"select {self.ty('i1')} {cond}, {self.ty(t)} {a}, {self.ty(t)} {b}")

    def call(self, name, t, *args):
        vt = self.ty(t)
        suffix = f"v{self.n}f{32 if t == 'float' else 64}"
        return self(f"call {vt} @llvm.{name}.{suffix}({', '.join(vt + ' ' + a for a in args)})")

    def fma(self, t, a, b, c):
        return self.call("fma", t, a, b, c)


def _horner(w, z, coeffs, last):
    """coeffs[0] + z*(coeffs[1] + ...) in float, with FMAs; then times z plus last (if given)."""
    p = w.c("float", coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = w.fma("float", z, p, w.c("float", c))
    return p if last is None else w.fma("float", z, p, last)


def _sincos(name: str, n: int) -> str:
    w = _Writer(n)
    ai = w.op("and", "i32", w.cast("bitcast", "%x", "float", "i32"), w.c("i32", 0x7FFFFFFF))
    big = w.op("icmp ugt", "i32", ai, w.c("i32", BIG))
    mid = w.op("icmp ugt", "i32", ai, w.c("i32", MID))
    # up to MID: float arithmetic, k*P1 exact, three FMAs
    xf = w.sel(mid, "float", "zeroinitializer", "%x")
    kf = w.call("rint", "float", w.op("fmul", "float", xf, w.c("float", TWO_OVER_PI)))
    nk = w(f"fneg {w.ty('float')} {kf}")
    r = xf
    for part in PIO2_F32:
        r = w.fma("float", nk, w.c("float", part), r)
    qf = w.cast("fptosi", kf, "float", "i32")
    anymid = w(f"call i1 @llvm.vector.reduce.or.v{n}i1({w.ty('i1')} {mid})")
    w.branch(anymid, "medium", "join")
    # up to BIG, on a branch taken only where a lane needs it: in double, with a two-part pi/2
    xd = w.cast("fpext", w.sel(big, "float", "zeroinitializer", "%x"), "float", "double")
    kd = w.call("rint", "double", w.op("fmul", "double", xd, w.c("double", TWO_OVER_PI)))
    nkd = w(f"fneg {w.ty('double')} {kd}")
    rd = w.fma("double", nkd, w.c("double", PIO2_HI), xd)
    rd = w.cast("fptrunc", w.fma("double", nkd, w.c("double", PIO2_LO), rd), "double", "float")
    rm = w.sel(mid, "float", rd, r)
    qm = w.sel(mid, "i32", w.cast("fptosi", kd, "double", "i32"), qf)
    w.jump("join")
    rf = w(f"phi {w.ty('float')} [ {r}, %entry ], [ {rm}, %medium ]")
    q = w(f"phi {w.ty('i32')} [ {qf}, %entry ], [ {qm}, %medium ]")
    z = w.op("fmul", "float", rf, rf)
    s = w.fma("float", w.op("fmul", "float", rf, z), _horner(w, z, SIN, None), rf)
    c = _horner(w, z, COS, w.c("float", 1.0))
    if name == "cosf":
        q = w.op("add", "i32", q, w.c("i32", 1))         # cos x = sin(x + pi/2)
    odd = w.op("icmp ne", "i32", w.op("and", "i32", q, w.c("i32", 1)), "zeroinitializer")
    v = w.sel(odd, "float", c, s)
    sign = w.op("shl", "i32", w.op("and", "i32", q, w.c("i32", 2)), w.c("i32", 30))
    v = w.cast("bitcast", w.op("xor", "i32", w.cast("bitcast", v, "float", "i32"), sign), "i32", "float")
    if name == "sinf":
        v = w.sel(w.op("icmp ult", "i32", ai, w.c("i32", TINY)), "float", "%x", v)
    return _with_slow_lanes(w, name, big, v)


def _exp(n: int) -> str:
    w = _Writer(n)
    nan = w.op("fcmp uno", "float", "%x", "zeroinitializer")
    x = w.sel(nan, "float", "zeroinitializer", "%x")
    # beyond these e^x is inf or 0 in float, and the scaling below makes it so
    x = w.sel(w.op("fcmp ogt", "float", x, w.c("float", 89.0)), "float", w.c("float", 89.0), x)
    x = w.sel(w.op("fcmp olt", "float", x, w.c("float", -104.0)), "float", w.c("float", -104.0), x)
    k = w.call("rint", "float", w.op("fmul", "float", x, w.c("float", 1 / math.log(2))))
    nk = w(f"fneg {w.ty('float')} {k}")
    r = w.fma("float", nk, w.c("float", LN2_HI), x)
    r = w.fma("float", nk, w.c("float", LN2_LO), r)
    p = w.fma("float", r, _horner(w, r, EXP[1:], None), w.c("float", 1.0))
    ki = w.cast("fptosi", k, "float", "i32")
    k1 = w.op("ashr", "i32", ki, w.c("i32", 1))
    k2 = w.op("sub", "i32", ki, k1)
    s1, s2 = (w.cast("bitcast", w.op("shl", "i32", w.op("add", "i32", h, w.c("i32", 127)), w.c("i32", 23)),
                     "i32", "float") for h in (k1, k2))
    v = w.op("fmul", "float", w.op("fmul", "float", p, s1), s2)
    v = w.sel(nan, "float", w.op("fadd", "float", "%x", "%x"), v)
    return _function(w, "expf", v)


def _with_slow_lanes(w, name, big, fast):
    """fast, with the lanes marked in big computed by libm: a branch taken only when one is, to a
    function that keeps every register (so the loop around keeps its constants in registers)."""
    n, ft = w.n, w.ty("float")
    anybig = w(f"call i1 @llvm.vector.reduce.or.v{n}i1({w.ty('i1')} {big})")
    lanes = f"@gradc.{name}.lanes.v{n}"
    return "\n".join([
        f"define hidden {ft} @gradc.{name}.v{n}({ft} %x) alwaysinline nounwind {{", "entry:", *w.lines,
        f"  br i1 {anybig}, label %slow, label %done", "slow:",
        f"  %slowv = call preserve_allcc {ft} {lanes}({ft} %x, {ft} {fast})", "  br label %done", "done:",
        f"  %r = phi {ft} [ {fast}, %{w.block} ], [ %slowv, %slow ]", f"  ret {ft} %r", "}",
        _lanes(name, n)])


def _lanes(name, n):
    """fast, with libm's NAME in the lanes beyond BIG (and inf, NaN)."""
    ft, it = f"<{n} x float>", f"<{n} x i32>"
    body = [f"define internal preserve_allcc {ft} @gradc.{name}.lanes.v{n}({ft} %x, {ft} %fast) noinline cold nounwind {{",
            f"  %i = bitcast {ft} %x to {it}", f"  %a = and {it} %i, splat (i32 2147483647)",
            f"  %big = icmp ugt {it} %a, splat (i32 {BIG})"]
    acc = "%fast"
    for i in range(n):
        body += [f"  %s{i} = extractelement {ft} %x, i32 {i}", f"  %c{i} = call float @{name}(float %s{i})",
                 f"  %a{i} = insertelement {ft} {acc}, float %c{i}, i32 {i}"]
        acc = f"%a{i}"
    return "\n".join(body + [f"  %r = select <{n} x i1> %big, {ft} {acc}, {ft} %fast", f"  ret {ft} %r", "}"])


def _function(w, name, v):
    ft = w.ty("float")
    return "\n".join([f"define hidden {ft} @gradc.{name}.v{w.n}({ft} %x) alwaysinline nounwind {{", "entry:",
                      *w.lines, f"  ret {ft} {v}", "}"])


def vector_function(name: str, n: int) -> str:
    """The text of gradc.NAME.vN."""
    return _exp(n) if name == "expf" else _sincos(name, n)


def definitions(names) -> tuple:
    """(text, the vector functions' names) for the scalar names used: each gradc.NAME (a call of libm,
    naming its vector variants) and every gradc.NAME.vN; the intrinsics they use are declared."""
    parts, vectors, intrinsics = [], [], set()
    for gid, name in enumerate(sorted(names)):
        variants = ",".join(f"_ZGV_LLVM_N{n}v_gradc.{name}(gradc.{name}.v{n})" for n in WIDTHS)
        # noinline: the vectorizer must see the call (and its variants), not libm's
        parts += [f"define internal float @gradc.{name}(float %x) #{9100 + gid} {{",
                  f"  %r = tail call float @{name}(float %x)", "  ret float %r", "}",
                  f'attributes #{9100 + gid} = {{ noinline nounwind willreturn memory(none) '
                  f'"vector-function-abi-variant"="{variants}" }}']
        for n in WIDTHS:
            parts.append(vector_function(name, n))
            vectors.append(f"gradc.{name}.v{n}")
            intrinsics |= {f"declare <{n} x float> @llvm.fma.v{n}f32(<{n} x float>, <{n} x float>, <{n} x float>)",
                           f"declare <{n} x double> @llvm.fma.v{n}f64(<{n} x double>, <{n} x double>, <{n} x double>)",
                           f"declare <{n} x double> @llvm.rint.v{n}f64(<{n} x double>)",
                           f"declare <{n} x float> @llvm.rint.v{n}f32(<{n} x float>)",
                           f"declare i1 @llvm.vector.reduce.or.v{n}i1(<{n} x i1>)"}
    return "\n".join(parts + sorted(intrinsics)), vectors
