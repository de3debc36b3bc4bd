"""Identical internal functions of a module merged into one before LLVM sees them.

A deep network's layers, or the tiles of a long elementwise chain, lower to phase and segment
functions whose bodies are the same instruction for instruction (a 30-layer perceptron: 189
functions, 20 different bodies); LLVM optimizes and compiles each copy again, and that was
most of the compile time. Here every `define internal` function whose body equals an earlier
one (its own name aside, metadata compared by what it says) is dropped and its calls go to the
earlier one. Phases and segments are noinline, so the code each call runs does not change.
"""
from __future__ import annotations

import re

# a definition as llvmlite prints it: the define line, "{" on its own line or at the line's end
_DEFINE = re.compile(r'^define internal [^\n]*?@"([^"]+)"\([^\n]*\n?\{\n.*?^\}\n', re.M | re.S)
_META = re.compile(r'^!(\d+) = (.*)$', re.M)
_REF = re.compile(r'!(\d+)\b')


def _metadata_keys(text: str) -> dict:
    """{metadata id: a text of what the node says}, references to other nodes replaced by theirs
    (a node's reference to itself, as a loop ID has, by SELF)."""
    nodes = dict(_META.findall(text))
    keys = {}

    def key(i, seen=()):
        if i in keys:
            return keys[i]
        if i in seen or i not in nodes:
            return "SELF" if i in seen else f"?{i}"
        k = _REF.sub(lambda m: "!{" + key(m.group(1), seen + (i,)) + "}", nodes[i])
        keys[i] = k
        return k
    for i in nodes:
        key(i)
    return keys


def merge_identical(text: str) -> str:
    """text with each internal function that duplicates an earlier one removed and every use of
    its name renamed to the earlier one's; repeated until no two are alike (callers become alike
    once their callees are merged)."""
    keys = _metadata_keys(text) if "\n!" in text else {}
    while True:
        canon, renamed = {}, {}
        for m in _DEFINE.finditer(text):
            name, body = m.group(1), m.group(0)
            shape = body.replace(f'@"{name}"', "@SELF")
            if keys:
                shape = _REF.sub(lambda r: "!{" + keys.get(r.group(1), r.group(1)) + "}", shape)
            if shape in canon:
                renamed[name] = canon[shape]
            else:
                canon[shape] = name
        if not renamed:
            return text
        text = _DEFINE.sub(lambda m: "" if m.group(1) in renamed else m.group(0), text)
        text = re.sub(r'@"([^"]+)"', lambda m: f'@"{renamed[m.group(1)]}"' if m.group(1) in renamed
                      else m.group(0), text)
