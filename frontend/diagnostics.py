"""Compile errors and warnings, rendered as FILE:LINE:COL, the source line and a caret."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


PRELUDE = "<prelude>"          # the file name of frontend/prelude.ad in locations
QUOTE_WIDTH = 160              # characters of a quoted source line
SHOWN_CALLS = 5                # located notes shown at each end of a long chain of calls


class CompileError(Exception):
    """A mistake in a program. notes: hints (str), or (message, loc) pairs such as the call sites
    of the inlined function the error is in, rendered with their own source line and caret."""

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
    lines = [head] + _quote(loc, sources)
    located = sum(isinstance(n, tuple) for n in notes)
    k = 0
    for n in notes:
        if not isinstance(n, tuple):
            lines.append(f"note: {n}")
            continue
        k += 1
        # calls inside calls: the innermost and outermost few, as clang shows template contexts
        if located > 2 * SHOWN_CALLS and SHOWN_CALLS < k <= located - SHOWN_CALLS:
            if k == SHOWN_CALLS + 1:
                lines.append(f"note: ({located - 2 * SHOWN_CALLS} more calls in between)")
            continue
        text, at = n
        lines += [f"{at}: note: {text}"] + _quote(at, sources)
    return "\n".join(lines)


def _quote(loc, sources) -> list:
    """The source line at loc and a caret under its column (none where the text is unknown)."""
    if loc is None:
        return []
    text = (sources or {}).get(loc.file)
    if text is None and loc.file == PRELUDE:
        text = prelude_source()
    src = text.splitlines() if text is not None else []
    if not 0 < loc.line <= len(src):
        return []
    line, col = src[loc.line - 1].expandtabs(1), loc.col
    if len(line) > QUOTE_WIDTH:       # a window of a long line around the column
        start = max(0, min(col - 1 - QUOTE_WIDTH // 2, len(line) - QUOTE_WIDTH))
        line = ("..." if start else "") + line[start:start + QUOTE_WIDTH] + \
            ("..." if start + QUOTE_WIDTH < len(line) else "")
        col = col - start + (3 if start else 0)
    return [line, " " * (col - 1) + "^"]


@lru_cache(maxsize=None)
def prelude_source() -> str:
    """The text of frontend/prelude.ad: the losses written in the language."""
    return (Path(__file__).parent / "prelude.ad").read_text()


class InternalError(RuntimeError):
    """A failure that is gradc's own fault, not the program's: a bug to report."""


def internal_error(ex: BaseException, file: str, version: str, command: str | None = None) -> InternalError:
    """An InternalError for the unexpected exception ex, saying what to report."""
    tb = ex.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" (in {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}, " \
            f"{tb.tb_frame.f_code.co_name})" if tb is not None else ""
    what = f"the command `{command}`" if command else "the call that failed"
    src = "the program's source text" if file.startswith("<") else f"the file {file}"
    return InternalError(f"gradc: internal compiler error: {type(ex).__name__}: {ex}{where}\n"
                         f"note: this is a bug in gradc, not a mistake in the program; please report "
                         f"it with the gradc version ({version}), {what} and {src}")


class Diagnostics:
    """Collects warnings while a module compiles."""

    def __init__(self):
        self.warnings = []            # (message, loc)

    def warn(self, message, loc=None):
        if (message, loc) not in self.warnings:
            self.warnings.append((message, loc))
