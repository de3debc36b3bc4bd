"""Compile time and call time as programs grow: an elementwise chain and a deep perceptron.

    python benchmarks/compile_scaling.py [--threads N] [--chain 10,100,1000] [--layers 1,10,30]

chain n: `let a_i = sin(a_{i-1}) * 1.0001` n times, value_and_grad of the sum, 1e5 float64
elements. perceptron L: L layers tanh(h @ W + b), 64 inputs, 256 wide, a batch of 256, float64,
value_and_grad of the mean with respect to every W and b. For each: gradc's cold compile
(cache=False; seconds of wall time and of CPU time, LLVM's threads included), the forward
function's and the derivative's call time and their ratio; jax.jit's compile and call time
beside it where jax is importable. Only the base install is needed.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

CHAIN_N = 100_000
BATCH, INPUTS, WIDTH = 256, 64, 256


def chain_source(n: int) -> str:
    body = "\n".join(f"    let a{i} = sin(a{i - 1}) * 1.0001" for i in range(1, n + 1))
    return (f"fn f(x: f64[N]) -> f64 {{\n    let a0 = x\n{body}\n    return sum(a{n})\n}}\n"
            "let vg = value_and_grad(f)\n")


def perceptron_source(layers: int) -> str:
    ps = ", ".join(f"W{i}: f64[{INPUTS if i == 0 else WIDTH}, {WIDTH}], b{i}: f64[{WIDTH}]" for i in range(layers))
    body = "\n".join(f"    let h{i + 1} = tanh(h{i} @ W{i} + b{i})" for i in range(layers))
    wrt = ", ".join(f"W{i}, b{i}" for i in range(layers))
    return (f"fn f({ps}, x: f64[B, {INPUTS}]) -> f64 {{\n    let h0 = x\n{body}\n    return mean(h{layers})\n}}\n"
            f"let vg = value_and_grad(f, wrt=({wrt}))\n")


def chain_args(np):
    return [np.random.default_rng(0).uniform(-2, 2, CHAIN_N)]


def perceptron_args(np, layers):
    rng = np.random.default_rng(0)
    args = []
    for i in range(layers):
        d = INPUTS if i == 0 else WIDTH
        args += [rng.normal(size=(d, WIDTH)) / np.sqrt(d), np.zeros(WIDTH)]
    return args + [rng.normal(size=(BATCH, INPUTS))]


def median_time(fn, min_time=0.2, reps=5):
    fn()
    times, total = [], 0.0
    while total < min_time or len(times) < reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return statistics.median(times)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def gradc_row(gradc, src, args):
    t0, c0 = time.perf_counter(), cpu_seconds()
    m = gradc.compile(src, cache=False)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    fwd = median_time(lambda: m.f(*args))
    der = median_time(lambda: m.vg(*args))
    return wall, cpu, fwd, der


def jax_chain(jax, n):
    jnp = jax.numpy

    def f(x):
        a = x
        for _ in range(n):
            a = jnp.sin(a) * 1.0001
        return jnp.sum(a)
    return f


def jax_perceptron(jax, layers):
    jnp = jax.numpy

    def f(*args):
        h = args[-1]
        for i in range(layers):
            h = jnp.tanh(h @ args[2 * i] + args[2 * i + 1])
        return jnp.mean(h)
    return f, tuple(range(2 * layers))


def jax_row(jax, f, argnums, args):
    jargs = [jax.numpy.asarray(a) for a in args]
    t0 = time.perf_counter()
    vg = jax.jit(jax.value_and_grad(f, argnums=argnums)).lower(*jargs).compile()
    compile_s = time.perf_counter() - t0
    fwd = jax.jit(f).lower(*jargs).compile()
    return compile_s, median_time(lambda: jax.block_until_ready(fwd(*jargs))), \
        median_time(lambda: jax.block_until_ready(vg(*jargs)))


def fmt(t):
    return f"{t * 1e6:.0f}us" if t < 1e-3 else f"{t * 1e3:.2f}ms" if t < 1 else f"{t:.2f}s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--chain", default="10,25,50,100,250,500,1000", help="chain lengths")
    p.add_argument("--layers", default="1,2,5,10,20,30", help="perceptron depths")
    a = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GRADC_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import numpy as np
    import gradc
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
    except ImportError:
        jax = None
    gradc.compile(chain_source(1), cache=False)        # LLVM and the parser set up, as after import
    print(f"# gradc compile scaling, {a.threads} threads; compile: wall (CPU) seconds, cold (cache=False)")
    head = f"{'program':16} {'compile':>15} {'forward':>10} {'gradient':>10} {'ratio':>6}"
    print(head + (f"  {'jax compile':>11} {'jax fwd':>10} {'jax grad':>10}" if jax else ""))
    rows = [("chain", n, chain_source(n), chain_args(np)) for n in map(int, a.chain.split(",") if a.chain else ())]
    rows += [("perceptron", k, perceptron_source(k), perceptron_args(np, k))
             for k in map(int, a.layers.split(",") if a.layers else ())]
    for kind, n, src, args in rows:
        wall, cpu, fwd, der = gradc_row(gradc, src, args)
        line = f"{kind + ' ' + str(n):16} {wall:7.2f}s ({cpu:5.2f}) {fmt(fwd):>10} {fmt(der):>10} {der / fwd:5.2f}x"
        if jax is not None:
            f, argnums = (jax_chain(jax, n), 0) if kind == "chain" else jax_perceptron(jax, n)
            jc, jf, jd = jax_row(jax, f, argnums, args)
            line += f"  {jc:10.2f}s {fmt(jf):>10} {fmt(jd):>10}"
        print(line)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
