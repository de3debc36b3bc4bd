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
