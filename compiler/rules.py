"""Derivative rules written in .ad: the `custom` op, a call of a function that has its own rules.

  custom  ins (*args); fn (*params) -> outs, the function's own body; vjp (*params, *cts) ->
          one cotangent per param, or None; jvp (*params, *tangents) -> one tangent per output,
          or None; result outs (a tuple: `item` nodes take its parts out).

The registry rules inline the rule graphs, so a derivative of a derivative differentiates the
rule itself. Reverse mode through a function with only a jvp rule transposes that rule: its
reverse pass with respect to the tangents, which is exact where the rule is linear in them;
`transpose` checks that the reverse pass does not read the tangents (else the rule is not
linear and there is no sound transpose). Forward mode through a function with only a vjp rule is
a compile error. Once no transform follows, `inline_rules` puts the function's body in place of
the node.
"""
from __future__ import annotations

from dataclasses import replace

from ..frontend.diagnostics import CompileError
from .ir import FLOATS, Graph, ShapeError
from .ops import defop

TUPLE = "tuple"


def _custom_rule(*ins, fn, vjp, jvp):
    if len(ins) != len(fn.params):
        raise ShapeError(f"{fn.name} takes {len(fn.params)} values, got {len(ins)}")
    for x, p in zip(ins, fn.params):
        if x.shape != p.shape or x.dtype != p.dtype:
            raise ShapeError(f"argument of {fn.name}: {x.type} where {p.type} was expected")
    return (), TUPLE


def _custom_ref(*ins, fn, vjp, jvp, _env=None):
    from . import interp
    env = _env or {}
    return tuple(interp.run(fn, list(ins), env.get("promote", False), env.get("dims")))


def _fill(e, vals, likes):
    return [v if v is not None else e.zeros_like(x) for v, x in zip(vals, likes)]


def _custom_vjp(e, gbar, out, *ins, fn, vjp, jvp):
    gbar = list(gbar) + [None] * (len(fn.outputs) - len(gbar))
    rule = vjp if vjp is not None else transpose(jvp, len(ins), fn.name, e.loc)
    cts = e.call(rule, *ins, *_fill(e, gbar, fn.outputs))
    return [c if x.dtype in FLOATS else None for c, x in zip(cts, ins)]


def _custom_jvp(e, ts, out, *ins, fn, vjp, jvp):
    if jvp is None:
        raise CompileError(f"forward mode (jvp) reaches {fn.name}, which has a vjp rule but no jvp rule",
                           e.loc, [f"give {fn.name} a jvp rule: jvp {fn.name}({', '.join(fn.param_names)}, "
                                   f"{', '.join('t_' + p for p in fn.param_names)}) {{ ... }}"])
    tans = e.call(jvp, *ins, *_fill(e, ts, ins))
    return [t if o.dtype in FLOATS else None for t, o in zip(tans, fn.outputs)]


defop("custom", _custom_rule, _custom_ref, _custom_vjp, _custom_jvp, kind="control")


_transposed = {}


def transpose(jvp: Graph, n: int, name: str, loc) -> Graph:
    """The reverse pass of a jvp rule (*params, *tangents) -> tangents: (*params, *cts) -> one
    cotangent per param. Sound only where the rule is linear in its tangents: a reverse pass
    that reads a tangent means it is not, and is a compile error at loc."""
    key = id(jvp)
    if key in _transposed and _transposed[key][0] is jvp:
        return _transposed[key][1]
    from .autodiff import backprop, output_seeds
    from .builder import Emitter, fresh
    from .passes.dce import dce
    xs, ts = jvp.params[:n], jvp.params[n:]
    cts = [fresh(o.shape, o.dtype) for o in jvp.outputs]
    e = Emitter(jvp.nodes)
    wrt = [t for t in ts if t.dtype in FLOATS]
    got = dict(zip(wrt, backprop(e, jvp, output_seeds(e, jvp.outputs, cts), wrt)))
    outs = [got.get(t) if got.get(t) is not None else e.zeros_like(x) for x, t in zip(xs, ts)]
    g = dce(Graph(f"{name}.vjp", tuple(xs) + tuple(ts) + tuple(cts), tuple(e.nodes), tuple(outs)))
    read = {i for m in g.nodes for i in m.ins} | set(g.outputs)
    if any(t in read for t in ts):
        raise CompileError(f"reverse mode reaches {name}, which has a jvp rule but no vjp rule, and its "
                           "jvp rule is not linear in its tangents: it has no transpose", loc,
                           [f"give {name} a vjp rule, or write its jvp rule as a linear function of "
                            "the tangents (products with them, sums, where, slices...)"])
    g = replace(g, params=tuple(xs) + tuple(cts))
    _transposed[key] = (jvp, g)
    return g


def inline_rules(g: Graph) -> Graph:
    """Each `custom` node of g (not of its bodies) replaced by its function's body: what runs once
    no transform follows."""
    if not any(n.op == "custom" for n in g.nodes):
        return g
    from .builder import Emitter
    e = Emitter()
    alias, parts = {}, {}
    for n in g.nodes:
        ins = tuple(alias.get(i, i) for i in n.ins)
        if n.op == "custom":
            parts[n.out] = e.call(inline_rules(n.attr("fn")), *ins)
        elif n.op == "item" and ins[0] in parts:
            alias[n.out] = parts[ins[0]][n.attr("index")]
        else:
            e.nodes.append(replace(n, ins=ins))
    return replace(g, nodes=tuple(e.nodes), outputs=tuple(alias.get(o, o) for o in g.outputs),
                   names=tuple((k, alias.get(v, v)) for k, v in g.names))
