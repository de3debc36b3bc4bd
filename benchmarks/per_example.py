"""Per-example gradients of a 2-layer tanh MLP (64x128x10, float32, batch 256) on the cpu target:
vmap(grad(loss)) in one call against a Python loop of grad calls, one example each.

    python benchmarks/per_example.py [--batch 256] [--reps 20] [--target cpu]

Both results are checked against each other first; times are the median and the best of the
wall clock (the best is what a quiet machine gives; the median shows contention).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import gradc

SRC = """
fn loss(W1: f32[D, H], b1: f32[H], W2: f32[H, C], b2: f32[C], x: f32[D], y: f32[C]) -> f32 {
    return cross_entropy(tanh(x @ W1 + b1) @ W2 + b2, y)
}
let loss_grad = grad(loss, wrt=(W1, b1, W2, b2))
let per_example = vmap(grad(loss, wrt=(W1, b1, W2, b2)), axes=(None, None, None, None, 0, 0))
"""


def wall_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--target", default="cpu")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    D, H, C, n = 64, 128, 10, a.batch
    f32 = np.float32
    W1, b1 = (rng.normal(size=(D, H)) * 0.1).astype(f32), np.zeros(H, f32)
    W2, b2 = (rng.normal(size=(H, C)) * 0.1).astype(f32), np.zeros(C, f32)
    x = rng.normal(size=(n, D)).astype(f32)
    y = np.eye(C, dtype=f32)[rng.integers(0, C, n)]
    m = gradc.compile(SRC, target=a.target)

    def vmapped():
        return m.per_example(W1, b1, W2, b2, x, y)

    def loop():
        return [m.loss_grad(W1, b1, W2, b2, x[i], y[i]) for i in range(n)]

    got, want = vmapped(), loop()
    for k in range(4):
        np.testing.assert_allclose(got[k], np.stack([g[k] for g in want]), rtol=1e-4, atol=1e-6)
    (tv, bv), (tl, bl) = wall_ms(vmapped, a.reps), wall_ms(loop, max(3, a.reps // 4))
    print(f"per-example gradients, MLP {D}x{H}x{C} f32, batch {n}, target {a.target}")
    print(f"  vmap(grad):         median {tv:8.3f} ms, best {bv:8.3f} ms per batch")
    print(f"  loop of grad calls: median {tl:8.3f} ms, best {bl:8.3f} ms per batch "
          f"({bl / n * 1e3:.1f} us per call at best)")
    print(f"  speed-up: {tl / tv:.1f}x (median), {bl / bv:.1f}x (best)")


if __name__ == "__main__":
    main()
