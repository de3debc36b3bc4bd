"""The RNN benchmark: an Elman network, T = 100 steps, batch 64, hidden 256 (input 256), float32;
the loss on the last state; value and gradient of every weight (W, U, b).

    python benchmarks/rnn.py [--threads 2] [--quick]

Runs gradc (the for loop, benchmarks/workloads/rnn.ad) beside PyTorch eager, torch.compile and
jax.lax.scan under jax.jit, whichever are installed, checks that they agree, and prints the
median time per call with each peer's ratio to gradc (above 1: gradc is faster); then the
memory of the reverse pass: what gradc stores with and without checkpointing (its memory
report, evaluated at these sizes), the residuals JAX's scan keeps for its vjp and the tensors
PyTorch's autograd saves.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from run import compare, set_threads, torch_compiled  # noqa: E402

T, B, D, H = 100, 64, 256, 256


def make_inputs(np, t):
    rng = np.random.default_rng(0)
    f32 = np.float32
    return [rng.normal(size=(t, B, D)).astype(f32), np.zeros((B, H), f32),
            (rng.normal(size=(H, H)) * 0.05).astype(f32), (rng.normal(size=(D, H)) * 0.05).astype(f32),
            np.zeros(H, f32)]


def gradc_systems(args):
    import gradc
    m = gradc.compile(HERE / "workloads" / "rnn.ad")
    return {"gradc": lambda: m.vg(*args), "gradc checkpoint": lambda: m.vg_ckpt(*args)}


def torch_systems(args):
    try:
        import torch
    except ImportError:
        return {}, None
    xs, h0, W, U, b = (torch.from_numpy(a) for a in args)

    def loss(W, U, b):
        h = h0
        for t in range(xs.shape[0]):
            h = torch.tanh(h @ W + xs[t] @ U + b)
        return 0.5 * torch.sum(h * h)

    def vg(f):
        def run():
            ws = [w.detach().requires_grad_() for w in (W, U, b)]
            out = f(*ws)
            return (out.detach(), *torch.autograd.grad(out, ws))
        return run
    out = {"pytorch": vg(loss)}
    compiled = torch_compiled(torch, loss, vg)
    if compiled is not None:
        out["torch.compile"] = compiled
    return out, (torch, loss, (W, U, b))


def jax_systems(args):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}, None
    xs, h0, W, U, b = (jnp.asarray(a) for a in args)

    def loss(W, U, b):
        def step(h, x):
            return jnp.tanh(h @ W + x @ U + b), None
        h, _ = jax.lax.scan(step, h0, xs)
        return 0.5 * jnp.sum(h * h)
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    def run():
        v, g = f(W, U, b)
        jax.block_until_ready(g)
        return (v, *g)
    return {"jax.lax.scan": run}, (jax, loss, (W, U, b))


def torch_saved_bytes(torch, loss, ws):
    """The bytes of the tensors autograd saves for the backward pass (each storage once)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += key[1]
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss(*[w.detach().requires_grad_() for w in ws])
    return total[0]


def jax_residual_bytes(jax, loss, ws):
    """The bytes of the residuals jax.vjp keeps: what the reverse pass of the scan reads."""
    _, f_vjp = jax.vjp(loss, *ws)
    leaves = jax.tree_util.tree_leaves(f_vjp)
    return sum(int(x.nbytes) for x in leaves if hasattr(x, "nbytes"))


def gradc_stored_bytes():
    import gradc
    from gradc.compiler.memory import analyze
    from gradc.compiler.pipeline import lower, optimize
    text = (HERE / "workloads" / "rnn.ad").read_text()
    mod = lower(text, "rnn.ad")
    sizes = {"T": T, "B": B, "D": D, "H": H}
    out = {}
    for fn in ("vg", "vg_ckpt"):
        entries, peak, factors = analyze(optimize(mod.graphs[fn]))
        stored = sum(e.total.value(factors, sizes) for e in entries)
        out[fn] = (stored, peak.value(factors, sizes))
    del gradc
    return out


def main():
    global T
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="T = 20 and shorter timing")
    a = p.parse_args()
    set_threads(a.threads)
    import numpy as np
    if a.quick:
        T = 20
    args = make_inputs(np, T)
    systems = gradc_systems(args)
    torch_s, torch_info = torch_systems(args)
    jax_s, jax_info = jax_systems(args)
    systems.update(torch_s)
    systems.update(jax_s)
    compare(f"RNN value and gradient: T={T}, batch {B}, input {D}, hidden {H}, float32, {a.threads} threads",
            systems, tol=2e-3, min_time=0.5 if a.quick else 2.0)
    print()
    print("memory of the reverse pass (bytes stored for it)")
    mem = gradc_stored_bytes()
    # None: a term's size depends on a trip count the analysis cannot give a number (a
    # checkpointed segment's length)
    num = lambda v: "?" if v is None else f"{v:,}"
    print(f"{'gradc':<28}{num(mem['vg'][0]):>14}   peak scratch {num(mem['vg'][1])}")
    print(f"{'gradc checkpoint':<28}{num(mem['vg_ckpt'][0]):>14}   peak scratch {num(mem['vg_ckpt'][1])}")
    if jax_info is not None:
        print(f"{'jax.lax.scan residuals':<28}{jax_residual_bytes(*jax_info):>14,}")
    if torch_info is not None:
        print(f"{'pytorch saved tensors':<28}{torch_saved_bytes(*torch_info):>14,}")


if __name__ == "__main__":
    main()
