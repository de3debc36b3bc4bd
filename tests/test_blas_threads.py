"""Products shared among gradc's threads: same values as NumPy, OpenBLAS's thread count restored."""
import ctypes
import threading

import numpy as np
import pytest

import gradc
from gradc.runtime import libs

SRC = """
fn f(x: f32[B, T, D], w: f32[D, D]) -> f32 {
    let q = x @ w
    return sum(einsum("btd,bsd->bts", q, x) ** 2) * 0.001
}
let vg = value_and_grad(f, wrt=(x, w))
"""


def _blas_threads():
    libs._init()
    b = libs._state["blas"]
    if b is None or b[5] is None:
        pytest.skip("no OpenBLAS thread control")
    return ctypes.CFUNCTYPE(ctypes.c_int)(b[5])


def _reference(x, w):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    q = x64 @ w64
    s = np.einsum("btd,bsd->bts", q, x64)
    gs = 2 * s * 0.001
    gq = np.einsum("bts,bsd->btd", gs, x64)
    gx = np.einsum("bts,btd->bsd", gs, q) + gq @ w64.T
    gw = np.einsum("btd,bte->de", x64, gq)
    return np.sum(s ** 2) * 0.001, gx, gw


def test_shared_products_match_and_restore_blas_threads():
    get = _blas_threads()
    before = get()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 64, 32)).astype(np.float32)
    w = (rng.normal(size=(32, 32)) / 6).astype(np.float32)
    m = gradc.compile(SRC)
    threads = gradc.get_num_threads()
    gradc.set_num_threads(2)
    want = _reference(x, w)
    results = []

    def call():
        for _ in range(20):
            results.append(m.vg(x, w))
    ts = [threading.Thread(target=call) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    gradc.set_num_threads(threads)
    assert len(results) == 60
    for got in results:
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=2e-3, atol=2e-3 * np.abs(r).max())
    assert get() == before
