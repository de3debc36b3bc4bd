"""Run CPU object code: map it with llvmlite's MCJIT, link BLAS and libm, call it through ctypes."""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import subprocess
import sys
import threading

import llvmlite.binding as llvm
import numpy as np

from .fastcall import EXACT_INT, ScalarEntry, entry_address, flat_entry
from .module import NP_DTYPES, Function, Module, Signature, dim_value

_lock = threading.Lock()
_state = {}
ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _init():
    with _lock:
        if not _state:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            # libm by name, so expm1, log1p, tanf... resolve even if the process did not link it;
            # libmvec: the vector variants loops call. By soname first: find_library runs
            # ldconfig or a compiler, tens of milliseconds of every load
            for soname, name in (("libm.so.6", "m"), ("libmvec.so.1", "mvec")):
                lib = _dlopenable(soname) or ctypes.util.find_library(name)
                if lib:
                    llvm.load_library_permanently(lib)
            _state["blas"] = _find_blas()
            _state["gomp"] = _find_gomp()
            _tune_malloc()


def _dlopenable(soname):
    """soname if the dynamic loader finds it, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL(soname)
    except OSError:
        return None
    return soname


def _tune_malloc():
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


def _system_gomp() -> list:
    """Full paths of the system's libgomp: a bare soname would return a copy already loaded."""
    found = []
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
              "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64"):
        found += sorted(glob.glob(os.path.join(d, "libgomp.so.1")))
    if not found:
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
    that OpenBLAS's threads need for the next matmul (W4 ran 6x slower on 2 cores). libgomp reads
    the setting once, when loaded, so the environment is restored right after.
    """
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return ctypes.CDLL(path)
    os.environ["GOMP_SPINCOUNT"] = "1000"
    try:
        return ctypes.CDLL(path)
    finally:
        del os.environ["GOMP_SPINCOUNT"]


def threads_info() -> str:
    _init()
    return "one thread (no libgomp)" if _state["gomp"] is None else f"up to {get_num_threads()} threads (libgomp)"


def host() -> dict:
    _init()
    return {"triple": llvm.get_process_triple(), "cpu": llvm.get_host_cpu_name(),
            "features": llvm.get_host_cpu_features().flatten()}


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
        found = ctypes.util.find_library(name)
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
            return addr(s), addr(d), ilp64, *(addr(f) if f is not None else None for f in gemv)
    return None


def blas_info() -> str:
    _init()
    b = _state["blas"]
    return "loop kernels (no BLAS found)" if b is None else f"BLAS ({'ILP64' if b[2] else 'LP64'})"


class NativeCode:
    """Object code mapped into this process; keeps its engine alive while functions use it."""

    def __init__(self, obj: bytes):
        _init()
        # each engine owns its target machine, so every module gets a fresh one
        tm = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            reloc="pic", codemodel="jitdefault")
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        blas = _state["blas"]
        for name, value in (("gradc_blas_sgemm", blas and blas[0]), ("gradc_blas_dgemm", blas and blas[1]),
                            ("gradc_blas_sgemv", blas and blas[3]), ("gradc_blas_dgemv", blas and blas[4])):
            addr = self.engine.get_global_value_address(name)
            if addr:
                ctypes.c_void_p.from_address(addr).value = value or None
        addr = self.engine.get_global_value_address("gradc_blas_ilp64")
        if addr:
            ctypes.c_int32.from_address(addr).value = int(bool(blas and blas[2]))
        # without libgomp the pointers stay null and the code never starts a thread
        gomp = _state["gomp"] or [None] * 4
        for name, value in zip(("gradc_gomp_parallel", "gradc_gomp_barrier", "gradc_omp_thread_num",
                                "gradc_omp_num_threads"), gomp):
            addr = self.engine.get_global_value_address(name)
            if addr:
                ctypes.c_void_p.from_address(addr).value = value
        addr = self.engine.get_global_value_address("gradc_num_threads")
        if addr:
            ctypes.c_void_p.from_address(addr).value = ctypes.addressof(_threads)

    def address(self, symbol: str) -> int:
        addr = self.engine.get_function_address(symbol)
        if not addr:
            raise LookupError(f"symbol {symbol} is missing from the compiled module")
        return addr


def _data_offset():
    """Offset of an ndarray's data pointer in its object (PyArrayObject_fields.data), if it is there.

    Reading it directly costs 0.1 us against 0.9 us for a.ctypes.data; probed, not assumed.
    """
    probes = [np.zeros(3), np.arange(7, dtype=np.int32)[2:], np.empty((0,))]
    for off in (16, 2 * ctypes.sizeof(ctypes.c_void_p), 4 * ctypes.sizeof(ctypes.c_void_p)):
        if all(ctypes.c_void_p.from_address(id(a) + off).value == a.ctypes.data for a in probes):
            return off
    return None


_OFFSET = _data_offset()
_at = ctypes.c_void_p.from_address


def _pointers(arrays):
    if _OFFSET is None:
        return [a.ctypes.data for a in arrays]
    return [_at(id(a) + _OFFSET).value for a in arrays]


def _shape_maker(shape):
    if all(isinstance(d, int) for d in shape):
        return lambda dims, s=tuple(shape): s
    if all(isinstance(d, int) or d.isidentifier() for d in shape):
        return lambda dims, s=tuple(shape): tuple(dims[d] if d.__class__ is str else d for d in s)
    return lambda dims, s=tuple(shape): tuple(dim_value(d, dims) for d in s)


class CpuFunction(Function):
    """A native function: a lean check for the common call, the full checks otherwise."""

    def __init__(self, sig: Signature, code: NativeCode, symbol: str, dim_names, module_name):
        super().__init__(sig, self._execute_native, module_name)
        self._code = code                      # keep the engine alive
        self._cfunc = ENTRY(code.address(symbol))
        self._dim_names = tuple(dim_names)
        self._n_in, self._n_out = len(sig.params), len(sig.outputs)
        self._in_t = ctypes.c_void_p * self._n_in
        self._out_t = ctypes.c_void_p * self._n_out
        self._dims_t = ctypes.c_int64 * len(self._dim_names)
        self._out_dtypes = [np.dtype(NP_DTYPES[d]) for d, _ in sig.outputs]
        self._makers = [(_shape_maker(s), dt) for (_, s), dt in zip(sig.outputs, self._out_dtypes)]
        self._offsets = any(not (isinstance(d, int) or d.isidentifier()) for _, s in sig.outputs for d in s)
        # per parameter: dtype, rank, and (axis, fixed size or symbol name) for each axis
        self._fast = [(np.dtype(NP_DTYPES[d]), len(s), tuple(enumerate(s))) for _, d, s in sig.params]
        self._scratch = threading.local()
        scalar = entry_address(code, symbol + ".scalar")
        self._scalar = ScalarEntry(sig, scalar) if scalar else None
        self._flat = flat_entry(code, symbol, self._n_in + self._n_out, len(self._dim_names))

    def _fast_check(self, args):
        """(arrays, dims) when every argument is a C-contiguous array of the right type, else None."""
        dims = {}
        for a, (dt, rank, axes) in zip(args, self._fast):
            if type(a) is not np.ndarray or a.dtype != dt or a.ndim != rank or not a.flags.c_contiguous:
                return None
            shape = a.shape
            for axis, want in axes:
                got = shape[axis]
                if want.__class__ is int:
                    if got != want:
                        return None
                elif dims.setdefault(want, got) != got:
                    return None
        return args, dims

    def _dims(self, dims):
        return self._dims_t(*[dims[s] for s in self._dim_names])

    def _run(self, arrays, dims, outs):
        if self._flat is not None:
            rc = self._flat(*_pointers(arrays), *_pointers(outs), *[dims[s] for s in self._dim_names])
        else:
            rc = self._cfunc(self._in_t(*_pointers(arrays)), self._dims(dims), self._out_t(*_pointers(outs)))
        if rc:
            raise MemoryError(f"{self.sig.name}: out of memory for intermediate values")

    def _alloc(self, dims):
        return [np.empty(mk(dims), dt) for mk, dt in self._makers]

    def _execute_native(self, arrays, dims):
        arrays = [np.ascontiguousarray(a) for a in arrays]
        outs = self._alloc(dims)
        self._run(arrays, dims, outs)
        return outs

    def __call__(self, *args, out=None, accumulate=False, **kwargs):
        direct = self._scalar
        if direct is not None and out is None and not accumulate and not kwargs and len(args) == self._n_in:
            # ScalarEntry.plain and .buffer written out: a Python call here costs a tenth of the call
            for a, ok in zip(args, direct.accept):
                c = a.__class__
                if c not in ok and (c is not int or not -EXACT_INT <= a <= EXACT_INT):
                    break
            else:
                try:
                    addr, read = direct.tls.buf
                except AttributeError:
                    addr, read = direct.buffer()
                if direct.call(*args, addr):
                    raise MemoryError(f"{self.sig.name}: out of memory for intermediate values")
                return read()
        checked = None if kwargs or len(args) != self._n_in else self._fast_check(args)
        if checked is None:
            arrays, dims = self.check(args, kwargs)
            arrays = [np.ascontiguousarray(a) for a in arrays]
        else:
            arrays, dims = checked
            if self._offsets:
                arrays, dims = self.check(args, kwargs)     # reports an "N-1" that comes out negative
        if out is None:
            if accumulate:
                raise ValueError(f"{self.sig.name}: accumulate=True needs out= buffers to add into")
            outs = [np.empty(mk(dims), dt) for mk, dt in self._makers]
            if self._flat is None:
                self._run(arrays, dims, outs)
            elif self._flat(*_pointers(arrays), *_pointers(outs), *[dims[s] for s in self._dim_names]):
                raise MemoryError(f"{self.sig.name}: out of memory for intermediate values")
            return self._results(outs)
        return self._call_out(arrays, dims, out, accumulate)

    def _call_out(self, arrays, dims, out, accumulate):
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        shapes = self.sig.output_shapes(dims)
        usable = len(outs) == self._n_out and all(
            isinstance(o, np.ndarray) and o.shape == s and o.dtype == dt and o.flags.c_contiguous
            and o.flags.writeable for o, s, dt in zip(outs, shapes, self._out_dtypes))
        if usable and len({id(o) for o in outs}) == len(outs) and \
                not any(np.may_share_memory(o, a) for o in outs for a in arrays):
            if accumulate:
                # results land in per-thread scratch that is reused from call to call
                tmp = self._scratch_for(shapes)
                self._run(arrays, dims, tmp)
                for o, t in zip(outs, tmp):
                    np.add(o, t, out=o)
            else:
                self._run(arrays, dims, outs)
            results = outs
        else:
            results = self._into(out, self._execute_native(arrays, dims), accumulate)
        return tuple(results) if self.sig.out_tuple else results[0]

    def _scratch_for(self, shapes):
        key = tuple(shapes)
        cache = getattr(self._scratch, "bufs", None)
        if cache is None or cache[0] != key:
            cache = (key, [np.empty(s, dt) for s, dt in zip(shapes, self._out_dtypes)])
            self._scratch.bufs = cache
        return cache[1]


def load_native(name: str, obj: bytes, functions: list, target: str = "cpu") -> Module:
    """A Module of CpuFunctions; functions: [{"signature": ..., "symbol": ..., "dims": [...]}]."""
    code = NativeCode(obj)
    fns = {}
    for f in functions:
        sig = Signature.from_json(f["signature"])
        fns[sig.name] = CpuFunction(sig, code, f["symbol"], f["dims"], name)
    return Module(name, fns, target)
