"""Source files as text: UTF-8, or a CompileError at the line and column of the first bad byte."""
from __future__ import annotations

from pathlib import Path

from ..vocab import Loc
from .diagnostics import CompileError


def read_source_file(path) -> str:
    """The text of a .ad file (OSError where it cannot be read)."""
    return decode(Path(path).read_bytes(), str(path))


def decode(data: bytes, file: str = "<source>") -> str:
    """data as UTF-8 text (a leading byte-order mark dropped)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as ex:
        before = data[:ex.start]
        line_start = before.rfind(b"\n") + 1
        loc = Loc(file, before.count(b"\n") + 1, len(before[line_start:].decode("utf-8")) + 1)
        err = CompileError(f"the file is not UTF-8 text: byte 0x{data[ex.start]:02x} cannot start or "
                           "continue a character here", loc, ["save the file as UTF-8"])
        err.args = (err.render({file: data.decode("utf-8", "replace")}),)
        raise err from None
    return text.removeprefix("\ufeff")
