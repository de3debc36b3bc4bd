"""What a function's loops store for their reverse passes, and its peak scratch memory:
`gradc build --emit memory`, `gradc.memory_report(...)`.

Sizes are sums of terms (a coefficient times a product of factors); a factor is a dimension of
the signature ("B", "N-1") or a loop's trip count, written as the loop's bounds give it ("T",
"(T - 1)", "ceil(T / k)"). The same report evaluates them for given sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .control import result_types
from .ir import Graph, dim_parts, dim_value, type_str

_SIZES = {"f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}


@dataclass
class Bytes:
    """A sum of terms {(factor, ...): coefficient} and the factors' texts and values."""
    terms: dict = field(default_factory=dict)

    @staticmethod
    def of(shape, dtype, factors: dict) -> "Bytes":
        coef, fs = _SIZES.get(dtype, 8), []
        for d in shape:
            if isinstance(d, int):
                coef *= d
            else:
                fs.append(d)
                factors.setdefault(d, Factor(_dim_text(d), lambda env, d=d: _dim_or_none(d, env)))
        return Bytes({tuple(sorted(fs)): coef} if coef else {})

    def __add__(self, other):
        out = dict(self.terms)
        for k, v in other.terms.items():
            out[k] = out.get(k, 0) + v
        return Bytes(out)

    def times(self, factor: str) -> "Bytes":
        return Bytes({tuple(sorted(k + (factor,))): v for k, v in self.terms.items()})

    def text(self, factors) -> str:
        if not self.terms:
            return "0"
        merged = {}
        for k, v in self.terms.items():         # numeric factors (a checkpoint interval) fold in
            texts = []
            for f in k:
                t = factors[f].text
                if t.isdigit():
                    v *= int(t)
                else:
                    texts.append(t)
            merged[tuple(texts)] = merged.get(tuple(texts), 0) + v
        parts = []
        for k, v in sorted(merged.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            parts.append("·".join([str(v)] + list(k)))
        return " + ".join(parts)

    def value(self, factors, env):
        total = 0
        for k, v in self.terms.items():
            n = v
            for f in k:
                x = factors[f].value(env)
                if x is None:
                    return None
                n *= x
            total += n
        return total


@dataclass
class Factor:
    text: str
    value: object            # (dims) -> int, or None where it is not known before the call


def _lift(fn, *gs):
    """env -> fn(g(env) ...), or None where one of them is not known."""
    def f(env):
        vals = [g(env) for g in gs]
        return None if any(v is None for v in vals) else fn(*vals)
    return f


def _prod_or_none(xs):
    return None if any(x is None for x in xs) else math.prod(xs)


def _dim_or_none(d, env):
    try:
        return dim_value(d, env)
    except KeyError:
        return None


def _dim_text(d):
    sym, off = dim_parts(d)
    return d if off == 0 else f"({d})"


def _int_expr(v, prod, factors):
    """(text, value(dims)) of an integer scalar computed from constants and dimensions."""
    n = prod.get(v)
    if n is None:
        return None
    if n.op == "const":
        c = int(n.attr("value"))
        return str(c), lambda env: c
    if n.op == "numel":
        ds = [n.ins[0].shape[a] for a in n.attr("axes")]
        text = "·".join(_dim_text(d) if isinstance(d, str) else str(d) for d in ds) or "1"
        return text, lambda env: _prod_or_none([_dim_or_none(d, env) for d in ds])
    if n.op == "cast":
        return _int_expr(n.ins[0], prod, factors)
    if n.op in ("add", "sub", "mul"):
        a, b = (_int_expr(x, prod, factors) for x in n.ins)
        if a is None or b is None:
            return None
        sym = {"add": "+", "sub": "-", "mul": "·"}[n.op]
        f = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y}[n.op]
        if b[0] == "0" and n.op != "mul":
            return a
        if a[0] == "0" and n.op == "add":
            return b
        return f"({a[0]} {sym} {b[0]})", _lift(f, a[1], b[1])
    return None


def _trip(n, prod, factors, where):
    """The factor of a loop's trip count: its bounds as a formula where they are one."""
    key = n.attr("trip")
    lo, hi = (_int_expr(x, prod, factors) for x in n.ins[:2])
    if key in factors:
        pass                      # a checkpointed loop's, set before
    elif lo is not None and hi is not None:
        text = hi[0] if lo[0] == "0" else f"({hi[0]} - {lo[0]})"
        factors[key] = Factor(text, _lift(lambda h, l: max(h - l, 0), hi[1], lo[1]))
    else:
        factors[key] = Factor(f"n{where}", lambda env: None)
    return key


@dataclass
class Entry:
    loop: str                 # "for at f.ad:3:5"
    trips: str
    stored: list              # (what, type, per-iteration Bytes)
    total: Bytes
    recomputed: list          # what the reverse pass computes again
    note: str = ""


def analyze(g: Graph):
    """(entries, peak Bytes, factors) of an optimized graph."""
    factors, entries = {}, []
    _checkpoint_factors(g, factors)
    peak = _walk(g, factors, entries, "")
    return entries, peak, factors


def _loc(n):
    return f" at {n.loc}" if n.loc is not None else ""


def _walk(g, factors, entries, ctx) -> Bytes:
    """The peak bytes of a call of g (see _peak); the loops' entries are added on the way."""
    prod = {n.out: n for n in g.nodes}
    for n in g.nodes:
        if n.op == "for":
            key = _trip(n, prod, factors, _loc(n))
            if n.attr("saves"):
                nc = len(n.ins) - 2 - n.attr("n_caps")
                entries.append(_entry(n, n.attr("body"), nc, result_types(n), key, factors, ctx))
        for _, b in n.attrs:
            if isinstance(b, Graph):
                inner = " (one segment at a time, in the reverse pass)" if b.name.endswith(".segments.rev") \
                    else f" in {n.op}{_loc(n)}"
                _walk(b, factors, entries, ctx + inner)
    return _peak(g, factors)


def _arena(g, factors) -> Bytes:
    """A straight-line graph's own temporaries: the values its fusion plan materializes."""
    from .codegen.plan import make_plan
    plan = make_plan(g)
    out = Bytes()
    for n in plan.roots:
        if n.out not in g.outputs:
            out = out + Bytes.of(n.out.shape, n.out.dtype, factors)
    return out


def _peak(g, factors) -> Bytes:
    """What a call holds at once: the buffers the driver passes between steps (values read by a
    later step, each loop's state twice over and its stacked results, a branch's results), all
    alive until the call returns, plus the largest working set of one step (a block's fused
    temporaries, or one iteration of a body)."""
    from .codegen.structured import Block, make_program
    from .control import has_control
    if not has_control(g):
        return _arena(g, factors)
    held, step_peaks = Bytes(), []
    for step in make_program(g).steps:
        if isinstance(step, Block):
            for o in step.graph.outputs:
                held = held + Bytes.of(o.shape, o.dtype, factors)
            step_peaks.append(_arena(step.graph, factors))
            continue
        n = step.node
        types = result_types(n)
        if n.op in ("for", "while"):
            nc = len(n.ins) - (2 if n.op == "for" else 0) - n.attr("n_caps")
            for x in n.ins[len(n.ins) - n.attr("n_caps") - nc:len(n.ins) - n.attr("n_caps")]:
                b = Bytes.of(x.shape, x.dtype, factors)
                held = held + b + b
            if n.op == "for":
                for sh, d in types[nc:]:
                    held = held + Bytes.of(sh[1:], d, factors).times(n.attr("trip"))
            else:
                held = held + Bytes.of((), "i64", factors)
        else:
            for sh, d in types:
                held = held + Bytes.of(sh, d, factors)
        step_peaks += [_peak(b, factors) for _, b in n.attrs if isinstance(b, Graph)]
    return held + _largest(step_peaks, factors)


def _largest(bs, factors):
    """The larger of several sizes: the one with the most terms of the highest degree (a bound
    used where two formulas compare differently for different sizes)."""
    if not bs:
        return Bytes()
    return max(bs, key=lambda b: (max((len(k) for k in b.terms), default=-1), sum(b.terms.values())))


def _entry(n, body, nc, types, key, factors, ctx):
    saves = n.attr("saves")
    outs = body.outputs
    names = body.param_names if len(body.param_names) == len(body.params) else ()
    stored, total = [], Bytes()
    prod = {m.out: m for m in body.nodes}
    for j, o in enumerate(outs[len(outs) - saves:]):
        if o in body.params:
            i = body.params.index(o)
            what = f"state '{names[i]}'" if names and names[i] else "state"
        else:
            m = prod.get(o)
            what = f"{m.op}{_loc(m)}" if m is not None else "value"
        b = Bytes.of(o.shape, o.dtype, factors)
        stored.append((what, type_str(o.shape, o.dtype), b))
        total = total + b.times(key)
    if body.name.endswith(".segments"):
        kind, again = "checkpointed loop", ["every segment's iterations, run forward again from its stored state"]
    else:
        from .control import recomputed
        base = replace(body, outputs=outs[:len(outs) - saves])
        kind = "for"
        again = sorted({f"{prod[v].op}{_loc(prod[v])}" for v in recomputed(base, nc) if v in prod})
    return Entry(f"{kind}{_loc(n)}{ctx}", factors[key].text, stored, total, again)


def report(graphs: dict, sizes: dict | None = None) -> str:
    """The text of `--emit memory` for optimized graphs; sizes: dimension values to evaluate at."""
    sizes = dict(sizes or {})
    lines = []
    for name, g in graphs.items():
        entries, peak, factors = analyze(g)
        lines.append(f"function {name}")
        if not entries:
            lines.append("  stores nothing for a reverse pass")
        for e in entries:
            lines.append(f"  {e.loop}: {e.trips} iterations")
            for what, t, b in e.stored:
                lines.append(f"    stores per iteration: {what}: {t} ({b.text(factors)} bytes)")
            lines.append(f"    stored in all: {_both(e.total, factors, sizes)}")
            if e.recomputed:
                lines.append("    recomputes in the reverse pass: " + "; ".join(e.recomputed))
        lines.append(f"  peak scratch: {_both(peak, factors, sizes)}")
    if sizes:
        lines.append("sizes: " + ", ".join(f"{k}={v}" for k, v in sorted(sizes.items())))
    return "\n".join(lines)


def _both(b: Bytes, factors, sizes):
    text = f"{b.text(factors)} bytes"
    if sizes:
        v = b.value(factors, sizes)
        missing = sorted({f.text for k in b.terms for f in (factors[x] for x in k) if f.value(sizes) is None})
        text += f" = {v:,} bytes" if v is not None else f" (not known for these sizes: {', '.join(missing)})"
    return text


def _checkpoint_factors(g, factors):
    """Checkpointed loops: the segment count ceil(n / k) and a segment's k iterations, with
    k = ceil(sqrt(n)) or the interval the program gave, n the loop's trip count."""
    prod = {m.out: m for m in g.nodes}
    for n in g.nodes:
        if n.op == "for" and n.attr("body").name.endswith(".segments"):
            ck = n.attr("checkpoint")
            got = _seg_trip(n, prod, factors)
            if got is not None:
                text, value = got
                k = _lift(lambda n: max(math.isqrt(max(n - 1, 0)) + 1, 1), value) if ck < 0 else \
                    (lambda env, ck=ck: ck)
                kt = f"ceil(sqrt({text}))" if ck < 0 else str(ck)
                factors[n.attr("trip")] = Factor(f"ceil({text} / {kt})",
                                                 _lift(lambda n, kk: -(-n // kk), value, k))
                _segment_inner(g, factors, kt, k)
        for _, b in n.attrs:
            if isinstance(b, Graph):
                _checkpoint_factors(b, factors)


def _seg_trip(n, prod, factors):
    """The trip count of the loop a segments loop checkpoints: its stop - start, from the
    segments loop's captured (start, k, stop)."""
    start, stop = n.ins[-3], n.ins[-1]
    lo, hi = _int_expr(start, prod, factors), _int_expr(stop, prod, factors)
    if lo is None or hi is None:
        return None
    text = hi[0] if lo[0] == "0" else f"({hi[0]} - {lo[0]})"
    return text, _lift(lambda h, l: max(h - l, 0), hi[1], lo[1])


def _segment_inner(g, factors, kt, k):
    """The storing loops inside the reverse pass over segments run at most k iterations."""
    for n in g.nodes:
        if n.op == "for" and n.attr("body").name.endswith(".segments.rev"):
            for m in n.attr("body").nodes:
                if m.op == "for" and m.attr("saves"):
                    factors[m.attr("trip")] = Factor(kt, k)
