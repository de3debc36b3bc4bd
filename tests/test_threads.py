"""Loops shared among threads give what one thread gives: elementwise exactly, reductions within tolerance."""
import threading

import numpy as np
import pytest

import gradc
from gradc.runtime import cpu

N = 70_000                 # with M = 5: 350K iterations, well past the parallel threshold
TOL = {np.float32: 1e-5, np.float64: 1e-12}

SOURCE = """
fn chain(x: f32[N, M], y: f32[M]) -> f32[N, M] { return exp(sin(x) * 2) / (1 + x * x) + y }
fn chain1(x: f64[K]) -> f64[K] { return tanh(x) * sqrt(abs(x)) - cos(x) }
fn red(x: f64[N, M]) -> (f64, f64[M], f64[N], f64[M], f64[N], f64, f64, f64[1, M]) {
    let e = sum(exp(x), axis=0, keepdims=true)
    return sum(x), sum(x, axis=0), sum(x, axis=1), max(x, axis=0), min(x, axis=1), max(x), min(x), e
}
fn red32(x: f32[N, M]) -> (f32, f32[M], f32[N], f32[M]) {
    return sum(x * x), sum(x, axis=0), sum(exp(x), axis=1), sum(transpose(x), axis=1)
}
fn shift(x: f64[K]) -> f64 { return sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2) }
let shift_grad = grad(shift)
let shift_hvp = jvp(grad(shift), wrt=x)
fn cat(x: f64[N, 5], y: f64[N, 2]) -> f64[N, 7] { return concat((sin(x), y * 2), axis=1) }
let cat_vjp = vjp(cat, wrt=(x, y))
fn mlp(w: f64[M, 3], x: f64[N, M]) -> f64 { return sum(tanh(x @ w) ** 2) }
let mlp_vg = value_and_grad(mlp, wrt=w)
fn w2(x: f32[K]) -> f32 { return sum(1 / exp(sin(x ** 2))) }
let w2_vg = value_and_grad(w2)
"""


@pytest.fixture(scope="module")
def mod():
    return gradc.compile(SOURCE)


@pytest.fixture
def threads():
    before = cpu.get_num_threads()
    yield
    cpu.set_num_threads(before)


def _inputs(rng):
    x = rng.uniform(-2, 2, (N, 5))
    return {"x32": x.astype(np.float32), "x64": x, "y32": rng.uniform(-1, 1, 5).astype(np.float32),
            "k64": rng.uniform(-2, 2, 5 * N + 3), "k32": rng.uniform(-2, 2, 5 * N + 3).astype(np.float32),
            "y2": rng.normal(size=(N, 2)), "w": rng.normal(size=(5, 3)) * 0.3,
            "ct": rng.normal(size=(N, 7))}


CALLS = {
    "chain": lambda a: (a["x32"], a["y32"]), "chain1": lambda a: (a["k64"],),
    "red": lambda a: (a["x64"],), "red32": lambda a: (a["x32"],),
    "shift": lambda a: (a["k64"],), "shift_grad": lambda a: (a["k64"],),
    "shift_hvp": lambda a: (a["k64"], a["k64"][::-1].copy()),
    "cat": lambda a: (a["x64"], a["y2"]), "cat_vjp": lambda a: (a["x64"], a["y2"], a["ct"]),
    "mlp_vg": lambda a: (a["w"], a["x64"]), "w2_vg": lambda a: (a["k32"],),
}
EXACT = {"chain", "chain1", "shift_grad", "shift_hvp", "cat", "cat_vjp"}


def _flat(r):
    return list(r) if isinstance(r, tuple) else [r]


def _agree(name, one, many):
    for a, b in zip(_flat(one), _flat(many)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype
        if name in EXACT:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            tol = TOL[b.dtype.type]
            np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1.0, float(np.abs(a).max())),
                                       err_msg=name)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_threads_agree(mod, threads, name):
    args = CALLS[name](_inputs(np.random.default_rng(1)))
    cpu.set_num_threads(1)
    one = getattr(mod, name)(*args)
    for n in (2, 3):
        cpu.set_num_threads(n)
        _agree(name, one, getattr(mod, name)(*args))


def test_reductions_match_numpy(mod, threads):
    a = _inputs(np.random.default_rng(2))
    cpu.set_num_threads(2)
    x = a["x64"]
    want = (x.sum(), x.sum(0), x.sum(1), x.max(0), x.min(1), x.max(), x.min(), np.exp(x).sum(0, keepdims=True))
    for got, w in zip(mod.red(x), want):
        np.testing.assert_allclose(got, w, rtol=1e-12)


def test_small_calls_unchanged(mod, threads):
    x = np.random.default_rng(3).uniform(-2, 2, 1000)
    cpu.set_num_threads(1)
    one = mod.chain1(x)
    cpu.set_num_threads(2)
    np.testing.assert_array_equal(mod.chain1(x), one)
    np.testing.assert_allclose(one, np.tanh(x) * np.sqrt(np.abs(x)) - np.cos(x), rtol=1e-12, atol=1e-15)


def test_python_threads_at_once(mod, threads):
    cpu.set_num_threads(2)
    args = {k: CALLS[k](_inputs(np.random.default_rng(4))) for k in ("w2_vg", "red", "cat_vjp", "mlp_vg")}
    want = {k: getattr(mod, k)(*v) for k, v in args.items()}
    errors = []

    def work(k):
        try:
            for _ in range(4):
                _agree(k if k != "red" else "chain", want[k], getattr(mod, k)(*args[k]))
        except Exception as e:              # noqa: BLE001 - reported below, on the main thread
            errors.append(e)
    ts = [threading.Thread(target=work, args=(k,)) for k in list(args) * 2]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


def test_without_libgomp(mod, threads, monkeypatch, tmp_path):
    """A module loaded where no libgomp was found runs single-threaded, with the same results."""
    path = gradc.build(SOURCE, tmp_path / "t.gcm")
    args = CALLS["w2_vg"](_inputs(np.random.default_rng(5)))
    cpu.set_num_threads(2)
    want = mod.w2_vg(*args)
    cpu._init()
    monkeypatch.setitem(cpu._state, "gomp", None)
    serial = gradc.load(path)
    _agree("w2_vg", want, serial.w2_vg(*args))
    cpu.set_num_threads(1)
    _agree("chain", mod.w2_vg(*args), serial.w2_vg(*args))
