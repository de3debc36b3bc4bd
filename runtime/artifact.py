"""The compiled-module file (.gcm): a JSON header, object files and a shared library, sealed with a SHA-256."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GRADCMOD"
# 2: several object files (one per exported function) and an optional linked shared library
# 3: signatures carry their size requirements ("needs"), functions their run-time checks
FORMAT = 3
_HEAD = struct.Struct("<8sIQQ")          # magic, format, header bytes, code bytes
_DIGEST = 32


@dataclass(frozen=True)
class Code:
    """A module's machine code: object files for MCJIT, and the same code linked by the system
    linker into a shared library (None where no linker was found at build time)."""
    objects: tuple
    shared: bytes | None = None

    def __bool__(self):
        return bool(self.objects)


def as_code(code) -> Code:
    """A Code from a Code, one object file's bytes, or a sequence of them."""
    if isinstance(code, Code):
        return code
    if isinstance(code, (bytes, bytearray)):
        return Code((bytes(code),))
    return Code(tuple(bytes(o) for o in code))


class ArtifactError(ValueError):
    """A file that is not a readable gradc compiled module."""


class ArtifactMismatch(ArtifactError):
    """A valid module built for another CPU or another gradc version."""


def pack(header: dict, code) -> bytes:
    code = as_code(code)
    # the sizes of the parts travel in the header: the code bytes are the parts end to end
    header = dict(header, objects=[len(o) for o in code.objects], shared=len(code.shared or b""))
    blob = b"".join(code.objects) + (code.shared or b"")
    head = json.dumps(header, sort_keys=True).encode()
    body = _HEAD.pack(MAGIC, FORMAT, len(head), len(blob)) + head + blob
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, name: str = "<bytes>") -> tuple:
    """(header, Code) of a module file's bytes, or ArtifactError saying what is wrong."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{name}: not a gradc compiled module (no {MAGIC.decode()} signature)")
    if len(data) < _HEAD.size:
        raise ArtifactError(f"{name}: truncated gradc module ({len(data)} bytes)")
    _, fmt, nhead, nobj = _HEAD.unpack_from(data)
    if fmt != FORMAT:
        raise ArtifactMismatch(f"{name}: module file format {fmt}, this gradc reads format {FORMAT}; "
                               f"rebuild it with `gradc build`")
    end = _HEAD.size + nhead + nobj
    if len(data) < end + _DIGEST:
        raise ArtifactError(f"{name}: truncated gradc module ({len(data)} of {end + _DIGEST} bytes)")
    if len(data) > end + _DIGEST:
        raise ArtifactError(f"{name}: corrupted gradc module ({len(data) - end - _DIGEST} stray bytes at the end)")
    if hashlib.sha256(data[:end]).digest() != data[end:]:
        raise ArtifactError(f"{name}: corrupted gradc module (checksum mismatch)")
    try:
        header = json.loads(data[_HEAD.size:_HEAD.size + nhead])
    except ValueError:
        raise ArtifactError(f"{name}: corrupted gradc module (unreadable header)") from None
    sizes, shared = (header.get("objects"), header.get("shared")) if isinstance(header, dict) else (0, 0)
    if not (isinstance(sizes, list) and sizes and all(isinstance(n, int) and n > 0 for n in sizes)
            and isinstance(shared, int) and shared >= 0 and sum(sizes) + shared == nobj):
        raise ArtifactError(f"{name}: corrupted gradc module (object sizes do not add up)")
    at, objects = _HEAD.size + nhead, []
    for n in sizes:
        objects.append(bytes(data[at:at + n]))
        at += n
    return header, Code(tuple(objects), bytes(data[at:end]) if shared else None)


def check_compatible(header: dict, host: dict, version: str, name: str = "<bytes>"):
    """Refuse a module this process cannot run, saying how to get one it can."""
    src = header.get("source_name") or "the .ad file"
    how = f"rebuild it here with `gradc build {src} -o {Path(name).name}` (or gradc.build)"
    if header.get("gradc_version") != version:
        raise ArtifactMismatch(f"{name}: built by gradc {header.get('gradc_version')}, this is gradc "
                               f"{version}; {how}")
    if header.get("target") != "cpu":
        raise ArtifactMismatch(f"{name}: built for target {header.get('target')!r}, not cpu; {how}")
    for key in ("triple", "cpu", "features"):
        if header.get(key) != host[key]:
            what = {"triple": "platform", "cpu": "CPU", "features": "CPU features"}[key]
            shown = (header.get(key), host[key]) if key != "features" else ("another set", "this machine's")
            raise ArtifactMismatch(f"{name}: built for {what} {shown[0]}, but this machine has {shown[1]}; {how}")


def write_atomic(path, data: bytes):
    """Write via a temporary file and os.replace: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read(path) -> tuple:
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a directory, not a gradc module") from None
    return unpack(data, str(path))
