"""Products, einsum, convolution and pooling from .ad programs: every target against NumPy written
independently (loops over kernel offsets, sliding windows), gradients against finite differences,
PyTorch's tie rule for max pooling, and the errors a user gets."""
import numpy as np
import pytest

import gradc
from numpy.lib.stride_tricks import sliding_window_view

from conftest import with_iree

TARGETS = list(with_iree(["reference", "cpu", "cuda-sim"]))


# ---- NumPy, written without gradc's composites

def conv_np(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    r = w.ndim - 2
    st, pd, dl = ((v,) * r if isinstance(v, int) else tuple(v) for v in (stride, padding, dilation))
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pd])
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    ks = w.shape[2:]
    outs = tuple((xp.shape[2 + i] - dl[i] * (ks[i] - 1) - 1) // st[i] + 1 for i in range(r))
    y = np.zeros((n, o) + outs)
    og = o // groups
    for gi in range(groups):
        xs = xp[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * og:(gi + 1) * og]
        for k in np.ndindex(*ks):
            sl = tuple(slice(k[i] * dl[i], k[i] * dl[i] + st[i] * (outs[i] - 1) + 1, st[i]) for i in range(r))
            patch = xs[(slice(None), slice(None)) + sl]                  # n, cg, *outs
            y[:, gi * og:(gi + 1) * og] += np.einsum("nc...,oc->no...", patch, ws[(Ellipsis,) + k])
    if b is not None:
        y += b.reshape((o,) + (1,) * r)
    return y


def pool_np(x, kernel, stride, padding, kind):
    r = len(kernel)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0)] * (x.ndim - r) + [(p, p) for p in padding], constant_values=fill)
    win = sliding_window_view(xp, kernel, axis=tuple(range(x.ndim - r, x.ndim)))
    win = win[(Ellipsis,) + tuple(slice(None, None, s) for s in stride) + (slice(None),) * r]
    axes = tuple(range(-r, 0))
    return win.max(axis=axes) if kind == "max" else win.mean(axis=axes)


def _targets():
    return [t for t in TARGETS if gradc.backends.BACKENDS[t].available()[0]] if hasattr(gradc, "backends") \
        else TARGETS


# ---- convolution and pooling against NumPy, every target, values and gradients

CONVS = [
    # (x shape, w shape, bias, kwargs as written)
    ((2, 3, 7, 6), (4, 3, 3, 3), True, "padding=1"),
    ((2, 4, 8, 7), (6, 2, 3, 2), False, "stride=2, padding=(1, 0), groups=2"),
    ((1, 3, 9, 9), (2, 3, 2, 3), True, "stride=(2, 3), dilation=2, padding=2"),
    ((2, 4, 5, 5), (4, 1, 3, 3), False, "groups=4, padding=1"),
    ((3, 2, 10), (5, 2, 3), True, "stride=2, dilation=2, padding=1"),
    ((2, 6, 9), (4, 3, 4), False, "groups=2"),
]
POOLS = [
    ((2, 3, 7, 6), "max", "2"), ((2, 3, 7, 6), "max", "3, stride=2, padding=1"),
    ((1, 2, 8, 5), "max", "(2, 3), stride=(1, 2), padding=(1, 1)"),
    ((2, 3, 7, 6), "avg", "2"), ((2, 3, 7, 6), "avg", "3, stride=2, padding=1"),
    ((2, 3, 9), "max", "3, stride=2, padding=1"), ((2, 3, 9), "avg", "2, stride=1"),
]


def _kw(text):
    return eval(f"dict({text})") if "=" in text.split(",")[0] or not text else None


def _pool_args(text):
    return eval(f"(lambda kernel, stride=None, padding=0: (kernel, stride, padding))({text})")


def _conv_source():
    src = []
    for i, (xs, ws, bias, kw) in enumerate(CONVS):
        r = len(ws) - 2
        t = lambda s: "f64[" + ", ".join(map(str, s)) + "]"
        b = f", b: f64[{ws[0]}]" if bias else ""
        call = f"conv{r}d(x, w{', b' if bias else ''}, {kw})"
        src.append(f"fn c{i}(x: {t(xs)}, w: {t(ws)}{b}) -> f64 {{ let y = {call}\n"
                   f"    return sum(sin(y) * y) }}\nfn v{i}(x: {t(xs)}, w: {t(ws)}{b}) {{ return {call} }}\n"
                   f"let g{i} = grad(c{i}, wrt=(x, w{', b' if bias else ''}))\n")
    for i, (xs, kind, kw) in enumerate(POOLS):
        r = len(xs) - 2
        t = "f64[" + ", ".join(map(str, xs)) + "]"
        src.append(f"fn p{i}(x: {t}) {{ return {kind}_pool{r}d(x, {kw}) }}\n"
                   f"fn q{i}(x: {t}) -> f64 {{ return sum(exp({kind}_pool{r}d(x, {kw}) * 0.5)) }}\n"
                   f"let h{i} = grad(q{i})\n")
    return "".join(src)


@pytest.fixture(scope="module")
def nn_modules():
    src = _conv_source()
    return {t: gradc.compile(src, target=t, cache=False) for t in TARGETS}


def _fd(f, args, i, eps=1e-6):
    x = args[i]
    g = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        p, m = [a.copy() for a in args], [a.copy() for a in args]
        p[i][k] += eps
        m[i][k] -= eps
        g[k] = (f(*p) - f(*m)) / (2 * eps)
    return g


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("i", range(len(CONVS)))
def test_conv_matches_numpy(nn_modules, target, i):
    xs, ws, bias, kw = CONVS[i]
    m = nn_modules[target]
    rng = np.random.default_rng(i)
    args = [rng.normal(size=xs), rng.normal(size=ws)] + ([rng.normal(size=ws[0])] if bias else [])
    want = conv_np(*args[:2], args[2] if bias else None, **eval(f"dict({kw})"))
    np.testing.assert_allclose(getattr(m, f"v{i}")(*args), want, rtol=1e-10, atol=1e-10)
    grads = getattr(m, f"g{i}")(*args)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if target == "reference":      # the gradients: finite differences of the loss on NumPy's conv
        loss = lambda *a: float(np.sum(np.sin(y := conv_np(a[0], a[1], a[2] if bias else None,
                                                           **eval(f"dict({kw})"))) * y))
        for k, g in enumerate(grads):
            np.testing.assert_allclose(g, _fd(loss, args, k), rtol=1e-5, atol=1e-6)
    else:
        for g, want_g in zip(grads, getattr(nn_modules["reference"], f"g{i}")(*args)):
            np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("i", range(len(POOLS)))
def test_pool_matches_numpy(nn_modules, target, i):
    xs, kind, text = POOLS[i]
    r = len(xs) - 2
    kernel, stride, padding = _pool_args(text)
    norm = lambda v: (v,) * r if isinstance(v, int) else tuple(v)
    kernel = norm(kernel)
    stride = kernel if stride is None else norm(stride)
    padding = norm(padding)
    m = nn_modules[target]
    x = np.random.default_rng(10 + i).normal(size=xs)
    np.testing.assert_allclose(getattr(m, f"p{i}")(x), pool_np(x, kernel, stride, padding, kind), rtol=1e-12)
    g = getattr(m, f"h{i}")(x)
    if target == "reference":
        loss = lambda a: float(np.sum(np.exp(pool_np(a, kernel, stride, padding, kind) * 0.5)))
        np.testing.assert_allclose(g, _fd(loss, [x], 0), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(g, getattr(nn_modules["reference"], f"h{i}")(x), rtol=1e-10)


TIES = """
fn pool(x: f32[N, C, H, W]) -> f32 { return sum(max_pool2d(x, 2, stride=1, padding=1) * 1.5) }
let pool_grad = grad(pool)
fn pool3(x: f64[1, 1, 4, 4]) -> f64[1, 1, 2, 2] { return max_pool2d(x, 3, stride=1) }
let pool3_vjp = vjp(pool3)
"""


@pytest.mark.parametrize("target", TARGETS)
def test_max_pool_ties_go_to_the_first_maximum(target):
    """PyTorch's rule: the whole gradient of a window goes to its first maximum in row-major order
    (padding never wins); counted by hand from np.argmax, which picks the first."""
    m = gradc.compile(TIES, target=target, cache=False)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, (2, 2, 4, 5)).astype(np.float32)       # ties everywhere
    want = np.zeros_like(x)
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=-np.inf)
    for n, c, i, j in np.ndindex(2, 2, 5, 6):
        w = xp[n, c, i:i + 2, j:j + 2]
        a, b = np.unravel_index(np.argmax(w), w.shape)
        want[n, c, i + a - 1, j + b - 1] += 1.5
    np.testing.assert_array_equal(m.pool_grad(x), want)
    ones = np.ones((1, 1, 4, 4))
    ct = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    got = m.pool3_vjp(ones, ct)
    want3 = np.zeros((1, 1, 4, 4))
    for i, j in np.ndindex(2, 2):
        want3[0, 0, i, j] += ct[0, 0, i, j]        # every window is flat: its first element wins
    np.testing.assert_array_equal(got, want3)


def test_max_pool_propagates_nan():
    m = gradc.compile("fn f(x: f64[1, 1, 2, 4]) -> f64[1, 1, 1, 2] { return max_pool2d(x, 2) }",
                      target="cpu", cache=False)
    x = np.array([[[[1.0, 2.0, 5.0, 1.0], [np.nan, 0.0, 3.0, 4.0]]]])
    got = m.f(x)
    assert np.isnan(got[0, 0, 0, 0]) and got[0, 0, 0, 1] == 5.0


# ---- batched @ and einsum

PRODUCTS = """
fn bmm(a: f64[B, N, K], b: f64[B, K, M]) -> f64[B, N, M] { return a @ b }
fn bcast(a: f64[2, 1, N, K], b: f64[3, K, M]) -> f64[2, 3, N, M] { return a @ b }
fn rows(a: f64[B, N, K], w: f64[K, M]) -> f64[B, N, M] { return a @ w }
fn left(w: f64[N, K], b: f64[B, K, M]) -> f64[B, N, M] { return w @ b }
fn vec(v: f64[K], b: f64[B, K, M]) -> f64[B, M] { return v @ b }
fn vec2(a: f64[B, N, K], v: f64[K]) -> f64[B, N] { return a @ v }
fn loss(a: f64[2, 1, N, K], b: f64[3, K, M], w: f64[M, 2]) -> f64 { return sum(tanh((a @ b) @ w)) }
let loss_grad = grad(loss, wrt=(a, b, w))
let loss_hvp = jvp(grad(loss, wrt=b), wrt=b)
fn e1(a: f64[B, N, K], b: f64[B, K, M]) -> f64[B, N, M] { return einsum("bij,bjk->bik", a, b) }
fn e2(a: f64[N, K], b: f64[M, K]) -> f64[M, N] { return einsum("ij,kj->ki", a, b) }
fn e3(a: f64[3, 3, K]) -> f64[K] { return einsum("iik->k", a) }
fn e4(a: f64[N, K]) -> f64 { return einsum("ij->", a) }
fn e5(a: f64[N], b: f64[K]) -> f64[N, K] { return einsum("i,j", a, b) }
fn e6(a: f64[B, N, K], b: f64[K, M], c: f64[M]) -> f64[N, B] { return einsum("bnk,km,m->nb", a, b, c) }
fn e7(a: f64[B, N, K], b: f64[B, N, K]) -> f64[B] { return einsum("bij,bij->b", a, b) }
fn e8(a: f64[N, K, 1], b: f64[N, K, M]) -> f64[N, M] { return einsum("nkm,nkm->nm", a, b) }
fn eloss(a: f64[B, N, K], b: f64[K, M], c: f64[M]) -> f64 { return sum(sin(einsum("bnk,km,m->nb", a, b, c))) }
let eloss_grad = grad(eloss, wrt=(a, b, c))
"""


@pytest.fixture(scope="module")
def products():
    return {t: gradc.compile(PRODUCTS, target=t, cache=False) for t in TARGETS}


@pytest.mark.parametrize("target", TARGETS)
def test_batched_products_and_einsum_match_numpy(products, target):
    m = products[target]
    r = np.random.default_rng(3)
    B, N, K, M = 4, 3, 5, 2
    a, b, w, v = r.normal(size=(B, N, K)), r.normal(size=(B, K, M)), r.normal(size=(K, M)), r.normal(size=K)
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    close(m.bmm(a, b), a @ b)
    a4, b3 = r.normal(size=(2, 1, N, K)), r.normal(size=(3, K, M))
    close(m.bcast(a4, b3), a4 @ b3)
    close(m.rows(a, w), a @ w)
    close(m.left(r.normal(size=(N, K)) * 0 + a[0], b), a[0] @ b)
    close(m.vec(v, b), v @ b)
    close(m.vec2(a, v), a @ v)
    close(m.e1(a, b), np.einsum("bij,bjk->bik", a, b))
    close(m.e2(a[0], a[1]), np.einsum("ij,kj->ki", a[0], a[1]))
    a3 = r.normal(size=(3, 3, K))
    close(m.e3(a3), np.einsum("iik->k", a3))
    close(m.e4(a[0]), np.einsum("ij->", a[0]))
    close(m.e5(v, v[:3]), np.einsum("i,j", v, v[:3]))
    c = r.normal(size=M)
    close(m.e6(a, w, c), np.einsum("bnk,km,m->nb", a, w, c))
    close(m.e7(a, a * 2), np.einsum("bij,bij->b", a, a * 2))
    close(m.e8(b[:, :, :1], b), np.einsum("nkm,nkm->nm", b[:, :, :1], b))
    w2 = r.normal(size=(M, 2))
    f = lambda a4, b3, w2: float(np.sum(np.tanh((a4 @ b3) @ w2)))
    grads = m.loss_grad(a4, b3, w2)
    for k, g in enumerate(grads):
        np.testing.assert_allclose(g, _fd(f, [a4, b3, w2], k), rtol=1e-5, atol=1e-7)
    t = r.normal(size=b3.shape)
    _, hv = m.loss_hvp(a4, b3, w2, t)
    gb = lambda bb: products["reference"].loss_grad(a4, bb, w2)[1]
    np.testing.assert_allclose(hv, (gb(b3 + 1e-5 * t) - gb(b3 - 1e-5 * t)) / 2e-5, rtol=1e-5, atol=1e-7)
    fe = lambda a, b, c: float(np.sum(np.sin(np.einsum("bnk,km,m->nb", a, b, c))))
    for k, g in enumerate(m.eloss_grad(a, w, c)):
        np.testing.assert_allclose(g, _fd(fe, [a, w, c], k), rtol=1e-5, atol=1e-7)


def test_products_run_as_gemm_calls():
    """A batched product is a loop of gemm calls in the generated code; a convolution's forward and
    backward products are single gemm calls (the batch is more rows), with no loop around them."""
    bmm = gradc.api.emit_llvm("fn f(a: f32[B, N, K], b: f32[B, K, M]) -> f32[B, N, M] { return a @ b }\n")
    assert "batch.body" in bmm and "@gradc_blas_sgemm" in bmm
    conv = gradc.api.emit_llvm("fn c(x: f32[N, 3, 8, 8], w: f32[4, 3, 3, 3]) -> f32 "
                               "{ return sum(conv2d(x, w, padding=1)) }\nlet g = grad(c, wrt=(x, w))\n")
    assert "@gradc_blas_sgemm" in conv and "batch.body" not in conv


# ---- convolutions image by image (codegen/cpu/conv.py): enough work that threads share the images

CHUNKED = """
fn loss(x: f64[N, 6, 14, 12], w: f64[16, 6, 3, 2], b: f64[16], g: f64[N, 16, 7, 12]) -> f64 {
    return sum(conv2d(x, w, b, stride=(2, 1), padding=(1, 1), dilation=(1, 2)) * g)
}
let step = value_and_grad(loss, wrt=(x, w, b))
fn loss1(x: f64[N, 16, 160], w: f64[16, 16, 5], g: f64[N, 16, 80]) -> f64 {
    return sum(conv1d(x, w, stride=2, padding=2) * g)
}
let step1 = value_and_grad(loss1, wrt=(x, w))
fn loss2(x: f64[N, 6, 9, 12], w: f64[16, 6, 3, 2], g: f64[N, 16, 9, 12]) -> f64 {
    return sum(conv2d(x, w, padding=(2, 1), dilation=(2, 2)) * g)
}
let step2 = value_and_grad(loss2, wrt=(x, w))
fn loss3(x: f64[N, 6, 9, 12], w: f64[16, 6, 3, 2], g: f64[N, 16, 7, 12]) -> f64 {
    return sum(conv2d(x, w, padding=(0, 1), dilation=(1, 2)) * g)
}
let step3 = value_and_grad(loss3, wrt=(x, w))
"""


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
def test_conv_image_by_image_on_threads(threads):
    """The columns of each image in a block of its own, the products per image (enough work that
    threads share the images): values as NumPy's convolution, gradients as the reference
    target's (checked against finite differences above) on any thread count, more threads than
    images included (a thread with no images adds nothing to the weight's gradient)."""
    m = gradc.compile(CHUNKED, cache=False)
    ref = gradc.compile(CHUNKED, target="reference", cache=False)
    rng = np.random.default_rng(threads)
    before = gradc.get_num_threads()
    gradc.set_num_threads(threads)
    try:
        for n in (7, 1):
            x, w, b = rng.normal(size=(n, 6, 14, 12)), rng.normal(size=(16, 6, 3, 2)), rng.normal(size=16)
            g = rng.normal(size=(n, 16, 7, 12))
            y = conv_np(x, w, b, stride=(2, 1), padding=(1, 1), dilation=(1, 2))
            got, want = m.step(x, w, b, g), ref.step(x, w, b, g)
            np.testing.assert_allclose(got[0], np.sum(y * g), rtol=1e-10)
            for a, e in zip(got[1:], want[1:]):
                np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)
            x1, w1, g1 = rng.normal(size=(n, 16, 160)), rng.normal(size=(16, 16, 5)), rng.normal(size=(n, 16, 80))
            got, want = m.step1(x1, w1, g1), ref.step1(x1, w1, g1)
            np.testing.assert_allclose(got[0], np.sum(conv_np(x1, w1, stride=2, padding=2) * g1), rtol=1e-10)
            for a, e in zip(got[1:], want[1:]):
                np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)
            for name, pad, dil, h in (("step2", (2, 1), (2, 2), 9), ("step3", (0, 1), (1, 2), 7)):
                # stride 1 and the output as wide as the input: each block row a whole plane
                x2, g2 = rng.normal(size=(n, 6, 9, 12)), rng.normal(size=(n, 16, h, 12))
                got, want = getattr(m, name)(x2, w, g2), getattr(ref, name)(x2, w, g2)
                np.testing.assert_allclose(got[0], np.sum(conv_np(x2, w, padding=pad, dilation=dil) * g2),
                                           rtol=1e-10)
                for a, e in zip(got[1:], want[1:]):
                    np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)
        empty = m.step(np.zeros((0, 6, 14, 12)), w, b, np.zeros((0, 16, 7, 12)))
        assert empty[0] == 0.0 and empty[1].shape == (0, 6, 14, 12)
        assert not np.any(empty[2]) and not np.any(empty[3])
    finally:
        gradc.set_num_threads(before)


def test_conv_columns_are_never_stored_whole():
    """On cpu the plan keeps no im2col or product-of-columns buffer: each is made per image."""
    from gradc.compiler.codegen.plan import make_plan
    from gradc.compiler.pipeline import lower, optimize
    g = optimize(lower(CHUNKED).graphs["step"])
    plan = make_plan(g, chunk=True)
    assert all(n in plan.chunked for n in plan.roots if n.op == "matmul")
    assert sorted(c.kind for c in plan.chunked.values()) == ["dw", "dx", "fwd"]
    assert not any(n.op == "im2col" for n in plan.roots)
    plain = make_plan(g)            # the other backends' plan stores the columns
    assert any(n.op == "im2col" for n in plain.roots)
    from gradc.compiler.codegen.cpu.conv import _planar
    assert not any(_planar(c) for c in plan.chunked.values())          # stride (2, 1)
    for name in ("step2", "step3"):                                    # "same" along the width
        chunks = make_plan(optimize(lower(CHUNKED).graphs[name]), chunk=True).chunked.values()
        assert sorted(c.kind for c in chunks) == ["dw", "dx", "fwd"] and all(_planar(c) for c in chunks)


# ---- errors

C2 = "fn f(x: f32[1, {c}, {h}, 5], w: f32[{o}, 2, 3, 3]) -> f32 {{ return sum({call}) }}"
ERRORS = [   # (source, the text the caret points at, the message)
    (C2.format(c=3, h=5, o=4, call="conv2d(x, w)"), "conv2d(",
     "conv2d: the input f32[1, 3, 5, 5] has 3 channels, but the weight f32[4, 2, 3, 3] expects 2"),
    (C2.format(c=4, h=5, o=6, call="conv2d(x, w, groups=4)"), "4)",
     "conv2d: groups=4 does not divide the 6 output channels of the weight (f32[6, 2, 3, 3])"),
    (C2.format(c=6, h=5, o=4, call="conv2d(x, w, groups=4)"), "4)",
     "conv2d: groups=4 does not divide the 6 input channels (f32[1, 6, 5, 5])"),
    (C2.format(c=2, h=2, o=4, call="conv2d(x, w)"), "conv2d(",
     "conv2d: the kernel (3 wide with dilation) is larger than the padded input (2 + 2*0)"),
    (C2.format(c=2, h=5, o=4, call="conv2d(x, w, dilation=(1, 3))"), "conv2d(",
     "conv2d: the kernel (7 wide with dilation) is larger than the padded input (5 + 2*0)"),
    ("fn f(x: f32[1, 3, 5], w: f32[4, 3, 3]) -> f32 { return sum(conv1d(x, w, stride=0)) }", "0)",
     "conv1d: stride= must be at least 1, got 0"),
    ("fn f(x: f32[1, 3, 5], w: f32[4, 3, 3]) -> f32 { return sum(conv2d(x, w)) }", "x, w",
     "conv2d: the input must have 4 axes (N, C, H, W), got f32[1, 3, 5]"),
    ("fn f(x: f32[1, 3, 5], w: f32[4, 3, 3], b: f32[3]) -> f32 { return sum(conv1d(x, w, b)) }", "b))",
     "conv1d: the bias must be f32[4] (one per output channel), got f32[3]"),
    ("fn f(x: f32[1, 3, 5, 5]) -> f32 { return sum(max_pool2d(x, 2, padding=2)) }", "2))",
     "max_pool2d: padding 2 is more than half the kernel (2 wide), as PyTorch requires"),
    ("fn f(x: f32[1, 3, 5, H]) -> f32 { return sum(avg_pool2d(x, 2, stride=2)) }", "avg_pool2d(",
     "avg_pool2d: a stride of 2 on the symbolic dimension H is not supported"),
    ("fn f(a: f32[2, 3], b: f32[3, 4]) -> f32 { return sum(einsum(\"ij,jk->il\", a, b)) }", "\"ij",
     "einsum: the output letter 'l' is in no operand"),
    ("fn f(a: f32[2, 3], b: f32[3, 4]) -> f32 { return sum(einsum(\"ij,jk,k->ik\", a, b)) }", "\"ij",
     "einsum: the spec names 3 operands, but 2 are given"),
    ("fn f(a: f32[2, 3], b: f32[3, 4]) -> f32 { return sum(einsum(\"ij,j->i\", a, b)) }", "b))",
     "einsum: operand 1 has 2 axes but the spec names 1 ('j')"),
    ("fn f(a: f32[2, 3], b: f32[4, 4]) -> f32 { return sum(einsum(\"ij,jk->ik\", a, b)) }", "b))",
     "einsum: index 'j' has size 3 in operand 0 but 4 in operand 1"),
    ("fn f(a: f32[2, 3], b: f32[4, 4]) -> f32 { return sum(einsum(\"i...,jk->ik\", a, b)) }", "\"i.",
     "einsum: '...' (ellipsis) is not supported"),
    ("fn f(a: f32[B, 2, 3], b: f32[C, 3, 4]) -> f32 { return sum(a @ b) }", "@",
     "matmul: @: cannot broadcast the batch dimensions of f32[B, 2, 3] and f32[C, 3, 4]"),
    ("fn f(a: f32[5, 2, 3], b: f32[5, 4, 4]) -> f32 { return sum(a @ b) }", "@",
     "matmul: @: cannot multiply f32[5, 2, 3] by f32[5, 4, 4]"),
]


@pytest.mark.parametrize("src,at,message", ERRORS, ids=[m[:40] for _, _, m in ERRORS])
def test_errors_at_compile_time(src, at, message):
    with pytest.raises(gradc.CompileError) as info:
        gradc.compile(src, target="reference")
    first = str(info.value).splitlines()[0]
    assert f":1:{src.rindex(at) + 1}: error: {message}" in first


RUNTIME = """
fn f(x: f32[N, 3, H, W], w: f32[4, 3, 3, 3]) -> f32 { return sum(conv2d(x, w, padding=(0, 1))) }
fn p(x: f32[N, 2, L]) -> f32 { return sum(max_pool1d(x, 4, stride=1)) }
"""


@pytest.mark.parametrize("target", TARGETS)
def test_kernel_larger_than_a_symbolic_input_raises_at_call(target):
    m = gradc.compile(RUNTIME, target=target, cache=False)
    assert np.isfinite(m.f(np.ones((1, 3, 3, 1), np.float32), np.ones((4, 3, 3, 3), np.float32)))
    with pytest.raises(ValueError, match=r"f.*the kernel \(3 wide.*axis 2 of parameter 'x'.*has size 2"):
        m.f(np.ones((1, 3, 2, 5), np.float32), np.ones((4, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"p.*axis 2 of parameter 'x'.*at least 4.*has size 3"):
        m.p(np.ones((2, 2, 3), np.float32))
