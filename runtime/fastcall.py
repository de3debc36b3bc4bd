"""Direct native entries: scalars by value and pointers as plain ints, no ctypes arrays per call."""
from __future__ import annotations

import ctypes
import threading
from functools import partial
from operator import itemgetter

import numpy as np

from ..vocab import NP_DTYPES

# a Python int within +-2**53 converts to f64 exactly, and to f32 with the single rounding astype does
EXACT_INT = 2 ** 53
# the compiler stores scalar result i at out + 8*i, in the result's own type
SLOT = 8


def entry_address(code, symbol: str) -> int:
    """The address of an optional entry (the scalar one), 0 where the function has none."""
    return code.function_address(symbol)


def flat_entry(code, symbol: str, n_ptrs: int, n_dims: int):
    """`i32 SYMBOL.flat(ptr..., i64..., ptr err)` through ctypes; it releases the GIL while it runs."""
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_void_p] * n_ptrs, *[ctypes.c_int64] * n_dims,
                             ctypes.c_void_p)
    return proto(code.address(symbol + ".flat"))


# a function's status (compiler/codegen/cpu/parallel.py): OK, NO_MEMORY, or CHECK_FAILED with the
# error record (two i64: the index of the failed check, the offending value) filled in
OK, NO_MEMORY, CHECK_FAILED = 0, 1, 2
RECORD = 16


def read_record(address: int) -> tuple:
    """(check index, offending value) of an error record."""
    return ctypes.c_int64.from_address(address).value, ctypes.c_int64.from_address(address + 8).value


class ScalarEntry:
    """`i32 SYMBOL.scalar(double..., ptr out)`: the call path of functions of float scalars only.

    It keeps the GIL (PYFUNCTYPE): the code runs for nanoseconds, less than a release and
    reacquire costs. Results land in a per-thread buffer, so threads can share the function.
    """

    def __init__(self, sig, address: int):
        n_in = len(sig.params)
        self.call = ctypes.PYFUNCTYPE(ctypes.c_int32, *[ctypes.c_double] * n_in, ctypes.c_void_p)(address)
        # per parameter, the classes passed straight through (CpuFunction.__call__ tests them, and
        # ints within EXACT_INT): numbers Function.check takes as they are or rounds as astype
        # does; anything else (bool, 0-d arrays, lists, wrong dtypes) goes the checked way
        self.accept = tuple(frozenset((float, NP_DTYPES[d])) for _, d, _ in sig.params)
        self.dtypes = [np.dtype(NP_DTYPES[d]) for d, _ in sig.outputs]
        self.uniform = len(set(self.dtypes)) == 1
        self.record_offset = SLOT * len(self.dtypes)      # the error record follows the results
        self.out_tuple = sig.out_tuple
        self.tls = threading.local()

    def buffer(self):
        """(address, read) of this thread's result buffer; read() gives what the call returns."""
        try:
            return self.tls.buf
        except AttributeError:
            pass
        # the results, then the error record the scalar entry points at
        raw = ctypes.create_string_buffer(SLOT * len(self.dtypes) + RECORD)
        if self.uniform:
            # one strided view: indexing it makes NumPy scalars in C, no Python frame (tuple(view)
            # costs three times as much)
            view = np.ndarray((len(self.dtypes),), self.dtypes[0], raw, 0, (SLOT,))
            read = partial(itemgetter(*range(len(self.dtypes))), view) if self.out_tuple \
                else partial(view.__getitem__, 0)
        else:
            views = [np.ndarray((), dt, raw, SLOT * i) for i, dt in enumerate(self.dtypes)]
            read = lambda: tuple([v[()] for v in views])
        self.tls.buf = ctypes.addressof(raw), read
        self.tls.raw = raw                  # the memory at the address lives as long as this thread does
        return self.tls.buf


# the slots of SYMBOL.pyapi, the CPython entry's table (compiler/codegen/cpu/pyentry.py), in order
PYAPI = ("float", "int", "float64", "float32", "alloc_float64", "alloc_float32", "PyLong_AsLongLongAndOverflow",
         "PyObject_Vectorcall", "PyTuple_New", "PyTuple_SetItem", "Py_DecRef")
METH_FASTCALL, METH_KEYWORDS = 0x80, 0x02
PY_TP_ALLOC = 47                       # the slot number PyType_GetSlot takes for tp_alloc
OB_TYPE, VALUE = 8, 16                 # where the entry reads an object's type and a number's value


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p), ("ml_flags", ctypes.c_int),
                ("ml_doc", ctypes.c_char_p)]


_api = []


def _python_api():
    """The table's values in this process, or None where the object layout is not the one the entry
    reads (probed on live objects, not assumed)."""
    if not _api:
        _api.append(_probe())
    return _api[0]


def _probe():
    from ..vocab import python_abi
    at = ctypes.c_void_p.from_address
    x, y, z = 1.25, np.float64(-3.5), np.float32(0.75)
    if any(at(id(o) + OB_TYPE).value != id(type(o)) for o in (x, y, z, 7)) or \
            ctypes.c_double.from_address(id(x) + VALUE).value != x or \
            ctypes.c_double.from_address(id(y) + VALUE).value != y or \
            ctypes.c_float.from_address(id(z) + VALUE).value != z:
        return None
    api = ctypes.pythonapi
    slot = api.PyType_GetSlot
    slot.restype, slot.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_int]
    new = api.PyCFunction_NewEx
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
    fn = lambda name: ctypes.cast(getattr(api, name), ctypes.c_void_p).value
    values = {"float": id(float), "int": id(int), "float64": id(np.float64), "float32": id(np.float32),
              "alloc_float64": slot(np.float64, PY_TP_ALLOC), "alloc_float32": slot(np.float32, PY_TP_ALLOC),
              **{k: fn(k) for k in PYAPI[6:]}}
    if not all(values.values()):
        return None
    return python_abi().encode(), (ctypes.c_void_p * len(PYAPI))(*[values[k] for k in PYAPI]), new


def python_entry(code, symbol: str, sig, fallback):
    """A builtin function calling SYMBOL.py straight from the interpreter, or None where the module
    has no such entry or was compiled for another interpreter's object layout.

    fallback: what the entry hands every call it does not take itself (a functools.partial: the
    method definition the builtin points at is kept alive on it)."""
    address = entry_address(code, symbol + ".py")
    api = _python_api()
    # the entry returns a bare result for one output, a tuple for several: as the signature does
    if not address or api is None or sig.out_tuple != (len(sig.outputs) != 1):
        return None
    abi, values, new = api
    if ctypes.string_at(code.global_address(symbol + ".pyabi")) != abi:
        return None
    table = code.global_address(symbol + ".pyapi")
    ctypes.memmove(table, values, ctypes.sizeof(values))
    fallback.method = _MethodDef(sig.name.encode(), address, METH_FASTCALL | METH_KEYWORDS, None)
    return new(ctypes.addressof(fallback.method), fallback, None)
