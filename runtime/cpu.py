"""Call native CPU code through ctypes: the lean call path, output buffers, accumulation."""
from __future__ import annotations

import ctypes
import hashlib
import threading
import weakref
from functools import partial

import numpy as np

from .artifact import as_code
from .fastcall import (CHECK_FAILED, EXACT_INT, NO_MEMORY, RECORD, ScalarEntry, entry_address, flat_entry,
                       python_entry, read_record)
from .host import host  # noqa: F401 - the runtime's face for callers
from .libs import (_init, _state, _threads, blas_info, get_num_threads, patch_globals,  # noqa: F401
                   set_num_threads, threads_info, tune_malloc)
from ..vocab import NP_DTYPES, dim_value
from .module import ERRORS, Function, Module, Signature, check_failed



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

    def __init__(self, sig: Signature, code, symbol: str, dim_names, module_name, checks=()):
        super().__init__(sig, self._execute_native, module_name)
        # the run-time checks of the native code, by the index its error record gives
        self._checks = [(c["error"], c["message"]) for c in checks]
        for error, message in self._checks:
            if error not in ERRORS or not isinstance(message, str):
                raise ValueError(f"{sig.name}: malformed run-time check {error!r}")
        self._tls = threading.local()
        self._code = code                      # keep the engine or library alive
        self._dim_names = tuple(dim_names)
        self._n_in, self._n_out = len(sig.params), len(sig.outputs)
        self._out_dtypes = [np.dtype(NP_DTYPES[d]) for d, _ in sig.outputs]
        self._makers = [(_shape_maker(s), dt) for (_, s), dt in zip(sig.outputs, self._out_dtypes)]
        self._offsets = any(not (isinstance(d, int) or d.isidentifier()) for _, s in sig.outputs for d in s)
        # per parameter: dtype, rank, and (axis, fixed size or symbol name) for each axis
        self._fast = [(np.dtype(NP_DTYPES[d]), len(s), tuple(enumerate(s))) for _, d, s in sig.params]
        self._needs = bool(sig.needs)         # the fast path tests them too
        self._scratch = threading.local()
        scalar = entry_address(code, symbol + ".scalar")
        self._scalar = ScalarEntry(sig, scalar) if scalar else None
        # the CPython entry, where the module has one for this interpreter: the instance's class
        # then has it as __call__, so a call reaches native code with no Python frame; any call
        # it does not take (keywords, arrays, errors) comes back to the __call__ below
        cls = type(self)
        self._native = python_entry(code, symbol, sig, partial(cls.__call__, self)) if scalar else None
        if self._native is not None:
            self.__class__ = type(cls.__name__, (cls,), {"__call__": self._native, "__module__": cls.__module__,
                                                         "__qualname__": cls.__qualname__})
        # the entry taking pointers and dims as separate arguments: no ctypes arrays per call
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

    def _record(self):
        """This thread's error record: (address, its buffer)."""
        try:
            return self._tls.err
        except AttributeError:
            buf = ctypes.create_string_buffer(RECORD)
            self._tls.err = ctypes.addressof(buf), buf
            return self._tls.err

    def _failed(self, status, record_address):
        """The exception of a non-zero status: a failed check (the error channel) or no memory."""
        if status == CHECK_FAILED:
            index, value = read_record(record_address)
            if 0 <= index < len(self._checks):
                return check_failed(self.sig.name, *self._checks[index], value)
        if status == NO_MEMORY:
            return MemoryError(f"{self.sig.name}: out of memory for intermediate values")
        return RuntimeError(f"{self.sig.name}: the native code returned status {status}")

    def _run(self, arrays, dims, outs):
        err = self._record()[0]
        status = self._flat(*_pointers(arrays), *_pointers(outs), *[dims[s] for s in self._dim_names], err)
        if status:
            raise self._failed(status, err)

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
                status = direct.call(*args, addr)
                if status:
                    raise self._failed(status, addr + direct.record_offset)
                return read()
        checked = None if kwargs or len(args) != self._n_in else self._fast_check(args)
        if checked is None:
            arrays, dims = self.check(args, kwargs)
            arrays = [np.ascontiguousarray(a) for a in arrays]
        else:
            arrays, dims = checked
            if self._offsets:
                arrays, dims = self.check(args, kwargs)     # reports an "N-1" that comes out negative
            elif self._needs:
                self.sig.check_needs(dims)
        if out is None:
            if accumulate:
                raise ValueError(f"{self.sig.name}: accumulate=True needs out= buffers to add into")
            # _alloc and _run written out: two Python calls are a tenth of an array call
            outs = [np.empty(mk(dims), dt) for mk, dt in self._makers]
            try:
                err = self._tls.err[0]
            except AttributeError:
                err = self._record()[0]
            status = self._flat(*_pointers(arrays), *_pointers(outs), *[dims[s] for s in self._dim_names], err)
            if status:
                raise self._failed(status, err)
            return self._results(outs)
        return self._call_out(arrays, dims, out, accumulate)

    def _call_out(self, arrays, dims, out, accumulate):
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        self._check_disjoint(outs)
        shapes = self.sig.output_shapes(dims)
        usable = len(outs) == self._n_out and all(
            isinstance(o, np.ndarray) and o.shape == s and o.dtype == dt and o.flags.c_contiguous
            and o.flags.writeable for o, s, dt in zip(outs, shapes, self._out_dtypes))
        # an out= buffer that overlaps an input is written after the call, from fresh results
        if usable and not any(np.may_share_memory(o, a) for o in outs for a in arrays):
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


# the code mapped in this process, by content: loading a module again reuses its mapping, and
# the mapping goes (dlclose, or the MCJIT engines disposed) with the last function using it
_mapped = weakref.WeakValueDictionary()
_mapped_lock = threading.Lock()


def native_code(code):
    """Machine code mapped into this process: the shared library by dlopen where there is one
    (no LLVM loaded), else the object files by MCJIT; the one mapping of the same code."""
    code = as_code(code)
    h = hashlib.sha256()
    for part in (*code.objects, code.shared or b""):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    key = h.digest()
    with _mapped_lock:
        loaded = _mapped.get(key)
        if loaded is None:
            loaded = _map(code)
            _mapped[key] = loaded
        return loaded


def _map(code):
    if code.shared is not None:
        from .shared import SharedCode
        try:
            loaded = SharedCode(code.shared, len(code.objects))
        except OSError:
            loaded = None                     # unloadable here (a noexec directory, say): MCJIT can
        if loaded is not None:
            patch_globals(loaded)
            return loaded
    from .jit import JitCode
    loaded = JitCode(code.objects)
    patch_globals(loaded)
    return loaded


def load_native(name: str, code, functions: list, target: str = "cpu") -> Module:
    """A Module of CpuFunctions; code: an artifact.Code or object file bytes;
    functions: [{"signature": ..., "symbol": ..., "dims": [...], "checks": [...]}]."""
    code = native_code(code)
    fns = {}
    for f in functions:
        sig = Signature.from_json(f["signature"])
        fns[sig.name] = CpuFunction(sig, code, f["symbol"], f["dims"], name, f["checks"])
    return Module(name, fns, target)
