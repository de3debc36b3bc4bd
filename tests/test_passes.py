"""Each optimization pass on its own: it keeps the results and removes what it should."""
import numpy as np
import pytest

from gradc.compiler.interp import run
from gradc.compiler.passes import PIPELINE, cse, dce, fold_constants, simplify
from gradc.compiler.pipeline import lower, optimize
from gradc.compiler.verify import VerifyError, verify


def graph(src, name):
    return lower(src, "t.ad").graphs[name]


def ops(g):
    return [n.op for n in g.nodes]


SRC = """
fn f(x: f64[N], y: f64[N]) -> f64 {
    let a = sin(x) * y
    let b = sin(x) * y
    let unused = exp(x)
    return sum(a + b + (2 * 3 - 5) * x + 0 * y) * 1 + 0
}
let g = grad(f, wrt=(x, y))
"""


def test_cse_merges_repeated_expressions():
    g = graph(SRC, "f")
    out = cse(g)
    assert ops(g).count("sin") == 2 and ops(out).count("sin") == 1
    assert ops(out).count("mul") < ops(g).count("mul")


def test_dce_drops_what_no_output_needs():
    g = graph(SRC, "f")
    assert "exp" in ops(g) and "exp" not in ops(dce(g))


def test_fold_evaluates_constant_expressions():
    g = fold_constants(graph(SRC, "f"))
    consts = [n.attr("value") for n in g.nodes if n.op == "const"]
    assert 1.0 in consts                       # 2 * 3 - 5
    assert "sub" not in ops(dce(g))


def test_simplify_removes_identities():
    g = dce(simplify(fold_constants(graph(SRC, "f"))))
    # `* 1` and `+ 0` at the end disappear: the output is the sum itself
    assert g.nodes[-1].op == "sum"
    m = graph("fn f(x: f64) -> f64 { return -(-(x ** 2)) ** 1 }", "f")
    assert ops(dce(simplify(m))) == ["mul"]          # -(-(x*x)) ** 1 is x*x


@pytest.mark.parametrize("name", ["f", "g"])
def test_pipeline_keeps_results_and_shrinks_the_gradient(name):
    g = graph(SRC, name)
    opt = optimize(g, verify=verify)
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 2, 4)
    for a, b in zip(run(g, [x, y]), run(opt, [x, y])):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    assert len(opt.nodes) < len(g.nodes) / 2


def test_each_pass_verifies():
    g = graph(SRC, "g")
    for _, p in PIPELINE:
        g = verify(p(g))


def test_verify_catches_a_broken_graph():
    g = graph(SRC, "f")
    from dataclasses import replace
    with pytest.raises(VerifyError, match="before it is defined"):
        verify(replace(g, nodes=tuple(reversed(g.nodes))))


CONV_SRC = """
fn c(x: f64[N, 3, 5, 5], w: f64[4, 3, 3, 3], b: f64[4]) -> f64 {
    return sum(sin(conv2d(x, w, padding=1) + reshape(b, (4, 1, 1))))
}
let gc = grad(c, wrt=(w, b))
"""


def test_sums_read_the_transposed_copy_a_product_stores():
    """The bias gradient (a sum of the NCHW gradient) sums the NHWC copy the weight gradient's
    product reads instead, so the NCHW gradient has one reader; the results stay the same."""
    g = graph(CONV_SRC, "gc")
    opt = optimize(g, verify=verify)
    made = {n.out: n for n in opt.nodes}
    sums = [n for n in opt.nodes if n.op == "sum" and len(n.ins[0].shape) == 4]
    assert sums and all(made[n.ins[0]].op == "transpose" for n in sums)
    rng = np.random.default_rng(0)
    args = [rng.normal(size=(2, 3, 5, 5)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)]
    for a, b in zip(run(g, args), run(opt, args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


RECIPROCAL_EXP = """
fn f(x: f64[N]) -> f64 { return sum(3.0 / exp(sin(x) * 2.0)) }
let g = grad(f)
fn shared(x: f64[N]) -> f64[N] { let e = exp(x)
    return 2.0 / e + e }
fn by_value(x: f64[N], y: f64[N]) -> f64[N] { return y / exp(x) }
"""


def test_reciprocal_of_exp_divides_nowhere():
    # c / exp(b) -> c * exp(-b): neither the value nor its gradient divides
    m = lower(RECIPROCAL_EXP, "t.ad")
    f, g = optimize(m.graphs["f"]), optimize(m.graphs["g"])
    assert "div" not in ops(f) and "div" not in ops(g)
    x = np.linspace(-2, 2, 7)
    np.testing.assert_allclose(run(f, [x])[0], np.sum(3.0 / np.exp(2 * np.sin(x))), rtol=1e-14)
    # the gradient against central differences of the NumPy function, in float64
    h = 1e-6
    fd = [(np.sum(3 / np.exp(2 * np.sin(x + h * e))) - np.sum(3 / np.exp(2 * np.sin(x - h * e)))) / (2 * h)
          for e in np.eye(7)]
    np.testing.assert_allclose(run(g, [x])[0], fd, rtol=1e-8, atol=1e-9)
    # at the edges: exp(b) 0, inf, NaN and subnormal, the same as the quotient (or closer)
    b = np.array([-np.inf, np.inf, np.nan, -745.0, 745.0, 700.0, 0.0])
    e = lower("fn q(b: f64[N]) -> f64[N] { return 3.0 / exp(b) }", "t.ad").graphs["q"]
    with np.errstate(over="ignore", divide="ignore"):
        want = 3.0 / np.exp(b)
    got = run(optimize(e), [b])[0]
    assert "div" not in ops(optimize(e))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-15, atol=1e-300)


def test_reciprocal_of_exp_kept_where_it_would_cost_or_differ():
    m = lower(RECIPROCAL_EXP, "t.ad")
    # the exp used twice: rewriting would compute a second one
    assert ops(optimize(m.graphs["shared"])).count("exp") == 1
    # a numerator that is not a non-zero constant: 0 / exp(-800) is 0, 0 * exp(800) NaN
    assert "div" in ops(optimize(m.graphs["by_value"]))
