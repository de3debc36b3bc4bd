"""Every bad program gets a diagnostic with a position, never a Python exception: mutated samples,
deep and long programs, constant arithmetic, encodings, inlined calls, internal errors."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from gradc.compiler.pipeline import lower, optimize
from gradc.compiler.verify import verify
from gradc.frontend.diagnostics import CompileError
from gradc.frontend.source import decode

SAMPLES = sorted((Path(__file__).parent.parent / "samples").glob("*.ad"))
_TOKEN = re.compile(rb"[A-Za-z_][A-Za-z_0-9]*|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\*\*|->|[<>=!]=|\s+|.",
                    re.S)


def mutate(source: bytes, rng: random.Random) -> bytes:
    """One to three edits of a program's tokens: delete, duplicate, swap, replace, random bytes."""
    toks = _TOKEN.findall(source)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(toks))
        kind = rng.choice(("delete", "duplicate", "swap", "replace", "bytes"))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        elif kind == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif kind == "replace":
            toks[i] = rng.choice(toks)
        else:
            toks.insert(i, bytes(rng.randrange(256) for _ in range(rng.randint(1, 3))))
    return b"".join(toks)


def compile_front(data: bytes, file="m.ad"):
    """Decoding, lowering and the optimization passes (no native code): the module's graphs."""
    mod = lower(decode(data, file), file)
    return [verify(optimize(g)) for g in mod.graphs.values()]


def outcome(data: bytes) -> str:
    try:
        compile_front(data)
    except CompileError as ex:
        return "error" if ex.loc is not None else "error without a position"
    return "ok"


def test_mutated_samples_get_diagnostics():
    rng = random.Random(6)
    sources = [p.read_bytes() for p in SAMPLES]
    seen = {"ok": 0, "error": 0}
    for k in range(300):
        mutant = mutate(sources[k % len(sources)], rng)
        try:
            result = outcome(mutant)
        except Exception as ex:          # what the test is for: the mutant is in the message
            raise AssertionError(f"mutant {k} raised {type(ex).__name__}: {ex}\n{mutant.decode(errors='replace')}")
        assert result in seen, f"mutant {k}: {result}\n{mutant.decode(errors='replace')}"
        seen[result] += 1
    assert seen["ok"] and seen["error"]     # the mutator makes both kinds
