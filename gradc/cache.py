"""The on-disk cache of compiled modules, keyed by everything that changes the object code.

Its entries are code that gets mapped into the process, so it is used only while private to
its user (runtime/host.py); a damaged or edited entry is refused at load and compiled again.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from .runtime import artifact
from .runtime.host import cache_dir, usable_cache


@lru_cache(maxsize=None)
def compiler_fingerprint() -> str:
    """A hash of the compiler's own source: a changed compiler never reuses old object code."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for pkg in ("compiler", "frontend"):
        d = root / pkg if (root / pkg).is_dir() else root.parent / pkg
        for p in sorted(d.rglob("*")):
            if p.suffix in (".py", ".lark", ".ad"):
                h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def key(text: str, file: str, options=("cpu", "")) -> str:
    """options: (target, the backend's cache options); the target's host description joins them."""
    from .api import VERSION
    from .backends import BACKENDS, Options
    target, opts = options if isinstance(options, tuple) else ("cpu", options)
    b = BACKENDS[target]
    host = json.dumps(b.host_facts(Options(**json.loads(opts))) if opts else b.host_facts(Options()),
                      sort_keys=True)
    parts = (VERSION, compiler_fingerprint(), str(artifact.FORMAT), target, host, opts,
             os.path.basename(file), text)   # the file name shows in messages
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def path_for(text: str, file: str, options=("cpu", "")) -> Path:
    return cache_dir() / f"{key(text, file, options)}.gcm"


def get(text: str, file: str, options=("cpu", "")):
    """The cached module bytes, or None (also when the cache is not private)."""
    if usable_cache() is None:
        return None
    try:
        return path_for(text, file, options).read_bytes()
    except OSError:
        return None


def put(text: str, file: str, data: bytes, options=("cpu", "")):
    """Store atomically: concurrent compilers of one program each write whole files, last wins."""
    if usable_cache() is None:
        return
    try:
        artifact.write_atomic(path_for(text, file, options), data)
    except OSError:
        pass                       # a read-only or full cache only costs a recompile next time


def clear():
    for p in cache_dir().glob("*.gcm"):
        try:
            p.unlink()
        except OSError:
            pass
