"""Reverse and forward mode: graph transforms that build derivative graphs from the op rules."""
from __future__ import annotations

from dataclasses import replace

from .builder import Emitter, fresh
from .ir import FLOATS, Graph, Value, type_str
from .ops import OPS

TUPLE = "tuple"


class AutodiffError(Exception):
    def __init__(self, message, notes=()):
        super().__init__(message)
        self.notes = tuple(notes)


def active_values(g: Graph, seeds) -> set:
    """Values that depend differentiably on the seeds (detach and comparisons cut the chain)."""
    active = set(seeds)
    for n in g.nodes:
        if n.out in active:
            continue
        if n.op == "item":
            if n.ins[0] in active and n.out.dtype in FLOATS:
                active.add(n.out)
        elif OPS[n.op].vjp is not None and n.out.dtype in FLOATS + (TUPLE,) and \
                any(i in active for i in n.ins):
            active.add(n.out)
    return active


def _fit(e: Emitter, c: Value, x: Value) -> Value:
    return e.sum_to(c, x.shape) if c.shape != x.shape else c


def backprop(e: Emitter, g: Graph, seeds: dict, wrt) -> list:
    """Cotangents of wrt given cotangents of some of g's values; nodes go into e."""
    active = active_values(g, wrt)
    ct = dict(seeds)
    for n in reversed(g.nodes):
        gbar = ct.get(n.out)
        if n.op == "item":
            # the cotangent of a tuple: one entry per part, None where none flows back
            if gbar is not None and n.ins[0] in active:
                parts = ct.setdefault(n.ins[0], [None] * n.attr("index"))
                parts += [None] * (n.attr("index") + 1 - len(parts))
                i = n.attr("index")
                parts[i] = gbar if parts[i] is None else e.add(parts[i], gbar)
            continue
        if gbar is None or OPS[n.op].vjp is None or not any(i in active for i in n.ins):
            continue
        e.loc = n.loc
        cts = OPS[n.op].vjp(e, gbar, n.out, *n.ins, **n.kw)
        for x, c in zip(n.ins, cts):
            if c is None or x not in active:
                continue
            if not isinstance(c, Value):
                c = e.const(c, x.dtype)
            c = _fit(e, c, x)
            ct[x] = c if x not in ct else e.add(ct[x], c)
    return [ct.get(w) for w in wrt]


def tangents(e: Emitter, g: Graph, seeds: dict) -> dict:
    """Forward mode: the tangent of every value reached from the seeded ones."""
    tan = dict(seeds)
    for n in g.nodes:
        if n.op == "item":
            parts = tan.get(n.ins[0])
            if parts is not None and parts[n.attr("index")] is not None and n.out.dtype in FLOATS:
                tan[n.out] = parts[n.attr("index")]
            continue
        if n.out in seeds or OPS[n.op].jvp is None or n.out.dtype not in FLOATS + (TUPLE,):
            continue
        ts = tuple(tan.get(i) for i in n.ins)
        if all(t is None for t in ts):
            continue
        e.loc = n.loc
        t = OPS[n.op].jvp(e, ts, n.out, *n.ins, **n.kw)
        if t is None:
            continue
        if n.out.dtype == TUPLE:
            tan[n.out] = list(t)
            continue
        if not isinstance(t, Value):
            t = e.const(t, n.out.dtype)
        if t.shape != n.out.shape:
            t = e.broadcast_to(t, shape=n.out.shape)
        tan[n.out] = t
    return tan


def resolve_wrt(g: Graph, wrt) -> list:
    """Values of the names in wrt: parameters first, then the function's own let bindings."""
    params = dict(zip(g.param_names, g.params))
    lets = dict(g.names)
    out = []
    for name in wrt:
        v = params.get(name, lets.get(name))
        if v is None:
            known = ", ".join(list(params) + [n for n in lets if n not in params])
            raise AutodiffError(f"'{name}' is not a parameter or a let binding of {g.name}",
                                [f"it has: {known}"])
        if v.dtype not in FLOATS:
            raise AutodiffError(f"only floating-point values can be differentiated, but '{name}' is "
                                f"{type_str(v.shape, v.dtype)}")
        out.append(v)
    return out


def _check_dependence(g: Graph, wrt_names, wrt, outputs, warn):
    active = active_values(g, wrt)
    if not any(o in active for o in outputs):
        raise AutodiffError(
            f"the output of {g.name} does not depend on {', '.join(wrt_names)}: "
            "it does not require grad", ["every path from the wrt values to the output is detached "
                                         "or not differentiable"])
    for name, w in zip(wrt_names, wrt):
        if not any(o in active_values(g, [w]) for o in outputs):
            warn(f"the output of {g.name} does not depend on '{name}'; its gradient is zero")


def _grads(e, g, seeds, wrt):
    return [c if c is not None else e.zeros_like(w) for c, w in zip(backprop(e, g, seeds, wrt), wrt)]


def _derived(g, name, params, names, nodes, outputs, out_tuple):
    return Graph(name, tuple(params), tuple(nodes), tuple(outputs), tuple(names), g.names, out_tuple)


def grad(g: Graph, wrt_names, name, with_value=False, warn=print) -> Graph:
    if len(g.outputs) != 1 or g.outputs[0].shape != () or g.outputs[0].dtype not in FLOATS:
        got = ", ".join(o.type for o in g.outputs)
        raise AutodiffError(f"grad needs a scalar floating-point output, but {g.name} returns {got}",
                            ["use vjp, or reduce the output with sum or mean"])
    wrt = resolve_wrt(g, wrt_names)
    _check_dependence(g, wrt_names, wrt, g.outputs, warn)
    e = Emitter(g.nodes)
    out = g.outputs[0]
    grads = _grads(e, g, {out: e.const(1, out.dtype)}, wrt)
    outputs = ([out] if with_value else []) + grads
    return _derived(g, name, g.params, g.param_names, e.nodes, outputs, with_value or len(wrt) > 1)


def output_seeds(e, outputs, cots) -> dict:
    """The cotangent seed of each floating-point output; a value returned twice (`return a, a`)
    gets the sum of its two cotangents."""
    seeds = {}
    for o, c in zip(outputs, cots):
        if o.dtype in FLOATS:
            seeds[o] = c if o not in seeds else e.add(seeds[o], c)
    return seeds


def vjp(g: Graph, wrt_names, name, warn=print) -> Graph:
    wrt = resolve_wrt(g, wrt_names)
    outs = [o for o in g.outputs if o.dtype in FLOATS]
    _check_dependence(g, wrt_names, wrt, outs, warn)
    cots = [fresh(o.shape, o.dtype) for o in g.outputs]
    e = Emitter(g.nodes)
    grads = _grads(e, g, output_seeds(e, g.outputs, cots), wrt)
    names = g.param_names + tuple(f"ct{i}" if len(cots) > 1 else "ct" for i in range(len(cots)))
    return _derived(g, name, g.params + tuple(cots), names, e.nodes, grads, len(wrt) > 1)


def jvp(g: Graph, wrt_names, name, warn=print) -> Graph:
    wrt = resolve_wrt(g, wrt_names)
    outs = [o for o in g.outputs if o.dtype in FLOATS]
    _check_dependence(g, wrt_names, wrt, outs, warn)
    tans = [fresh(w.shape, w.dtype) for w in wrt]
    e = Emitter(g.nodes)
    tan = tangents(e, g, dict(zip(wrt, tans)))
    t_out = [tan[o] if o in tan else e.zeros_like(o) for o in g.outputs]
    names = g.param_names + tuple(f"t_{n}" for n in wrt_names)
    return _derived(g, name, g.params + tuple(tans), names, e.nodes, list(g.outputs) + t_out, True)


def strip_detach(g: Graph) -> Graph:
    """Once no transform follows, detach and hook are the identity (in loop bodies too)."""
    from .control import map_bodies
    g = map_bodies(g, strip_detach)
    alias = {}
    nodes = []
    for n in g.nodes:
        ins = tuple(alias.get(i, i) for i in n.ins)
        if n.op in ("detach", "hook"):
            alias[n.out] = ins[0]
            continue
        nodes.append(replace(n, ins=ins))
    return replace(g, nodes=tuple(nodes), outputs=tuple(alias.get(o, o) for o in g.outputs),
                   names=tuple((k, alias.get(v, v)) for k, v in g.names))
