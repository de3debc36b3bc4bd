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
