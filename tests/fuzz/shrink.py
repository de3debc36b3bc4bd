"""Delta debugging: the smallest program or source that still fails the same way.

`shrink_program` works on a generated program's structure (transforms, statements,
subexpressions, parameters), so the oracle still understands every candidate;
`shrink_text` works on any source (lines, then tokens, then characters). Both take a
predicate `fails(candidate) -> bool`, which the campaign runs in a worker process so that a
candidate that crashes the interpreter is just another answer.
"""
from __future__ import annotations

import copy
import re

from . import gen
from .expr import Ex, ref, walk


def _ddmin(items: list, fails) -> list:
    """Zeller's ddmin: a 1-minimal sublist of items for which fails(sublist) holds."""
    n = 2
    while len(items) >= 2:
        chunk = max(len(items) // n, 1)
        parts = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        for i in range(len(parts)):
            rest = [x for j, p in enumerate(parts) if j != i for x in p]
            if fails(rest):
                items, n = rest, max(n - 1, 2)
                break
        else:
            if n >= len(items):
                break
            n = min(n * 2, len(items))
    return items


TOKEN = re.compile(r"\s+|#[^\n]*|[A-Za-z_][A-Za-z_0-9]*|[0-9.]+(?:[eE][+-]?[0-9]+)?|\*\*|[<>=!]=|->|.", re.S)


def shrink_text(src, fails, budget: int = 400):
    """A smaller source (str or bytes) for which fails still holds."""
    calls = [0]

    def limited(x):
        calls[0] += 1
        return calls[0] <= budget and fails(x)

    is_bytes = isinstance(src, bytes)
    join = (lambda parts: b"".join(parts)) if is_bytes else (lambda parts: "".join(parts))
    lines = src.splitlines(keepends=True)
    lines = _ddmin(lines, lambda ls: limited(join(ls)))
    cur = join(lines)
    if not is_bytes:
        toks = _ddmin(TOKEN.findall(cur), lambda ts: limited("".join(ts)))
        cur = "".join(toks)
    if len(cur) <= 400:
        units = [cur[i:i + 1] for i in range(len(cur))]
        cur = join(_ddmin(units, lambda us: limited(join(us))))
    return cur


# ---- programs

def _refs(prog) -> set:
    names = set()
    for _, e in prog.lets:
        names |= {x.attrs["name"] for x in walk(e) if x.op == "ref"}
    names |= {x.attrs["name"] for x in walk(prog.loss) if x.op == "ref"}
    names |= set(prog.outs)
    for _, _, wrt, _ in prog.transforms:
        names |= set(wrt)
    return names


def _replace(e: Ex, target: Ex, new: Ex) -> Ex:
    if e is target:
        return new
    if not e.args:
        return e
    args = tuple(_replace(a, target, new) for a in e.args)
    if all(a is b for a, b in zip(args, e.args)):
        return e
    return Ex(e.op, args, e.attrs, e.shape, e.dtype, e.lo, e.hi, e.smooth)


def _candidates(prog):
    """Smaller programs, roughly largest cut first."""
    # one transform at a time (a vjp_grad keeps the gx it checks against)
    if len(prog.transforms) > 1:
        for t in prog.transforms:
            keep = [u for u in prog.transforms if u is t or (t[1] == "vjp_grad" and u[1] == "gx")]
            yield _with(prog, transforms=keep)
    if len(prog.outs) > 1:
        for o in prog.outs:
            yield _with(prog, outs=[o], loss=None)
    used = _refs(prog)
    for i, (name, _) in enumerate(prog.lets):
        if name not in used:
            yield _with(prog, lets=prog.lets[:i] + prog.lets[i + 1:])
    # a subexpression replaced by one of its operands or a parameter of the same type
    leaves = [ref(n, s, d) for n, s, d, _ in prog.params if d != "i64"]
    for i, (name, e) in enumerate(prog.lets):
        for node in walk(e):
            if node.op in ("ref", "num"):
                continue
            subs = [a for a in node.args if a.shape == node.shape and a.dtype == node.dtype]
            subs += [p for p in leaves if p.shape == node.shape and p.dtype == node.dtype]
            for s in subs:
                lets = list(prog.lets)
                lets[i] = (name, _replace(e, node, s))
                yield _with(prog, lets=lets)
    for i, (n, _, _, _) in enumerate(prog.params):
        if n not in used:
            yield _with(prog, params=prog.params[:i] + prog.params[i + 1:])


def _with(prog, **changes):
    p = copy.copy(prog)
    for k, v in changes.items():
        setattr(p, k, v)
    if "outs" in changes:           # the loss keeps only the parts over the remaining output
        p.loss = _loss_for(prog, changes["outs"][0])
    return p


def _loss_for(prog, out):
    for part in (prog.loss.args if prog.loss.op == "add" else (prog.loss,)):
        if out in {x.attrs["name"] for x in walk(part) if x.op == "ref"}:
            return part
    return prog.loss


def size(prog) -> int:
    return sum(len(list(walk(e))) for _, e in prog.lets) + len(prog.transforms) + len(prog.params)


def shrink_program(prog, fails, budget: int = 300):
    """A smaller program for which fails still holds (greedy: first accepted cut restarts)."""
    calls = 0
    progress = True
    while progress and calls < budget:
        progress = False
        for cand in _candidates(prog):
            if size(cand) >= size(prog):
                continue
            calls += 1
            if fails(cand):
                prog, progress = cand, True
                break
            if calls >= budget:
                break
    return prog


__all__ = ["shrink_text", "shrink_program", "size", "gen"]
