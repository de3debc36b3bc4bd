"""float32 exp, sin and cos written out in the element code (no call), so the loop vectorizer
sees plain arithmetic: a range reduction, polynomials, a scale or a quadrant.

libmvec's variants are calls: each vector of lanes leaves the loop, saves and restores
registers and checks for special cases. Inline, exp costs a handful of FMAs and shares the
loop with the code around it, and sin and cos of one value share their reduction. Accuracy
(tests/test_vector_math.py measures it against float64 NumPy, specials included): within 2
ulp, like libmvec's 4-ulp variants or better. Only the cpu target uses them, and only for
CPUs with AVX-512 (cpu.inline_math): the reference target and the GPU keep their own functions.
"""
from __future__ import annotations

import math
import re

import llvmlite.binding as llvm
from llvmlite import ir

from ..scalar import Scalar

F32 = ir.FloatType()
I32 = ir.IntType(32)

# exp(x) = 2^n * exp(r), n = rint(x / ln 2), r = x - n ln 2 with ln 2 in two parts (the first
# one exact times any n in range); exp(r) on |r| <= ln(2)/2 as 1 + r + r^2 P(r) (Cephes' expf)
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
         5.0000001201e-1)
EXP_LIMITS = (-104.0, 89.0)       # beyond: 0 and inf, reached by the scaling itself

# sin and cos: q = rint(x * 2/pi), r = x - q pi/2 with pi/2 in three parts (Cody and Waite),
# then sin r and cos r on |r| <= pi/4 (Cephes' sinf and cosf polynomials) and the quadrant
# q mod 4 picks and signs them. Both functions of one x share all of it in the loop. Beyond
# TRIG_LIMIT (and at inf and NaN) the reduction would lose bits: libm's sinf/cosf there, called
# through a function whose masked vector variants (FAR_LANES) test whether any lane needs it.
PIO2 = (1.5707963705062866, -4.371139000186243e-08, -1.7151245100059144e-15)
SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
TRIG_LIMIT = 8192.0
ROUNDER = 12582912.0              # 1.5 * 2^23: x + ROUNDER - ROUNDER is x rounded to an integer
FAR_LANES = (2, 4, 8, 16, 32)


def _freeze(b, v):
    """LLVM's `freeze v` (llvmlite's builder has none): v, or where v is poison some fixed value."""
    inst = ir.instructions.Instruction(b.block, v.type, "freeze", [v])
    b._insert(inst)
    return inst


class CpuScalar(Scalar):
    """Scalar with exp, sin and cos written out for float32."""

    def call(self, name, *xs):
        if isinstance(xs[0].type, ir.FloatType) and getattr(self.module, "inline_math", True):
            if name == "exp":
                return self.exp_f32(xs[0])
            if name in ("sin", "cos"):
                return self.trig_f32(name, xs[0])
        return super().call(name, *xs)

    def _intrinsic(self, name, x, *more):
        fn = self.func(f"llvm.{name}.f32", F32, [F32] * (1 + len(more)))
        return self.b.call(fn, [x, *more])

    def _fma(self, a, b, c):
        return self._intrinsic("fma", a, b, c)

    def exp_f32(self, x):
        b = self.b
        c = lambda v: ir.Constant(F32, v)
        lo, hi = EXP_LIMITS
        # clamp first, as x < lo ? lo : x (a NaN fails both compares and goes through: no test
        # for it at the end; x86's max and min, with x second, do just this)
        xc = b.select(b.fcmp_ordered("<", x, c(lo)), c(lo), x)
        xc = b.select(b.fcmp_ordered(">", xc, c(hi)), c(hi), xc)
        n = self._intrinsic("rint", b.fmul(xc, c(1.0 / math.log(2.0))))
        r = self._fma(n, c(-LN2_HI), xc)
        r = self._fma(n, c(-LN2_LO), r)
        p = c(EXP_P[0])
        for k in EXP_P[1:]:
            p = self._fma(p, r, c(k))
        y = self._fma(b.fmul(p, r), r, b.fadd(r, c(1.0)))
        # y * 2^n rounded once, into the subnormals or to inf as exp itself: AVX-512's vscalefps.
        # n is NaN where x is: its integer (poison) is frozen, and any scale of NaN is NaN
        fn = self.func("llvm.ldexp.f32.i32", F32, [F32, I32])
        return b.call(fn, [y, _freeze(b, b.fptosi(n, I32))])

    def _poly(self, z, coeffs):
        p = ir.Constant(F32, coeffs[0])
        for k in coeffs[1:]:
            p = self._fma(p, z, ir.Constant(F32, k))
        return p

    def trig_f32(self, name, x):
        b = self.b
        c = lambda v: ir.Constant(F32, v)
        i32 = lambda v: ir.Constant(I32, v)
        # on |x| (cos is even, sin odd: x's sign goes onto sin at the end, which makes
        # sin(-0) = -0); q = rint(|x| * 2/pi) by adding 1.5 * 2^23, whose low mantissa bits are
        # then q mod 2^22 (the quadrant with no conversion), valid while |x| * 2/pi < 2^22
        ax = self._intrinsic("fabs", x)
        t = self._fma(ax, c(2.0 / math.pi), c(ROUNDER))
        q = b.fsub(t, c(ROUNDER))
        r = ax
        for part in PIO2:
            r = self._fma(q, c(-part), r)
        z = b.fmul(r, r)
        sin_r = self._fma(b.fmul(self._poly(z, SIN_P), z), r, r)
        cos_r = self._fma(b.fmul(self._poly(z, COS_P), z), z, self._fma(z, c(-0.5), c(1.0)))
        small = b.fcmp_ordered("<=", ax, c(TRIG_LIMIT))
        j = b.bitcast(t, I32)
        if name == "cos":                                          # cos x = sin(x + pi/2)
            j = b.add(j, i32(1))
        odd = b.icmp_signed("!=", b.and_(j, i32(1)), i32(0))
        y = b.select(odd, cos_r, sin_r)
        # quadrants 2 and 3 negate (bit 1 of j moved to the sign bit), and sin takes x's sign
        sign = b.shl(j, i32(30))
        if name == "sin":
            sign = b.xor(sign, b.bitcast(x, I32))
        sign = b.and_(sign, i32(-(1 << 31)))
        y = b.bitcast(b.xor(b.bitcast(y, I32), sign), F32)
        # the rare far argument in a block of its own: the loop stays vector (see _far)
        before = b.block
        with b.if_then(b.not_(small), likely=False):
            far = b.call(self._far(name), [x])
            far_block = b.block
        merged = b.phi(F32)
        merged.add_incoming(y, before)
        merged.add_incoming(far, far_block)
        return merged

    def _far(self, name):
        """A function of the module that calls libm's sinf/cosf, with masked vector variants of
        its own (VFABI "M", attached by attach_far_variants): a vectorized loop calls the
        variant with the lanes that need libm, and the variant, inlined after vectorization
        (inline_far_variants), tests whether any does and calls libm for those lanes only."""
        fname = f"gradc_{name}f_far"
        fn = self.module.globals.get(fname)
        if fn is not None:
            return fn
        libm = self.func(name + "f", F32, [F32])
        fn = ir.Function(self.module, ir.FunctionType(F32, [F32]), fname)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        b = ir.IRBuilder(fn.append_basic_block())
        b.ret(b.call(libm, list(fn.args)))
        for lanes in FAR_LANES:
            self._far_variant(f"{fname}_m{lanes}", libm, lanes)
        return fn

    def _far_variant(self, vname, libm, lanes):
        """(x, mask) -> libm's result in the lanes of mask (the others: x), one test first."""
        vt, mt = ir.VectorType(F32, lanes), ir.VectorType(ir.IntType(1), lanes)
        vf = ir.Function(self.module, ir.FunctionType(vt, [vt, mt]), vname)
        vf.linkage = "internal"
        vf.attributes.add("alwaysinline")
        x, m = vf.args
        entry, lane, call, step, done = (vf.append_basic_block(n) for n in ("entry", "lane", "call", "step", "done"))
        b = ir.IRBuilder(entry)
        anyf = self.func(f"llvm.vector.reduce.or.v{lanes}i1", ir.IntType(1), [mt])
        b.cbranch(b.call(anyf, [m]), lane, done).set_weights([1, 1 << 20])   # cold: the loop's
        b = ir.IRBuilder(lane)                                               # registers stay put
        k, acc = b.phi(I32), b.phi(vt)
        b.cbranch(b.extract_element(m, k), call, step)
        b = ir.IRBuilder(call)
        got = b.insert_element(acc, b.call(libm, [b.extract_element(x, k)]), k)
        b.branch(step)
        b = ir.IRBuilder(step)
        out = b.phi(vt)
        out.add_incoming(acc, lane)
        out.add_incoming(got, call)
        k1 = b.add(k, ir.Constant(I32, 1))
        b.cbranch(b.icmp_signed("<", k1, ir.Constant(I32, lanes)), lane, done)
        k.add_incoming(ir.Constant(I32, 0), entry)
        k.add_incoming(k1, step)
        acc.add_incoming(x, entry)
        acc.add_incoming(out, step)
        b = ir.IRBuilder(done)
        res = b.phi(vt)
        res.add_incoming(x, entry)
        res.add_incoming(out, step)
        b.ret(res)


_FAR_DEF = re.compile(r'^(define internal float @"?(gradc_\w+_far)"?\(float [^)]*\)[^{]*)\{', re.M)


def attach_far_variants(text: str) -> str:
    """The module text with the masked vector variants of each _far function named on it
    (an attribute llvmlite does not write), kept alive until the vectorizer has seen them."""
    if "_far" not in text:                  # most modules: no scan of their text
        return text
    groups, kept = [], []

    def attach(m):
        gid = 9500 + len(groups)
        name = m.group(2)
        groups.append(f'attributes #{gid} = {{ "vector-function-abi-variant"="' +
                      ",".join(f"_ZGV_LLVM_M{k}v_{name}({name}_m{k})" for k in FAR_LANES) + '" }')
        kept.extend(f"ptr @{name}_m{k}" for k in FAR_LANES)
        return f"{m.group(1)} #{gid} {{"
    text = _FAR_DEF.sub(attach, text)
    if not groups:
        return text
    used = f'@llvm.used = appending global [{len(kept)} x ptr] [{", ".join(kept)}], section "llvm.metadata"'
    return text + "\n" + used + "\n" + "\n".join(groups) + "\n"


def inline_far_variants(mod, tm, pto):
    """After the vectorizer: the variants it called inlined into its loops (their test then
    costs a compare and a branch there, not a call that spills the loop's vector registers)."""
    if not any(f.name.startswith("gradc_") and f.name.endswith("_far") for f in mod.functions):
        return
    pm = llvm.create_new_module_pass_manager()
    pm.add_always_inliner_pass()
    pm.add_simplify_cfg_pass()
    pm.run(mod, llvm.create_pass_builder(tm, pto))
