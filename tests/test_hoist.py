"""Products hoisted out of loops (compiler/hoist.py): which loops change, and that every target
still computes the loop's values and gradients (against NumPy loops and float64 central
differences)."""
import numpy as np
import pytest

import gradc
from conftest import fd_grad

PROGRAM = """
fn rnn(xs: f64[T, B, D], h0: f64[B, H], W: f64[H, H], U: f64[D, H]) -> f64 {
    var h = h0
    for t in 0..T { h = tanh(h @ W + xs[t] @ U) }
    return sum(h * h)
}
let rnn_grad = grad(rnn, wrt=(xs, h0, W, U))
let rnn_hvp = jvp(grad(rnn, wrt=U), wrt=U)

# rows of a matrix: vector-matrix products
fn seq(xs: f64[T, D], h0: f64[H], W: f64[H, H], U: f64[D, H]) -> f64 {
    var h = h0
    for t in 0..T { h = sin(h @ W) + xs[t] @ U }
    return sum(h)
}
let seq_grad = grad(seq, wrt=(xs, W, U))

# not every row: nothing is hoisted, the values are the same
fn shifted(xs: f64[T, B, D], h0: f64[B, H], W: f64[H, H], U: f64[D, H]) -> f64 {
    var h = h0
    for t in 1..T { h = tanh(h @ W + xs[t] @ U + xs[t - 1] @ U) }
    return sum(h)
}
let shifted_grad = grad(shifted, wrt=(xs, W, U))
"""

ACC = """
fn acc(xs: f64[T, B, D], gs: f64[T, B, H], W: f64[D, H]) -> f64[D, H] {
    var a = W
    for t in 0..T { a = a + transpose(xs[t]) @ tanh(gs[t]) }
    return a
}
fn acc_left(xs: f64[T, B, D], gs: f64[T, B, H], W: f64[H, D]) -> f64[H, D] {
    var a = W
    for t in 0..T { a = transpose(tanh(gs[t])) @ xs[t] + a }
    return a
}
fn acc_read(xs: f64[T, B, D], gs: f64[T, B, H], W: f64[D, H]) -> f64[D, H] {
    var a = W
    for t in 0..T { a = a * 0.5 + transpose(xs[t]) @ gs[t] }
    return a
}
"""

SIZES = dict(T=5, B=3, D=4, H=2)


def _rnn_np(xs, h0, W, U):
    h = h0
    for t in range(xs.shape[0]):
        h = np.tanh(h @ W + xs[t] @ U)
    return float(np.sum(h * h))


def _seq_np(xs, h0, W, U):
    h = h0
    for t in range(xs.shape[0]):
        h = np.sin(h @ W) + xs[t] @ U
    return float(np.sum(h))


def _shifted_np(xs, h0, W, U):
    h = h0
    for t in range(1, xs.shape[0]):
        h = np.tanh(h @ W + xs[t] @ U + xs[t - 1] @ U)
    return float(np.sum(h))


def _args(rng, f):
    T, B, D, H = (SIZES[k] for k in "TBDH")
    if f == "seq":
        shapes = [(T, D), (H,), (H, H), (D, H)]
    else:
        shapes = [(T, B, D), (B, H), (H, H), (D, H)]
    return [rng.standard_normal(s) * 0.5 for s in shapes]


def test_the_rnn_products_leave_the_loop(tmp_path):
    f = tmp_path / "rnn.ad"
    f.write_text(PROGRAM)
    from gradc.cli import main
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["build", str(f), "--emit", "opt-ir"]) == 0
    text = buf.getvalue()
    grad_fn = text[text.index("fn rnn_grad("):text.index("fn rnn_hvp(")]
    outer = grad_fn[:grad_fn.index("\n}\n")]
    # xs @ U over every row before the forward loop; dU and dW as one product each after the reverse loop
    assert "mkn=(2,1,1)" in outer
    assert outer.count("mkn=(1,2,1)") == 2
    rev = grad_fn[grad_fn.index(".rev("):]
    rev = rev[:rev.index("\n}")]
    assert rev.count("matmul") == 2      # the state's cotangent, and xs's (wrt=xs)
    assert "dyn_unslice" not in rev      # xs's rows are stacked, not added into a [T, B, D] array
    shifted = text[text.index("fn shifted_grad("):]
    # rows t and t - 1 of xs in a loop from 1: xs @ U and dU stay in the loops; the stored states
    # pair with the steps one to one, so dW still leaves the reverse loop
    assert "mkn=(2,1,1)" not in shifted and shifted.count("mkn=(1,2,1)") == 1


@pytest.mark.parametrize("target", ["cpu", "reference", "cuda-sim"])
@pytest.mark.parametrize("name, ref", [("rnn", _rnn_np), ("seq", _seq_np), ("shifted", _shifted_np)])
def test_values_and_gradients(target, name, ref):
    m = gradc.compile(PROGRAM, target=target)
    rng = np.random.default_rng(3)
    args = _args(rng, name)
    assert abs(getattr(m, name)(*args) - ref(*args)) < 1e-12
    wrt = {"rnn": (0, 1, 2, 3), "seq": (0, 2, 3), "shifted": (0, 2, 3)}[name]
    got = getattr(m, name + "_grad")(*args)
    for g, i in zip(got, wrt):
        np.testing.assert_allclose(g, fd_grad(ref, args, i), rtol=1e-6, atol=1e-7)


def test_second_order_through_the_hoisted_loop():
    m = gradc.compile(PROGRAM, target="cpu")
    rng = np.random.default_rng(4)
    xs, h0, W, U = _args(rng, "rnn")
    V = rng.standard_normal(U.shape)
    _, hv = m.rnn_hvp(xs, h0, W, U, V)
    g = lambda u: m.rnn_grad(xs, h0, W, u)[3]
    eps = 1e-5
    np.testing.assert_allclose(hv, (g(U + eps * V) - g(U - eps * V)) / (2 * eps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("target", ["cpu", "cuda-sim"])
def test_accumulated_products(target):
    m = gradc.compile(ACC, target=target)
    rng = np.random.default_rng(5)
    T, B, D, H = (SIZES[k] for k in "TBDH")
    xs, gs = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    W = rng.standard_normal((D, H))
    want = W + sum(xs[t].T @ np.tanh(gs[t]) for t in range(T))
    np.testing.assert_allclose(m.acc(xs, gs, W), want, rtol=1e-12, atol=1e-12)
    want = W.T + sum(np.tanh(gs[t]).T @ xs[t] for t in range(T))
    np.testing.assert_allclose(m.acc_left(xs, gs, W.T.copy()), want, rtol=1e-12, atol=1e-12)
    a = W.copy()
    for t in range(T):
        a = a * 0.5 + xs[t].T @ gs[t]
    np.testing.assert_allclose(m.acc_read(xs, gs, W), a, rtol=1e-12, atol=1e-12)
    # an empty loop leaves the accumulator as it was
    z = np.zeros((0, B, D)), np.zeros((0, B, H))
    np.testing.assert_allclose(m.acc(*z, W), W)
