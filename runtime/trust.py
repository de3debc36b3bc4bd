"""What a module's code must show before it is mapped: the header's promises kept, and no code run at load.

This makes an edited or damaged header an ArtifactError rather than a crash. It does not make
hostile code safe: a module is native code, and only a signature (artifact.py) says who made it.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading

from . import elf
from .artifact import ArtifactError

# the bytes each function's object code carries as SYMBOL.desc: a digest of its header entry
# and of the module's facts (version, CPU, features, fast-math, source...), made at build time
DESC = ".desc"
_PARTS = ("functions", "objects", "shared")          # the header fields that describe the file itself
_SYMBOL = re.compile(r"gradc_fn_[A-Za-z_][A-Za-z0-9_]*$")
_LOADER_GLOBAL = re.compile(r"gradc_[a-z0-9_]+(\.\d+)?$")     # what runtime/libs.py patches
# what runs code while a library is loaded or unloaded: gradc never emits any of it
_LOAD_TIME_SECTIONS = re.compile(r"\.(init|fini|preinit_array|init_array|fini_array|ctors|dtors)(\..*)?$")
_LOAD_TIME_TAGS = {12: "DT_INIT", 13: "DT_FINI", 25: "DT_INIT_ARRAY", 26: "DT_FINI_ARRAY",
                   32: "DT_PREINIT_ARRAY", 0x6ffffefc: "DT_AUDIT", 0x6ffffefb: "DT_DEPAUDIT",
                   0x7fffffff: "DT_FILTER", 0x7ffffffd: "DT_AUXILIARY", 15: "DT_RPATH",
                   29: "DT_RUNPATH", 22: "DT_TEXTREL"}
DT_NEEDED = 1
# the only libraries a module's shared library may pull in (cc adds libc; the rest are global already)
_NEEDED = {"libc.so.6", "libm.so.6", "libmvec.so.1"}
# relocations the dynamic loader applies to gradc's libraries; IRELATIVE runs a resolver: refused
_RELOCATIONS = {62: {1, 6, 7, 8}, 183: {257, 1025, 1026, 1027}}


def describe(facts: dict, function: dict) -> bytes:
    """The digest a function's object code carries: of its header entry and the module's facts."""
    text = json.dumps({"module": facts, "function": function}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def facts(header: dict) -> dict:
    return {k: v for k, v in header.items() if k not in _PARTS}


# files already found well-formed, by content: loading the same code again reads no ELF
_good = {}
_good_lock = threading.Lock()


def check_code(header: dict, code, name: str = "<bytes>"):
    """ArtifactError unless the code defines what the header promises and nothing runs at load."""
    functions = _functions(header, name)
    arch = str(header.get("triple", "")).split("-")[0]
    machine = elf.MACHINES.get(arch)
    if machine is None:
        raise ArtifactError(f"{name}: gradc does not load code for {arch!r}")
    mod = facts(header)
    want = {f["symbol"]: describe(mod, f) for f in functions}
    parsed = [_inspect(o, elf.ET_REL, machine, f"object {i}", name) for i, o in enumerate(code.objects)]
    _check_symbols(parsed, want, "the object code", name)
    if code.shared is not None:
        _check_symbols([_inspect(code.shared, elf.ET_DYN, machine, "the shared library", name)], want,
                       "the shared library", name)


def _inspect(data, kind, machine, what, name) -> list:
    """The global symbols of a well-formed file with no load-time code: (name, type, its bytes)."""
    key = (hashlib.sha256(data).digest(), kind, machine)
    with _good_lock:
        found = _good.get(key)
    if found is not None:
        return found
    e = _parse(data, kind, machine, what, name)
    if kind == elf.ET_DYN:
        _check_library(e, machine, name)
    found = []
    for s in e.symbols:
        if s.section != elf.SHN_UNDEF and s.bind != 0:     # not imports (libm...) nor local symbols
            found.append((s.name, s.type, e.symbol_bytes(s) if s.name.endswith(DESC) else None))
    with _good_lock:
        if len(_good) >= 256:
            _good.clear()
        _good[key] = found
    return found


def _functions(header: dict, name: str) -> list:
    """The header's function table, checked for shape; signatures are read as they are."""
    fns = header.get("functions")
    bad = ArtifactError(f"{name}: corrupted gradc module (malformed function table)")
    if not isinstance(fns, list):
        raise bad
    seen = set()
    for f in fns:
        if not (isinstance(f, dict) and isinstance(f.get("symbol"), str) and _SYMBOL.match(f["symbol"])
                and isinstance(f.get("dims"), list) and all(isinstance(d, str) for d in f["dims"])
                and isinstance(f.get("signature"), dict) and isinstance(f["signature"].get("name"), str)):
            raise bad
        key = (f["symbol"], f["signature"]["name"])
        if seen & {("s", key[0]), ("n", key[1])}:
            raise ArtifactError(f"{name}: corrupted gradc module (function {key[1]} listed twice)")
        seen |= {("s", key[0]), ("n", key[1])}
    return fns


def _parse(data, kind, machine, what, name):
    try:
        e = elf.parse(data)
    except elf.ElfError as ex:
        raise ArtifactError(f"{name}: corrupted gradc module ({what}: {ex})") from None
    if e.type != kind or e.machine != machine:
        raise ArtifactError(f"{name}: corrupted gradc module ({what} is not "
                            f"{'an object file' if kind == elf.ET_REL else 'a shared library'} for this machine)")
    for sname, stype, *_ in e.sections:
        if stype in (elf.SHT_INIT_ARRAY, elf.SHT_FINI_ARRAY, elf.SHT_PREINIT_ARRAY) or \
                _LOAD_TIME_SECTIONS.match(sname):
            raise ArtifactError(f"{name}: refused: {what} has code that would run when it is loaded "
                                f"(section {sname}); gradc never makes such modules")
    for s in e.symbols:
        if s.type in (elf.STT_GNU_IFUNC, elf.STT_TLS):
            raise ArtifactError(f"{name}: refused: {what} has an {'IFUNC' if s.type == 10 else 'TLS'} "
                                f"symbol {s.name}; gradc never makes such modules")
    return e


def _check_library(lib, machine, name):
    """No constructors, interpreters, foreign libraries or load-time resolvers."""
    for ptype, *_ in lib.segments:
        if ptype in (elf.PT_INTERP, elf.PT_TLS):
            raise ArtifactError(f"{name}: refused: the shared library has a program header gradc never makes")
    strtab = _dynstr(lib)
    for tag, value in lib.dynamic:
        if tag in _LOAD_TIME_TAGS:
            raise ArtifactError(f"{name}: refused: the shared library has {_LOAD_TIME_TAGS[tag]}, code or "
                                f"paths used when it is loaded; gradc never makes such modules")
        if tag == DT_NEEDED:
            needed = strtab[value:strtab.find(b"\0", value)].decode("latin-1") if strtab else "?"
            if needed not in _NEEDED:
                raise ArtifactError(f"{name}: refused: the shared library would load {needed!r}")
    writable = [(v, v + m) for t, fl, _, v, _, m in lib.segments if t == elf.PT_LOAD and fl & elf.PF_W]
    allowed = _RELOCATIONS.get(machine, set())
    for offset, rtype in lib.relocations:
        if rtype not in allowed:
            raise ArtifactError(f"{name}: refused: the shared library has a relocation of type {rtype}, "
                                f"which gradc never makes")
        if not any(lo <= offset and offset + 8 <= hi for lo, hi in writable):
            raise ArtifactError(f"{name}: refused: a relocation of the shared library writes outside it")


def _dynstr(lib) -> bytes:
    tags = dict(lib.dynamic)
    if 5 not in tags:
        return b""
    at = elf.file_offset(lib, tags[5])
    return lib.data[at:at + tags.get(10, 0)] if at is not None else b""


def _check_symbols(files, want: dict, what: str, name: str):
    """Every promised function defined once, with its digest; no global the header does not explain."""
    promised = {s + suffix for s in want for suffix in ("", ".flat", ".scalar", ".py")}
    # the CPython entry's table and interpreter tag (fastcall.py)
    tables = {s + suffix for s in want for suffix in (".pyapi", ".pyabi")}
    found = {}
    for symbols in files:
        for sname, stype, data in symbols:
            if sname in found:
                raise ArtifactError(f"{name}: corrupted gradc module ({what} defines {sname} twice)")
            found[sname] = (stype, data)
            ok = (stype == elf.STT_FUNC and sname in promised) or (
                stype in (elf.STT_OBJECT, 0) and (_LOADER_GLOBAL.match(sname) or sname in tables or
                                                  (sname.endswith(DESC) and sname[:-len(DESC)] in want)))
            if not ok:
                raise ArtifactError(f"{name}: header and code disagree ({what} defines {sname}, "
                                    f"which the header does not list)")
    for symbol, digest in want.items():
        for need in (symbol, symbol + ".flat"):
            if found.get(need, (None,))[0] != elf.STT_FUNC:
                raise ArtifactError(f"{name}: header and code disagree ({what} has no function {need})")
        if found.get(symbol + DESC, (None, None))[1] != digest:
            raise ArtifactError(f"{name}: header and code disagree (the entry of {symbol[9:]} was not "
                                f"compiled with this code, or was edited)")
