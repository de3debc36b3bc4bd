"""Call latency of a function of scalars (W1) beside the floor of a call from Python on this machine.

    python benchmarks/latency.py [--calls N]

Prints, measured in one run: W1's value_and_grad through its CPython entry (the normal call),
the same function through the ctypes entry (the path without it), and three floors: a Python
function that does nothing, C-level builtins (len(()), math.fabs), and one ctypes call of libm.
Each figure is the best of 7 runs of N calls, in microseconds per call.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import platform
import sys
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent


def per_call(fn, calls: int) -> float:
    return min(timeit.repeat(fn, number=calls, repeat=7)) / calls * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200_000)
    a = p.parse_args(argv)
    import numpy as np
    import gradc
    from gradc.runtime.cpu import CpuFunction
    m = gradc.compile(str(HERE / "workloads" / "w1_latency.ad"))
    vg = m.vg
    x, y = np.float64(2.0), np.float64(3.0)
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    fabs = libm.fabs
    fabs.restype, fabs.argtypes = ctypes.c_double, [ctypes.c_double]
    nothing = lambda: None                      # noqa: E731
    rows = [("gradc W1 vg(x, y), CPython entry", lambda: vg(x, y))]
    if vg._native is not None:
        checked = CpuFunction.__call__
        rows.append(("gradc W1 vg(x, y), ctypes entry", lambda: checked(vg, x, y)))
    rows += [("floor: lambda: None", lambda: nothing()), ("floor: len(())", lambda: len(())),
             ("floor: math.fabs(x)", lambda: math.fabs(x)), ("floor: ctypes libm fabs(x)", lambda: fabs(2.0))]
    print(f"# call latency, {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, "
          f"best of 7 x {a.calls} calls (each figure includes timeit's own call of a lambda)")
    for name, fn in rows:
        print(f"{name:36} {per_call(fn, a.calls):7.3f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
