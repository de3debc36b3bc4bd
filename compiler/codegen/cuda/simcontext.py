"""The simulator's launch and thread records, one field list giving both the LLVM and the ctypes layout."""
from __future__ import annotations

import ctypes

from llvmlite import ir

from .kernel import I32, I64, PTR

_KINDS = {"i32": (I32, ctypes.c_int32), "i64": (I64, ctypes.c_int64), "ptr": (PTR, ctypes.c_void_p)}

# what went wrong, in Launch.err_kind
GLOBAL_LOAD, GLOBAL_STORE, SHARED_LOAD, SHARED_STORE, DIVERGED = 1, 2, 3, 4, 5
DONE = -1                                  # Thread.barrier of a thread that has returned


class Layout:
    """A C struct described once: ir.LiteralStructType for the kernels and driver, ctypes for Python."""

    def __init__(self, name: str, fields):
        self.names = [f[0] for f in fields]
        lltypes, cfields = [], []
        for fname, kind, *count in fields:
            t, c = _KINDS[kind]
            if count:
                t, c = ir.ArrayType(t, count[0]), c * count[0]
            lltypes.append(t)
            cfields.append((fname, c))
        # both follow the C rules of the host ABI, so the offsets agree (a test checks)
        self.type = ir.LiteralStructType(lltypes)
        self.ctype = type(name, (ctypes.Structure,), {"_fields_": cfields})
        self.size = ctypes.sizeof(self.ctype)

    def field(self, b: ir.IRBuilder, base: ir.Value, name: str, i: int | None = None) -> ir.Value:
        """The address of base->name (or base->name[i])."""
        idx = [ir.Constant(I32, 0), ir.Constant(I32, self.names.index(name))]
        if i is not None:
            idx.append(ir.Constant(I32, i))
        return b.gep(base, idx, source_etype=self.type)

    def load(self, b, base, name, i=None) -> ir.Value:
        return b.load(self.field(b, base, name, i), typ=self._type(name, i))

    def store(self, b, value, base, name, i=None):
        b.store(value, self.field(b, base, name, i))

    def add(self, b, value, base, name):
        """base->name += value."""
        p = self.field(b, base, name)
        b.store(b.add(b.load(p, typ=value.type), value), p)

    def _type(self, name, i):
        t = self.type.elements[self.names.index(name)]
        return t.element if i is not None else t


# One launch of one kernel: set up by Python, read by the kernels and the driver, then by Python.
LAUNCH = Layout("Launch", [
    ("args", "ptr"),                       # one 8-byte slot per parameter
    ("sizes", "ptr"),                      # i64 per parameter: elements a buffer holds
    ("shared", "ptr"),                     # the block's shared memory (blocks run one at a time)
    ("shared_bytes", "i64"),
    ("ntid", "i32", 3),
    ("nctaid", "i32", 3),
    ("ctaid", "i32", 3),                   # the block running now
    ("threads_run", "i64"),
    ("bytes_loaded", "i64"),
    ("bytes_stored", "i64"),
    ("err_kind", "i32"),
    ("err_what", "i32"),                   # parameter or shared array number
    ("err_index", "i64"),
    ("err_tid", "i32", 3),
    ("err_ctaid", "i32", 3),
    ("err_barrier", "i32"),                # at a divergence: thread 0's barrier and the other thread's
    ("err_other", "i32"),
    ("err_count", "i32"),                  # threads that wait where thread 0 waits
])

# One simulated thread: its indices, the barrier it waits at, its coroutine.
THREAD = Layout("Thread", [
    ("tid", "i32", 3),
    ("barrier", "i32"),
    ("launch", "ptr"),
    ("handle", "ptr"),
])
