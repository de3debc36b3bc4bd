"""Time per element as inputs grow: W2 (an elementwise chain and its gradient, float32) and W5
(a Hessian-vector product, float64), from 1e3 to 1e8 elements.

    python benchmarks/size_scaling.py [--threads N] [--max 1e8] [--plot sizes.png]

gradc beside NumPy by hand (always), PyTorch eager and JAX where they are importable (their
programs are those of benchmarks/peers.py). A table of nanoseconds per element; with --plot
(and matplotlib importable), a PNG of the same. Only the base install is needed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compile_scaling import median_time  # a script beside this one

HERE = Path(__file__).parent


def workload_args(np, key, n):
    rng = np.random.default_rng(0)
    if key == "W2":
        return [rng.uniform(-2, 2, n).astype(np.float32)]
    return [rng.uniform(-1, 1, n), rng.normal(size=n)]


def systems(key, args):
    """(name, call) for gradc and each peer importable here."""
    import numpy as np
    import gradc
    import peers
    src, fname = {"W2": ("w2_elementwise", "vg"), "W5": ("w5_hvp", "hvp")}[key]
    f = getattr(gradc.compile(str(HERE / "workloads" / f"{src}.ad")), fname)
    out = [("gradc", lambda: f(*args))]
    hand = getattr(peers, f"numpy_{key.lower()}")
    out.append(("numpy", lambda: hand(*args)))
    try:
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        targs = [torch.from_numpy(np.asarray(a)) for a in args]
        out.append(("pytorch", peers.torch_eager(torch, key, targs)))
    except ImportError:
        pass
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        jargs = [jax.numpy.asarray(a) for a in args]
        out.append(("jax.jit", peers.jax_fn(jax, key, jargs)))
    except ImportError:
        pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--max", type=float, default=1e8, help="largest size (W5 at 1e8 holds about 5 GB)")
    p.add_argument("--plot", help="write a PNG of the table here (needs matplotlib)")
    a = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GRADC_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    sys.path.insert(0, str(HERE))
    import numpy as np
    sizes = [int(10 ** k) for k in range(3, 9) if 10 ** k <= a.max]
    results = {}                                    # (workload, system) -> [ns per element]
    print(f"# time per element (ns), {a.threads} threads")
    for key in ("W2", "W5"):
        names = None
        for n in sizes:
            args = workload_args(np, key, n)
            row = []
            for name, call in systems(key, args):
                try:
                    t = median_time(call, 0.2 if n < 10 ** 7 else 0.5, reps=3)
                except Exception as ex:             # a peer that cannot run this size is reported
                    print(f"# {key} {name} at {n}: {type(ex).__name__}: {str(ex)[:80]}")
                    t = float("nan")
                row.append((name, t / n * 1e9))
                results.setdefault((key, name), []).append(t / n * 1e9)
            if names is None:
                names = [r[0] for r in row]
                print(f"\n{key:4} {'elements':>10} " + " ".join(f"{s:>10}" for s in names))
            print(f"{key:4} {n:10.0e} " + " ".join(f"{v:10.2f}" for _, v in row))
            sys.stdout.flush()
            del args
    if a.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("# no matplotlib: no plot")
            return 0
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key in zip(axes, ("W2", "W5")):
            for (k, name), ys in results.items():
                if k == key:
                    ax.loglog(sizes[:len(ys)], ys, marker="o", label=name)
            ax.set_title(key)
            ax.set_xlabel("elements")
            ax.set_ylabel("ns per element")
            ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot)
        print(f"# wrote {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
