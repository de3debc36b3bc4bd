"""The Python API: signatures, argument checks, out= buffers and accumulation."""
import inspect

import numpy as np
import pytest

import gradc

SRC = """
fn loss(w: f32[D, K], b: f32[K], x: f32[N, D], y: f32[N, K]) -> f32 {
    return bce_with_logits(x @ w + b, y)
}
let loss_grad = grad(loss, wrt=(w, b))
fn _private(x: f32) -> f32 { return x }
"""


@pytest.fixture(scope="module")
def m():
    return gradc.compile(SRC, target="reference")


def args(n=4, d=3, k=2):
    rng = np.random.default_rng(0)
    f = np.float32
    return (rng.normal(size=(d, k)).astype(f), rng.normal(size=k).astype(f),
            rng.normal(size=(n, d)).astype(f), (rng.random((n, k)) < 0.5).astype(f))


def test_functions_are_attributes_with_readable_signatures(m):
    assert set(m.functions) == {"loss", "loss_grad"}
    assert not hasattr(m, "_private")
    assert str(m.loss_grad.sig) == "loss_grad(w: f32[D, K], b: f32[K], x: f32[N, D], y: f32[N, K]) -> (f32[D, K], f32[K])"
    assert list(inspect.signature(m.loss).parameters)[:4] == ["w", "b", "x", "y"]
    assert "loss_grad" in repr(m)


def test_keyword_and_positional_calls_agree(m):
    w, b, x, y = args()
    a = m.loss_grad(w, b, x, y)
    k = m.loss_grad(y=y, x=x, b=b, w=w)
    for p, q in zip(a, k):
        np.testing.assert_array_equal(p, q)


def test_new_batch_size_without_recompiling(m):
    for n in (1, 7):
        w, b, x, y = args(n=n)
        assert m.loss_grad(w, b, x, y)[0].shape == (3, 2)


@pytest.mark.parametrize("change,exc,message", [
    (lambda a: (a[0].astype(np.float64),) + a[1:], TypeError, "parameter 'w' expects f32\\[D, K\\], got an array of dtype float64"),
    (lambda a: (a[0][0],) + a[1:], ValueError, "parameter 'w' expects f32\\[D, K\\] \\(rank 2\\)"),
    (lambda a: a[:2] + (a[2][:, :2],) + a[3:], ValueError, "dimension D is 3 from parameter 'w', but parameter 'x' has D = 2"),
    (lambda a: a[:3] + (a[3][:2],), ValueError, "dimension N is 4 .* parameter 'y' has N = 2"),
    (lambda a: a[:3], TypeError, "missing argument\\(s\\): y"),
    (lambda a: a[:1] + ("hello",) + a[2:], TypeError, "parameter 'b' expects f32\\[K\\], got str"),
])
def test_argument_errors_name_function_parameter_expected_and_given(m, change, exc, message):
    with pytest.raises(exc, match="loss_grad: " + message if "missing" not in message else message):
        m.loss_grad(*change(args()))


def test_python_numbers_and_lists_are_converted(m):
    g = gradc.compile("fn f(x: f64, y: f64[2]) -> f64 { return x * sum(y) }", target="reference")
    assert g.f(2, [1, 2]) == 6.0
    with pytest.raises(TypeError, match="f: parameter 'x' expects f64"):
        g.f(None, [1, 2])


def test_out_buffers_and_accumulate_like_dot_grad(m):
    w, b, x, y = args()
    dw, db = np.zeros((3, 2), np.float32), np.zeros(2, np.float32)
    got = m.loss_grad(w, b, x, y, out=(dw, db))
    assert got[0] is dw and got[1] is db
    first = dw.copy()
    m.loss_grad(w, b, x, y, out=(dw, db), accumulate=True)
    np.testing.assert_allclose(dw, 2 * first, rtol=1e-6)
    with pytest.raises(ValueError, match="out\\[1\\] must be a float32 array of shape \\(2,\\)"):
        m.loss_grad(w, b, x, y, out=(dw, np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="accumulate=True needs out="):
        m.loss_grad(w, b, x, y, accumulate=True)


def test_non_contiguous_and_read_only_inputs(m):
    w, b, x, y = args()
    xt = np.asfortranarray(x)
    x_ro = x.copy()
    x_ro.flags.writeable = False
    ref = m.loss(w, b, x, y)
    assert m.loss(w, b, xt, y) == ref and m.loss(w, b, x_ro, y) == ref
    assert m.loss(w, b, np.concatenate([x, x])[::2], y).dtype == np.float32


def test_compile_errors_are_rendered_with_the_source_line():
    with pytest.raises(gradc.CompileError) as info:
        gradc.compile("fn f(x: f32) -> f32 {\n  return y\n}\n", target="reference")
    assert str(info.value).splitlines()[:3] == ["<source>:2:10: error: unknown name 'y'", "  return y", "         ^"]


def test_compile_from_a_path(tmp_path):
    p = tmp_path / "model.ad"
    p.write_text("fn f(x: f64) -> f64 { return x * x }\nlet g = grad(f)\n")
    assert gradc.compile(str(p), target="reference").g(3.0) == 6.0
    with pytest.raises(FileNotFoundError):
        gradc.compile(str(tmp_path / "missing.ad"))


OVERLAP = """
fn f(x: f64[N], y: f64[N]) -> (f64[N], f64[N]) { return x * 2.0 + y, x - y }
"""


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda-sim"])
def test_out_buffers_that_overlap(target):
    g = gradc.compile(OVERLAP, target=target)
    x, y = np.arange(4.0), np.arange(4.0) ** 2
    want = (x * 2 + y, x - y)
    buf = np.zeros(8)
    for outs in ((buf[:4], buf[2:6]), (buf[:4], buf[:4]), (buf[0:8:2], buf[0:8:4])):
        with pytest.raises(ValueError, match="f: out\\[0\\] and out\\[1\\] share memory"):
            g.f(x, y, out=outs)
    # interleaved views touch no common element: they are two buffers
    g.f(x, y, out=(buf[0::2], buf[1::2]))
    np.testing.assert_array_equal(buf[0::2], want[0])
    np.testing.assert_array_equal(buf[1::2], want[1])
    # an out= buffer that is also an input gets the result computed from the input as it was
    for accumulate in (False, True):
        xs, ys = x.copy(), y.copy()
        before = (xs.copy(), ys.copy())
        g.f(xs, ys, out=(xs, ys), accumulate=accumulate)
        for got, w, b in zip((xs, ys), want, before):
            np.testing.assert_array_equal(got, w + b if accumulate else w)
