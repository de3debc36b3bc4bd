"""Load a module's shared library with dlopen: no LLVM in the process, so loading takes milliseconds."""
from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import os
import tempfile
import threading
import weakref

from .artifact import write_atomic
from .host import usable_native
from .libs import _init

_lock = threading.Lock()


class SharedCode:
    """A shared library of compiled functions, dlopened from a file named by its hash.

    One per content in a process (cpu.native_code keeps the table); dlclosed when no function
    refers to it any more. No thread can be inside its code then: a call holds its function,
    and libgomp's workers leave a region's code before GOMP_parallel returns.
    """

    kind = "shared"

    def __init__(self, data: bytes, n_objects: int = 1):
        _init()                               # libm and libmvec global first: the library needs them
        self.lib = _dlopen(data)
        self.n_objects = n_objects            # the copies of the loader's globals it holds
        # not at exit: a daemon thread may still be inside the code while the interpreter ends
        weakref.finalize(self, _dlclose, self.lib._handle).atexit = False

    def global_address(self, name: str) -> int:
        try:
            return ctypes.addressof(ctypes.c_char.in_dll(self.lib, name))
        except ValueError:
            return 0

    function_address = global_address

    def address(self, symbol: str) -> int:
        addr = self.function_address(symbol)
        if not addr:
            raise LookupError(f"symbol {symbol} is missing from the compiled module")
        return addr


def _dlclose(handle):
    try:
        _ctypes.dlclose(handle)
    except OSError:
        pass


def _dlopen(data: bytes):
    """dlopen needs a file: the cache's copy, written once and checked byte for byte, or a
    private copy where the cache is not usable."""
    d = usable_native()
    if d is not None:
        path = os.path.join(d, hashlib.sha256(data).hexdigest()[:32] + ".so")
        with _lock:
            try:
                if not _same(path, data):
                    write_atomic(path, data)      # a damaged or changed copy is replaced
                return ctypes.CDLL(path)          # RTLD_NOW: an unresolved symbol fails here, not in a call
            except OSError:
                pass
    return _private(data, d)


def _same(path, data) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def _private(data: bytes, d):
    """A copy only this load uses, removed at once: the mapping outlives the file."""
    err = OSError("no directory to write a shared library to")
    for where in (d, tempfile.gettempdir()):
        if where is None:
            continue
        try:
            os.makedirs(where, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".gradc-", suffix=".so", dir=where)
        except OSError as ex:
            err = ex
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return ctypes.CDLL(tmp)
        except OSError as ex:
            err = ex
        finally:
            os.unlink(tmp)
    raise err
