"""This machine as compiled code sees it (platform, CPU, features), remembered so loads need no LLVM."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

from .artifact import write_atomic

_lock = threading.Lock()
_host = {}
KEYS = ("triple", "cpu", "features")


def cache_dir() -> Path:
    env = os.environ.get("GRADC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradc"


def native_dir() -> Path:
    """Where host descriptions and modules' shared libraries live, beside the cached modules."""
    return cache_dir() / "native"


def host() -> dict:
    """{"triple", "cpu", "features"} as LLVM names them, which artifacts record at build time.

    Asking LLVM means loading it (30 ms), so the answer is kept in a file named by a hash of
    /proc/cpuinfo and the llvmlite version: another CPU, or another LLVM, asks afresh.
    """
    with _lock:
        if not _host:
            key = _cpu_key()
            path = native_dir() / f"host-{key}.json" if key else None
            found = _read(path) if path else None
            if found is None:
                from .jit import llvm_host
                found = llvm_host()
                if path:
                    try:
                        write_atomic(path, json.dumps(found).encode())
                    except OSError:
                        pass          # an unwritable cache: LLVM is asked in every process
            _host.update(found)
        return dict(_host)


def _cpu_key():
    try:
        with open("/proc/cpuinfo", "rb") as f:
            info = f.read()
    except OSError:
        return None
    import llvmlite                   # the version only: this does not load LLVM
    # clock speeds change between readings; the rest describes the CPU
    stable = b"\n".join(line for line in info.splitlines() if not line.startswith(b"cpu MHz"))
    extra = f"{llvmlite.__version__}\0{sys.platform}\0{os.uname().machine}\0".encode()
    return hashlib.sha256(extra + stable).hexdigest()[:32]


def _read(path):
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or not all(isinstance(found.get(k), str) for k in KEYS):
        return None
    return {k: found[k] for k in KEYS}
