"""vmap, jacobian and hessian: every kind of op under vmap against a loop over the rows, the
transforms composed every way, jacobians and hessians against finite differences in float64,
per-example gradients, and the diagnostics; on the reference, cpu and cuda-sim targets."""
import numpy as np
import pytest

import gradc
from gradc.compiler.ops import OPS

from conftest import compile_error, fd_grad

TARGETS = tuple(__import__("os").environ.get("VMAP_TARGETS", "reference,cpu,cuda-sim").split(","))
B = 5                                   # rows of a mapped argument
EPS = 1e-6

# (base function, the vmapped ones: {name: axes})
BASES = {
    "ew": ("fn ew(x: f64[3, 4], y: f64[4], s: f64) -> f64[3, 4] {\n"
           "    return sin(x) * y + exp(s) / (1.0 + y * y) - maximum(x, y) + minimum(x, 0.5) ** 2.0\n}",
           {"ew_x": "(0, None, None)", "ew_y": "(None, 0, None)", "ew_s": "(None, None, 0)", "ew_all": "0"}),
    "cmp": ("fn cmp(x: f64[4], y: f64[4]) -> f64[4] {\n"
            "    return (where(x > y, clamp(x, -0.5, 0.5), relu(y) + abs(x) * sign(y)) + sigmoid(x)\n"
            "        + softplus(y) + log1p(x * x) + sqrt(y * y + 1.0) + tanh(x) * cos(y) / (2.0 - tan(0.5 * x)))\n}",
            {"cmp_x": "(0, None)", "cmp_xy": "(0, 0)"}),
    "ints": ("fn ints(i: i64[4], x: f64[4]) -> f64[4] {\n"
             "    let k = i // 2 + i % 3 - abs(i)\n"
             "    return cast(k, f64) * x + cast(i > 1 and not (i == 3) or i < 0, f64)\n}",
             {"ints_i": "(0, None)", "ints_ix": "(0, 0)"}),
    "red": ("fn red(x: f64[3, 4]) -> f64[4] {\n"
            "    return (sum(x, axis=0) + max(x, axis=0) * mean(x, axis=0) - min(x, axis=0) + logsumexp(x, axis=0)\n"
            "        + sum(x * x) + reshape(max(x, axis=(0, 1), keepdims=true), (1,)))\n}",
            {"red_x": "0"}),
    "sm": ("fn sm(x: f64[3, 4]) -> f64[3, 4] { return softmax(x, axis=-1) + log_softmax(x, axis=0) }",
           {"sm_x": "0"}),
    "lay": ("fn lay(x: f64[3, 4], y: f64[4]) -> f64[4, 6] {\n"
            "    let r = reshape(transpose(x), (2, 6))\n"
            "    let b = reshape(broadcast_to(y, (3, 4)), (2, 6))\n"
            "    let c = concat((r, b), axis=0)\n"
            "    return c * sum(x[1:, ::2]) + x[0, 1] + transpose(x, (1, 0))[-1, 0]\n}",
            {"lay_x": "(0, None)", "lay_y": "(None, 0)", "lay_xy": "(0, 0)"}),
    "mv": ("fn mv(x: f64[3], W: f64[3, 2]) -> f64[2] { return x @ W }",
           {"mv_x": "(0, None)", "mv_W": "(None, 0)", "mv_xW": "(0, 0)"}),
    "mvr": ("fn mvr(W: f64[2, 3], x: f64[3]) -> f64[2] { return W @ x }",
            {"mvr_x": "(None, 0)", "mvr_W": "(0, None)", "mvr_Wx": "(0, 0)"}),
    "mm": ("fn mm(A: f64[2, 3], W: f64[3, 4]) -> f64[2, 4] { return A @ W }",
           {"mm_A": "(0, None)", "mm_W": "(None, 0)", "mm_AW": "(0, 0)"}),
    "outer": ("fn outer(x: f64[3], y: f64[2]) -> f64[3, 2] { return reshape(x, (3, 1)) @ reshape(y, (1, 2)) }",
              {"outer_xy": "(0, 0)", "outer_x": "(0, None)"}),
    "dot": ("fn dot(x: f64[3], y: f64[3]) -> f64 { return x @ y }", {"dot_xy": "(0, 0)"}),
    "oh": ("fn oh(i: i64[3], x: f64[3, 4]) -> f64[3, 4] { return one_hot(i, 4, dtype=f64) * x }",
           {"oh_i": "(0, None)", "oh_ix": "(0, 0)"}),
    "loop1": ("fn loop1(h0: f64[3], W: f64[3, 3], xs: f64[4, 3]) -> f64[3] {\n"
              "    var h = h0\n    for t in 0..4 { h = tanh(W @ h + xs[t]) }\n    return h\n}",
              {"loop1_h": "(0, None, None)", "loop1_xs": "(None, None, 0)", "loop1_W": "(None, 0, None)"}),
    "loopn": ("fn loopn(x: f64[3], n: i64) -> f64[3] {\n"
              "    var s = x\n    for t in 0..n { s = s * 0.9 + sin(s) * 0.1 + cast(t, f64) * 0.01 }\n    return s\n}",
              {"loopn_xn": "(0, 0)", "loopn_n": "(None, 0)"}),
    "nsqrt": ("fn nsqrt(a: f64) -> f64 {\n"
              "    var x = a\n    while abs(x * x - a) > 1e-12 * a { x = 0.5 * (x + a / x) }\n    return x\n}",
              {"nsqrt_a": "0"}),
    "wcount": ("fn wcount(x: f64[3]) -> f64[3] {\n"
               "    var s = x\n    var k = 0\n    while k < 3 { s = sin(s) + 0.5\n        k = k + 1 }\n    return s\n}",
               {"wcount_x": "0"}),
    "br": ("fn br(c: f64, x: f64[3]) -> f64[3] {\n"
           "    var y = x\n    if c > 0.0 { y = x * x + c } else { y = sin(x) }\n    return y\n}",
           {"br_x": "(None, 0)", "br_c": "(0, None)", "br_cx": "(0, 0)"}),
    "pick": ("fn pick(x: f64[5], i: i64) -> f64 { return x[i] * 2.0 + sum(x[i:i+2]) }",
             {"pick_xi": "(0, 0)", "pick_i": "(None, 0)", "pick_x": "(0, None)"}),
}

# max pooling (pool_argmax, pool_gather, pool_scatter): windows apart and overlapping, and the
# gradient (the scatter to the winners) per example
BASES.update({
    "mp": ("fn mp(x: f64[1, 2, 5, 6]) -> f64[1, 2, 3, 4] { return max_pool2d(x, 2, padding=1) * 2.0 }",
           {"mp_x": "0"}),
    "mpg": ("fn mps(x: f64[1, 2, 5, 6]) -> f64 {\n"
            "    return sum(sin(max_pool2d(x, 3, stride=1, padding=1))) + sum(max_pool2d(x, 2) * x[:, :, :2, :3])\n}\n"
            "let mpg = grad(mps)",
            {"mpg_x": "0"}),
})

EXTRA = """
fn dbl(g) { return g * 2.0 }
fn hk(x: f64[3]) -> f64 { return sum(hook(x, dbl) * detach(x) + x * x) }
fn hk_sum(xs: f64[N, 3]) -> f64 { return sum(vmap(hk)(xs)) }
let hk_grad = grad(hk)
let hk_sum_grad = grad(hk_sum)

# products at a fixed batch size: the batch folds into the rows (or columns) of one matmul
fn mm_rows(As: f64[5, 2, 3], W: f64[3, 4]) -> f64[5, 2, 4] { return vmap(mm, axes=(0, None))(As, W) }
fn mm_cols(A: f64[2, 3], Ws: f64[5, 3, 4]) -> f64[5, 2, 4] { return vmap(mm, axes=(None, 0))(A, Ws) }

# compositions
fn loss(w: f64[3, 2], x: f64[3], y: f64[2]) -> f64 { return sum((tanh(x @ w) - y) ** 2.0) }
let loss_grad = grad(loss, wrt=w)
let per_example = vmap(grad(loss, wrt=w), axes=(None, 0, 0))
fn total(w: f64[3, 2], xs: f64[N, 3], ys: f64[N, 2]) -> f64 { return sum(vmap(loss, axes=(None, 0, 0))(w, xs, ys)) }
let total_grad = grad(total, wrt=w)

fn f2(x: f64[3], w: f64[3, 2]) -> f64[2] { return sin(x @ w) * sum(x) }
let f2_jvp = jvp(f2, wrt=x)
let f2_vjp = vjp(f2, wrt=(x, w))
let jvp_of_vmap = jvp(vmap(f2, axes=(0, None)), wrt=(x, w))
let vmap_of_jvp = vmap(jvp(f2, wrt=x), axes=(0, None, 0))
let vmap_of_vjp = vmap(vjp(f2, wrt=(x, w)), axes=(0, None, 0))
let vmap_vmap = vmap(vmap(f2, axes=(0, None)), axes=(0, None))
let vmap_vmap_w = vmap(vmap(f2, axes=(0, None)), axes=(None, 0))

fn rnn(W: f64[3, 3], xs: f64[4, 3]) -> f64 {
    var h = xs[0]
    for t in 1..4 { h = tanh(W @ h + xs[t]) }
    return sum(h * h)
}
let rnn_grad = grad(rnn, wrt=W)
let rnn_per_example = vmap(grad(rnn, wrt=W), axes=(None, 0))
fn sloopn(x: f64, n: i64) -> f64 { return sum(loopn(broadcast_to(x, (3,)), n)) }
let sloopn_grad = grad(sloopn)
let sloopn_per_example = vmap(grad(sloopn), axes=(0, 0))
let nsqrt_grad = grad(nsqrt)
let nsqrt_per_example = vmap(grad(nsqrt))
let nsqrt_jvp = jvp(nsqrt)
let nsqrt_jvp_vmap = jvp(vmap(nsqrt))
let nsqrt_vmap_jvp = vmap(jvp(nsqrt))
let nsqrt_vmap_hess = vmap(hessian(nsqrt))
fn pw(x: f64, c: f64) -> f64 {
    var y = 0.0
    if x > c { y = x * x * x } else { y = sin(x) }
    return y
}
let pw_hvp = jvp(grad(pw))
let pw_vmap_hvp = vmap(jvp(grad(pw)), axes=(0, 0, 0))
fn sbr(c: f64, x: f64[3]) -> f64 { return sum(br(c, x)) }
let sbr_grad = grad(sbr, wrt=(c, x))
let sbr_per_example = vmap(grad(sbr, wrt=(c, x)), axes=(0, 0))
fn _nsqrt_total(a: f64[N]) -> f64 { return sum(vmap(nsqrt)(a)) }
let nsqrt_vmap_grad = grad(_nsqrt_total)

# grad through the fallback loop; checkpointed loops, with bounds that differ from row to row too
fn mm_total(As: f64[N, 2, 3], Ws: f64[N, 3, 4]) -> f64 { return sum(vmap(mm)(As, Ws) ** 2.0) }
let mm_total_grad = grad(mm_total, wrt=(As, Ws))
let mm_total_jvp = jvp(mm_total, wrt=As)
fn rnn_ckpt(W: f64[3, 3], xs: f64[4, 3]) -> f64 {
    var h = xs[0]
    for t in 1..4 checkpoint(2) { h = tanh(W @ h + xs[t]) }
    return sum(h * h)
}
let rnn_ckpt_per_example = vmap(grad(rnn_ckpt, wrt=W), axes=(None, 0))
let sloopn_ckpt_grad = grad(sloopn, checkpoint=true)
let sloopn_ckpt_per_example = vmap(grad(sloopn, checkpoint=true), axes=(0, 0))
fn sloopn_gsum(x: f64[N], n: i64[N]) -> f64 { return sum(vmap(grad(sloopn))(x, n) ** 2.0) }
let sloopn_gsum_grad = grad(sloopn_gsum)

# jacobians and hessians
fn g1(x: f64[3], w: f64[3, 2]) -> f64[2] { return tanh(x @ w) * x[0] }
let g1_jac_fwd = jacobian(g1, wrt=x, mode="forward")
let g1_jac_rev = jacobian(g1, wrt=x, mode="reverse")
let g1_jac_w = jacobian(g1, wrt=w)
let g1_jac_both = jacobian(g1, wrt=(x, w), mode="forward")
let g1_jac_both_rev = jacobian(g1, wrt=(x, w), mode="reverse")
fn g2(A: f64[2, 3]) -> f64[3, 2] { return transpose(sin(A) * A) }
let g2_jac = jacobian(g2)
let g2_jac_fwd = jacobian(g2, mode="forward")
fn g3(x: f64[N]) -> f64[N] { return x * sum(x * x) }
let g3_jac_fwd = jacobian(g3, mode="forward")
let g3_jac_rev = jacobian(g3, mode="reverse")
fn diff(x: f64[N]) -> f64[N-1] { return x[1:] * x[:-1] }
let diff_jac = jacobian(diff)
let diff_jac_fwd = jacobian(diff, mode="forward")
let jac_of_vmap = jacobian(vmap(g1, axes=(0, None)), wrt=x)
fn rosen(x: f64[N]) -> f64 { return sum(100.0 * (x[1:] - x[:-1] ** 2.0) ** 2.0 + (1.0 - x[:-1]) ** 2.0) }
let rosen_grad = grad(rosen)
let rosen_hess = hessian(rosen)
fn s2(w: f64[2, 2], b: f64[2]) -> f64 { return sum(tanh(w @ b) * b) + sum(w * w * w) }
let s2_grad = grad(s2, wrt=(w, b))
let s2_hess = hessian(s2, wrt=(w, b))
let rnn_hess = hessian(rnn, wrt=W)
let vmap_hess = vmap(hessian(rosen))
fn lin(x: f64[3]) -> f64 { return sum(x) * 2.0 }
let lin_hess = hessian(lin)

# per-example gradients of an MLP, and their norms
fn mlp(W1: f64[4, 8], b1: f64[8], W2: f64[8, 3], b2: f64[3], x: f64[4], y: f64[3]) -> f64 {
    return cross_entropy(tanh(x @ W1 + b1) @ W2 + b2, y)
}
let mlp_grad = grad(mlp, wrt=(W1, b1, W2, b2))
let mlp_per_example = vmap(grad(mlp, wrt=(W1, b1, W2, b2)), axes=(None, None, None, None, 0, 0))
fn mlp_norms(W1: f64[4, 8], b1: f64[8], W2: f64[8, 3], b2: f64[3], x: f64[N, 4], y: f64[N, 3]) -> f64[N] {
    let (g1, g2, g3, g4) = vmap(grad(mlp, wrt=(W1, b1, W2, b2)), axes=(None, None, None, None, 0, 0))(W1, b1, W2, b2, x, y)
    return sqrt(sum(g1 * g1, axis=(1, 2)) + sum(g2 * g2, axis=1) + sum(g3 * g3, axis=(1, 2)) + sum(g4 * g4, axis=1))
}
"""


def _source():
    parts = []
    for name, (fn, maps) in BASES.items():
        parts.append(fn)
        parts += [f"let {v} = vmap({name}, axes={axes})" for v, axes in maps.items()]
    return "\n".join(parts) + "\n" + EXTRA


SRC = _source()
RNG = np.random.default_rng(11)


@pytest.fixture(scope="module", params=TARGETS)
def mod(request):
    return gradc.compile(SRC, target=request.param, cache=False)


@pytest.fixture(scope="module")
def ref():
    return gradc.compile(SRC, target="reference", cache=False)


def _arg(shape, dtype, name):
    if dtype == "i64":
        if name == "n":
            return RNG.integers(0, 5, shape).astype(np.int64)
        hi = 5 if name == "i" and shape in ((), (B,)) else 4
        return RNG.integers(0, hi - 1 if name == "i" else hi, shape).astype(np.int64)
    if name == "a":
        return RNG.uniform(0.5, 4.0, shape)
    return RNG.uniform(-1.5, 1.5, shape)


def _args(ref, base, axes):
    params = _params(ref, base)
    axes = eval(axes)
    axes = axes if isinstance(axes, tuple) else (axes,) * len(params)
    return [_arg(((B,) if a is not None else ()) + shape, dtype, name)
            for (name, dtype, shape), a in zip(params, axes)], axes


def _params(m, name):
    return getattr(m, name).sig.params


def _rows(ref, base, args, axes):
    """The loop over the rows: the base function on each, stacked."""
    outs = []
    for r in range(B):
        row = [a[r] if ax is not None else a for a, ax in zip(args, axes)]
        out = getattr(ref, base)(*row)
        outs.append(out if isinstance(out, tuple) else (out,))
    return [np.stack(o) for o in zip(*outs)]


def _close(got, want, what, rtol=1e-10, atol=1e-10):
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want)):
        assert np.shape(a) == np.shape(b), f"{what} output {k}: shape {np.shape(a)} != {np.shape(b)}"
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what} output {k}")


CASES = [(v, name, axes) for name, (_, maps) in BASES.items() for v, axes in maps.items()]


@pytest.mark.parametrize("vname,base,axes", CASES, ids=[c[0] for c in CASES])
def test_vmap_agrees_with_a_loop(mod, ref, vname, base, axes):
    args, ax = _args(ref, base, axes)
    _close(getattr(mod, vname)(*args), _rows(ref, base, args, ax), vname)


def test_a_new_op_without_a_rule_is_mapped_by_a_loop(monkeypatch):
    """An op whose entry has no batching rule (as one added tomorrow) goes through the fallback."""
    from dataclasses import replace
    for op in ("sin", "sum", "matmul", "reshape"):
        monkeypatch.setitem(OPS, op, replace(OPS[op], batch=None))
    src = ("fn f(x: f64[3], W: f64[3, 2]) -> f64[2] { return reshape(sin(x @ W), (1, 2))[0] * sum(x) }\n"
           "fn f2(x: f64[3], W: f64[3, 2]) -> f64 { return sum(f(x, W)) }\n"
           "let vf = vmap(f, axes=(0, None))\nlet gvf = vmap(grad(f2), axes=(0, None))\n")
    from gradc.compiler.pipeline import lower, optimize
    g = optimize(lower(src).graphs["vf"])
    assert sum(n.op == "for" for n in g.nodes) >= 4
    x, W = RNG.normal(size=(B, 3)), RNG.normal(size=(3, 2))
    for target in TARGETS:
        m = gradc.compile(src, target=target, cache=False)
        want = np.stack([np.sin(x[r] @ W) * np.sum(x[r]) for r in range(B)])
        np.testing.assert_allclose(m.vf(x, W), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.gvf(x, W), np.stack([fd_grad(m.f2, [x[r], W], 0) for r in range(B)]),
                                   rtol=1e-6, atol=1e-7)


def test_batch_rules_by_kind_without_a_loop():
    """The ops with rules batch without a loop: a mapped elementwise chain, reduction, layout
    op, and products with one or both sides mapped (a batched product) are one loop nest, no
    `for` node."""
    from gradc.compiler.pipeline import lower, optimize
    mod = lower(SRC)
    for name in ("ew_x", "red_x", "sm_x", "lay_xy", "mv_x", "mvr_x", "outer_xy", "per_example", "mlp_per_example",
                 "mm_AW"):
        g = optimize(mod.graphs[name])
        assert not any(n.op == "for" for n in g.nodes), name
        if name == "mm_AW":                  # both sides mapped: one product with a batch dimension
            assert any(n.op == "matmul" and len(n.out.shape) == 3 for n in g.nodes)


def test_fixed_batch_products(mod):
    As, W = RNG.normal(size=(5, 2, 3)), RNG.normal(size=(3, 4))
    A, Ws = RNG.normal(size=(2, 3)), RNG.normal(size=(5, 3, 4))
    np.testing.assert_allclose(mod.mm_rows(As, W), As @ W, rtol=1e-12)
    np.testing.assert_allclose(mod.mm_cols(A, Ws), A @ Ws, rtol=1e-12)


def test_hook_and_detach_under_vmap(mod, ref):
    xs = RNG.normal(size=(B, 3))
    want = np.stack([ref.hk_grad(x) for x in xs])
    np.testing.assert_allclose(mod.hk_sum_grad(xs), want, rtol=1e-12)
    np.testing.assert_allclose(want, 4 * xs, rtol=1e-12)     # 2 x through the doubling hook, 2 x from x * x


# ---- compositions


def test_per_example_gradients(mod, ref):
    w, xs, ys = RNG.normal(size=(3, 2)), RNG.normal(size=(B, 3)), RNG.normal(size=(B, 2))
    got = mod.per_example(w, xs, ys)
    want = np.stack([ref.loss_grad(w, x, y) for x, y in zip(xs, ys)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2], fd_grad(ref.loss, [w, xs[2], ys[2]], 0), rtol=1e-6, atol=1e-8)
    # the gradient of a vmapped sum is the sum of the per-example gradients
    np.testing.assert_allclose(mod.total_grad(w, xs, ys), want.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mod.total_grad(w, xs, ys), fd_grad(ref.total, [w, xs, ys], 0), rtol=1e-6, atol=1e-8)


def test_jvp_vjp_and_vmap_compose(mod, ref):
    xs, w = RNG.normal(size=(B, 3)), RNG.normal(size=(3, 2))
    tx, tw = RNG.normal(size=(B, 3)), RNG.normal(size=(3, 2))
    v, t = mod.jvp_of_vmap(xs, w, tx, tw)
    np.testing.assert_allclose(v, np.stack([ref.f2(x, w) for x in xs]), rtol=1e-12)
    fd = (ref.vmap_vmap(xs[None] + EPS * tx[None], w + EPS * tw)[0] -
          ref.vmap_vmap(xs[None] - EPS * tx[None], w - EPS * tw)[0]) / (2 * EPS)
    np.testing.assert_allclose(t, fd, rtol=1e-6, atol=1e-8)
    _close(mod.vmap_of_jvp(xs, w, tx), [np.stack(o) for o in zip(*[ref.f2_jvp(x, w, t_) for x, t_ in zip(xs, tx)])],
           "vmap(jvp)")
    cts = RNG.normal(size=(B, 2))
    _close(mod.vmap_of_vjp(xs, w, cts), [np.stack(o) for o in zip(*[ref.f2_vjp(x, w, c) for x, c in zip(xs, cts)])],
           "vmap(vjp)")


def test_vmap_of_vmap(mod, ref):
    xs, w, ws = RNG.normal(size=(4, B, 3)), RNG.normal(size=(3, 2)), RNG.normal(size=(4, 3, 2))
    want = np.stack([np.stack([ref.f2(x, w) for x in row]) for row in xs])
    np.testing.assert_allclose(mod.vmap_vmap(xs, w), want, rtol=1e-12)
    want = np.stack([np.stack([ref.f2(x, w_) for x in xs[0]]) for w_ in ws])
    np.testing.assert_allclose(mod.vmap_vmap_w(xs[0], ws), want, rtol=1e-12)


def test_per_example_gradients_through_loops(mod, ref):
    W, xs = RNG.normal(size=(3, 3)) * 0.5, RNG.normal(size=(B, 4, 3))
    want = np.stack([ref.rnn_grad(W, x) for x in xs])
    np.testing.assert_allclose(mod.rnn_per_example(W, xs), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(want[1], fd_grad(ref.rnn, [W, xs[1]], 0), rtol=1e-6, atol=1e-8)
    # a loop whose trip count differs from row to row (reversed per row)
    x, n = RNG.normal(size=B), np.array([0, 3, 1, 4, 2], np.int64)
    want = np.array([ref.sloopn_grad(a, k) for a, k in zip(x, n)])
    np.testing.assert_allclose(mod.sloopn_per_example(x, n), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(want[3], fd_grad(ref.sloopn, [x[3], n[3]], 0), rtol=1e-6)
    # a while loop whose condition differs from row to row
    a = np.array([0.5, 2.0, 9.0, 1.0, 123.0])       # 1.0: no iteration, the derivative of x = a
    want = np.array([ref.nsqrt_grad(v) for v in a])
    np.testing.assert_allclose(want[[0, 1, 2, 4]], 0.5 / np.sqrt(a[[0, 1, 2, 4]]), rtol=1e-8)
    np.testing.assert_allclose(mod.nsqrt_per_example(a), want, rtol=1e-12)
    np.testing.assert_allclose(mod.nsqrt_vmap_grad(a), want, rtol=1e-12)
    # forward mode, and forward over reverse, through the same while loop and a branch
    t = RNG.normal(size=B)
    want = [np.stack(o) for o in zip(*[ref.nsqrt_jvp(v, u) for v, u in zip(a, t)])]
    _close(mod.nsqrt_jvp_vmap(a, t), want, "jvp(vmap(while))")
    _close(mod.nsqrt_vmap_jvp(a, t), want, "vmap(jvp(while))")
    np.testing.assert_allclose(want[1], np.array([ref.nsqrt_grad(v) for v in a]) * t, rtol=1e-12)
    h = mod.nsqrt_vmap_hess(a)
    np.testing.assert_allclose(h[[0, 1, 2, 4]], -0.25 * a[[0, 1, 2, 4]] ** -1.5, rtol=1e-7)
    np.testing.assert_allclose(h[3], 0.0, atol=1e-12)
    xp, cp = np.array([-1.0, 0.5, 2.0, 1.0, 0.2]), np.array([0.0, 1.0, 1.0, 0.0, 0.2])
    _close(mod.pw_vmap_hvp(xp, cp, t), [np.stack(o) for o in zip(*[ref.pw_hvp(*r) for r in zip(xp, cp, t)])],
           "vmap(jvp(grad(branch)))")
    # a branch whose condition differs from row to row
    c, xs3 = np.array([-1.0, 0.5, 2.0, -0.2, 0.1]), RNG.normal(size=(B, 3))
    got = mod.sbr_per_example(c, xs3)
    want = [np.stack(o) for o in zip(*[ref.sbr_grad(cc, x) for cc, x in zip(c, xs3)])]
    _close(got, want, "vmap(grad(branch))")


def test_gradients_through_the_fallback_and_checkpointed_loops(mod, ref):
    As, Ws = RNG.normal(size=(B, 2, 3)), RNG.normal(size=(B, 3, 4))
    dA, dW = mod.mm_total_grad(As, Ws)
    np.testing.assert_allclose(dA, fd_grad(ref.mm_total, [As, Ws], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dW, fd_grad(ref.mm_total, [As, Ws], 1), rtol=1e-6, atol=1e-8)
    tA = RNG.normal(size=As.shape)
    _, t = mod.mm_total_jvp(As, Ws, tA)
    np.testing.assert_allclose(t, np.vdot(dA, tA), rtol=1e-10)
    W, xs = RNG.normal(size=(3, 3)) * 0.5, RNG.normal(size=(B, 4, 3))
    np.testing.assert_allclose(mod.rnn_ckpt_per_example(W, xs), np.stack([ref.rnn_grad(W, x) for x in xs]),
                               rtol=1e-10, atol=1e-12)
    x, n = RNG.normal(size=B), np.array([4, 0, 2, 3, 1], np.int64)
    want = np.array([ref.sloopn_grad(a, k) for a, k in zip(x, n)])
    np.testing.assert_allclose([ref.sloopn_ckpt_grad(a, k) for a, k in zip(x, n)], want, rtol=1e-12)
    np.testing.assert_allclose(mod.sloopn_ckpt_per_example(x, n), want, rtol=1e-10, atol=1e-12)
    # a third derivative: the gradient of a sum of per-row gradients through masked loops
    np.testing.assert_allclose(mod.sloopn_gsum_grad(x, n), fd_grad(ref.sloopn_gsum, [x, n], 0), rtol=1e-6, atol=1e-9)


def test_gradc_check_passes_on_vmapped_functions():
    """`gradc check` (the vjp of each function against differences) on vmapped functions whose
    bodies hold masked loops and the fallback loop."""
    from gradc.check import check_program
    from gradc.compiler.pipeline import lower
    text = ("fn sloopn(x: f64, n: i64) -> f64 {\n    var s = x\n    for t in 0..n { s = s * 0.9 + sin(s) * 0.1 }\n"
            "    return s\n}\nlet pe = vmap(grad(sloopn), axes=(0, 0))\n"
            "fn mm(A: f64[2, 3], W: f64[3, 2]) -> f64[2, 2] { return tanh(A @ W) }\nlet vmm = vmap(mm)\n")
    report, ok = check_program(lower(text), text)
    assert ok, report


# ---- jacobian and hessian


def _fd_jac(f, args, i, step=EPS):
    x = np.asarray(args[i], np.float64)
    y = np.asarray(f(*args))
    out = np.zeros(y.shape + x.shape)
    for k in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[k] += step
        xm[k] -= step
        out[(Ellipsis,) + k] = (np.asarray(f(*args[:i], xp, *args[i + 1:])) -
                                np.asarray(f(*args[:i], xm, *args[i + 1:]))) / (2 * step)
    return out


def test_jacobians_against_finite_differences(mod, ref):
    x, w = RNG.normal(size=3), RNG.normal(size=(3, 2))
    jx, jw = _fd_jac(ref.g1, [x, w], 0), _fd_jac(ref.g1, [x, w], 1)
    assert jx.shape == (2, 3) and jw.shape == (2, 3, 2)
    for name in ("g1_jac_fwd", "g1_jac_rev"):
        np.testing.assert_allclose(getattr(mod, name)(x, w), jx, rtol=1e-6, atol=1e-8, err_msg=name)
    np.testing.assert_allclose(mod.g1_jac_w(x, w), jw, rtol=1e-6, atol=1e-8)
    for name in ("g1_jac_both", "g1_jac_both_rev"):
        a, b = getattr(mod, name)(x, w)
        np.testing.assert_allclose(a, jx, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(b, jw, rtol=1e-6, atol=1e-8)
    A = RNG.normal(size=(2, 3))
    want = _fd_jac(ref.g2, [A], 0)
    assert want.shape == (3, 2, 2, 3)
    np.testing.assert_allclose(mod.g2_jac(A), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(mod.g2_jac_fwd(A), want, rtol=1e-6, atol=1e-8)
    for n in (4, 1):                       # a symbolic size: the basis is built at run time
        v = RNG.normal(size=n)
        want = _fd_jac(ref.g3, [v], 0)
        np.testing.assert_allclose(mod.g3_jac_fwd(v), want, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(mod.g3_jac_rev(v), want, rtol=1e-6, atol=1e-8)


def test_jacobians_of_derived_sizes_and_of_vmap(mod, ref):
    for n in (5, 2):
        x = RNG.normal(size=n)
        want = _fd_jac(ref.diff, [x], 0)
        assert want.shape == (n - 1, n)
        np.testing.assert_allclose(mod.diff_jac(x), want, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(mod.diff_jac_fwd(x), want, rtol=1e-6, atol=1e-8)
    xs, w = RNG.normal(size=(B, 3)), RNG.normal(size=(3, 2))
    got = mod.jac_of_vmap(xs, w)
    assert got.shape == (B, 2, B, 3)
    for r in range(B):
        np.testing.assert_allclose(got[r, :, r], ref.g1_jac_rev(xs[r], w), rtol=1e-12)
        got[r, :, r] = 0
    np.testing.assert_array_equal(got, 0)


def test_hessians_against_finite_differences_of_the_gradient(mod, ref):
    for n in (2, 5):
        x = RNG.normal(size=n)
        h = mod.rosen_hess(x)
        np.testing.assert_allclose(h, _fd_jac(ref.rosen_grad, [x], 0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(h, h.T, rtol=1e-12, atol=1e-12)
    w, b = RNG.normal(size=(2, 2)), RNG.normal(size=2)
    blocks = mod.s2_hess(w, b)
    gw = lambda w_, b_: ref.s2_grad(w_, b_)[0]
    gb = lambda w_, b_: ref.s2_grad(w_, b_)[1]
    want = [_fd_jac(gw, [w, b], 0), _fd_jac(gw, [w, b], 1), _fd_jac(gb, [w, b], 0), _fd_jac(gb, [w, b], 1)]
    assert [x.shape for x in blocks] == [(2, 2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2)]
    for got, fd in zip(blocks, want):
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7)
    W, xs = RNG.normal(size=(3, 3)) * 0.5, RNG.normal(size=(4, 3))
    np.testing.assert_allclose(mod.rnn_hess(W, xs), _fd_jac(ref.rnn_grad, [W, xs], 0), rtol=1e-6, atol=1e-7)
    X = RNG.normal(size=(B, 3))
    np.testing.assert_allclose(mod.vmap_hess(X), np.stack([ref.rosen_hess(x) for x in X]), rtol=1e-10)
    np.testing.assert_array_equal(mod.lin_hess(X[0]), np.zeros((3, 3)))


# ---- per-example gradients of an MLP


def test_per_example_gradient_norms_of_an_mlp(mod, ref):
    W1, b1 = RNG.normal(size=(4, 8)) * 0.5, RNG.normal(size=8) * 0.1
    W2, b2 = RNG.normal(size=(8, 3)) * 0.5, RNG.normal(size=3) * 0.1
    x = RNG.normal(size=(B, 4))
    y = np.eye(3)[RNG.integers(0, 3, B)]
    grads = mod.mlp_per_example(W1, b1, W2, b2, x, y)
    loop = [ref.mlp_grad(W1, b1, W2, b2, x[r], y[r]) for r in range(B)]
    for k in range(4):
        np.testing.assert_allclose(grads[k], np.stack([g[k] for g in loop]), rtol=1e-10, atol=1e-12)
    p = [W1, b1, W2, b2]
    for k in range(4):
        np.testing.assert_allclose(grads[k][3], fd_grad(ref.mlp, p + [x[3], y[3]], k), rtol=1e-6, atol=1e-8)
    norms = np.sqrt(sum(np.sum(np.stack([g[k] for g in loop]).reshape(B, -1) ** 2, axis=1) for k in range(4)))
    np.testing.assert_allclose(mod.mlp_norms(W1, b1, W2, b2, x, y), norms, rtol=1e-10)


# ---- errors


def test_mapped_sizes_must_agree_at_call_time(mod):
    with pytest.raises(ValueError, match=r"per_example: dimension B is 5 from parameter 'x', but parameter 'y'"):
        mod.per_example(np.zeros((3, 2)), np.zeros((5, 3)), np.zeros((4, 2)))


@pytest.mark.parametrize("src,message,col", [
    ("fn f(x: f64[3], y: f64) -> f64 { return sum(x) * y }\nlet v = vmap(f, axes=(0, None, 0))\n",
     "vmap(f): axes has 3 entries, but f takes 2 parameter(s)", 22),
    ("fn f(x: f64[3]) -> f64 { return sum(x) }\nlet v = vmap(f, axes=1)\n",
     "vmap maps over axis 0 or None (not mapped), got 1", 22),
    ("fn f(x: f64[3]) -> f64 { return sum(x) }\nlet v = vmap(f, axes=None)\n",
     "vmap(f) maps over no parameter", 22),
    ("fn f(x: f64[3]) -> f64 { return sum(x) }\nlet v = vmap(f, wrt=x)\n", "vmap has no argument 'wrt'", 17),
    ("fn f(x: f64[3], y: f64) -> f64 { return sum(x) * y }\n"
     "fn g(a: f64[3], b: f64) -> f64[3] { return vmap(f)(a, b) }\n",
     "vmap(f) maps over axis 0 of argument 2, but it is a scalar (f64)", 44),
    ("fn f(x: f64[3], y: f64) -> f64 { return sum(x) * y }\n"
     "fn g(a: f64[4, 3], b: f64[5]) -> f64[4] { return vmap(f)(a, b) }\n",
     "vmap(f): the mapped arguments differ in size on axis 0: argument 1 has 4, argument 2 has 5", 50),
    ("fn f(x: f64[3]) -> f64[3] { let h = sin(x)\n return h * 2.0 }\nlet j = jacobian(f, wrt=h)\n",
     "jacobian takes derivatives with respect to parameters, but 'h' is a let binding of f", 25),
    ("fn f(x: f64[3]) -> f64[3] { return x }\nlet j = jacobian(f, wrt=z)\n",
     "'z' is not a parameter or a let binding of f", 25),
    ("fn f(x: f64[3]) -> f64[3] { return sin(x) }\nlet h = hessian(f)\n",
     "hessian needs a scalar floating-point output, but f returns f64[3]", 17),
    ("fn f(x: f64[3]) -> (f64, f64) { return sum(x), sum(x) }\nlet j = jacobian(f)\n",
     "jacobian needs a function of one floating-point output", 18),
    ("fn f(x: f64[3]) -> f64[3] { return sin(x) }\nlet j = jacobian(f, mode=\"sideways\")\n",
     'mode= takes "forward" or "reverse", got \'sideways\'', 26),
    ("fn f(x: f64[3]) -> f64[3] { return sin(x) }\nlet j = hessian(f, mode=\"forward\")\n",
     "hessian has no argument 'mode'", 20),
    ("fn f(x: f64[3]) -> f64 { return sum(minimum(x, \"a\")) }\n",
     "expected an array value, got the string 'a'", 37),
])
def test_diagnostics(src, message, col):
    err = compile_error(src)
    assert message in str(err)
    assert err.loc is not None and err.loc.col == col, (err.loc, str(err))


INDEXING = """
fn f(x: f64[N, 3], i: i64[K], w: f64[3]) -> f64 {
    let a = take(x, i, axis=0)
    let c = cumsum(a * w, axis=1) + cumprod(tanh(a), axis=0)
    let t = take_along_axis(x, reshape(i[0:2], (2, 1)), axis=0)
    return sum(erf(c)) + sum(t * t) + sum(index_add(x, i, a * 2.0, axis=0) ** 2)
}
let gf = grad(f, wrt=(x, w))
let vf_x = vmap(f, axes=(0, None, None))
let vf_i = vmap(f, axes=(None, 0, None))
let vf_w = vmap(f, axes=(None, None, 0))
let vg_xw = vmap(grad(f, wrt=(x, w)), axes=(0, None, 0))
"""


@pytest.mark.parametrize("target", TARGETS)
def test_gathers_scatters_and_scans_batch(target):
    """take, take_along_axis, index_add, the scans and erf have rules of their own: no loop where
    the indices are shared; rows of indices into a scatter run the fallback; all agree with a loop."""
    from gradc.compiler.pipeline import lower, optimize
    mod = lower(INDEXING)
    for name in ("vf_x", "vf_w", "vg_xw"):
        assert not any(n.op == "for" for n in optimize(mod.graphs[name]).nodes), name
    m = gradc.compile(INDEXING, target=target)
    X, W = RNG.normal(size=(4, 5, 3)), RNG.normal(size=(4, 3))
    I = RNG.integers(-5, 5, size=(4, 6))
    np.testing.assert_allclose(m.vf_x(X, I[0], W[0]), [m.f(X[r], I[0], W[0]) for r in range(4)], rtol=1e-12)
    np.testing.assert_allclose(m.vf_i(X[0], I, W[0]), [m.f(X[0], I[r], W[0]) for r in range(4)], rtol=1e-12)
    np.testing.assert_allclose(m.vf_w(X[0], I[0], W), [m.f(X[0], I[0], W[r]) for r in range(4)], rtol=1e-12)
    gx, gw = m.vg_xw(X, I[0], W)
    for r in range(4):
        a, b = m.gf(X[r], I[0], W[r])
        np.testing.assert_allclose(gx[r], a, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gw[r], b, rtol=1e-12, atol=1e-14)
