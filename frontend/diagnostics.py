"""Compile errors and warnings, rendered as FILE:LINE:COL, the source line and a caret."""
from __future__ import annotations


class CompileError(Exception):
    def __init__(self, message, loc=None, notes=()):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.notes = tuple(notes)

    def render(self, sources: dict | None = None) -> str:
        return render("error", self.message, self.loc, self.notes, sources)


def render(kind, message, loc, notes=(), sources: dict | None = None) -> str:
    """The text a user sees; sources maps file names to their text, for the quoted line."""
    head = f"{loc}: {kind}: {message}" if loc is not None else f"gradc: {kind}: {message}"
    lines = [head]
    text = (sources or {}).get(loc.file) if loc is not None else None
    if text is not None:
        src = text.splitlines()
        if 0 < loc.line <= len(src):
            line = src[loc.line - 1].expandtabs(1)
            lines += [line, " " * (loc.col - 1) + "^"]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


class Diagnostics:
    """Collects warnings while a module compiles."""

    def __init__(self):
        self.warnings = []            # (message, loc)

    def warn(self, message, loc=None):
        if (message, loc) not in self.warnings:
            self.warnings.append((message, loc))
