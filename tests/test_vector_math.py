"""Transcendental functions in vectorized loops (libmvec where present) stay within a few ulp."""
import re

import numpy as np
import pytest

import gradc

RANGES = {"sin": (-50, 50), "cos": (-50, 50), "tan": (-1.5, 1.5), "exp": (-80, 80), "log": (1e-30, 1e30),
          "tanh": (-20, 20), "log1p": (-0.99, 1e6), "expm1": (-30, 30), "sqrt": (0, 1e6)}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("fn", sorted(RANGES))
def test_long_loops_agree_with_numpy(fn, dtype):
    m = gradc.compile(f"fn f(x: {dtype}[N]) -> {dtype}[N] {{ return {fn}(x) }}")
    lo, hi = RANGES[fn]
    np_dt = np.float32 if dtype == "f32" else np.float64
    x = np.linspace(lo, hi, 4099).astype(np_dt)       # long enough for every vector width, odd tail
    got, want = m.f(x), getattr(np, fn)(x)
    eps = np.finfo(np_dt).eps
    # within 4 ulp of NumPy's libm result (NumPy itself is within 1 ulp of the true value)
    np.testing.assert_allclose(got, want, rtol=8 * eps, atol=8 * np.finfo(np_dt).tiny)


def test_integer_arithmetic_on_both_targets():
    src = "fn f(a: i32[N], b: i32[N]) -> i32[N] { return maximum(a * b + 1, a - b) - minimum(a, 2) }"
    a, b = np.array([1, -2, 3, 40000], np.int32), np.array([4, 5, -6, 3], np.int32)
    want = np.maximum(a * b + 1, a - b) - np.minimum(a, 2)
    for target in ("reference", "cpu"):
        got = gradc.compile(src, target=target).f(a, b)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_float32_exp_written_out_within_2_ulp_everywhere():
    """float32 exp on cpu with AVX-512 is inline arithmetic (codegen/cpu/mathlib.py), not a call
    (with AVX2 alone, libmvec's, which meets the same bounds here): within 2
    ulp of float64 NumPy over its whole range, subnormal results and the overflow edge included,
    and exact at the specials (inf, -inf, NaN, 0, the limits beyond which it is inf or 0)."""
    m = gradc.compile("fn e(x: f32[N]) -> f32[N] { return exp(x) }", cache=False)
    _written_out(None)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-104, 89, 200_000), rng.uniform(-1e-6, 1e-6, 1000),
                        np.linspace(-104, -87, 20_001), np.linspace(87, 88.8, 20_001)]).astype(np.float32)
    got, want = m.e(x).astype(np.float64), np.exp(x.astype(np.float64))
    tiny = np.finfo(np.float32).tiny
    with np.errstate(over="ignore"):
        w32 = want.astype(np.float32)
    normal = np.isfinite(w32) & (w32 >= tiny)
    ulp = np.spacing(w32[normal]).astype(np.float64)
    assert np.max(np.abs(got[normal] - want[normal]) / ulp) <= 2.0
    sub = w32 < tiny                        # subnormal results: within one step of 2^-149
    assert np.max(np.abs(got[sub] - want[sub])) <= 2.0 ** -149
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 89.0, 1e30, -104.0, -1e30, 88.72283], np.float32)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(m.e(special), np.exp(special))


def _written_out(cpu):
    """Whether the cpu target writes float32 sin, cos and exp out for this CPU (AVX-512), and
    the emitted code agrees: no libm call for exp, the far-argument function for sin."""
    from gradc.compiler.codegen.cpu import host_cpu, inline_math
    code = gradc.api.emit("fn s(x: f32[N]) -> f32 { return sum(sin(x) + exp(x)) }", "llvm", cpu=cpu)
    wide = cpu is None and inline_math(host_cpu()[2])
    assert ("gradc_sinf_far" in code) == wide and ("@expf" in code) == (not wide)
    return wide


def test_far_variants_are_attached_to_the_module_llvmlite_writes():
    """The masked vector variants of a far-argument function reach the vectorizer under the
    quoted names llvmlite writes (a text check for `_far(` once missed them all: every float32
    sin loop stayed scalar, W2 ten times slower)."""
    from gradc.compiler.codegen.cpu.mathlib import FAR_LANES, attach_far_variants
    text = ('define internal float @"gradc_sinf_far"(float %".1") noinline\n{\n.3:\n'
            '  %".4" = call float @"sinf"(float %".1")\n  ret float %".4"\n}\n')
    out = attach_far_variants(text)
    assert 'define internal float @"gradc_sinf_far"(float %".1") noinline\n #9500 {' in out
    assert all(f"_ZGV_LLVM_M{k}v_gradc_sinf_far(gradc_sinf_far_m{k})" in out for k in FAR_LANES)


def test_float32_sin_loops_vectorize_with_avx512():
    """With the written-out sin, the loop of an f32 sin is a vector loop of 16 lanes (only a
    tail too short for one may call the far-argument function one lane at a time)."""
    from gradc.compiler.codegen.cpu import host_cpu, inline_math
    if not inline_math(host_cpu()[2]):
        pytest.skip("the written-out float32 functions are for AVX-512 machines")
    code = gradc.api.emit("fn s(x: f32[N]) -> f32 { return sum(1 / exp(sin(x ** 2))) }", "llvm")
    loop = re.search(r'^define [^\n]*@"?gradc_fn_s\.phase0"?\(.*?^\}', code, re.M | re.S).group(0)
    assert "<16 x float>" in loop


@pytest.mark.parametrize("cpu", [None, "znver3"])        # this machine's vectors; AVX2 ones
def test_float32_sin_cos_written_out_within_2_ulp(cpu):
    """float32 sin and cos on cpu with AVX-512: one range reduction shared by both, polynomials
    inline, and libm for the lanes beyond 8192 (through masked vector variants): within 2 ulp
    of float64 NumPy near zero, around multiples of pi/2 and far out; exact at the specials and
    -0. With AVX2 alone (znver3), libmvec's: within its 4 ulp."""
    src = "fn s(x: f32[N]) -> f32[N] { return sin(x) }\nfn c(x: f32[N]) -> f32[N] { return cos(x) }\n" \
          "fn sc(x: f32[N]) -> f32 { return sum(sin(x) * cos(x)) }"
    ulps = 2.0 if _written_out(cpu) else 4.0
    m = gradc.compile(src, cache=False, cpu=cpu)
    rng = np.random.default_rng(1)
    near = (np.float32(np.pi / 2) * np.arange(-5000, 5000, dtype=np.float32)).astype(np.float32)
    x = np.concatenate([rng.uniform(-10, 10, 100_000), rng.uniform(-8192, 8192, 200_000),
                        rng.uniform(-1e-3, 1e-3, 10_000), rng.uniform(-1e6, 1e6, 10_000),
                        rng.uniform(-3e38, 3e38, 1000), near,
                        np.nextafter(near, np.float32(np.inf)), np.nextafter(near, -np.float32(np.inf))]).astype(np.float32)
    x[::7] = np.float32(8192.0) * rng.choice([-1, 1, 1.0001, 3e4], x[::7].size)   # far lanes among near ones
    for name, f in (("s", np.sin), ("c", np.cos)):
        got, want = getattr(m, name)(x).astype(np.float64), f(x.astype(np.float64))
        ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert np.max(np.abs(got - want) / ulp) <= ulps, name
    xs = x[:4099]
    np.testing.assert_allclose(m.sc(xs), np.sum(np.sin(xs.astype(np.float64)) * np.cos(xs.astype(np.float64))),
                               rtol=1e-5)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    with np.errstate(invalid="ignore"):
        for name, f in (("s", np.sin), ("c", np.cos)):
            got, want = getattr(m, name)(special), f(special)
            np.testing.assert_array_equal(got, want)
            assert np.array_equal(np.signbit(got), np.signbit(want))
