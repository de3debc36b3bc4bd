"""Transcendental functions in vectorized loops (libmvec where present) stay within a few ulp."""
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
