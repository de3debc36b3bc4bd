"""Soak: load the same module over and over, and call it a million times; prints the growth of memory.

    python benchmarks/soak.py [--loads 100000] [--mcjit-loads 20000] [--calls 1000000]

Phases: gradc.load of a .gcm (its shared library), gradc.compile of the same program from the
cache, gradc.load of a module without a shared library (MCJIT), then calls of a scalar and an
array function. After each phase: resident memory (RSS) and the process's mappings against the
start. Not a test: it takes minutes. Loading the same code again must reuse its one mapping,
and memory must stay flat (growth under 5 MiB).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = """\
fn loss(w: f64[D], x: f64[N, D], y: f64[N]) -> f64 {
    return mean((x @ w - y) ** 2)
}
let loss_grad = grad(loss, wrt=w)
fn s(a: f64, b: f64) -> f64 { return sin(a) * b + exp(-a) }
"""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def mib(n: int) -> str:
    return f"{n / 2 ** 20:+.2f} MiB"


class Report:
    def __init__(self):
        gc.collect()
        self.rss0, self.maps0, self.t0 = rss(), maps(), time.perf_counter()
        print(f"start: RSS {self.rss0 / 2 ** 20:.1f} MiB, {self.maps0} mappings", flush=True)

    def line(self, what: str, t: float):
        gc.collect()
        r, m = rss(), maps()
        print(f"{what:<44} {time.perf_counter() - t:7.1f} s   RSS {r / 2 ** 20:7.1f} MiB "
              f"({mib(r - self.rss0)} since start)   mappings {m} ({m - self.maps0:+d})", flush=True)


def loop(report, what, n, step):
    t = time.perf_counter()
    for i in range(n):
        step(i)
        if (i + 1) % max(1, n // 5) == 0:
            report.line(f"{what} {i + 1:,}/{n:,}", t)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, default=100_000, help="gradc.load and compile-from-cache cycles, each")
    p.add_argument("--mcjit-loads", type=int, default=20_000, help="loads of a module without a shared library")
    p.add_argument("--calls", type=int, default=1_000_000)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gradc-soak-"))
    os.environ["GRADC_CACHE_DIR"] = str(work / "cache")
    import gradc
    from gradc.runtime import artifact
    src = work / "soak.ad"
    src.write_text(SRC)
    gcm = gradc.build(src, work / "soak.gcm")
    header, code = artifact.read(gcm)
    jit_gcm = work / "objects.gcm"
    jit_gcm.write_bytes(artifact.pack(header, artifact.Code(code.objects)))
    rng = np.random.default_rng(0)
    w, x, y = rng.standard_normal(8), rng.standard_normal((32, 8)), rng.standard_normal(32)
    want = np.sin(0.3) * 2.0 + np.exp(-0.3)

    # warm up every path once, so that what is measured is growth, not first use
    for m in (gradc.load(gcm), gradc.compile(src), gradc.load(jit_gcm)):
        m.s(0.3, 2.0), m.loss_grad(w, x, y)
    report = Report()
    held = {}

    def load(i):
        held["m"] = gradc.load(gcm)

    def cached(i):
        held["m"] = gradc.compile(src)

    def jit(i):
        held["m"] = gradc.load(jit_gcm)

    start = time.perf_counter()
    times = {"gradc.load (shared library)": loop(report, "gradc.load (shared library)", args.loads, load),
             "gradc.compile from the cache": loop(report, "gradc.compile from the cache", args.loads, cached),
             "gradc.load (MCJIT)": loop(report, "gradc.load (MCJIT)", args.mcjit_loads, jit)}
    m = gradc.load(gcm)
    assert abs(m.s(0.3, 2.0) - want) < 1e-12
    half = args.calls // 2
    s, g = m.s, m.loss_grad
    times["calls of s (scalars)"] = loop(report, "calls of s (scalars)", half, lambda i: s(0.3, 2.0))
    times["calls of loss_grad (arrays)"] = loop(report, "calls of loss_grad (arrays)", args.calls - half,
                                                lambda i: g(w, x, y))
    assert np.allclose(g(w, x, y), 2 * x.T @ (x @ w - y) / len(y), rtol=1e-12, atol=0)
    gc.collect()
    grown = rss() - report.rss0
    print()
    for what, t in times.items():
        print(f"{what:<32} {t:8.1f} s")
    print(f"loads: {2 * args.loads + args.mcjit_loads:,}, calls: {args.calls:,}, "
          f"time: {time.perf_counter() - start:.0f} s")
    print(f"RSS: {report.rss0 / 2 ** 20:.1f} MiB before, {(report.rss0 + grown) / 2 ** 20:.1f} MiB after "
          f"({mib(grown)}); mappings: {report.maps0} before, {maps()} after")
    print("flat (under 5 MiB)" if grown < 5 * 2 ** 20 else "NOT flat: grew 5 MiB or more")
    return 0 if grown < 5 * 2 ** 20 else 1


if __name__ == "__main__":
    sys.exit(main())
