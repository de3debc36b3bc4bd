"""The native libraries compiled code calls (libm, libmvec, BLAS, libgomp), and the globals that reach them."""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading

import numpy as np

_lock = threading.Lock()
_state = {}
def _init():
    with _lock:
        if not _state:
            # libm by name, so expm1, log1p, tanf... resolve even if the process did not link it;
            # libmvec: the vector variants loops call. Global, so that a module's shared library
            # finds them at dlopen; MCJIT is given them too (jit.py). By soname first:
            # find_library runs ldconfig or a compiler, tens of milliseconds of every load
            _state["math"] = []
            for soname, name in (("libm.so.6", "m"), ("libmvec.so.1", "mvec")):
                lib = _dlopenable(soname) or _find_library(name)
                if lib:
                    try:
                        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        continue
                    _state["math"].append(lib)
            _state["blas"] = _find_blas()
            _state["gomp"] = _find_gomp()
            tune_malloc()


def _dlopenable(soname):
    """soname if the dynamic loader finds it, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    return soname


def tune_malloc():
    """Keep freed large blocks in the heap for reuse instead of handing them back to the OS.

    glibc maps every block over 128 KiB fresh and unmaps it on free, so each call that
    allocates a large result or intermediate pays a page fault per 4 KiB touched: that cost
    exceeded the arithmetic several times over in the benchmarks. Off with GRADC_MALLOC_TUNING=0.
    """
    if os.environ.get("GRADC_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


# the thread count every loaded module reads at each call (its gradc_num_threads points here)
_threads = ctypes.c_int32(1)
# {lock, calls of gradc inside a region that multiplies, BLAS's thread count to restore}: one
# per process, shared by every module (compiler/codegen/cpu/parallel.py, blas_single)
_blas_state = (ctypes.c_int64 * 3)()


def _default_threads() -> int:
    for var in ("GRADC_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            n = int(os.environ.get(var, "").split(",")[0])
        except ValueError:
            continue
        if n > 0:
            return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_threads.value = _default_threads()


def set_num_threads(n: int):
    """Threads that large loops may use from the next call on (1: always single-threaded)."""
    _threads.value = max(1, int(n))


def get_num_threads() -> int:
    return _threads.value


def _find_gomp():
    """Addresses of libgomp's entry points, or None: then every loop runs on the calling thread.

    gradc loads its own copy by full path (a second copy when another library brought one),
    so that it can give its idle workers a short spin-wait: a libgomp loaded by someone else
    (torch's, say) keeps its workers spinning after each region, and they then take the cores
    OpenBLAS needs (W4 ran 8x slower). Another copy is used only if no system one is found.
    GRADC_NO_OPENMP=1 turns threading off.
    """
    if os.environ.get("GRADC_NO_OPENMP"):
        return None
    candidates = _system_gomp()
    try:
        with open("/proc/self/maps") as f:
            candidates += sorted({line.split()[-1] for line in f if "libgomp" in line.rsplit("/", 1)[-1]})
    except OSError:
        pass
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pat in ("torch/lib/libgomp*.so*", "scikit_learn.libs/libgomp*.so*", "torch.libs/libgomp*.so*"):
        candidates += sorted(glob.glob(os.path.join(base, pat)))
    for path in candidates:
        try:
            lib = _load_gomp(path)
            fns = [lib.GOMP_parallel, lib.GOMP_barrier, lib.omp_get_thread_num, lib.omp_get_num_threads]
        except (OSError, AttributeError):
            continue
        _state["gomp_lib"] = lib              # keep it loaded
        return [ctypes.cast(f, ctypes.c_void_p).value for f in fns]
    return None


def _find_library(name):
    """ctypes.util.find_library, imported when first needed (it imports subprocess)."""
    import ctypes.util
    return ctypes.util.find_library(name)


def _system_gomp() -> list:
    """Full paths of the system's libgomp: a bare soname would return a copy already loaded."""
    found = []
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
              "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64"):
        found += sorted(glob.glob(os.path.join(d, "libgomp.so.1")))
    if not found:
        import subprocess              # only here: importing it is a fifth of a module's load
        try:
            out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
            found = [line.split("=>")[-1].strip() for line in out.splitlines()
                     if line.strip().startswith("libgomp.so") and "=>" in line]
        except (OSError, subprocess.SubprocessError):
            pass
    return list(dict.fromkeys(p for p in found if os.path.isfile(p)))


def _load_gomp(path):
    """Load libgomp with a short spin-wait unless the user chose one.

    Its idle workers otherwise spin for about a millisecond after each region, taking the cores
    that OpenBLAS's threads need for the next matmul (W4 ran 6x slower on 2 cores). A region that
    multiplies runs the products on these same workers, OpenBLAS's threads off, so a short
    spin (30,000) keeps them awake across its barriers (a wake-up per barrier cost the CNN step
    0.7 ms of 6.4). libgomp reads the setting once, when loaded, so the environment is
    restored right after.
    """
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return ctypes.CDLL(path)
    os.environ["GOMP_SPINCOUNT"] = "30000"
    try:
        return ctypes.CDLL(path)
    finally:
        del os.environ["GOMP_SPINCOUNT"]


def threads_info() -> str:
    _init()
    return "one thread (no libgomp)" if _state["gomp"] is None else f"up to {get_num_threads()} threads (libgomp)"


def _find_blas():
    """(sgemm, dgemm, ilp64) addresses from NumPy's bundled OpenBLAS, or None to use loop kernels."""
    if os.environ.get("GRADC_NO_BLAS"):
        return None
    base = os.path.dirname(os.path.dirname(np.__file__))
    candidates = []
    for pat in ("numpy.libs/*openblas*", "numpy/.libs/*openblas*", "numpy/.dylibs/*openblas*",
                "scipy_openblas64/lib/*openblas*", "scipy_openblas32/lib/*openblas*"):
        candidates += sorted(glob.glob(os.path.join(base, pat)))
    for name in ("openblas", "blas") if not candidates else ():
        found = _find_library(name)
        if found:
            candidates.append(found)
    names = [("scipy_cblas_{}gemm64_", True), ("cblas_{}gemm64_", True), ("scipy_cblas_{}gemm", False),
             ("cblas_{}gemm", False)]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, ilp64 in names:
            try:
                s, d = (getattr(lib, pattern.format(t)) for t in "sd")
            except AttributeError:
                continue
            if not ilp64 and "64" in os.path.basename(path):
                continue                      # unsuffixed names in a 64-bit-int build: unsure of the ABI
            _state["blas_lib"] = lib           # keep it loaded
            addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value
            gemv = [getattr(lib, pattern.format(t).replace("gemm", "gemv"), None) for t in "sd"]
            # OpenBLAS's thread count, set to one while gradc's own threads multiply matrices
            threads = [next((getattr(lib, n) for n in names if hasattr(lib, n)), None) for names in (
                ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"),
                ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"))]
            if None in threads:
                threads = [None, None]
            return (addr(s), addr(d), ilp64, *(addr(f) if f is not None else None for f in gemv),
                    *(addr(f) if f is not None else None for f in threads))
    return None


def blas_info() -> str:
    _init()
    b = _state["blas"]
    return "loop kernels (no BLAS found)" if b is None else f"BLAS ({'ILP64' if b[2] else 'LP64'})"


def patch_globals(code):
    """Point a loaded module's globals at BLAS, libgomp and the thread count.

    A module of several objects holds a copy per object, NAME in the first and NAME.i in
    object i (compiler/codegen/cpu/__init__.py); code.global_address gives 0 for a copy that is not
    there (an object that never multiplies matrices, say).
    """
    _init()
    blas = _state["blas"]
    # without libgomp the pointers stay null and the code never starts a thread
    gomp = _state["gomp"] or [None] * 4
    values = {"gradc_blas_sgemm": blas and blas[0], "gradc_blas_dgemm": blas and blas[1],
              "gradc_blas_sgemv": blas and blas[3], "gradc_blas_dgemv": blas and blas[4],
              "gradc_num_threads": ctypes.addressof(_threads),
              "gradc_blas_get_threads": blas and blas[5], "gradc_blas_set_threads": blas and blas[6],
              "gradc_blas_state": blas and blas[5] and ctypes.addressof(_blas_state)}
    values.update(zip(("gradc_gomp_parallel", "gradc_gomp_barrier", "gradc_omp_thread_num",
                       "gradc_omp_num_threads"), gomp))
    for i in range(code.n_objects):
        copy = "" if i == 0 else f".{i}"
        for name, value in values.items():
            addr = code.global_address(name + copy)
            if addr:
                ctypes.c_void_p.from_address(addr).value = value or None
        addr = code.global_address("gradc_blas_ilp64" + copy)
        if addr:
            ctypes.c_int32.from_address(addr).value = int(bool(blas and blas[2]))
