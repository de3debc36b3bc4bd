"""The grid simulator: kernels compiled for the host as coroutines, launched over a whole grid from Python."""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from ....vocab import NP_DTYPES
from .kernel import MAX_THREADS, build_module
from .simcontext import DIVERGED, DONE, GLOBAL_LOAD, GLOBAL_STORE, LAUNCH, SHARED_LOAD, THREAD
from .simdriver import DRIVER, FAULTED, OK, add_driver
from .simtarget import SimTarget, symbol

_PACK = {"f32": "<f", "f64": "<d", "i32": "<i", "i64": "<q"}
_init_lock = threading.Lock()
_driver_lock = threading.Lock()
_initialized = False
_driver = None


class SimulatorError(RuntimeError):
    """A simulated kernel did what a GPU would not run correctly."""


class OutOfBoundsError(SimulatorError, IndexError):
    """A load or store outside its buffer or shared array."""


class BarrierError(SimulatorError):
    """Threads of one block did not all reach the same barrier."""


@dataclass(frozen=True)
class LaunchStats:
    """What one launch did: threads run, and bytes of global memory loaded and stored."""
    kernel: str
    grid: tuple
    block: tuple
    threads: int
    bytes_loaded: int
    bytes_stored: int


def _init():
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            # the host math the kernels call (sinf, expm1...), and the vector variants that
            # loop vectorization may pick where the process asked LLVM for libmvec
            for name in ("m", "mvec"):
                lib = ctypes.util.find_library(name)
                if lib:
                    llvm.load_library_permanently(lib)
            _initialized = True


def compile_host(text: str, opt: int = 2):
    """LLVM IR text compiled for this CPU at -O<opt> and loaded by MCJIT: the execution engine.

    The standard pipeline runs LLVM's coroutine passes (CoroEarly, CoroSplit, CoroCleanup), so a
    presplitcoroutine function comes out as its ramp, resume and destroy functions and its frame.
    """
    _init()
    triple = llvm.get_process_triple()
    # MCJIT takes the target machine over: one per engine
    tm = llvm.Target.from_triple(triple).create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=opt, reloc="pic", codemodel="jitdefault")
    mod = llvm.parse_assembly(text)
    mod.triple, mod.data_layout = triple, str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    # kernels are checked and counted at every access: vectorizing or unrolling gains little
    # and costs compile time, which every test pays
    pto.loop_vectorization = pto.slp_vectorization = pto.loop_unrolling = False
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    return engine


def grid_driver():
    """The grid driver, `int driver(kernel, launch, threads)`, compiled once per process."""
    global _driver
    with _driver_lock:
        if _driver is None:
            module = ir.Module(name="gradc.sim.driver")
            add_driver(module)
            engine = compile_host(str(module))
            proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
            _driver = (engine, proto(engine.get_function_address(DRIVER)))
        return _driver[1]


def _dims(value, what: str, kernel: str) -> tuple:
    try:
        dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:
        dims = (value,)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dims):
        raise ValueError(f"launch of kernel {kernel!r}: {what} must be 1 to 3 positive integers, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class SimModule:
    """Kernels compiled for the simulator; launch(...) runs one over a grid and returns its LaunchStats."""

    def __init__(self, kernels, opt: int = 2, name: str = "kernels"):
        module, infos = build_module(kernels, SimTarget(), name)
        self._load(str(module), infos, opt)

    @classmethod
    def from_ir(cls, text: str, infos: dict, opt: int = 2) -> "SimModule":
        """A module from the simulator IR of build_module(kernels, SimTarget()) and its KernelInfos
        (what a cuda-sim module file keeps): the kernels' Python generators are not needed."""
        self = cls.__new__(cls)
        self._load(text, dict(infos), opt)
        return self

    def _load(self, text, infos, opt):
        self.llvm_ir, self.infos = text, infos
        self._engine = compile_host(self.llvm_ir, opt)
        self._ramps = {k: self._engine.get_function_address(symbol(k)) for k in self.infos}
        self._driver = grid_driver()

    def launch(self, kernel: str, grid, block, *args) -> LaunchStats:
        """Run kernel over grid x block threads; buffers are C-contiguous NumPy arrays, scalars numbers."""
        info = self._info(kernel)
        if len(args) != len(info.params):
            names = ", ".join(p.name for p in info.params)
            raise TypeError(f"kernel {kernel!r} takes {len(info.params)} arguments ({names}), got {len(args)}")
        slots, sizes = [], []
        for p, a in zip(info.params, args):
            if p.buffer:
                if isinstance(a, tuple):          # (address, elements): memory the caller manages
                    address, count = a
                else:
                    address, count = self._array(kernel, p, a)
                slots.append(int(address))
                sizes.append(int(count))
            else:
                if isinstance(a, np.ndarray) or not isinstance(a, (int, float, np.number)):
                    raise TypeError(f"kernel {kernel!r}, parameter {p.name!r}: expected a number "
                                    f"({p.dtype}), got {type(a).__name__}")
                value = float(a) if p.dtype in ("f32", "f64") else int(a)
                try:
                    packed = struct.pack(_PACK[p.dtype], value)
                except (struct.error, OverflowError):
                    raise ValueError(f"kernel {kernel!r}, parameter {p.name!r}: {a!r} does not fit "
                                     f"in {p.dtype}") from None
                slots.append(int.from_bytes(packed.ljust(8, b"\0"), "little"))
                sizes.append(0)
        return self.launch_raw(kernel, grid, block, slots, sizes)

    @staticmethod
    def _array(kernel, p, a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"kernel {kernel!r}, parameter {p.name!r}: expected a NumPy array of "
                            f"{p.dtype}, got {type(a).__name__}")
        if a.dtype != NP_DTYPES[p.dtype]:
            raise TypeError(f"kernel {kernel!r}, parameter {p.name!r}: expected {p.dtype} elements, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"kernel {kernel!r}, parameter {p.name!r}: the array must be C-contiguous")
        return a.ctypes.data, a.size

    def launch_raw(self, kernel: str, grid, block, slots, sizes) -> LaunchStats:
        """launch with each parameter as one 64-bit slot (an address, or a scalar's bytes) and each
        buffer's element count: what a driver interface passes."""
        info = self._info(kernel)
        grid, block = _dims(grid, "grid", kernel), _dims(block, "block", kernel)
        nt = block[0] * block[1] * block[2]
        if nt > MAX_THREADS:
            raise ValueError(f"launch of kernel {kernel!r}: {nt} threads per block; at most {MAX_THREADS}")
        if grid[0] >= 2 ** 31 or max(grid[1:]) >= 2 ** 16:
            raise ValueError(f"launch of kernel {kernel!r}: grid {grid} is larger than CUDA allows")
        n = len(info.params)
        args = (ctypes.c_uint64 * max(n, 1))(*[s & (2 ** 64 - 1) for s in slots])
        counts = (ctypes.c_int64 * max(n, 1))(*sizes)
        shared = np.empty(info.shared_bytes + 16, np.uint8)
        launch = LAUNCH.ctype()
        launch.args, launch.sizes = ctypes.addressof(args), ctypes.addressof(counts)
        launch.shared = -(-shared.ctypes.data // 16) * 16
        launch.shared_bytes = info.shared_bytes
        launch.ntid[:], launch.nctaid[:] = block, grid
        threads = (ctypes.c_uint8 * (THREAD.size * nt))()
        code = self._driver(self._ramps[kernel], ctypes.addressof(launch), ctypes.addressof(threads))
        if code != OK:
            raise self._error(info, launch, code, nt, sizes)
        return LaunchStats(kernel, grid, block, launch.threads_run, launch.bytes_loaded, launch.bytes_stored)

    def _info(self, kernel):
        try:
            return self.infos[kernel]
        except KeyError:
            raise KeyError(f"no kernel {kernel!r}; the module has {', '.join(self.infos)}") from None

    @staticmethod
    def _error(info, launch, code, nt, sizes) -> SimulatorError:
        tid, ctaid = tuple(launch.err_tid), tuple(launch.err_ctaid)
        where = f"thread {tid} of block {ctaid}"
        if code == FAULTED and launch.err_kind in (GLOBAL_LOAD, GLOBAL_STORE):
            p = info.params[launch.err_what]
            verb = "load from" if launch.err_kind == GLOBAL_LOAD else "store to"
            return OutOfBoundsError(f"kernel {info.name!r}: {where}: {verb} buffer {p.name!r} (argument "
                                    f"{launch.err_what}) at index {launch.err_index}, out of bounds "
                                    f"(it has {sizes[launch.err_what]} elements)")
        if code == FAULTED:
            s = info.shared[launch.err_what]
            verb = "load from" if launch.err_kind == SHARED_LOAD else "store to"
            return OutOfBoundsError(f"kernel {info.name!r}: {where}: {verb} shared array {s.name!r} at index "
                                    f"{launch.err_index}, out of bounds (it has {s.count} elements)")
        assert launch.err_kind == DIVERGED

        def state(bar):
            return "had returned" if bar == DONE else f"waited at barrier {bar} ({info.barriers[bar - 1]!r})"

        return BarrierError(f"kernel {info.name!r}: block {ctaid}: {launch.err_count} of {nt} threads "
                            f"{state(launch.err_barrier)} while thread {tid} {state(launch.err_other)}; "
                            f"every thread of a block must reach the same barriers")
