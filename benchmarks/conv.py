"""Convolution on the CPU: forward and backward of conv2d against NumPy's im2col + matmul by hand
(and PyTorch where it is importable).

    python benchmarks/conv.py [--reps 20] [--threads 1]

x: f32[32, 16, 28, 28], w: f32[32, 16, 3, 3], padding=1; one call computes the output and the
gradients of sum(conv2d(x, w) * g) with respect to x and w (forward + backward). Every system's
results are checked against NumPy's in float64 first; each is then timed as the median of reps
calls.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


SRC = """
fn loss(x: f32[N, 16, 28, 28], w: f32[32, 16, 3, 3], g: f32[N, 32, 28, 28]) -> f32 {
    return sum(conv2d(x, w, padding=1) * g)
}
let step = value_and_grad(loss, wrt=(x, w))
"""


def numpy_step(x, w, g):
    """im2col with sliding windows, one matmul forward, two backward, col2im by kernel offsets."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))   # n c h w kh kw
    cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * h * wd, c * kh * kw)
    wm = w.reshape(o, -1)
    y = (cols @ wm.T).reshape(n, h, wd, o).transpose(0, 3, 1, 2)
    value = np.sum(y * g)
    gm = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).reshape(-1, o)
    dw = (gm.T @ cols).reshape(w.shape)
    dcols = (gm @ wm).reshape(n, h, wd, c, kh, kw)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + h, j:j + wd] += dcols[..., i, j].transpose(0, 3, 1, 2)
    return value, dxp[:, :, 1:-1, 1:-1], dw


def median_ms(fn, reps):
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="OMP/BLAS threads (default: the machine's)")
    args = ap.parse_args()
    if args.threads:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[k] = str(args.threads)
    import gradc
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16, 28, 28)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    g = rng.standard_normal((32, 32, 28, 28)).astype(np.float32)
    m = gradc.compile(SRC, cache=False)
    want = numpy_step(x.astype(np.float64), w.astype(np.float64), g.astype(np.float64))
    for got, ref in zip(m.step(x, w, g), want):
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-3 * np.abs(ref).max())
    rows = [("gradc cpu", median_ms(lambda: m.step(x, w, g), args.reps)),
            ("numpy im2col + matmul", median_ms(lambda: numpy_step(x, w, g), args.reps))]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        tx, tw, tg = (torch.from_numpy(a) for a in (x, w, g))

        def torch_step():
            xx, ww = tx.clone().requires_grad_(), tw.clone().requires_grad_()
            v = (torch.nn.functional.conv2d(xx, ww, padding=1) * tg).sum()
            v.backward()
            return v, xx.grad, ww.grad
        for got, ref in zip(torch_step(), want):
            np.testing.assert_allclose(got.detach().numpy(), ref, rtol=2e-4, atol=2e-3 * np.abs(ref).max())
        rows.append((f"pytorch {torch.__version__}", median_ms(torch_step, args.reps)))
    for name, ms in rows:
        print(f"{name:28s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
