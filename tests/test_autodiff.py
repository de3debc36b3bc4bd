"""The transforms through the language: grad, value_and_grad, vjp, jvp, wrt, detach, hook, composition."""
import numpy as np
import pytest

import gradc
from gradc.frontend.diagnostics import CompileError
from conftest import fd_grad


@pytest.fixture(params=["reference", "cpu", "cuda-sim"], autouse=True)
def target(request):
    """Every test here runs on every target that runs here: the NumPy reference, native code, the GPU kernels in the simulator."""
    TARGET[0] = request.param
    return request.param


TARGET = ["reference"]


def compile_ref(src):
    return gradc.compile(src, target=TARGET[0])


def test_grad_matches_finite_differences_with_broadcasting(rng):
    m = compile_ref("""
fn f(w: f64[D, K], b: f64[K], x: f64[N, D]) -> f64 {
    return sum(tanh(x @ w + b) ** 2) / 3
}
let g = grad(f, wrt=(w, b, x))
""")
    w, b, x = rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=(4, 3))
    grads = m.g(w, b, x)
    for i, got in enumerate(grads):
        np.testing.assert_allclose(got, fd_grad(m.f, [w, b, x], i), rtol=1e-6, atol=1e-9)


def test_value_and_grad_and_vjp_and_jvp_agree(rng):
    m = compile_ref("""
fn f(x: f64[N]) -> f64 { return logsumexp(x * x) }
let vg = value_and_grad(f)
let g = grad(f)
fn h(x: f64[N]) -> f64[N] { return softmax(x) * 2 }
let hv = vjp(h)
let hj = jvp(h)
""")
    x = rng.normal(size=5)
    v, g = m.vg(x)
    np.testing.assert_allclose(v, m.f(x))
    np.testing.assert_allclose(g, m.g(x))
    # vjp with a basis cotangent is a row of the Jacobian; jvp with a basis tangent is a column
    jac_rows = np.stack([m.hv(x, np.eye(5)[i]) for i in range(5)])
    jac_cols = np.stack([m.hj(x, np.eye(5)[i])[1] for i in range(5)], axis=1)
    np.testing.assert_allclose(jac_rows, jac_cols, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m.hj(x, np.zeros(5))[0], m.h(x))


def test_higher_order_to_third_derivative():
    m = compile_ref("""
fn f(x: f64) -> f64 { return x ** 4 + sin(x) }
let d1 = grad(f)
let d2 = grad(grad(f))
let d3 = grad(grad(grad(f)))
""")
    x = 0.7
    assert np.isclose(m.d1(x), 4 * x ** 3 + np.cos(x))
    assert np.isclose(m.d2(x), 12 * x ** 2 - np.sin(x))
    assert np.isclose(m.d3(x), 24 * x - np.cos(x))


def test_hessian_vector_product_matches_finite_differences_of_gradient(rng):
    m = compile_ref("""
fn f(x: f64[N]) -> f64 { return sum(exp(x[1:] * x[:-1])) + mean(x ** 3) }
let g = grad(f)
let hvp = jvp(grad(f), wrt=x)
""")
    x, t = rng.normal(size=6) * 0.5, rng.normal(size=6)
    _, hv = m.hvp(x, t)
    fd = (m.g(x + 1e-6 * t) - m.g(x - 1e-6 * t)) / 2e-6
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-8)


def test_grad_inside_expressions():
    m = compile_ref("""
fn f(x: f64) -> f64 { return x ** 3 }
fn slope_sum(a: f64, b: f64) -> f64 { return grad(f)(a) + grad(grad(f))(b) }
""")
    assert np.isclose(m.slope_sum(2.0, 1.0), 12.0 + 6.0)


def test_wrt_intermediate_is_retain_grad():
    m = compile_ref("""
fn f(x: f64[N]) -> f64 {
    let h = x * 3
    let y = sin(h)
    return sum(y * y)
}
let g = grad(f, wrt=(x, h, y))
""")
    x = np.array([0.1, 0.2])
    gx, gh, gy = m.g(x)
    h = 3 * x
    np.testing.assert_allclose(gy, 2 * np.sin(h))
    np.testing.assert_allclose(gh, 2 * np.sin(h) * np.cos(h))
    np.testing.assert_allclose(gx, 3 * gh)


def test_jvp_at_an_intermediate_seeds_it():
    m = compile_ref("""
fn f(x: f64) -> f64 {
    let h = x * 3
    return h * h + x
}
let j = jvp(f, wrt=h)
""")
    value, tangent = m.j(2.0, 1.0)
    assert value == 38.0 and tangent == 12.0        # d/dh (h*h + x) = 2h, x held fixed


def test_detach_stops_gradients_and_hook_transforms_them():
    m = compile_ref("""
fn triple(g) { return g * 3 }
fn f(x: f64) -> f64 { return x * detach(x) + hook(x, triple) }
let g = grad(f)
""")
    assert m.g(2.0) == 2.0 + 3.0


def test_zero_cotangent_contributes_exactly_zero():
    m = compile_ref("""
fn f(x: f64[N]) -> f64 { return sum(where(x > 0, sqrt(x), 0) + where(x > 1, log(x), x)) }
let g = grad(f)
""")
    g = m.g(np.array([4.0, 0.0, -1.0, 2.0]))
    np.testing.assert_allclose(g, [0.25 + 0.25, 1.0, 1.0, 0.5 / np.sqrt(2) + 0.5])
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("expr,x,want", [
    ("relu(x)", 0.0, 0.0),                       # PyTorch: relu'(0) = 0
    ("clamp(x, -1, 1)", 1.0, 1.0),               # at a bound, the gradient passes (PyTorch)
    ("clamp(x, -1, 1)", 1.5, 0.0),
    ("abs(x)", 0.0, 0.0),
    ("sqrt(x)", 0.0, np.inf),
    ("maximum(x, 0)", 0.0, 0.5),                 # a tie splits the gradient
    ("softplus(x)", -1000.0, 0.0),
    ("softplus(x)", 1000.0, 1.0),
    ("sigmoid(x)", -1000.0, 0.0),
])
def test_derivatives_at_the_edges(expr, x, want):
    m = compile_ref(f"fn f(x: f64) -> f64 {{ return {expr} }}\nlet g = grad(f)\n")
    assert m.g(x) == want


def test_stable_losses_at_large_logits():
    m = compile_ref("""
fn l(z: f32[N], y: f32[N]) -> f32 { return bce_with_logits(z, y) }
let g = grad(l)
fn s(z: f32[N]) -> f32 { return logsumexp(z) + sum(log_softmax(z)) }
let gs = grad(s)
""")
    z = np.array([1000, -1000, 0], np.float32)
    y = np.array([0, 1, 1], np.float32)
    assert np.isclose(m.l(z, y), (1000 + 1000 + np.log(2)) / 3, rtol=1e-6)
    np.testing.assert_allclose(m.g(z, y), np.array([1, -1, -0.5]) / 3, rtol=1e-6)
    assert np.all(np.isfinite(m.gs(z)))


def test_partial_dependence_warns_and_gives_zeros():
    with pytest.warns(gradc.GradcWarning, match="does not depend on 'b'"):
        m = compile_ref("fn f(a: f64, b: f64[3]) -> f64 { return a * a }\nlet g = grad(f, wrt=(a, b))\n")
    da, db = m.g(3.0, np.ones(3))
    assert da == 6.0 and np.array_equal(db, np.zeros(3))


@pytest.mark.parametrize("src,message", [
    ("fn f(x: f64[N]) -> f64[N] { return x }\nlet g = grad(f)", "grad needs a scalar"),
    ("fn f(n: i32) -> f64 { return cast(n, f64) }\nlet g = grad(f, wrt=n)", "only floating-point"),
    ("fn f(x: f64) -> f64 { return x }\nlet g = grad(f, wrt=y)", "'y' is not a parameter"),
    ("fn f(x: f64) -> f64 { return detach(x) }\nlet g = grad(f)", "does not require grad"),
    ("fn f(x: f64) -> f64 { return cast(x > 0, f64) }\nlet g = grad(f)", "does not require grad"),
])
def test_autodiff_errors(src, message):
    with pytest.raises(CompileError, match=message):
        compile_ref(src)


def test_float32_stays_float32():
    m = compile_ref("fn f(x: f32[N]) -> f32 { return sum(exp(x) / 3) }\nlet g = grad(f)\n")
    x = np.linspace(0, 1, 5, dtype=np.float32)
    assert m.f(x).dtype == np.float32 and m.g(x).dtype == np.float32
    np.testing.assert_allclose(m.g(x), np.exp(x) / 3, rtol=1e-6)


EDGES = """
fn lse(x: f64[N]) -> f64 { return logsumexp(x) }
fn lse32(x: f32[2, N]) -> f32[2] { return logsumexp(x, axis=1) }
fn p(x: f64, y: f64) -> f64 { return x ** y }
fn p0(x: f64) -> f64 { return x ** 0.0 }
let dp = grad(p, wrt=(x, y))
let dp0 = grad(p0)
let ddp0 = grad(grad(p0))
let jp0 = jvp(p0, wrt=x)
"""


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda-sim"])
def test_edge_values_as_pytorch_gives_them(target):
    m = gradc.compile(EDGES, target=target)
    inf = np.inf
    assert m.lse(np.array([inf, 1.0])) == inf
    assert m.lse(np.array([-inf, -inf])) == -inf
    assert np.isnan(m.lse(np.array([np.nan, 1.0])))
    np.testing.assert_allclose(m.lse(np.array([1.0, 2.0])), np.logaddexp(1.0, 2.0), rtol=1e-15)
    got = m.lse32(np.array([[inf, 1], [-inf, -inf]], np.float32))
    assert got.dtype == np.float32 and got[0] == inf and got[1] == -inf
    # x ** 0 is constant: derivative 0 at x = 0 too; 0 ** y with y >= 0: 0 in y as well
    assert m.dp0(0.0) == 0.0 and m.ddp0(0.0) == 0.0 and m.jp0(0.0, 1.0)[1] == 0.0
    assert m.dp(0.0, 0.0) == (0.0, 0.0)
    assert m.dp(0.0, 2.0) == (0.0, 0.0)
    dx, dy = m.dp(2.0, 3.0)
    np.testing.assert_allclose((dx, dy), (12.0, 8 * np.log(2.0)), rtol=1e-14)


def test_vjp_of_a_value_returned_twice_sums_both_cotangents():
    # found by the fuzzer: the second cotangent replaced the first
    m = compile_ref("""
fn h(w: f64[3]) -> (f64[3], f64[3]) {
    let a = sin(w)
    return a, a
}
fn p(w: f64[3]) -> (f64[3], f64[3]) { return w, w }
let hv = vjp(h, wrt=w)
let pv = vjp(p, wrt=w)
""")
    w, c0, c1 = np.array([0.1, -0.7, 1.3]), np.array([1.0, 2.0, 3.0]), np.array([10.0, -20.0, 30.0])
    np.testing.assert_allclose(m.hv(w, c0, c1), (c0 + c1) * np.cos(w), rtol=1e-12)
    np.testing.assert_allclose(m.pv(w, c0, c1), c0 + c1, rtol=1e-12)


ROSEN_HV = """
fn rosen(x: f64[N]) -> f64 {
    return sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
}
fn hvp(x: f64[N], t: f64[N]) -> f64[N] {
    let (_, hv) = jvp(grad(rosen), wrt=x)(x, t)
    return hv
}
fn both(x: f64[N], t: f64[N]) -> (f64[N], f64[N]) {
    let (g, hv) = jvp(grad(rosen), wrt=x)(x, t)
    return hv, g
}
"""


def _rosen_hessian(x):
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n - 1):
        h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        h[i + 1, i + 1] += 200
        h[i, i + 1] -= 400 * x[i]
        h[i + 1, i] -= 400 * x[i]
    return h


def test_destructuring_keeps_one_part():
    """let (_, hv) = jvp(grad(f))(...): the Hessian-vector product alone, equal to the analytic
    Hessian of Rosenbrock's function times t, and to the part that (g, hv) returns."""
    m = compile_ref(ROSEN_HV)
    rng = np.random.default_rng(11)
    x, t = rng.uniform(-1.5, 1.5, 9), rng.normal(size=9)
    np.testing.assert_allclose(m.hvp(x, t), _rosen_hessian(x) @ t, rtol=1e-12, atol=1e-10)
    hv, g = m.both(x, t)
    np.testing.assert_array_equal(hv, m.hvp(x, t))
    np.testing.assert_allclose(g, _rosen_grad(x), rtol=1e-12, atol=1e-10)


def _rosen_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return g


def test_destructuring_drops_the_unused_part():
    from gradc.api import _optimized
    _, graphs = _optimized(ROSEN_HV, "r.ad")
    assert len(graphs["hvp"].outputs) == 1
    assert len(graphs["hvp"].nodes) < len(graphs["both"].nodes)


def test_nested_patterns():
    m = compile_ref("""
fn two(x: f64) -> (f64, f64) { return x * x, 2 * x }
fn f(x: f64) -> f64 {
    let ((a, b), c) = (two(x), x * 5)
    let (_, (d, _)) = (x, two(c))
    return a + 10 * b + 100 * c + d
}
let g = grad(f)
""")
    # f = x^2 + 20 x + 500 x + 25 x^2; f' = 52 x + 520
    assert np.isclose(m.f(2.0), 4 + 40 + 1000 + 100)
    assert np.isclose(m.g(2.0), 52 * 2 + 520)
