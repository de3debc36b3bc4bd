"""This machine as compiled code sees it (platform, CPU, features), remembered so loads need no LLVM."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import stat
import threading
import warnings
from pathlib import Path

from .artifact import write_atomic

_lock = threading.Lock()
_host = {}
_warned = set()
KEYS = ("triple", "cpu", "features")


class CacheWarning(UserWarning):
    """The cache directory is not private to this user, so gradc does not use it."""


def cache_dir() -> Path:
    env = os.environ.get("GRADC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradc"


def native_dir() -> Path:
    """Where host descriptions and modules' shared libraries live, beside the cached modules."""
    return cache_dir() / "native"


def private(d: Path) -> bool:
    """Whether d is a directory only this user can change, created (mode 0700) if missing.

    What is in the cache is mapped into processes as code, so a directory that another user
    can write to, or owns, is not used (as ssh and pip refuse theirs), with a warning once.
    """
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        d.mkdir(mode=0o700, exist_ok=True)
        st = d.stat()
    except OSError:
        return False                  # unwritable: compiling still works, nothing is cached
    why = None
    if not stat.S_ISDIR(st.st_mode):
        why = "not a directory"
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        why = "owned by another user"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = "writable by other users"
    if why is None:
        return True
    if str(d) not in _warned:
        _warned.add(str(d))
        warnings.warn(f"gradc: the cache directory {d} is {why}, so it is not used: compiled modules "
                      f"are code, and anyone who can change them could run code in this process. "
                      f"Make it private (chmod 700 {d}) or set GRADC_CACHE_DIR to a private "
                      f"directory.", CacheWarning, stacklevel=3)
    return False


def usable_cache() -> Path | None:
    """The cache directory when it is private (created so if missing), else None."""
    d = cache_dir()
    return d if private(d) else None


def usable_native() -> Path | None:
    """native/ in the cache when both are private, else None."""
    return native_dir() if usable_cache() is not None and private(native_dir()) else None


def host(refresh: bool = False) -> dict:
    """{"triple", "cpu", "features"} as LLVM names them, which artifacts record at build time.

    Asking LLVM means loading it (30 ms), so the answer is kept in a file named by a hash of
    /proc/cpuinfo and the llvmlite version: another CPU, or another LLVM, asks afresh.
    refresh asks LLVM again and rewrites the file: a module refused for another CPU may only
    have met a damaged description.
    """
    with _lock:
        if refresh:
            _host.clear()
        if not _host:
            key = _cpu_key()
            d = usable_native()
            path = d / f"host-{key}.json" if key and d is not None else None
            found = _read(path) if path and not refresh else None
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
