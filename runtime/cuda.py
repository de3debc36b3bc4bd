"""The CUDA targets at run time: one small driver interface, a launch-plan executor, device arrays.

A driver loads a module's code, allocates and copies device memory and launches kernels. There
are three: PyCUDA (the binding gradc names, used where it is installed), NVIDIA's cuda-bindings
(used where PyCUDA is absent), and the grid simulator (target "cuda-sim"), whose "device
memory" is host memory and whose kernels run on the CPU. Everything above the driver
(argument checks and marshalling, launch configuration, scratch memory, copies, device-array
inputs and outputs, run-time checks) is this file's, the same for all three: the simulator
runs it in the tests on every machine. docs/cuda.md describes it.
"""
from __future__ import annotations

import ctypes
import struct
import threading
from contextlib import contextmanager

import numpy as np

from ..vocab import ITEMSIZE, NP_DTYPES, dim_parts, type_str
from .module import Function, check_failed

_PACK = {"f32": "<f", "f64": "<d", "i32": "<i", "i64": "<q"}
TYPESTR = {"f32": "<f4", "f64": "<f8", "i32": "<i4", "i64": "<i8", "bool": "|b1"}
DTYPE_OF = {np.dtype(v): k for k, v in NP_DTYPES.items()}
SIM = "target 'cuda-sim' runs the same kernels on the CPU"
INSTALL = f"a machine with an NVIDIA GPU and its driver is needed; {SIM}"
BINDING = ("install a CUDA binding: pip install 'gradc[cuda]' (NVIDIA's cuda-bindings; PyCUDA is used "
           f"instead where it is installed); {SIM}")


class CudaUnavailable(RuntimeError):
    """Target "cuda" cannot run here: no binding, or no driver or GPU."""


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


# ---- sizes: the PLAN's SIZE expressions


def size(e, dims: dict) -> int:
    """The value of a SIZE expression (an int, a dim string, or [op, a, b]) for bound dims."""
    if isinstance(e, bool):
        raise ValueError(f"malformed size {e!r}")
    if isinstance(e, int):
        return e
    if isinstance(e, str):
        if e.lstrip("-").isdigit():
            return int(e)
        sym, off = dim_parts(e)
        return max(dims[sym] + off, 0)
    op, a, b = e
    a, b = size(a, dims), size(b, dims)
    if op == "*":
        return a * b
    if op == "+":
        return a + b
    if op == "cdiv":
        return -(-a // b)
    if op == "min":
        return min(a, b)
    if op == "max":
        return max(a, b)
    raise ValueError(f"malformed size {e!r}")


# ---- drivers


class SimDriver:
    """The simulator as a driver: device memory is host memory, kernels run on the CPU.

    It counts, per thread of the host, kernel launches and global-memory bytes (see stats())."""

    name = "cuda-sim"

    def __init__(self):
        self._lock = threading.Lock()
        self._blocks = {}                         # address -> the NumPy bytes that hold it
        self.counters = threading.local()

    def load(self, code: dict):
        from ..compiler.codegen.cuda.kernel import KernelInfo
        from ..compiler.codegen.cuda.simulator import SimModule
        infos = {k: KernelInfo.from_json(v) for k, v in code["kernels"].items()}
        return SimModule.from_ir(code["sim_ir"], infos) if infos else None

    def alloc(self, nbytes: int) -> int:
        buf = np.empty(max(int(nbytes), 1) + 256, np.uint8)
        addr = -(-buf.ctypes.data // 256) * 256          # aligned as cudaMalloc's
        with self._lock:
            self._blocks[addr] = buf
        return addr

    def free(self, addr: int):
        with self._lock:
            self._blocks.pop(addr, None)

    def to_device(self, addr: int, array: np.ndarray):
        ctypes.memmove(addr, array.ctypes.data, array.nbytes)

    def to_host(self, array: np.ndarray, addr: int):
        ctypes.memmove(array.ctypes.data, addr, array.nbytes)

    def copy(self, dst: int, src: int, nbytes: int):
        ctypes.memmove(dst, src, nbytes)

    def launch(self, module, kernel: str, grid: int, block: int, args: list):
        """args: per parameter, (address, element count) for a buffer or a number for a scalar."""
        info = module.infos[kernel]
        slots, sizes = [], []
        for p, a in zip(info.params, args):
            if p.buffer:
                slots.append(a[0])
                sizes.append(a[1])
            else:
                packed = struct.pack(_PACK[p.dtype], float(a) if p.dtype[0] == "f" else int(a))
                slots.append(int.from_bytes(packed.ljust(8, b"\0"), "little"))
                sizes.append(0)
        st = module.launch_raw(kernel, grid, block, slots, sizes)
        c = self.counters
        if getattr(c, "stats", None) is not None:
            c.stats.launches += 1
            c.stats.bytes_loaded += st.bytes_loaded
            c.stats.bytes_stored += st.bytes_stored

    def synchronize(self):
        pass


class BindingsDriver:
    """NVIDIA's cuda-bindings (the `cuda.bindings.driver` module, or `cuda.cuda` before 12.6)."""

    name = "cuda-bindings"

    def __init__(self):
        try:
            from cuda.bindings import driver as cu
        except ImportError:
            from cuda import cuda as cu          # older cuda-python
        self.cu = cu
        try:
            self._check(cu.cuInit(0), "cuInit")
        except CudaError:
            raise
        except Exception as ex:                 # no libcuda.so: the binding cannot even load it
            raise CudaUnavailable(f"target 'cuda': NVIDIA's driver library could not be loaded "
                                  f"({type(ex).__name__}: {ex}); {INSTALL}") from None
        n = self._check(cu.cuDeviceGetCount(), "cuDeviceGetCount")
        if not n:
            raise CudaUnavailable(f"target 'cuda': no CUDA device found; {INSTALL}")
        self.device = self._check(cu.cuDeviceGet(0), "cuDeviceGet")
        self.context = self._check(cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._current = threading.local()

    def _check(self, result, call: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.cu.cuGetErrorName(err)[1] if hasattr(self, "cu") else err
            raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else (tuple(rest) or None)

    def _ctx(self):
        if not getattr(self._current, "set", False):     # the primary context, current in each thread
            self._check(self.cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            self._current.set = True

    def load(self, code: dict):
        self._ctx()
        if not code["kernels"]:
            return None
        module = self._check(self.cu.cuModuleLoadData(code["ptx"].encode() + b"\0"), "cuModuleLoadData")
        return {k: self._check(self.cu.cuModuleGetFunction(module, k.encode()), "cuModuleGetFunction")
                for k in code["kernels"]} | {"__infos__": code["kernels"], "__module__": module}

    def alloc(self, nbytes: int) -> int:
        self._ctx()
        return int(self._check(self.cu.cuMemAlloc(max(int(nbytes), 1)), "cuMemAlloc"))

    def free(self, addr: int):
        self._ctx()
        self._check(self.cu.cuMemFree(addr), "cuMemFree")

    def to_device(self, addr: int, array: np.ndarray):
        self._ctx()
        if array.nbytes:
            self._check(self.cu.cuMemcpyHtoD(addr, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")

    def to_host(self, array: np.ndarray, addr: int):
        self._ctx()
        if array.nbytes:
            self._check(self.cu.cuMemcpyDtoH(array.ctypes.data, addr, array.nbytes), "cuMemcpyDtoH")

    def copy(self, dst: int, src: int, nbytes: int):
        self._ctx()
        if nbytes:
            self._check(self.cu.cuMemcpyDtoD(dst, src, nbytes), "cuMemcpyDtoD")

    def launch(self, module, kernel: str, grid: int, block: int, args: list):
        self._ctx()
        params = module["__infos__"][kernel]["params"]
        values = []
        for (_, dtype, buffer), a in zip(params, args):
            if buffer:
                values.append(ctypes.c_uint64(a[0]))
            else:
                values.append({"f32": ctypes.c_float, "f64": ctypes.c_double, "i32": ctypes.c_int32,
                               "i64": ctypes.c_int64}[dtype](a))
        pointers = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        self._check(self.cu.cuLaunchKernel(module[kernel], grid, 1, 1, block, 1, 1, 0, 0,
                                           ctypes.addressof(pointers), 0), f"cuLaunchKernel({kernel})")

    def synchronize(self):
        self._ctx()
        self._check(self.cu.cuCtxSynchronize(), "cuCtxSynchronize")


class PyCudaDriver:
    """PyCUDA, with the device's primary context made current in each calling thread."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as drv
        self.drv = drv
        try:
            drv.init()
            if drv.Device.count() == 0:
                raise CudaUnavailable(f"target 'cuda': no CUDA device found; {INSTALL}")
            self.context = drv.Device(0).retain_primary_context()
        except drv.Error as ex:
            raise CudaUnavailable(f"target 'cuda': {ex}; {INSTALL}") from None
        self._current = threading.local()

    def _ctx(self):
        if not getattr(self._current, "set", False):
            self.context.push()
            self._current.set = True

    def load(self, code: dict):
        self._ctx()
        if not code["kernels"]:
            return None
        module = self.drv.module_from_buffer(code["ptx"].encode())
        return {k: module.get_function(k) for k in code["kernels"]} | \
            {"__infos__": code["kernels"], "__module__": module}

    def alloc(self, nbytes: int) -> int:
        self._ctx()
        mem = self.drv.mem_alloc(max(int(nbytes), 1))
        self._keep = getattr(self, "_keep", {})
        self._keep[int(mem)] = mem
        return int(mem)

    def free(self, addr: int):
        mem = getattr(self, "_keep", {}).pop(addr, None)
        if mem is not None:
            mem.free()

    def to_device(self, addr: int, array: np.ndarray):
        self._ctx()
        if array.nbytes:
            self.drv.memcpy_htod(addr, array)

    def to_host(self, array: np.ndarray, addr: int):
        self._ctx()
        if array.nbytes:
            self.drv.memcpy_dtoh(array, addr)

    def copy(self, dst: int, src: int, nbytes: int):
        self._ctx()
        if nbytes:
            self.drv.memcpy_dtod(dst, src, nbytes)

    def launch(self, module, kernel: str, grid: int, block: int, args: list):
        self._ctx()
        params = module["__infos__"][kernel]["params"]
        values = []
        for (_, dtype, buffer), a in zip(params, args):
            values.append(np.uintp(a[0]) if buffer else NP_DTYPES[dtype](a))
        module[kernel](*values, block=(block, 1, 1), grid=(grid, 1))

    def synchronize(self):
        self._ctx()
        self.drv.Context.synchronize()


_drivers = {}
_drivers_lock = threading.Lock()


def driver(target: str):
    """The driver of a target, made once per process: CudaUnavailable says why there is none."""
    with _drivers_lock:
        d = _drivers.get(target)
        if d is None:
            d = _drivers[target] = _make_driver(target)
        if isinstance(d, CudaUnavailable):
            raise CudaUnavailable(str(d))
        return d


def _make_driver(target):
    if target == "cuda-sim":
        return SimDriver()
    reasons = []
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as ex:
        reasons.append(f"PyCUDA is not installed ({ex})")
    else:
        try:
            return PyCudaDriver()
        except CudaUnavailable as ex:
            return ex
    try:
        return BindingsDriver()
    except ImportError as ex:
        reasons.append(f"cuda-bindings is not installed ({ex})")
    except CudaUnavailable as ex:
        return ex
    return CudaUnavailable(f"target 'cuda' needs a CUDA binding: {'; '.join(reasons)}; {BINDING}")


def cuda_available() -> tuple:
    """(True, "") where target "cuda" can run, else (False, why not)."""
    try:
        driver("cuda")
    except CudaUnavailable as ex:
        return False, str(ex)
    return True, ""


class Stats:
    """What the simulator counted: kernel launches and bytes of global memory loaded and stored."""

    def __init__(self):
        self.launches = self.bytes_loaded = self.bytes_stored = 0

    def __repr__(self):
        return (f"Stats(launches={self.launches}, bytes_loaded={self.bytes_loaded}, "
                f"bytes_stored={self.bytes_stored})")


@contextmanager
def stats():
    """Count the simulator's launches and global-memory traffic of the calls made in the block
    (on this host thread): `with gradc.runtime.cuda.stats() as s: m.f(x)`, then s.bytes_loaded."""
    c = driver("cuda-sim").counters
    outer, s = getattr(c, "stats", None), Stats()
    c.stats = s
    try:
        yield s
    finally:
        c.stats = outer
        if outer is not None:
            outer.launches += s.launches
            outer.bytes_loaded += s.bytes_loaded
            outer.bytes_stored += s.bytes_stored


# ---- device arrays


class DeviceArray:
    """A C-contiguous array in device memory: what a call on device inputs returns.

    CuPy, PyTorch and Numba take it without a copy (`__cuda_array_interface__`); `.get()` (or
    `np.asarray`) copies it to a NumPy array."""

    def __init__(self, drv, ptr: int, shape: tuple, dtype: str, owner=None):
        self._driver, self.ptr, self.shape, self.gradc_dtype = drv, int(ptr), tuple(shape), dtype
        self._owner = owner                       # what keeps the memory alive

    @property
    def dtype(self):
        return np.dtype(NP_DTYPES[self.gradc_dtype])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * ITEMSIZE[self.gradc_dtype]

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": TYPESTR[self.gradc_dtype], "data": (self.ptr, False),
                "strides": None, "version": 3}

    def get(self) -> np.ndarray:
        a = np.empty(self.shape, NP_DTYPES[self.gradc_dtype])
        self._driver.to_host(a, self.ptr)
        return a

    numpy = get

    def __array__(self, dtype=None, copy=None):
        a = self.get()
        return a if dtype is None else a.astype(dtype)

    def __dlpack_device__(self) -> tuple:
        """(kDLCUDA, 0) on a GPU; (kDLCPU, 0) on cuda-sim, whose device memory is host memory."""
        return (kDLCPU, 0) if self._driver.name == "cuda-sim" else (kDLCUDA, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule of this array, without a copy unless copy=True or dl_device asks for
        another device ((kDLCPU, 0): a host copy). DLPack 1.0 ("dltensor_versioned") where
        max_version allows it, else 0.x. The results of a call are complete when it returns, so
        any consumer stream may read them."""
        dev = self.__dlpack_device__()
        if dev[0] == kDLCPU:
            if stream is not None:
                raise BufferError(f"stream={stream!r}: a tensor on kDLCPU takes stream=None")
        elif stream == 0:
            raise ValueError("stream=0 is ambiguous in DLPack: 1 is CUDA's legacy default stream, "
                             "2 its per-thread default stream")
        versioned = max_version is not None and int(tuple(max_version)[0]) >= 1
        if dl_device is not None and tuple(int(x) for x in dl_device) != dev:
            want = tuple(int(x) for x in dl_device)
            if copy is False:
                raise BufferError(f"dl_device={want} needs a copy of an array on {dev}, and copy=False")
            if want != (kDLCPU, 0):
                raise BufferError(f"dl_device={want}: a gradc device array exports to {dev} or, "
                                  f"by a copy, to the host ({kDLCPU}, 0)")
            a = self.get()
            return _export(a, a.ctypes.data, self.shape, self.gradc_dtype, want, versioned, copied=True)
        if copy:
            mem = _Allocation(self._driver, self.nbytes)
            self._driver.copy(mem.ptr, self.ptr, self.nbytes)
            self._driver.synchronize()
            return _export(mem, mem.ptr, self.shape, self.gradc_dtype, dev, versioned, copied=True)
        owner = self if self._owner is None else self._owner
        return _export(owner, self.ptr, self.shape, self.gradc_dtype, dev, versioned)

    def __repr__(self):
        return f"<gradc device array {type_str(self.shape, self.gradc_dtype)} on {self._driver.name}>"


class _Allocation:
    """Device memory freed with the last array that uses it."""

    def __init__(self, drv, nbytes):
        self.driver, self.ptr = drv, drv.alloc(nbytes)

    def __del__(self):
        try:
            self.driver.free(self.ptr)
        except Exception:          # interpreter shutdown: the driver may be gone
            pass


def to_device(array, target: str = "cuda") -> DeviceArray:
    """A NumPy array copied to the device of target ("cuda" or "cuda-sim")."""
    a = np.ascontiguousarray(array)
    dtype = DTYPE_OF.get(a.dtype)
    if dtype is None:
        raise TypeError(f"to_device: arrays of float32, float64, int32, int64 or bool, not {a.dtype}")
    drv = driver(target)
    mem = _Allocation(drv, a.nbytes)
    drv.to_device(mem.ptr, a)
    return DeviceArray(drv, mem.ptr, a.shape, dtype, mem)


class _DeviceInput:
    """A device-array argument, checked: its pointer, shape and dtype."""

    def __init__(self, ptr, shape, dtype, hold=None):
        self.ptr, self.shape, self.gradc_dtype = ptr, tuple(shape), dtype
        self.hold = hold          # a consumed DLPack tensor, released after the call

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))


# ---- DLPack: results exported as DLPack capsules, DLPack tensors taken as inputs
#
# The structs of dlpack.h (DLPack 0.x "dltensor" and 1.x "dltensor_versioned" capsules). A
# consumer renames the capsule it takes ("used_dltensor"...) and then owns the managed tensor:
# it calls the deleter when done. A producer's capsule destructor calls the deleter only if the
# capsule still has its first name (nobody consumed it).

kDLCPU, kDLCUDA, kDLCUDAHost, kDLCUDAManaged = 1, 2, 3, 13
_DL_DEVICE_NAMES = {1: "kDLCPU", 2: "kDLCUDA", 3: "kDLCUDAHost", 4: "kDLOpenCL", 7: "kDLVulkan",
                    8: "kDLMetal", 9: "kDLVPI", 10: "kDLROCM", 11: "kDLROCMHost", 13: "kDLCUDAManaged",
                    14: "kDLOneAPI", 15: "kDLWebGPU", 16: "kDLHexagon", 17: "kDLMAIA"}
_DL_CODES = {0: "int", 1: "uint", 2: "float", 3: "opaque", 4: "bfloat", 5: "complex", 6: "bool"}
_DL_DTYPE = {(2, 32): "f32", (2, 64): "f64", (0, 32): "i32", (0, 64): "i64", (6, 8): "bool", (1, 8): "bool"}
_DL_OF = {"f32": (2, 32), "f64": (2, 64), "i32": (0, 32), "i64": (0, 64), "bool": (6, 8)}
DLPACK_FLAG_BITMASK_IS_COPIED = 1 << 1


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DLDeleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DLDeleter)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", _DLDeleter),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


# capsule names: module constants, since a capsule keeps the pointer to its name, not a copy
_NAME = b"dltensor"
_USED = b"used_dltensor"
_NAME_V = b"dltensor_versioned"
_USED_V = b"used_dltensor_versioned"

_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)   # the capsule as an address: no refcounting


def _capi(name, restype, *argtypes):
    """A prototype of our own for a C-API function (not ctypes.pythonapi's shared attributes,
    whose argtypes another library may set otherwise)."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ctypes.pythonapi))


_addr_is_valid = _capi("PyCapsule_IsValid", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)
_addr_get_pointer = _capi("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
_capsule_new = _capi("PyCapsule_New", ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, _CapsuleDestructor)
_py_is_valid = _capi("PyCapsule_IsValid", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
_py_get_pointer = _capi("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)
_py_set_name = _capi("PyCapsule_SetName", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)

# exported managed tensors, by address: the ctypes structs (their memory) and the memory owner
_exported = {}
_exported_lock = threading.Lock()


def _release_export(addr):
    with _exported_lock:
        _exported.pop(addr, None)


@_DLDeleter
def _dl_deleter(addr):
    """The deleter of an exported tensor: drops its structs and its reference to the memory."""
    try:
        _release_export(addr)
    except Exception:          # interpreter shutdown
        pass


@_CapsuleDestructor
def _capsule_destructor(cap):
    """A capsule nobody consumed (it still has its first name) deletes its managed tensor."""
    try:
        for name in (_NAME, _NAME_V):
            if _addr_is_valid(cap, name):
                _release_export(_addr_get_pointer(cap, name))
                return
    except Exception:          # interpreter shutdown
        pass


def _export(owner, ptr, shape, dtype, device, versioned, copied=False):
    """A DLPack capsule of C-contiguous memory at ptr, holding a reference to owner until deleted."""
    n = len(shape)
    shape_arr = (ctypes.c_int64 * max(n, 1))(*shape)
    code, bits = _DL_OF[dtype]
    t = _DLTensor(ptr, _DLDevice(*device), n, _DLDataType(code, bits, 1),
                  ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64)), None, 0)
    if versioned:
        m = _DLManagedTensorVersioned(_DLPackVersion(1, 0), None, _dl_deleter,
                                      DLPACK_FLAG_BITMASK_IS_COPIED if copied else 0, t)
    else:
        m = _DLManagedTensor(t, None, _dl_deleter)
    addr = ctypes.addressof(m)
    with _exported_lock:
        _exported[addr] = (m, shape_arr, owner)
    try:
        return _capsule_new(addr, _NAME_V if versioned else _NAME, _capsule_destructor)
    except BaseException:
        _release_export(addr)
        raise


class _DLPackHold:
    """A consumed DLPack tensor: the managed tensor is ours until release() calls its deleter."""

    def __init__(self, addr, deleter):
        self.addr, self.deleter = addr, deleter

    def release(self):
        addr, self.addr = self.addr, None
        if addr is not None and self.deleter:
            ctypes.cast(self.deleter, _DLDeleter)(addr)

    def __del__(self):
        try:
            self.release()
        except Exception:          # interpreter shutdown
            pass


def _dl_dtype_name(code, bits, lanes):
    s = f"{_DL_CODES.get(code, f'code {code} ')}{bits}"
    return s if lanes == 1 else f"{s}x{lanes}"


def _consume_dlpack(v, stream):
    """v.__dlpack__ taken as its consumer: (the DLTensor, a _DLPackHold that deletes it, flags).

    DLPack 1.x where v gives it (max_version=(1, 0)), else 0.x. The capsule is renamed
    "used_dltensor[_versioned]": the managed tensor is then ours, until the hold's release()."""
    kwargs = {} if stream is None else {"stream": stream}
    try:
        cap = v.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:                  # a producer of DLPack 0.x: no max_version
        cap = v.__dlpack__(**kwargs)
    for name, used, versioned in ((_NAME_V, _USED_V, True), (_NAME, _USED, False)):
        if type(cap).__name__ == "PyCapsule" and _py_is_valid(cap, name):
            addr = _py_get_pointer(cap, name)
            if versioned:
                m = _DLManagedTensorVersioned.from_address(addr)
                if m.version.major != 1:
                    # the struct of another major version is unknown: leave it to the producer
                    raise BufferError(f"DLPack {m.version.major}.{m.version.minor} tensor: "
                                      f"gradc reads DLPack 1.x and 0.x")
                flags = m.flags
            else:
                m = _DLManagedTensor.from_address(addr)
                flags = 0
            _py_set_name(cap, used)
            deleter = ctypes.cast(m.deleter, ctypes.c_void_p).value
            return m.dl_tensor, _DLPackHold(addr, deleter), flags
    raise TypeError(f"__dlpack__ returned {type(cap).__name__}, not a capsule named 'dltensor' "
                    f"or 'dltensor_versioned'")


# ---- functions


def _c_contiguous(shape, strides, unit) -> bool:
    """Whether strides (in units of `unit`) lay shape out row-major without gaps (unit axes aside)."""
    step = unit
    for d, s in zip(reversed(shape), reversed(strides)):
        if d > 1 and s != step:
            return False
        step *= d
    return True


class CudaFunction(Function):
    """A function of a module compiled for cuda or cuda-sim: NumPy arrays in (copied to the
    device) and NumPy arrays out, or device arrays in and device arrays out, without a copy."""

    def __init__(self, sig, plan: dict, loaded, drv, module_name="module"):
        super().__init__(sig, self._run, module_name)
        self.plan, self.loaded, self.driver = plan, loaded, drv
        self._scratch = threading.local()

    def _convert(self, name, dtype, shape, v):
        cai = getattr(v, "__cuda_array_interface__", None)
        if cai is None:
            if (hasattr(v, "__dlpack__") and hasattr(v, "__dlpack_device__")
                    and not isinstance(v, (np.ndarray, np.generic))):
                return self._convert_dlpack(name, dtype, shape, v)
            return super()._convert(name, dtype, shape, v)
        want = TYPESTR[dtype]
        got = cai.get("typestr")
        if got != want and not (dtype == "bool" and got in ("|b1", "|u1")):
            raise TypeError(f"{self.sig.name}: parameter '{name}' expects {type_str(shape, dtype)}, "
                            f"got a device array of typestr {got}")
        shp = tuple(cai["shape"])
        strides = cai.get("strides")
        if strides is not None and not _c_contiguous(shp, strides, ITEMSIZE[dtype]):
            raise ValueError(f"{self.sig.name}: parameter '{name}': the device array must be "
                             f"C-contiguous (strides {strides})")
        return _DeviceInput(int(cai["data"][0]), shp, dtype)

    def _convert_dlpack(self, name, dtype, shape, v):
        """A DLPack tensor as an input: on a CUDA device (or, on cuda-sim, in host memory), taken
        without a copy and held until the call returns; on the host with target cuda, copied."""
        where = f"{self.sig.name}: parameter '{name}'"
        sim = self.driver.name == "cuda-sim"
        dev_type, dev_id = (int(x) for x in v.__dlpack_device__())
        if dev_type == kDLCPU and not sim:
            return super()._convert(name, dtype, shape, np.from_dlpack(v))
        accepted = (kDLCPU, kDLCUDAHost, kDLCUDAManaged) if sim else (kDLCUDA, kDLCUDAHost, kDLCUDAManaged)
        dev_name = _DL_DEVICE_NAMES.get(dev_type, f"device type {dev_type}")
        if dev_type not in accepted:
            why = " (target cuda-sim reads host memory only)" if sim and dev_type == kDLCUDA else ""
            raise TypeError(f"{where} expects {type_str(shape, dtype)}, got a DLPack tensor on "
                            f"{dev_name}{why}")
        if dev_type != kDLCPU and dev_id != 0 and not sim:
            raise ValueError(f"{where}: the DLPack tensor is on CUDA device {dev_id}; gradc runs on device 0")
        # DLPack for CUDA: stream=1 is the legacy default stream, the one gradc launches on
        t, hold, _ = _consume_dlpack(v, None if dev_type == kDLCPU or sim else 1)
        try:
            dt = t.dtype
            got = _DL_DTYPE.get((dt.code, dt.bits)) if dt.lanes == 1 else None
            if got != dtype and not (dtype == "bool" and got == "bool"):
                raise TypeError(f"{where} expects {type_str(shape, dtype)}, got a DLPack tensor of "
                                f"dtype {_dl_dtype_name(dt.code, dt.bits, dt.lanes)}")
            if t.device.device_type != dev_type:
                raise TypeError(f"{where}: the DLPack tensor is on "
                                f"{_DL_DEVICE_NAMES.get(t.device.device_type, t.device.device_type)}, "
                                f"but __dlpack_device__ said {dev_name}")
            shp = tuple(int(t.shape[i]) for i in range(t.ndim))
            if t.strides:
                strides = tuple(int(t.strides[i]) for i in range(t.ndim))
                if not _c_contiguous(shp, strides, 1):
                    raise ValueError(f"{where}: the DLPack tensor must be C-contiguous "
                                     f"(strides {strides} in elements)")
            ptr = (t.data or 0) + int(t.byte_offset)
        except BaseException:
            hold.release()
            raise
        return _DeviceInput(ptr, shp, dtype, hold)

    def _run(self, arrays, dims):
        try:
            return self._launch_all(arrays, dims)
        finally:
            for a in arrays:           # the call is complete: consumed DLPack tensors are deleted
                if isinstance(a, _DeviceInput) and a.hold is not None:
                    a.hold.release()

    def _launch_all(self, arrays, dims):
        drv, plan = self.driver, self.plan
        on_device = any(isinstance(a, _DeviceInput) for a in arrays)
        keep = []
        ins = []
        for (_, dtype, _), a in zip(self.sig.params, arrays):
            if isinstance(a, _DeviceInput):
                ins.append((a.ptr, a.size))
            else:
                a = np.ascontiguousarray(a)
                mem = _Allocation(drv, a.nbytes)
                drv.to_device(mem.ptr, a)
                keep.append(mem)
                ins.append((mem.ptr, a.size))
        shapes = self.sig.output_shapes(dims)
        outs = []
        for (dtype, _), shp in zip(self.sig.outputs, shapes):
            count = int(np.prod(shp, dtype=np.int64))
            mem = _Allocation(drv, count * ITEMSIZE[dtype])
            outs.append((mem, count))
        self._run_plan(plan, ins, [(m.ptr, c) for m, c in outs], dims)
        drv.synchronize()
        results = []
        for (mem, count), (dtype, _), shp in zip(outs, self.sig.outputs, shapes):
            if on_device:
                results.append(DeviceArray(drv, mem.ptr, shp, dtype, mem))
            else:
                a = np.empty(shp, NP_DTYPES[dtype])
                drv.to_host(a, mem.ptr)
                results.append(a)
        return results

    def _run_plan(self, plan, ins, outs, dims, pool=None):
        """Run a plan on (pointer, element count) input and output buffers: a plain plan's
        launches and checks, or a structured plan's program (runtime/cuda_control.py; pool: the
        device buffers of the call it is part of). Blocks and loop bodies run through here too,
        each plain plan with its own scratch."""
        if "program" in plan:
            from .cuda_control import run_program
            run_program(self, plan["program"], ins, outs, dims, pool)
            return
        drv = self.driver
        bufs = {"in": ins, "out": outs, "tmp": self._temps(plan, dims)}
        for step in plan["steps"]:
            if "launch" in step:
                grid = size(step["grid"], dims)
                if grid <= 0:
                    continue
                args = [tuple(bufs[a[0]][a[1]]) if a[0] != "size" else size(a[1], dims) for a in step["args"]]
                drv.launch(self.loaded, step["launch"], grid, step["block"], args)
            else:
                self._check_step(step, bufs, dims)

    def _temps(self, plan, dims):
        """Scratch buffers of a plain plan: one block per plan (a function's, or each block's
        and body's of a structured one) on this host thread, kept for the next call. A plan's
        temps live only while its own launches run, so the block is reused by every iteration."""
        if not plan["temps"]:
            return []
        need = [(size(t["count"], dims), ITEMSIZE[t["dtype"]]) for t in plan["temps"]]
        offsets, total = [], 0
        for count, item in need:
            offsets.append(total)
            total += -(-(count * item) // 256) * 256
        blocks = getattr(self._scratch, "blocks", None)
        if blocks is None:
            blocks = self._scratch.blocks = {}
        block = blocks.get(id(plan))
        if block is None or block[1] < total:
            if block is not None:           # an earlier iteration's launches may still read it
                self.driver.synchronize()
            block = blocks[id(plan)] = (_Allocation(self.driver, max(total, 1)), max(total, 1))
        return [(block[0].ptr + off, count) for off, (count, _) in zip(offsets, need)]

    def _check_step(self, step, bufs, dims):
        kind, i = step["arg"]
        ptr = bufs[kind][i][0]
        count = size(step["count"], dims)
        a = np.empty(count, NP_DTYPES[step["dtype"]])
        self.driver.synchronize()
        self.driver.to_host(a, ptr)
        lo, hi = step["lo"], size(step["hi"], dims)
        bad = (a < lo) | (a >= hi)
        if bad.any():
            c = step["check"]
            raise check_failed(self.sig.name, c["error"], c["message"], a[np.argmax(bad)])

    def _results(self, results):
        if results and isinstance(results[0], DeviceArray):
            return tuple(results) if self.sig.out_tuple else results[0]
        return super()._results(results)


def load(code: dict, signatures: dict, target: str, module_name: str = "module") -> dict:
    """{function name: CudaFunction} of a module's code (docs/cuda.md) on target's driver."""
    drv = driver(target)
    loaded = drv.load(code)
    return {k: CudaFunction(sig, code["functions"][k], loaded, drv, module_name) for k, sig in signatures.items()}
