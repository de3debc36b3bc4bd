"""Benchmarks: each workload on gradc and on every installed peer, checked for agreement, then timed.

    python benchmarks/run.py [--threads N] [--only W1,W3] [--quick] [--avx2]

Prints one table: median time per call, each peer's ratio to gradc (above 1: gradc is faster)
and the machine's lower bound for the workload, measured in the same run. With the extra `mlir`
installed, W2-W5 also get a row "gradc iree": the same program compiled by IREE.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
TARGET = ["cpu"]
CPU = {}                 # --cpu, --cpu-features: gradc's code for another CPU than this one

# --avx2: every system held to AVX2 and FMA on an AVX-512 machine, set before any is imported:
# gradc's code for x86-64-v3, the BLAS everyone calls (NumPy's OpenBLAS: gradc's, NumPy's; MKL
# and oneDNN: PyTorch's), NumPy's own loops, PyTorch's kernels and torch.compile's (Inductor
# reads ATEN_CPU_CAPABILITY), XLA's code generator
AVX2_ENV = {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL",
            "ATEN_CPU_CAPABILITY": "avx2"}


HELD = [False]


def hold_to_avx2():
    HELD[0] = True
    os.environ.update(AVX2_ENV)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()
    # Inductor's cache does not tell its AVX-512 kernels from AVX2 ones: reused here, they gave
    # wrong results (W2's sum off by half); a cache of this run's own
    import tempfile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradc-bench-avx2-")
    CPU.update(cpu="x86-64-v3")


def set_threads(n: int):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GRADC_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}")
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:n]
        os.sched_setaffinity(0, cpus)


def median_time(fn, min_time=0.4, min_reps=5, max_reps=100000):
    fn()
    fn()
    times, total = [], 0.0
    while (total < min_time or len(times) < min_reps) and len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return statistics.median(times)


def flat(x):
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in flat(item)]
    if hasattr(x, "detach"):
        x = x.detach().numpy()
    import numpy as np
    return [np.asarray(x, dtype=np.float64)]


def agree(a, b, tol) -> str | None:
    import numpy as np
    if len(a) != len(b):
        return f"{len(a)} results vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            return f"result {i}: shape {x.shape} vs {y.shape}"
        err = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
        if not err <= tol:
            return f"result {i}: relative error {err:.2e}"
    return None


def torch_compiled(torch, loss, wrap):
    """wrap(torch.compile(loss)), run once to compile; None (and why, on stderr) where
    torch.compile cannot work here (no compiler toolchain)."""
    try:
        compiled = torch.compile(loss)
        wrap(compiled)()
        return wrap(compiled)
    except Exception as ex:
        print(f"torch.compile unavailable: {type(ex).__name__}: {str(ex)[:100]}", file=sys.stderr)
        return None


def compare(title, systems, tol, min_time):
    """Check every system against the first, time each (median per call) and print the table;
    returns {name: seconds}."""
    ref_name = next(iter(systems))
    ref = flat(systems[ref_name]())
    for name, fn in systems.items():
        err = agree(flat(fn()), ref, tol)
        if err:
            print(f"{name} disagrees with {ref_name}: {err}", file=sys.stderr)
    times = {name: median_time(fn, min_time) for name, fn in systems.items()}
    base = times[ref_name]
    print(title)
    print(f"{'system':<20}{'median ms':>12}{'vs ' + ref_name:>10}")
    for name, t in times.items():
        print(f"{name:<20}{t * 1e3:>12.2f}{t / base:>10.2f}")
    return times


# ---- inputs


def inputs(name, np, scale):
    rng = np.random.default_rng(0)
    f32 = np.float32
    if name == "W1":
        return [np.float64(2.0), np.float64(3.0)]
    if name.startswith("W2"):
        n = int(float(name.split("@")[1]) * scale)
        return [rng.uniform(-2, 2, n).astype(f32)]
    if name == "W3":
        n, d = 4096, 512
        return [(rng.normal(size=d) * 0.05).astype(f32), f32(0.1), rng.normal(size=(n, d)).astype(f32),
                (rng.random(n) < 0.5).astype(f32)]
    if name == "W4":
        n, d, h, c = 256, 784, 512, 10
        labels = rng.integers(0, c, n)
        return [(rng.normal(size=(d, h)) * 0.03).astype(f32), np.zeros(h, f32),
                (rng.normal(size=(h, c)) * 0.05).astype(f32), np.zeros(c, f32),
                rng.normal(size=(n, d)).astype(f32), np.eye(c, dtype=f32)[labels]]
    n = int(1e6 * scale)
    return [rng.uniform(-1, 1, n), rng.normal(size=n)]


def bounds(np, threads, quick):
    """(bytes/s, flop/s) measured here: a threaded copy and numpy's matrix product."""
    import threading
    n = (16 if quick else 64) << 20
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    chunks = np.array_split(np.arange(n), threads)

    def copy(c):
        np.copyto(dst[c[0]:c[-1] + 1], src[c[0]:c[-1] + 1])

    def threaded():
        ts = [threading.Thread(target=copy, args=(c,)) for c in chunks]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    bw = 2 * src.nbytes / min(median_time(threaded, 0.3) for _ in range(3))
    m = 1024 if quick else 2048
    a = np.ones((m, m), np.float32)
    flops = 2 * m ** 3 / min(median_time(lambda: a @ a, 0.3) for _ in range(2))
    return bw, flops


def bound_of(name, args, bw, flops):
    if name.startswith("W2"):
        return 2 * args[0].nbytes / bw                       # read x, write the gradient
    if name == "W3":
        return args[2].nbytes / bw                           # read X once
    if name == "W4":
        W1, _, W2, _, X, _ = args
        n, d, h, c = X.shape[0], X.shape[1], W1.shape[1], W2.shape[1]
        # X @ W1 and X^T @ dh (no gradient for X), then three products with W2
        return (2 * 2 * n * d * h + 3 * 2 * n * h * c) / flops
    if name == "W5":
        return 3 * args[0].nbytes / bw                       # read x, t; write Hv
    return None


# ---- systems


def systems(name, args, np):
    """(system name, factory returning (call, normalize)) for what is installed."""
    import gradc
    key = name.split("@")[0]
    out = []
    src = {"W1": "w1_latency", "W2": "w2_elementwise", "W3": "w3_logistic", "W4": "w4_mlp", "W5": "w5_hvp"}[key]
    fname = "hvp" if key == "W5" else "vg"

    def gradc_factory():
        f = getattr(gradc.compile(str(HERE / "workloads" / f"{src}.ad"), target=TARGET[0], **CPU), fname)
        return (lambda: f(*args)), flat
    out.append(("gradc", gradc_factory))
    if key != "W1" and TARGET[0] != "iree" and gradc.api.target_available("iree")[0]:
        # the same program as upstream MLIR compiled by IREE (the extra `mlir`)
        def iree_factory():
            f = getattr(gradc.compile(str(HERE / "workloads" / f"{src}.ad"), target="iree"), fname)
            return (lambda: f(*args)), flat
        out.append(("gradc iree", iree_factory))
    import peers
    hand = getattr(peers, f"numpy_{key.lower()}")
    out.append(("numpy by hand", lambda: ((lambda: hand(*args)), flat)))
    try:
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        targs = [torch.from_numpy(np.asarray(a)) if np.ndim(a) else torch.tensor(a) for a in args]
        if key == "W4":
            targs[5] = targs[5].argmax(1)                   # class indices
        out.append(("pytorch", lambda: (peers.torch_eager(torch, key, targs), flat)))

        def compiled():
            call = peers.torch_compiled(torch, key, targs)
            norm = flat if key == "W5" else (lambda r: flat(r[1]) + flat(r[0]))
            return call, norm
        out.append(("torch.compile", compiled))
    except ImportError:
        pass
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        jargs = [jax.numpy.asarray(a) for a in args]
        out.append(("jax.jit", lambda: (peers.jax_fn(jax, key, jargs), flat)))
    except ImportError:
        pass
    try:
        import pytensor  # noqa: F401
        pargs = [np.asarray(a) for a in args]
        out.append(("pytensor", lambda: (peers.pytensor_fn(key, pargs), flat)))
    except ImportError:
        pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    p.add_argument("--quick", action="store_true", help="smaller W2/W5 inputs, shorter timings")
    p.add_argument("--target", default="cpu", help="gradc's target (cpu, or reference for the NumPy evaluator)")
    p.add_argument("--cpu", help="compile gradc's code for this CPU (e.g. znver3: AVX2 on an AVX-512 machine)")
    p.add_argument("--cpu-features", default="", help="LLVM CPU features to turn on or off for gradc, e.g. -avx512f")
    p.add_argument("--avx2", action="store_true",
                   help="hold every system to AVX2 (an AVX2 machine's figures on an AVX-512 one)")
    p.add_argument("--cold", nargs=2, metavar=("WORKLOAD", "SYSTEM"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    TARGET[0] = a.target
    if a.cpu or a.cpu_features:
        CPU.update(cpu=a.cpu, cpu_features=a.cpu_features)
    if a.avx2:
        hold_to_avx2()
    set_threads(a.threads)
    sys.path.insert(0, str(HERE))
    if a.cold:
        print(cold_start(*a.cold))
        return 0
    import numpy as np
    names = ["W1", "W2@1e6", "W2@1e7", "W3", "W4", "W5"]
    if a.only and a.only.strip().upper() == "W6":
        names = []
    if a.only:
        keep = {w.strip().upper() for w in a.only.split(",")}
        names = [n for n in names if n.split("@")[0] in keep]
    scale = 0.1 if a.quick else 1.0
    bw, flops = bounds(np, a.threads, a.quick)
    import gradc
    from gradc.backends import BACKENDS, Options
    host = BACKENDS["cpu"].host_facts(Options(**CPU))
    avx = "AVX-512" if "+avx512f" in host["features"].split(",") else "AVX2" if "+avx2" in \
        host["features"].split(",") else "no AVX2"
    print(f"# gradc benchmarks, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {a.threads} threads for every system; gradc's code for "
          f"{host['cpu']} ({avx}){' (--cpu)' if CPU and not a.avx2 else ''}"
          f"{'; every system held to AVX2 (--avx2)' if a.avx2 else ''}")
    print(f"# measured here: memory bandwidth {bw / 1e9:.1f} GB/s, float32 matrix product {flops / 1e9:.1f} GFLOP/s")
    print(f"{'workload':10} {'system':15} {'median':>12} {'vs gradc':>9} {'bound':>10}  note")
    failures = 0
    for name in names:
        args = inputs(name, np, scale)
        tol = 1e-9 if name in ("W1", "W5") else 2e-3
        bound = bound_of(name.split("@")[0], args, bw, flops)
        ref, base = None, None
        for sysname, factory in systems(name, args, np):
            try:
                call, norm = factory()
                result = norm(call())
            except Exception as ex:     # a peer that cannot run this workload is reported, not fatal
                print(f"{name:10} {sysname:15} {'-':>12} {'':>9} {'':>10}  failed: {type(ex).__name__}: {str(ex)[:80]}")
                continue
            if ref is None:
                ref = result
            bad = agree(result, ref, tol)
            if bad:
                failures += sysname == "gradc"
                print(f"{name:10} {sysname:15} {'-':>12} {'':>9} {'':>10}  disagrees with gradc: {bad}")
                continue
            # let the thread pools of whatever ran before go idle: BLAS, OpenMP and Eigen
            # workers spin for a while after their last task and would take this system's cores
            time.sleep(0.3)
            t = median_time(call, 0.15 if a.quick else 0.4)
            base = base or t
            ratio = f"{t / base:8.2f}x" if sysname != "gradc" else ""
            bnd = f"{bound * 1e6:8.0f}us" if bound and sysname == "gradc" else ""
            print(f"{name:10} {sysname:15} {fmt(t):>12} {ratio:>9} {bnd:>10}")
        sys.stdout.flush()
    grad_ratios(names, np, scale)
    if not a.only or "W6" in a.only.upper():
        compile_times(a.threads)
    return 1 if failures else 0


def fmt(t):
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


FORWARD = {"W1": ("w1_latency", "z", "vg"), "W2": ("w2_elementwise", "f", "vg"), "W3": ("w3_logistic", "loss", "vg"),
           "W4": ("w4_mlp", "loss", "vg"), "W5": ("w5_hvp", "rosen", "hvp")}


def grad_ratios(names, np, scale):
    """gradc's derivative function against its forward function: the cheap-gradient principle."""
    import gradc
    print(f"\n{'gradc':10} {'forward':>12} {'derivative':>12} {'ratio':>7}")
    for name in names:
        src, fwd, der = FORWARD[name.split("@")[0]]
        m = gradc.compile(str(HERE / "workloads" / f"{src}.ad"), target=TARGET[0], **CPU)
        args = inputs(name, np, scale)
        fargs = args[:1] if fwd == "rosen" else args
        time.sleep(0.3)
        tf = median_time(lambda: getattr(m, fwd)(*fargs), 0.3)
        time.sleep(0.3)
        td = median_time(lambda: getattr(m, der)(*args), 0.3)
        print(f"{name:10} {fmt(tf):>12} {fmt(td):>12} {td / tf:6.2f}x")


def cold_start(name, system):
    """Run in a fresh process: seconds from nothing to the first result of one system."""
    import numpy as np
    import gradc
    args = inputs(name, np, 1.0)
    factories = dict(systems(name, args, np)) if not system.startswith("gradc") else {}
    if system == "gradc":
        import gradc.compiler.codegen  # noqa: F401  (imported, like the peers' libraries)
        import gradc.compiler.pipeline  # noqa: F401
    t0 = time.perf_counter()          # libraries are imported by now: this is compile time
    if system == "gradc":
        src = {"W3": "w3_logistic", "W4": "w4_mlp"}[name]
        gradc.compile((HERE / "workloads" / f"{src}.ad").read_text(), target=TARGET[0], cache=False, **CPU)
    elif system == "gradc load":
        gradc.load(os.environ["GRADC_BENCH_GCM"])
    else:
        call, _ = factories[system]()
        call()
    return time.perf_counter() - t0


def compile_times(threads):
    """W6: cold compile of W3 and W4 for each system, each in a fresh process; gradc's .gcm load."""
    import subprocess
    import tempfile
    import gradc
    print(f"\n{'W6 cold start':14} {'system':15} {'seconds':>10}")
    with tempfile.TemporaryDirectory() as d:
        gcm = os.path.join(d, "w4.gcm")
        gradc.build(str(HERE / "workloads" / "w4_mlp.ad"), gcm)
        env = dict(os.environ, GRADC_BENCH_GCM=gcm)
        runs = [(w, s) for w in ("W3", "W4") for s in ("gradc", "torch.compile", "jax.jit", "pytensor")]
        for name, system in runs + [("W4", "gradc load")]:
            held = ["--avx2"] if HELD[0] else [f"--{k.replace('_', '-')}={v}" for k, v in CPU.items() if v]
            res = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--target", TARGET[0],
                                  *held, "--cold", name, system], capture_output=True, text=True, env=env)
            t = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else None
            shown = fmt(float(t)) if t else "failed: " + (res.stderr.strip().splitlines() or ["?"])[-1][:60]
            print(f"{name:14} {system:15} {shown:>10}")


if __name__ == "__main__":
    sys.exit(main())
