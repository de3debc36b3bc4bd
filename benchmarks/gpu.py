"""GPU benchmarks: W2-W5 on the device, gradc's cuda target beside torch.compile and jax.jit.

    python benchmarks/gpu.py [--quick] [--only W2,W5]

Needs an NVIDIA GPU, gradc's cuda target (PyCUDA or cuda-bindings) and PyTorch with CUDA;
JAX with CUDA is timed where installed. Inputs live on the device for every system (gradc takes
the PyTorch tensors through __cuda_array_interface__, without a copy), each system's results
are checked against gradc's first, and then each call is timed with CUDA events on the
default stream (JAX, which runs on its own streams, with the wall clock around
block_until_ready). The bound is the bytes a workload must move (each input read once, each
output written once) at the device-to-device copy bandwidth measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def cuda_time(torch, fn, reps):
    """Median milliseconds of fn() between two CUDA events, fn run reps times after a warm-up."""
    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def wall_time(fn, reps):
    import time
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(torch):
    """Bytes per second of a device-to-device copy of 256 MB."""
    src = torch.ones(64 << 20, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time(torch, lambda: dst.copy_(src), 20)
    return 2 * src.numel() * 4 / (ms / 1e3)


def minimum_bytes(args, results) -> int:
    return sum(a.numel() * a.element_size() for a in args) + \
        sum(r.numel() * r.element_size() for r in results)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tenth of the sizes, fewer repetitions")
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. W2,W5")
    a = p.parse_args(argv)
    import numpy as np
    import torch
    import gradc
    import peers
    from run import agree, inputs
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False      # float32 products as gradc computes them
    names = ["W2@1e6", "W2@1e7", "W3", "W4", "W5"]
    if a.only:
        keep = {w.strip().upper() for w in a.only.split(",")}
        names = [n for n in names if n.split("@")[0] in keep]
    scale, reps = (0.1, 10) if a.quick else (1.0, 50)
    bw = copy_bandwidth(torch)
    print(f"# gradc GPU benchmarks on {torch.cuda.get_device_name()}: device-to-device copy {bw / 1e9:.0f} GB/s")
    print(f"{'workload':10} {'system':15} {'median':>10} {'vs gradc':>9} {'bound':>9}  note")
    src = {"W2": "w2_elementwise", "W3": "w3_logistic", "W4": "w4_mlp", "W5": "w5_hvp"}
    failures = 0
    for name in names:
        key = name.split("@")[0]
        host = inputs(name, np, scale)
        targs = [torch.as_tensor(np.asarray(x)).cuda() for x in host]
        fname = "hvp" if key == "W5" else "vg"
        f = getattr(gradc.compile(str(HERE / "workloads" / f"{src[key]}.ad"), target="cuda"), fname)

        def as_list(r):
            r = r if isinstance(r, (tuple, list)) else (r,)
            return [torch.as_tensor(x, device="cuda") for x in r]
        ref = as_list(f(*targs))
        flat = lambda rs: [np.asarray(x.detach().cpu(), dtype=np.float64) for x in rs]
        bound_ms = minimum_bytes(targs, ref) / bw * 1e3
        systems = [("gradc", lambda: f(*targs), as_list, cuda_time)]
        pt_args = list(targs)
        if key == "W4":
            pt_args[5] = pt_args[5].argmax(1)
        tc = peers.torch_compiled(torch, key, pt_args)
        norm = (lambda r: as_list(r)) if key == "W5" else (lambda r: as_list(r[1]) + as_list(r[0]))
        systems.append(("torch.compile", tc, norm, cuda_time))
        try:
            import jax
            jax.config.update("jax_enable_x64", True)
            jargs = [jax.device_put(np.asarray(x), jax.devices("gpu")[0]) for x in host]
            jf = peers.jax_fn(jax, key, jargs)

            def jnorm(r):
                leaves = jax.tree_util.tree_leaves(r)
                return [torch.as_tensor(np.asarray(x)).cuda() for x in leaves]
            systems.append(("jax.jit", jf, jnorm, lambda torch, fn, reps: wall_time(fn, reps)))
        except Exception as ex:          # no JAX, or a JAX without a GPU
            print(f"{name:10} {'jax.jit':15} {'-':>10} {'':>9} {'':>9}  not run: {type(ex).__name__}: {str(ex)[:60]}")
        base = None
        for sysname, call, normalize, timer in systems:
            try:
                bad = agree(flat(normalize(call())), flat(ref), 1e-9 if key == "W5" else 2e-3)
            except Exception as ex:
                print(f"{name:10} {sysname:15} {'-':>10} {'':>9} {'':>9}  failed: {type(ex).__name__}: {str(ex)[:60]}")
                continue
            if bad:
                failures += 1
                print(f"{name:10} {sysname:15} {'-':>10} {'':>9} {'':>9}  disagrees with gradc: {bad}")
                continue
            ms = timer(torch, call, reps)
            base = base or ms
            ratio = f"{ms / base:8.2f}x" if sysname != "gradc" else ""
            bnd = f"{bound_ms * 1e3:7.0f}us" if sysname == "gradc" else ""
            print(f"{name:10} {sysname:15} {ms * 1e3:8.1f}us {ratio:>9} {bnd:>9}")
        sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
