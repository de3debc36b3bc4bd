"""Integer indexing and the small ops from .ad programs on every target: take, x[idx], x[None],
take_along_axis, index_add, one_hot with a symbolic size, argmax/argmin, cumsum/cumprod, erf,
eye, and floor semantics of // and %; run-time index errors and compile-time shape errors."""
import math

import numpy as np
import pytest

import gradc
from conftest import compile_error, with_iree

TARGETS = with_iree(("reference", "cpu", "cuda-sim"))

SRC = """
fn gather(x: f64[N, 3], i: i64[K]) -> f64[K, 3] { return x[i] }
fn gather_cols(x: f64[N, 5], i: i32[2, K]) -> f64[N, 2, K] { return x[:, i] }
fn gather_row(x: f64[N, 5, 2], i: i64[K]) -> f64[K, 2] { return x[1, i] }
fn gather_fixed(x: f32[4, D], i: i64[K]) -> f32[K, D] { return take(x, i, axis=0) }
fn newaxis(x: f64[N, 3]) -> (f64[N, 1, 3], f64[1, N, 3, 1]) { return x[:, None], x[None, :, :, None] }
fn emb(E: f32[V, D], idx: i64[B], W: f32[B, D]) -> f32 { return sum(take(E, idx, axis=0) * W) }
let emb_grad = grad(emb, wrt=E)
fn scatter(x: f64[N, D], i: i64[K], v: f64[K, D]) -> f64[N, D] { return index_add(x, i, v) }
fn scatter32(x: f32[N, D], i: i64[K], v: f32[K, D]) -> f32[N, D] { return index_add(x, i, v) }
fn scatter_cols(x: f64[N, 4], i: i64[K]) -> f64[N, 4] { return index_add(x, i, 1.0, axis=1) }
fn along(x: f64[N, 4], i: i64[N, K]) -> f64[N, K] { return take_along_axis(x, i, axis=1) }
fn along_loss(x: f64[N, 4], i: i64[N, K]) -> f64 { return sum(sin(take_along_axis(x, i, axis=1))) }
let along_grad = grad(along_loss)
fn labels(y: i64[N], w: f32[C]) -> f32[N, C] { return one_hot(y, C) }
fn args(x: f64[N, 4]) -> (i64[N], i64[1, 4], i64) { return argmax(x, axis=1), argmin(x, axis=0, keepdims=true), argmax(x[0]) }
fn scans(x: f64[N, 4]) -> (f64[N, 4], f64[N, 4], i64[N, 4]) { return cumsum(x, axis=1), cumprod(x, axis=0), cumsum(cast(x, i64), axis=-1) }
fn prod_loss(x: f64[N]) -> f64 { return sum(cumprod(x) * x) }
let prod_grad = grad(prod_loss)
fn erf64(x: f64[N]) -> f64[N] { return erf(x) }
fn erf32(x: f32[N]) -> f32[N] { return erf(x) }
fn erf_loss(x: f64[N]) -> f64 { return sum(erf(x)) }
let erf_grad = grad(erf_loss)
fn eyes(x: f64[N]) -> (f64[N, N], i32[3, 3]) { return eye(N, f64) * x, eye(3, i32) }
fn floors(a: i64[N], b: i64[N], c: f64[N], d: f64[N], e: f32[N], f: f32[N], g: i32[N], h: i32[N]) -> (i64[N], i64[N], f64[N], f64[N], f32[N], f32[N], i32[N], i32[N]) {
    return a // b, a % b, c // d, c % d, e // f, e % f, g // h, g % h
}
"""


@pytest.fixture(scope="module", params=TARGETS)
def mod(request):
    return gradc.compile(SRC, target=request.param, cache=False)


RNG = np.random.default_rng(5)


def test_gathers(mod):
    x = RNG.normal(size=(6, 3))
    i = np.array([0, -1, 5, 2, -6, 2])
    np.testing.assert_array_equal(mod.gather(x, i), x[i])
    x5 = RNG.normal(size=(3, 5))
    i2 = np.array([[4, -5, 0], [1, 1, -1]], np.int32)
    np.testing.assert_array_equal(mod.gather_cols(x5, i2), x5[:, i2])
    x52 = RNG.normal(size=(3, 5, 2))
    np.testing.assert_array_equal(mod.gather_row(x52, np.array([3, -2])), x52[1, [3, -2]])
    xf = RNG.normal(size=(4, 7)).astype(np.float32)
    np.testing.assert_array_equal(mod.gather_fixed(xf, np.array([3, -4, 0])), xf[[3, -4, 0]])
    a, b = mod.newaxis(x)
    np.testing.assert_array_equal(a, x[:, None])
    np.testing.assert_array_equal(b, x[None, :, :, None])


def test_embedding_gradient_is_index_add(mod):
    E = RNG.normal(size=(20, 8)).astype(np.float32)
    idx = RNG.integers(-20, 20, 64)
    W = RNG.normal(size=(64, 8)).astype(np.float32)
    want = np.zeros_like(E)
    np.add.at(want, idx, W)
    np.testing.assert_allclose(mod.emb_grad(E, idx, W), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_index_add_with_many_repeated_indices(mod, dtype):
    """Thousands of updates into a few rows: every one counts (np.add.at, in float64)."""
    np_dt = np.float32 if dtype == "f32" else np.float64
    x = RNG.normal(size=(7, 5)).astype(np_dt)
    idx = RNG.choice([0, 3, -1, 3, 3], size=3000)
    v = RNG.uniform(-1, 1, size=(3000, 5)).astype(np_dt)
    want = x.astype(np.float64)
    np.add.at(want, idx, v.astype(np.float64))
    got = (mod.scatter32 if dtype == "f32" else mod.scatter)(x, idx, v)
    assert got.dtype == np_dt
    # f32 adds 3000 terms of size 1 one by one: a relative error of a few 1e-5 at most
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 if dtype == "f32" else 1e-11)
    x4 = x[:, :4].astype(np.float64)
    cols = mod.scatter_cols(x4, np.array([1, 1, -3, 2, 0]))
    expect = x4.copy()
    np.add.at(expect, (slice(None), [1, 1, -3, 2, 0]), 1.0)
    np.testing.assert_allclose(cols, expect)


def test_take_along_axis_and_its_gradient(mod):
    x = RNG.normal(size=(4, 4))
    i = RNG.integers(-4, 4, (4, 6))
    np.testing.assert_array_equal(mod.along(x, i), np.take_along_axis(x, i, 1))
    want = np.zeros_like(x)
    np.add.at(want, (np.arange(4)[:, None].repeat(6, 1), i), np.cos(np.take_along_axis(x, i, 1)))
    np.testing.assert_allclose(mod.along_grad(x, i), want, rtol=1e-12)


def test_one_hot_with_a_symbolic_number_of_classes(mod):
    y = np.array([0, 4, 2, 4])
    np.testing.assert_array_equal(mod.labels(y, np.zeros(5, np.float32)), np.eye(5, dtype=np.float32)[y])
    with pytest.raises(ValueError, match=r"labels: one_hot: the label 5 is outside \[0, C\)"):
        mod.labels(np.array([0, 5]), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="the label -1"):
        mod.labels(np.array([-1, 0]), np.zeros(3, np.float32))


def test_argmax_argmin_first_occurrence(mod):
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -1.0, -1.0], [0.0, np.nan, 5.0, np.nan]])
    a, b, c = mod.args(x)
    np.testing.assert_array_equal(a, np.argmax(x, axis=1))
    np.testing.assert_array_equal(b, np.argmin(x, axis=0, keepdims=True))
    assert c == np.argmax(x[0]) and a.dtype == np.int64


def test_scans(mod):
    x = RNG.normal(size=(3, 4))
    x[1, 2] = 0.0
    s, p, k = mod.scans(x)
    np.testing.assert_allclose(s, np.cumsum(x, axis=1), rtol=1e-13)
    np.testing.assert_allclose(p, np.cumprod(x, axis=0), rtol=1e-13)
    np.testing.assert_array_equal(k, np.cumsum(x.astype(np.int64), axis=-1))


SCANS_BIG = """
fn s0(x: f64[N, M]) -> (f64[N, M], f64[N, M]) { return cumsum(x, axis=0), cumprod(x, axis=0) }
fn s1(x: f64[N, M]) -> (f64[N, M], f64[N, M]) { return cumsum(x, axis=1), cumprod(x, axis=1) }
fn loss(x: f64[N, M]) -> f64 { return sum(sin(cumsum(x, axis=1)) * x) }
let dloss = grad(loss)
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_scans_one_pass_on_threads(threads):
    """The cpu target's scans run along the axis in one pass, the threads sharing the other axis:
    NumPy's running sums and products (the same order of operations) on arrays large enough to
    be shared, and the gradient (a reversed cumsum) as the reference target's."""
    m = gradc.compile(SCANS_BIG, cache=False)
    ref = gradc.compile(SCANS_BIG, target="reference", cache=False)
    before = gradc.get_num_threads()
    gradc.set_num_threads(threads)
    try:
        for shape in ((300, 500), (1, 700), (700, 1), (0, 5)):
            x = RNG.uniform(0.9, 1.1, shape)
            for axis, f in ((0, m.s0), (1, m.s1)):
                s, p = f(x)
                np.testing.assert_allclose(s, np.cumsum(x, axis=axis), rtol=1e-13)
                np.testing.assert_allclose(p, np.cumprod(x, axis=axis), rtol=1e-13)
        x = RNG.normal(size=(40, 60))
        np.testing.assert_allclose(m.dloss(x), ref.dloss(x), rtol=1e-12, atol=1e-12)
    finally:
        gradc.set_num_threads(before)


@pytest.mark.parametrize("zeros", [(), (2,), (1, 3)])
def test_cumprod_gradient_with_zeros(mod, zeros):
    """f(x) = sum(cumprod(x) * x): the exact gradient, with one or two zeros in x."""
    x = RNG.uniform(0.5, 1.5, 5) * RNG.choice([-1, 1], 5)
    x[list(zeros)] = 0.0
    want = np.empty(5)
    for k in range(5):
        # d/dx_k sum_i x_i prod_{j<=i} x_j, term by term, no division
        total = 0.0
        for i in range(5):
            term_prod = lambda skip: np.prod([x[j] for j in range(i + 1) if j != skip])
            if i == k:
                total += term_prod(-1) + x[i] * term_prod(k)
            elif i > k:
                total += x[i] * term_prod(k)
        want[k] = total
    np.testing.assert_allclose(mod.prod_grad(x), want, rtol=1e-12, atol=1e-14)


def test_erf_is_accurate(mod):
    x = np.concatenate([np.linspace(-6, 6, 2001), [0.0, -0.0, 1e-300, 1e-8, 30.0, -30.0, np.inf, -np.inf]])
    want = np.array([math.erf(t) for t in x])
    # iree: erf from arithmetic and exp (IREE has no f64 erf on the CPU), within 3e-15
    np.testing.assert_allclose(mod.erf64(x), want, rtol=3e-15 if mod.target == "iree" else 4e-16, atol=1e-300)
    x32 = x.astype(np.float32)
    want32 = np.array([math.erf(float(t)) for t in x32])
    got32 = mod.erf32(x32)
    assert got32.dtype == np.float32
    # within 2 units in the last place of float32
    np.testing.assert_allclose(got32, want32, rtol=2.5e-7, atol=1e-38)
    np.testing.assert_allclose(mod.erf_grad(x[:50]), 2 / math.sqrt(math.pi) * np.exp(-x[:50] ** 2), rtol=1e-14)


def test_eye(mod):
    a, b = mod.eyes(np.arange(4.0))
    np.testing.assert_array_equal(a, np.eye(4) * np.arange(4.0))
    np.testing.assert_array_equal(b, np.eye(3, dtype=np.int32))
    assert b.dtype == np.int32


def test_floor_division_and_modulo_follow_python(mod):
    a = np.array([7, -7, 7, -7, 0, 5, -1, 6])
    b = np.array([2, 2, -2, -2, 3, 0, 3, -4])
    c = np.array([7.5, -7.5, 7.5, -7.5, -0.0, 5.0, -1e-20, 6.0])
    d = np.array([2.0, 2.0, -2.0, -2.0, 3.0, 0.5, 3.0, -4.0])
    out = mod.floors(a, b, c, d, c.astype(np.float32), d.astype(np.float32), a.astype(np.int32), b.astype(np.int32))
    for k, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        assert out[0][k] == (x // y if y else 0) and out[1][k] == (x % y if y else 0)
        assert out[6][k] == (x // y if y else 0) and out[7][k] == (x % y if y else 0)
    for k, (x, y) in enumerate(zip(c.tolist(), d.tolist())):
        assert out[2][k] == x // y and out[3][k] == x % y, (x, y)
        assert math.copysign(1, out[3][k]) == math.copysign(1, x % y)
    np.testing.assert_array_equal(out[4], np.floor_divide(c.astype(np.float32), d.astype(np.float32)))
    np.testing.assert_array_equal(out[5], np.mod(c.astype(np.float32), d.astype(np.float32)))


@pytest.mark.parametrize("call,args,pattern", [
    ("gather", lambda: (np.zeros((4, 3)), np.array([0, 4])), r"gather: index 4 is out of range for axis 0 "
                                                              r".*\(indices 'i'\) at <source>:2:"),
    ("gather", lambda: (np.zeros((4, 3)), np.array([1, -5])), r"gather: index -5 is out of range .*'i'"),
    ("gather_cols", lambda: (np.zeros((2, 5)), np.array([[0], [5]], np.int32)), r"gather_cols: index 5 is out"),
    ("gather_fixed", lambda: (np.zeros((4, 2), np.float32), np.array([-5])),
     r"gather_fixed: take: index -5 is out of range for axis 0 of f32\[4, D\] \(size 4\)"),
    ("emb_grad", lambda: (np.zeros((3, 2), np.float32), np.array([0, 3]), np.zeros((2, 2), np.float32)),
     r"emb_grad: take: index 3 is out of range .*\(indices 'idx'\)"),
    ("scatter", lambda: (np.zeros((3, 2)), np.array([-4]), np.zeros((1, 2))), r"scatter: index_add: index -4 is out"),
    ("along", lambda: (np.zeros((2, 4)), np.array([[0], [9]])), r"along: take_along_axis: index 9 is out"),
])
def test_index_out_of_range_raises(mod, call, args, pattern):
    with pytest.raises(IndexError, match=pattern):
        getattr(mod, call)(*args())


@pytest.mark.parametrize("src,message,col", [
    ("fn f(x: f64[3], i: f64[2]) -> f64[2] { return take(x, i) }",
     "take: indices must be integers (i32 or i64), got f64[2]", 47),
    ("fn f(x: f64[3], i: f64[2]) -> f64[2] { return x[i] }",
     "an index array: indices must be integers (i32 or i64), got f64[2]", 49),
    ("fn f(x: f64[3, 2], i: i64[2]) -> f64[2] { return take(x, i, axis=2) }",
     "take: axis 2 is out of range for f64[3, 2]", 50),
    ("fn f(x: f64[3, 2], i: i64[2]) -> f64[2] { return take_along_axis(x, i, axis=0) }",
     "take_along_axis: the indices must have the rank of the array (2), got i64[2] for f64[3, 2]", 50),
    ("fn f(x: f64[3, 2], i: i64[2, 2]) -> f64[2] { return take_along_axis(x, i, axis=-3) }",
     "take_along_axis: axis -3 is out of range for f64[3, 2]", 53),
    ("fn f(x: f64[3, 2], i: i64[4]) -> f64[3, 2] { return index_add(x, i, x) }",
     "index_add: the values must have shape [4, 2]", 53),
    ("fn f(x: f64[3, 2], i: i64[2], j: i64[2]) -> f64[2] { return x[i, j] }",
     "only one integer-array index per subscript", 66),
    ("fn f(x: f64[3, 2, 2], i: i64[2]) -> f64[2] { return x[i, :, 0] }",
     "an integer-array index and a scalar index apart from it", 55),
    ("fn f(x: f64[3], i: i64[2]) -> f64[2] { return x[i, 0] }",
     "too many indices for f64[3]", 47),
    ("fn f(x: f64[3, 2]) -> i64[3] { return argmax(x) }",
     "argmax of f64[3, 2] needs axis=", 39),
    ("fn f(x: f64[3, 2]) -> f64[3, 2] { return cumsum(x, axis=2) }",
     "cumsum: axis 2 is out of range for f64[3, 2]", 42),
    ("fn f(x: f64[3]) -> f64[3, 3] { return eye(x) }",
     "eye needs a constant size or a dimension name", 39),
])
def test_shape_errors_point_at_the_source(src, message, col):
    first = str(compile_error(src)).splitlines()[0]
    assert message in first, first
    assert first.startswith(f"<source>:1:{col}: error:"), first


LOOP = """
fn f(E: f64[V, D], idx: i64[T, B]) -> f64 {
    var s = 0.0
    for t in 0..T { s = s + sum(sin(E[idx[t]]) * cumsum(E[idx[t]], axis=1)) }
    return s
}
let g = grad(f, wrt=E)
"""


@pytest.mark.parametrize("target", TARGETS)
def test_gathers_and_scatters_inside_a_loop(target):
    """Rows gathered in a loop body: the gradient is a scatter per iteration, against finite
    differences; a bad index inside the loop raises as outside."""
    m = gradc.compile(LOOP, target=target, cache=False)
    rng = np.random.default_rng(1)
    E, idx = rng.normal(size=(6, 3)), rng.integers(-6, 6, (4, 5))
    fd = np.zeros_like(E)
    for k in np.ndindex(E.shape):
        a, b = E.copy(), E.copy()
        a[k] += 1e-6
        b[k] -= 1e-6
        fd[k] = (m.f(a, idx) - m.f(b, idx)) / 2e-6
    np.testing.assert_allclose(m.g(E, idx), fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(IndexError, match=r"g: index 6 is out of range for axis 0 of f64\[V, D\]"):
        m.g(E, np.array([[0, 6]]))
