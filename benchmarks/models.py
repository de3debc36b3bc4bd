"""The model benchmarks: a CNN training step and an attention block, float32, value and the
gradient of every weight, on gradc beside PyTorch eager, torch.compile and jax.jit.

    python benchmarks/models.py [--threads 2] [--only cnn,attention] [--quick]

- cnn: batch 32 of 1x28x28 images; conv 3x3 (16 channels, padding 1), relu, 2x2 max pool,
  conv 3x3 (32 channels), relu, 2x2 max pool, linear to 10 classes, cross-entropy
  (benchmarks/workloads/cnn.ad).
- attention: batch 8, 128 tokens, width 64; one head with its projections, softmax(q k^T / 8) v,
  half the mean square of the output projection (benchmarks/workloads/attention.ad).

Every system's results are checked against gradc's first, then each is timed (median per call);
the ratio column is each system's time over gradc's (above 1: gradc is faster).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from run import compare, set_threads, torch_compiled  # noqa: E402


def cnn_inputs(np, b=32):
    rng = np.random.default_rng(0)
    f32 = np.float32
    labels = rng.integers(0, 10, b)
    return [rng.normal(size=(b, 1, 28, 28)).astype(f32), np.eye(10, dtype=f32)[labels],
            (rng.normal(size=(16, 1, 3, 3)) / 3).astype(f32), np.zeros(16, f32),
            (rng.normal(size=(32, 16, 3, 3)) / 12).astype(f32), np.zeros(32, f32),
            (rng.normal(size=(1568, 10)) / 40).astype(f32), np.zeros(10, f32)]


def attention_inputs(np, b=8, t=128, d=64):
    rng = np.random.default_rng(0)
    f32 = np.float32
    return [rng.normal(size=(b, t, d)).astype(f32)] + [
        (rng.normal(size=(d, d)) / 8).astype(f32) for _ in range(4)]


def torch_cnn(torch):
    F = torch.nn.functional

    def loss(x, y, w1, b1, w2, b2, W3, b3):
        h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w2, b2, padding=1)), 2)
        z = h.reshape(h.shape[0], -1) @ W3 + b3
        return torch.mean(-torch.sum(y * F.log_softmax(z, dim=-1), dim=-1))
    return loss, 2


def torch_attention(torch):
    def loss(x, Wq, Wk, Wv, Wo):
        q, k, v = x @ Wq, x @ Wk, x @ Wv
        s = torch.softmax(q @ k.transpose(1, 2) * 0.125, dim=-1)
        return 0.5 * torch.mean((s @ v @ Wo) ** 2)
    return loss, 1


def jax_cnn(jax, jnp):
    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def pool(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss(x, y, w1, b1, w2, b2, W3, b3):
        h = pool(jax.nn.relu(conv(x, w1, b1)))
        h = pool(jax.nn.relu(conv(h, w2, b2)))
        z = h.reshape(h.shape[0], -1) @ W3 + b3
        return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(z, axis=-1), axis=-1))
    return loss, 2


def jax_attention(jax, jnp):
    def loss(x, Wq, Wk, Wv, Wo):
        q, k, v = x @ Wq, x @ Wk, x @ Wv
        s = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) * 0.125, axis=-1)
        return 0.5 * jnp.mean((s @ v @ Wo) ** 2)
    return loss, 1


MODELS = {"cnn": (cnn_inputs, "cnn.ad", torch_cnn, jax_cnn),
          "attention": (attention_inputs, "attention.ad", torch_attention, jax_attention)}


def systems(model, np):
    """{name: call} for gradc and every installed peer; each call returns (value, *gradients)."""
    make_inputs, workload, torch_model, jax_model = MODELS[model]
    args = make_inputs(np)
    import gradc
    m = gradc.compile(HERE / "workloads" / workload)
    out = {"gradc": lambda: m.vg(*args)}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        loss, first = torch_model(torch)
        targs = [torch.from_numpy(a) for a in args]

        def vg(f):
            def call():
                ws = [w.detach().requires_grad_() for w in targs[first:]]
                v = f(*targs[:first], *ws)
                return (v.detach(), *torch.autograd.grad(v, ws))
            return call
        out["pytorch"] = vg(loss)
        compiled = torch_compiled(torch, loss, vg)
        if compiled is not None:
            out["torch.compile"] = compiled
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        jax = None
    if jax is not None:
        loss, first = jax_model(jax, jnp)
        jargs = [jnp.asarray(a) for a in args]
        f = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(first, len(args)))))

        def call():
            v, g = f(*jargs)
            jax.block_until_ready(g)
            return (v, *g)
        out["jax.jit"] = call
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=",".join(MODELS))
    p.add_argument("--quick", action="store_true", help="shorter timing")
    a = p.parse_args()
    set_threads(a.threads)
    import numpy as np
    for model in a.only.split(","):
        compare(f"{model}: value and gradient of every weight, float32, {a.threads} threads",
                systems(model, np), tol=2e-3, min_time=0.5 if a.quick else 2.0)
        print()


if __name__ == "__main__":
    main()
