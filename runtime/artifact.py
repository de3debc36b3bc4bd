"""The compiled-module file (.gcm): a JSON header, object files and a shared library, sealed with a
SHA-256, optionally signed with an HMAC-SHA256 trailer."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GRADCMOD"
# 2: several object files (one per exported function) and an optional linked shared library
# 3: signatures carry their size requirements ("needs"), functions their run-time checks
# 4: each function's code carries a digest of its header entry (trust.py); an optional signature
FORMAT = 4
_HEAD = struct.Struct("<8sIQQ")          # magic, format, header bytes, code bytes
_DIGEST = 32
# the signature trailer after the seal: this tag, then HMAC-SHA256(key, every byte before the tag)
SIGNED = b"GRADCSIG"
_TRAILER = len(SIGNED) + _DIGEST


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


class SignatureError(ArtifactError):
    """A module that is not signed with the key given to load it."""


def pack(header: dict, code) -> bytes:
    """The bytes of a sealed module file (sign() adds a signature)."""
    code = as_code(code)
    # the sizes of the parts travel in the header: the code bytes are the parts end to end
    header = dict(header, objects=[len(o) for o in code.objects], shared=len(code.shared or b""))
    blob = b"".join(code.objects) + (code.shared or b"")
    head = json.dumps(header, sort_keys=True).encode()
    body = _HEAD.pack(MAGIC, FORMAT, len(head), len(blob)) + head + blob
    return body + hashlib.sha256(body).digest()


def read_key(key) -> bytes:
    """A signing key: bytes as they are, or the bytes of a key file named by a path."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
    elif isinstance(key, (str, os.PathLike)):
        try:
            data = Path(key).read_bytes()
        except OSError as ex:
            raise ValueError(f"cannot read the key file {key}: {ex.strerror or ex}") from None
    else:
        raise TypeError(f"key must be bytes or the path of a key file, not {type(key).__name__}")
    if not data:
        raise ValueError("the signing key is empty")
    return data


def sign(sealed: bytes, key) -> bytes:
    """A sealed module with its signature trailer (any earlier trailer replaced)."""
    sealed = _sealed_part(sealed)
    return sealed + SIGNED + hmac.new(read_key(key), sealed, hashlib.sha256).digest()


def _sealed_part(data: bytes) -> bytes:
    """The file without its signature trailer, if it has one."""
    if len(data) >= _HEAD.size and data[:len(MAGIC)] == MAGIC:
        _, _, nhead, nobj = _HEAD.unpack_from(data)
        end = _HEAD.size + nhead + nobj + _DIGEST
        if len(data) == end + _TRAILER and data[end:end + len(SIGNED)] == SIGNED:
            return data[:end]
    return data


def verify(data: bytes, key, name: str = "<bytes>") -> bytes:
    """The sealed part of a module signed with key, or SignatureError; nothing else is read."""
    k = read_key(key)
    sealed = _sealed_part(data)
    if len(sealed) == len(data):
        raise SignatureError(f"{name}: refused: the module is not signed, and a key was given "
                             f"(sign it with `gradc build --sign-key`)")
    mac = data[len(sealed) + len(SIGNED):]
    if not hmac.compare_digest(mac, hmac.new(k, sealed, hashlib.sha256).digest()):
        raise SignatureError(f"{name}: refused: the module's signature does not match the key "
                             f"(signed with another key, or changed since it was signed)")
    return sealed


def unpack(data: bytes, name: str = "<bytes>", key=None) -> tuple:
    """(header, Code) of a module file's bytes, or ArtifactError saying what is wrong.

    With a key, the signature is checked first, before anything else of the file is read.
    """
    data = verify(data, key, name) if key is not None else _sealed_part(data)
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


def check_compatible(header: dict, target: str, host: dict, version: str, name: str = "<bytes>"):
    """Refuse a module this process cannot run for target, saying how to get one it can.

    host: the backend's description of what the code must match (for cpu: the platform, the
    CPU and its features; for cuda: the GPU architecture and the PTX version)."""
    src = header.get("source_name") or "the .ad file"
    flag = "" if target == "cpu" else f" --target {target}"
    how = f"rebuild it here with `gradc build {src}{flag} -o {Path(name).name}` (or gradc.build)"
    if header.get("gradc_version") != version:
        raise ArtifactMismatch(f"{name}: built by gradc {header.get('gradc_version')}, this is gradc "
                               f"{version}; {how}")
    if header.get("target") != target:
        raise ArtifactMismatch(f"{name}: built for target {header.get('target')!r}, not {target}; {how}")
    names = {"triple": "platform", "cpu": "CPU", "features": "CPU features", "gpu_arch": "GPU architecture",
             "ptx_version": "PTX version", "python": "Python"}
    if "python" in host and header.get("python") != host["python"]:
        raise ArtifactMismatch(f"{name}: built for Python {header.get('python')}, but this is "
                               f"{host['python']}; {how}")
    if header.get("cpu_chosen") and not host.get("cpu_chosen") and header.get("triple") == host.get("triple"):
        # built for a chosen CPU (--cpu, --cpu-features): it runs where every feature it uses is
        have = {f[1:] for f in str(host.get("features", "")).split(",") if f.startswith("+")}
        need = {f[1:] for f in str(header.get("features", "")).split(",") if f.startswith("+")}
        if need <= have:
            return
        raise ArtifactMismatch(f"{name}: built for CPU {header.get('cpu')} with features this machine lacks "
                               f"({', '.join(sorted(need - have)[:6])}); {how}")
    for key in host:
        if header.get(key) != host[key]:
            what = names.get(key, key)
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


def read(path, key=None) -> tuple:
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a directory, not a gradc module") from None
    if key is not None:
        data = verify(data, key, str(path))          # before anything else of the file is read
    return unpack(data, str(path))
