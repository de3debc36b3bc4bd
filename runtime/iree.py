"""The iree target's runtime: a compiled IREE module (vmfb) loaded into iree.runtime and its
functions called on NumPy arrays behind the same interface as every other target."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

import numpy as np

from .module import Function, Signature, check_failed

INSTALL = "the iree target needs IREE's compiler and runtime: pip install 'gradc[mlir]'"


def iree_available() -> tuple:
    try:
        import iree.compiler  # noqa: F401
        import iree.runtime  # noqa: F401
    except ImportError:
        return False, INSTALL
    return True, ""


class IreeFailure(RuntimeError):
    """IREE's runtime failed on a call that the program's own checks let through: a defect of
    IREE (docs/mlir.md lists the known ones), not of the program; target cpu runs it."""

    unsupported = True          # as a compile-time limit of a target: tests skip with the reason


class IreeFunction(Function):
    """One function of the module: arrays in (a bool as a byte), arrays out, then the call's status
    (the first failed run-time check and its offending value) where the function has checks."""

    def __init__(self, sig: Signature, invoke, checks, module_name):
        super().__init__(sig, self._run, module_name)
        self._invoke = invoke
        self._checks = [tuple(c) for c in checks]
        self._bools = [dt == "bool" for dt, _ in sig.outputs]

    def _run(self, arrays, dims):
        args = [a.view(np.int8) if a.dtype == np.bool_ else np.require(a, requirements="C") for a in arrays]
        try:
            res = self._invoke(*args)
        except (RuntimeError, ValueError, IndexError) as ex:      # what iree.runtime raises
            from importlib.metadata import version
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            raise IreeFailure(f"{self.sig.name}: IREE {version('iree-base-runtime')}'s runtime failed on this call "
                              f"({first}); target cpu runs it, and docs/mlir.md lists what the iree target "
                              "cannot run yet") from None
        res = list(res) if isinstance(res, (tuple, list)) else [res]
        outs = [np.asarray(r) for r in res]
        if self._checks:
            status, value = int(outs[-2]), int(outs[-1])
            outs = outs[:-2]
            if status:
                error, message = self._checks[status - 1]
                raise check_failed(self.sig.name, error, message, value)
        return [o.astype(np.bool_) if b else o for o, b in zip(outs, self._bools)]


def load(vmfb: bytes, meta: dict, signatures: dict, module_name: str) -> dict:
    """{function name: IreeFunction} of a compiled module."""
    ok, why = iree_available()
    if not ok:
        raise RuntimeError(why)
    import iree.runtime as rt
    config = rt.Config("local-task")
    ctx = rt.SystemContext(config=config)
    with _private_tmpdir():
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
    mod = ctx.modules.gradc
    return {k: IreeFunction(sig, mod[k], meta[k]["checks"], module_name) for k, sig in signatures.items()}


_TMP = {}
_TMP_LOCK = threading.Lock()


class _private_tmpdir:
    """TMPDIR pointed at a folder of this process's own while IREE loads a module: its loader
    writes each module's code to a temporary file there and leaves the file behind (one per
    load); the folder goes when the process exits."""

    def __enter__(self):
        _TMP_LOCK.acquire()
        if "dir" not in _TMP:
            _TMP["dir"] = tempfile.mkdtemp(prefix="gradc-iree-")
            atexit.register(shutil.rmtree, _TMP["dir"], True)
        self.before = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = _TMP["dir"]

    def __exit__(self, *exc):
        if self.before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.before
        _TMP_LOCK.release()
