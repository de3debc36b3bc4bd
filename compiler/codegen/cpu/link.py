"""Link object files into a shared library with the system linker, so loading needs no LLVM."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile


def linker() -> list | None:
    """The command that links shared libraries here, or None (then modules load through MCJIT)."""
    if not sys.platform.startswith("linux") or os.environ.get("GRADC_NO_LINK"):
        return None
    # ld itself first: a compiler driver around it took 25 ms against 4
    path = shutil.which("ld")
    if path:
        return [path, "-shared", "-Bsymbolic"]
    for cc in ("cc", "gcc", "clang"):
        path = shutil.which(cc)
        if path:
            return [path, "-shared", "-nostartfiles", "-Wl,-Bsymbolic"]
    return None


def link_shared(objects: list) -> bytes | None:
    """The objects linked into one shared library's bytes, or None where that is not possible.

    -Bsymbolic binds a module's references to its own globals and functions, so two loaded
    modules never share the globals the loader patches. libm and libmvec are not named here:
    the loader makes them global before dlopen, as it does for MCJIT.
    """
    cmd = linker()
    if cmd is None:
        return None
    with tempfile.TemporaryDirectory(prefix="gradc-link-") as d:
        paths = []
        for i, obj in enumerate(objects):
            paths.append(os.path.join(d, f"f{i}.o"))
            with open(paths[-1], "wb") as f:
                f.write(obj)
        out = os.path.join(d, "module.so")
        try:
            res = subprocess.run(cmd + ["-o", out] + paths, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        if res.returncode != 0 or not os.path.isfile(out):
            return None
        with open(out, "rb") as f:
            return f.read()
