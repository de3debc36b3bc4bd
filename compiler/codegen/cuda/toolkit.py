"""The CUDA toolkit files the GPU target uses: libdevice for math, ptxas to check PTX."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LIBDEVICE = Path("nvvm", "libdevice", "libdevice.10.bc")


class ToolkitError(FileNotFoundError):
    """A CUDA toolkit file is missing; the message says which, where it was looked for, and what to do."""


class PtxasError(RuntimeError):
    """ptxas rejected a PTX text; the message carries its diagnostics."""


def toolkit_roots() -> list:
    """Where a CUDA toolkit may be, in order: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda."""
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    return [Path(r) for r in roots if r]


def _find(rel: Path, what: str) -> Path:
    tried = [root / rel for root in toolkit_roots()]
    for p in tried:
        if p.is_file():
            return p
    raise ToolkitError(f"{what} not found: looked for {', '.join(map(str, tried))}; install the CUDA "
                       f"toolkit or set CUDA_HOME to its folder")


def libdevice_path() -> Path:
    """libdevice.10.bc, NVIDIA's math library as LLVM bitcode."""
    return _find(LIBDEVICE, "libdevice (CUDA's math library, nvvm/libdevice/libdevice.10.bc)")


_libdevice_bytes: dict = {}


def libdevice_bitcode() -> bytes:
    """libdevice's bytes, read once per process."""
    path = libdevice_path()
    if path not in _libdevice_bytes:
        _libdevice_bytes[path] = path.read_bytes()
    return _libdevice_bytes[path]


def ptxas_path() -> Path:
    """ptxas from the toolkit roots, else from PATH."""
    try:
        return _find(Path("bin", "ptxas"), "ptxas (CUDA's PTX assembler, bin/ptxas)")
    except ToolkitError:
        on_path = shutil.which("ptxas")
        if on_path:
            return Path(on_path)
        raise


@dataclass(frozen=True)
class Assembled:
    """What ptxas made of a PTX text: the cubin and its report (registers, shared memory, spills)."""
    cubin: bytes
    log: str


def ptxas(ptx: str, arch: str = "sm_80", timeout: float = 120) -> Assembled:
    """Assemble PTX for arch with ptxas -v; PtxasError with its messages when it refuses."""
    exe = ptxas_path()
    with tempfile.TemporaryDirectory(prefix="gradc-ptxas-") as d:
        src, out = Path(d, "kernels.ptx"), Path(d, "kernels.cubin")
        src.write_text(ptx)
        try:
            res = subprocess.run([str(exe), f"-arch={arch}", "-v", "-o", str(out), str(src)],
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PtxasError(f"ptxas took more than {timeout:g} s for {arch}") from None
        log = (res.stdout + res.stderr).replace(str(src), "kernels.ptx")
        if res.returncode != 0 or not out.is_file():
            raise PtxasError(f"ptxas refused the PTX for {arch} (exit status {res.returncode}):\n{log.strip()}")
        return Assembled(out.read_bytes(), log)
