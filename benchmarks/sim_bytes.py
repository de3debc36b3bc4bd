"""Kernel launches and global-memory traffic of W2-W5 on the CUDA target, counted by the simulator.

    python benchmarks/sim_bytes.py [--scale 0.1]

No GPU is needed: target cuda-sim runs the very kernels that become PTX and counts every
load and store of global memory as written. The minimum is each input read once and each
output written once; the table shows launches per call, bytes loaded and stored, and their sum
against that minimum (1.00x: no byte more than the minimum).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

SOURCES = {"W2": "w2_elementwise", "W3": "w3_logistic", "W4": "w4_mlp", "W5": "w5_hvp"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.1,
                   help="W2 and W5 sizes relative to the CPU benchmarks' (the simulator runs on the CPU)")
    a = p.parse_args(argv)
    import gradc
    from gradc.runtime import cuda
    from run import inputs
    print(f"{'workload':10} {'launches':>8} {'loaded':>12} {'stored':>12} {'minimum':>12} {'ratio':>7}")
    for name in ("W2@1e6", "W3", "W4", "W5"):
        key = name.split("@")[0]
        args = inputs(name, np, a.scale)
        fname = "hvp" if key == "W5" else "vg"
        f = getattr(gradc.compile(str(HERE / "workloads" / f"{SOURCES[key]}.ad"), target="cuda-sim"), fname)
        with cuda.stats() as st:
            results = f(*args)
        results = results if isinstance(results, tuple) else (results,)
        minimum = sum(np.asarray(x).nbytes for x in args) + sum(np.asarray(r).nbytes for r in results)
        moved = st.bytes_loaded + st.bytes_stored
        print(f"{name:10} {st.launches:8d} {st.bytes_loaded:12,d} {st.bytes_stored:12,d} {minimum:12,d} "
              f"{moved / minimum:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
