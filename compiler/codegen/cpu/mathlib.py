"""Elementary functions written out in the element code (no call), so the loop vectorizer sees
plain arithmetic: range reduction, a polynomial and a scale by a power of two, all branch-free.

libmvec's variants are calls: each vector of lanes leaves the loop, saves and restores
registers and checks for special cases. Inline, exp costs a handful of FMAs and shares the
loop with the code around it. Accuracy (tests/test_vector_math.py measures it against float64
NumPy over the whole range, specials included): within 2 ulp, like libmvec's 4-ulp variants or
better. The functions here and the libm/libmvec call are interchangeable elsewhere: the
reference target and the GPU use their own.
"""
from __future__ import annotations

import math

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

class CpuScalar(Scalar):
    """Scalar with exp written out for float32."""

    def call(self, name, *xs):
        if isinstance(xs[0].type, ir.FloatType):
            if name == "exp":
                return self.exp_f32(xs[0])
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
        # clamp first (maxnum/minnum drop a NaN, so the integer part is always defined)
        xc = self._intrinsic("minnum", self._intrinsic("maxnum", x, c(lo)), c(hi))
        n = self._intrinsic("rint", b.fmul(xc, c(1.0 / math.log(2.0))))
        r = self._fma(n, c(-LN2_HI), xc)
        r = self._fma(n, c(-LN2_LO), r)
        p = c(EXP_P[0])
        for k in EXP_P[1:]:
            p = self._fma(p, r, c(k))
        y = self._fma(b.fmul(p, r), r, b.fadd(r, c(1.0)))
        # 2^n in two factors, each a normal number for n in [-150, 128]: y * 2^(n/2) is exact,
        # the second product rounds once (into the subnormals, or to inf, as exp itself)
        ni = b.fptosi(n, I32)
        half = b.ashr(ni, ir.Constant(I32, 1))
        scale = lambda k: b.bitcast(b.shl(b.add(k, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
        y = b.fmul(b.fmul(y, scale(half)), scale(b.sub(ni, half)))
        return b.select(b.fcmp_unordered("uno", x, x), x, y)
