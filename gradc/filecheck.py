"""A small FileCheck: CHECK, CHECK-NEXT, CHECK-NOT, CHECK-LABEL, {{regex}} and [[VAR:regex]]."""
from __future__ import annotations

import re

_DIRECTIVE = re.compile(r"#\s*(CHECK(?:-NEXT|-NOT|-LABEL|-EMPTY)?):(.*)$")


class CheckFailure(AssertionError):
    pass


def directives(text: str) -> list:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        m = _DIRECTIVE.search(line)
        if m:
            out.append((m.group(1), m.group(2).strip(), i))
    return out


def _regex(pattern: str, env: dict) -> str:
    out, pos = [], 0
    token = re.compile(r"\{\{(.*?)\}\}|\[\[([A-Za-z_][A-Za-z_0-9]*)(?::(.*?))?\]\]")
    for m in token.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"(?:{m.group(1)})")
        elif m.group(3) is not None:
            out.append(f"(?P<{m.group(2)}>{m.group(3)})")
        else:
            if m.group(2) not in env:
                raise CheckFailure(f"[[{m.group(2)}]] is used before it is defined")
            out.append(re.escape(env[m.group(2)]))
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return "".join(out)


def filecheck(output: str, checks: list) -> None:
    """Match output against (kind, pattern, line) directives; raise CheckFailure on a mismatch."""
    lines = output.splitlines()
    env, pos, pending_not = {}, 0, []

    def search(kind, pattern, lineno, start, only=None):
        rx = re.compile(_regex(pattern, env))
        rng = range(start, len(lines)) if only is None else ([only] if only < len(lines) else [])
        for i in rng:
            m = rx.search(lines[i])
            if m:
                env.update({k: v for k, v in m.groupdict().items() if v is not None})
                return i
        where = f"line {only + 1} of the output" if only is not None else "the rest of the output"
        raise CheckFailure(f"{kind} at check line {lineno}: {pattern!r} not found in {where}\n"
                           f"--- output ---\n{output}")

    def check_nots(upto):
        for pattern, lineno in pending_not:
            rx = re.compile(_regex(pattern, env))
            for i in range(pos, upto):
                if rx.search(lines[i]):
                    raise CheckFailure(f"CHECK-NOT at check line {lineno}: {pattern!r} found on output "
                                       f"line {i + 1}: {lines[i]!r}")
        pending_not.clear()

    for kind, pattern, lineno in checks:
        if kind == "CHECK-NOT":
            pending_not.append((pattern, lineno))
            continue
        if kind == "CHECK-EMPTY":
            if pos >= len(lines) or lines[pos].strip():
                raise CheckFailure(f"CHECK-EMPTY at check line {lineno}: output line {pos + 1} is not empty")
            pos += 1
            continue
        i = search(kind, pattern, lineno, pos, only=pos if kind == "CHECK-NEXT" else None)
        check_nots(i)
        pos = i + 1
    check_nots(len(lines))
