"""The example calls a sample carries in its comments: CALL, EXPECT, TOL, ERROR, WARNING."""
from __future__ import annotations

import ast as pyast
import json
import re
from dataclasses import dataclass, field

_LINE = re.compile(r"^\s*#\s*(CALL|EXPECT|TOL|ERROR|WARNING):\s*(.*?)\s*$")


@dataclass
class Example:
    func: str
    args: dict            # parameter name -> number or nested list
    line: int
    expect: object = None
    rtol: float = 1e-4
    atol: float = 1e-6


@dataclass
class Examples:
    calls: list = field(default_factory=list)
    errors: list = field(default_factory=list)      # substrings the compile error must contain
    warnings: list = field(default_factory=list)


class ExampleError(ValueError):
    pass


def mismatch(outs: list, c: Example):
    """Why the results of example call c differ from its EXPECT line, or None where they agree."""
    import numpy as np
    if c.expect is None:
        return None
    want = c.expect if len(outs) > 1 else [c.expect]
    if len(want) != len(outs):
        return f"{len(outs)} results, EXPECT has {len(want)}"
    # a record (a named tuple) is expected as {"field": value, ...}: compared field by field
    pairs = []
    for k, (o, w) in enumerate(zip(outs, want)):
        if isinstance(o, tuple) and hasattr(o, "_fields"):
            if not isinstance(w, dict) or set(w) != set(o._fields):
                return f"result {k} is a record with the fields {', '.join(o._fields)}; EXPECT gives {w!r:.80}"
            pairs += [(f"{k}.{f}", getattr(o, f), w[f]) for f in o._fields]
        else:
            pairs.append((k, o, w))
    for k, o, w in pairs:
        try:
            w = np.asarray(w, dtype=np.float64)
        except ValueError:
            return f"result {k}: EXPECT is not a regular array"
        if np.shape(o) != w.shape:
            return f"result {k} has shape {np.shape(o)}, EXPECT has {w.shape}"
        if not np.allclose(np.asarray(o, np.float64), w, rtol=c.rtol, atol=c.atol, equal_nan=True):
            return f"result {k} is {np.asarray(o).tolist()}, expected {w.tolist()} (rtol {c.rtol}, atol {c.atol})"
    return None


def _literal(text, line):
    try:
        return json.loads(text)          # numbers, lists, true/false, NaN, Infinity
    except ValueError:
        pass
    try:
        return pyast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ExampleError(f"line {line}: cannot read {text!r} as a number or a list") from None


def parse_examples(source: str) -> Examples:
    out = Examples()
    rtol, atol = 1e-4, 1e-6
    for i, line in enumerate(source.splitlines(), 1):
        m = _LINE.match(line)
        if not m:
            continue
        kind, text = m.groups()
        if kind == "CALL":
            call = re.match(r"^([A-Za-z_][A-Za-z_0-9]*)\((.*)\)$", text)
            if not call:
                raise ExampleError(f"line {i}: CALL needs the form name(param=value, ...)")
            args = {}
            for part in _split_args(call.group(2)):
                name, eq, value = part.partition("=")
                if not eq:
                    raise ExampleError(f"line {i}: CALL arguments are written name=value")
                args[name.strip()] = _literal(value.strip(), i)
            out.calls.append(Example(call.group(1), args, i, rtol=rtol, atol=atol))
        elif kind == "EXPECT":
            if not out.calls or out.calls[-1].expect is not None:
                raise ExampleError(f"line {i}: EXPECT must follow a CALL")
            out.calls[-1].expect = _literal(text, i)
        elif kind == "TOL":
            parts = text.split()
            rtol, atol = float(parts[0]), float(parts[1]) if len(parts) > 1 else atol
        elif kind == "ERROR":
            out.errors.append(text)
        else:
            out.warnings.append(text)
    return out


def _split_args(text):
    depth, cur, parts = 0, "", []
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts
