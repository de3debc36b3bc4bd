"""A small ELF reader: sections, symbols, the dynamic table and relocations of 64-bit files."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

ET_REL, ET_DYN = 1, 3
MACHINES = {"x86_64": 62, "aarch64": 183}
# section types
SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_DYNSYM = 2, 3, 4, 8, 11
SHT_INIT_ARRAY, SHT_FINI_ARRAY, SHT_PREINIT_ARRAY = 14, 15, 16
# program header types
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_TLS = 1, 2, 3, 7
PF_W = 2
# symbol types
STT_OBJECT, STT_FUNC, STT_TLS, STT_GNU_IFUNC = 1, 2, 6, 10
SHN_UNDEF = 0

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")
_DYN = struct.Struct("<qQ")
_RELA = struct.Struct("<QQq")


class ElfError(ValueError):
    """Bytes that are not a well-formed 64-bit little-endian ELF file."""


@dataclass
class Symbol:
    name: str
    type: int
    bind: int            # 0 local, 1 global, 2 weak
    section: int         # 0: undefined
    value: int
    size: int


@dataclass
class Elf:
    type: int
    machine: int
    sections: list = field(default_factory=list)     # (name, type, flags, addr, offset, size)
    segments: list = field(default_factory=list)     # (type, flags, offset, vaddr, filesz, memsz)
    symbols: list = field(default_factory=list)      # .symtab, or .dynsym for a shared library
    dynamic: list = field(default_factory=list)      # (tag, value)
    relocations: list = field(default_factory=list)  # (offset, type) of a shared library's dynamic relocations
    data: bytes = b""

    def defined(self, name: str) -> Symbol | None:
        for s in self.symbols:
            if s.name == name and s.section != SHN_UNDEF:
                return s
        return None

    def symbol_bytes(self, sym: Symbol) -> bytes | None:
        """The bytes a defined data symbol starts with in the file, None where they are not there."""
        if not 0 < sym.section < len(self.sections):
            return None
        _, stype, _, addr, offset, size = self.sections[sym.section]
        at = sym.value - addr if self.type == ET_DYN else sym.value
        if stype == SHT_NOBITS or at < 0 or at + sym.size > size:
            return None
        return self.data[offset + at:offset + at + sym.size]


def _unpack(st, data, at):
    if at < 0 or at + st.size > len(data):
        raise ElfError("a table reaches past the end of the file")
    return st.unpack_from(data, at)


def _string(table: bytes, at: int) -> str:
    if not 0 <= at < len(table) and at:
        raise ElfError("a name lies outside its string table")
    end = table.find(b"\0", at)
    return table[at:end if end >= 0 else len(table)].decode("latin-1")


def parse(data: bytes) -> Elf:
    """The parts of an ELF file the loader checks, or ElfError."""
    data = bytes(data)
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    (_, etype, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
     shstrndx) = _EHDR.unpack_from(data)
    if (phnum and phentsize != _PHDR.size) or (shnum and shentsize != _SHDR.size):
        raise ElfError("unexpected header sizes")
    elf = Elf(etype, machine, data=data)
    raw = [_unpack(_SHDR, data, shoff + i * _SHDR.size) for i in range(shnum)]
    for _, stype, _, _, offset, size, *_ in raw:
        if stype != SHT_NOBITS and (offset + size > len(data)):
            raise ElfError("a section reaches past the end of the file")
    names = b""
    if shnum:
        if shstrndx >= shnum:
            raise ElfError("no section name table")
        names = data[raw[shstrndx][4]:raw[shstrndx][4] + raw[shstrndx][5]]
    elf.sections = [(_string(names, n), t, fl, a, o, s) for n, t, fl, a, o, s, *_ in raw]
    for i in range(phnum):
        ptype, flags, offset, vaddr, _, filesz, memsz, _ = _unpack(_PHDR, data, phoff + i * _PHDR.size)
        elf.segments.append((ptype, flags, offset, vaddr, filesz, memsz))
    want = SHT_DYNSYM if etype == ET_DYN else SHT_SYMTAB
    for i, (_, stype, _, _, offset, size, link, _, _, entsize) in enumerate(raw):
        if stype == want:
            if entsize != _SYM.size or link >= shnum:
                raise ElfError("malformed symbol table")
            strtab = data[raw[link][4]:raw[link][4] + raw[link][5]]
            for at in range(offset, offset + size - _SYM.size + 1, _SYM.size):
                name, info, _, shndx, value, ssize = _SYM.unpack_from(data, at)
                elf.symbols.append(Symbol(_string(strtab, name), info & 0xF, info >> 4, shndx, value, ssize))
    for ptype, _, offset, _, filesz, _ in elf.segments:
        if ptype == PT_DYNAMIC:
            for at in range(offset, offset + filesz - _DYN.size + 1, _DYN.size):
                tag, value = _unpack(_DYN, data, at)
                if tag == 0:
                    break
                elf.dynamic.append((tag, value))
    if etype == ET_DYN:
        elf.relocations = _dynamic_relocations(elf)
    return elf


def file_offset(elf: Elf, vaddr: int) -> int | None:
    """Where an address of a loaded segment lies in the file."""
    for ptype, _, offset, start, filesz, _ in elf.segments:
        if ptype == PT_LOAD and start <= vaddr < start + filesz:
            return offset + vaddr - start
    return None


DT_RELA, DT_RELASZ, DT_JMPREL, DT_PLTRELSZ = 7, 8, 23, 2


def _dynamic_relocations(elf: Elf) -> list:
    """(offset, type) of every relocation the dynamic loader applies, read as it reads them."""
    tags = dict(elf.dynamic)
    out = []
    for table, size in ((DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)):
        if table not in tags:
            continue
        at = file_offset(elf, tags[table])
        if at is None:
            raise ElfError("a relocation table lies outside the loaded segments")
        for i in range(tags.get(size, 0) // _RELA.size):
            offset, info, _ = _unpack(_RELA, elf.data, at + i * _RELA.size)
            out.append((offset, info & 0xFFFFFFFF))
    return out
