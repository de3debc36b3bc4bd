"""Loops and branches in the graph IR: ops whose attributes hold the graphs of their bodies.

A control op's result is one value of dtype "tuple"; `item` nodes take its parts out.

  for    ins (start, stop, *init, *caps); body (t, *carry, *caps) -> (*carry', *ys);
         result (*carry final, *ys stacked on a new leading axis of `trip` = stop - start
         rows, row i from the iteration t = start + i). reverse: t runs from stop - 1 down.
         saves: how many of the ys are states the reverse pass reads (they come last).
         checkpoint: 0 (store every iteration), -1 (every ceil(sqrt(trips))-th), or k.
  while  ins (*init, *caps); cond (*carry, *caps) -> bool; body (*carry, *caps) -> *carry';
         result (*carry final, the trip count as i64).
  if     ins (cond, *caps); then, orelse: (*caps) -> outs; result outs.
  item   the index-th part of a tuple (its shape and dtype are attributes).

The derivative rules: forward mode carries tangents beside the state through a loop of the
same kind; reverse mode runs the loop forward storing the state at the start of each
iteration, then a reverse `for` whose body is the body's own reverse pass (recomputing the
body's values from the stored state). A `while` loop is reversed through its trip count: the
forward loop counts, a `for` over that count stores. Checkpointing stores every k-th state and
runs each segment forward again, storing its states, just before its reverse pass.
"""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from .ir import FLOATS, INTS, Graph, Node, ShapeError, Value, symbols, type_str
from .ops import NP_DTYPES, OPS, defop

TUPLE = "tuple"
_trips = itertools.count(1)


def new_trip() -> str:
    """A fresh symbol for the number of rows of a loop's stacked results ('#' keeps it apart
    from the dimensions a caller passes)."""
    return f"#trip{next(_trips)}"


def is_control(n: Node) -> bool:
    return OPS[n.op].kind == "control"


def bodies(n: Node) -> list:
    return [(k, v) for k, v in n.attrs if isinstance(v, Graph)]


def result_types(n: Node) -> list:
    """(shape, dtype) of each part of a control node's result."""
    kw = n.kw
    if n.op == "for":
        b = kw["body"]
        nc = len(n.ins) - 2 - kw["n_caps"]
        ys = b.outputs[nc:]
        return [(o.shape, o.dtype) for o in b.outputs[:nc]] + \
               [((kw["trip"],) + y.shape, y.dtype) for y in ys]
    if n.op == "while":
        return [(o.shape, o.dtype) for o in kw["body"].outputs] + [((), "i64")]
    return [(o.shape, o.dtype) for o in kw["then"].outputs]


# ---- shape rules


def _same(what, got, want):
    if got.shape != want.shape or got.dtype != want.dtype:
        raise ShapeError(f"{what}: {got.type} where {want.type} was expected")


def _for_rule(start, stop, *rest, body, n_caps, trip, reverse=False, saves=0, checkpoint=0):
    for b in (start, stop):
        if b.shape != () or b.dtype not in INTS:
            raise ShapeError(f"loop bounds must be integer scalars, got {b.type}")
    nc = len(rest) - n_caps
    if len(body.params) != 1 + len(rest) or body.params[0].dtype != "i64":
        raise ShapeError("a loop body takes the index, the carried values and the captured ones")
    for x, p in zip(rest, body.params[1:]):
        _same("loop input", x, p)
    for o, p in zip(body.outputs[:nc], body.params[1:1 + nc]):
        _same("loop-carried value", o, p)
    return (), TUPLE


def _while_rule(*rest, cond, body, n_caps):
    nc = len(rest) - n_caps
    for x, p in zip(rest, body.params):
        _same("loop input", x, p)
    for o, p in zip(body.outputs, body.params[:nc]):
        _same("loop-carried value", o, p)
    c = cond.outputs[0]
    if c.shape != () or c.dtype != "bool":
        raise ShapeError(f"a while condition must be a scalar bool, got {c.type}")
    return (), TUPLE


def _if_rule(c, *caps, then, orelse):
    if c.shape != () or c.dtype != "bool":
        raise ShapeError(f"an if condition must be a scalar bool, got {c.type}")
    for a, b in zip(then.outputs, orelse.outputs):
        _same("branch result", b, a)
    return (), TUPLE


# ---- reference semantics (the interpreter runs the bodies)


def _run(g, args, env):
    from . import interp
    return interp.run(g, args, env.get("promote", False), env.get("dims"))


def _for_ref(start, stop, *rest, body, n_caps, trip, reverse=False, saves=0, checkpoint=0, _env=None):
    env = _env or {}
    nc = len(rest) - n_caps
    carry, caps = list(rest[:nc]), list(rest[nc:])
    start, stop = int(start), int(stop)
    ts = range(start, stop)
    rows = {}
    for t in (reversed(ts) if reverse else ts):
        out = _run(body, [np.int64(t)] + carry + caps, env)
        carry = out[:nc]
        rows[t] = out[nc:]
    ny = len(body.outputs) - nc
    ys = []
    for j in range(ny):
        o = body.outputs[nc + j]
        if ts:
            ys.append(np.stack([rows[t][j] for t in ts]))
        else:
            from .ir import concrete
            ys.append(np.zeros((0,) + concrete(o.shape, env.get("dims", {})), _np(o.dtype, env)))
    return tuple(carry) + tuple(ys)


def _np(dtype, env):
    return NP_DTYPES["f64" if env.get("promote") and dtype == "f32" else dtype]


def _while_ref(*rest, cond, body, n_caps, _env=None):
    env = _env or {}
    nc = len(rest) - n_caps
    carry, caps = list(rest[:nc]), list(rest[nc:])
    trips = 0
    while bool(_run(cond, carry + caps, env)[0]):
        carry = _run(body, carry + caps, env)
        trips += 1
    return tuple(carry) + (np.int64(trips),)


def _if_ref(c, *caps, then, orelse, _env=None):
    return tuple(_run(then if bool(c) else orelse, list(caps), _env or {}))


# ---- graphs built from functions


def build(name, params, fn) -> Graph:
    """The graph of fn(e, *params) -> outputs, over the given parameter values."""
    from .builder import Emitter
    e = Emitter()
    outs = fn(e, *params)
    return Graph(name, tuple(params), tuple(e.nodes), tuple(outs))


def fresh_like(vs):
    from .builder import fresh
    return [fresh(v.shape, v.dtype) for v in vs]


def items(e, tup: Value, types) -> list:
    return [e.emit("item", tup, index=i, shape=tuple(s), dtype=d) for i, (s, d) in enumerate(types)]


def emit_control(e, op, ins, **attrs) -> list:
    """Emit a control node and an item for each part of its result."""
    tup = e.emit(op, *ins, **attrs)
    node = e.nodes[-1]
    return items(e, tup, result_types(node))


def _floats(vs):
    return [v.dtype in FLOATS for v in vs]


# ---- forward mode


def _graph_of(e):
    return Graph("body", (), tuple(e.nodes), ())


def _tangent_body(body, lead, n_state, tangent_of):
    """A body computing body's outputs and their tangents: params (*lead, *state, *tstate, *caps,
    *tcaps) where lead are params without tangents; tangent_of[i]: param i has a tangent."""
    from .autodiff import tangents
    ps = list(body.params)
    tps = [fresh_like([p])[0] if tangent_of[i] else None for i, p in enumerate(ps)]
    new_params = ps[:lead + n_state] + [t for t in tps[lead:lead + n_state] if t is not None] + \
        ps[lead + n_state:] + [t for t in tps[lead + n_state:] if t is not None]
    from .builder import Emitter
    e = Emitter()
    outs = e.call(body, *ps)
    g = _graph_of(e)
    tan = tangents(e, g, {p: t for p, t in zip(ps, tps) if t is not None})
    touts = [tan.get(o) if o.dtype in FLOATS else None for o in outs]
    return Graph(body.name + ".jvp", tuple(new_params), tuple(e.nodes), tuple(outs)), touts


def _zero_or(e, t, like):
    return t if t is not None else e.zeros_like(like)


def _for_jvp(e, ts, out, start, stop, *rest, body, n_caps, trip, reverse=False, saves=0, checkpoint=0):
    nc = len(rest) - n_caps
    tangent_of = [False] + [x.dtype in FLOATS and (i < nc or ts[2 + i] is not None)
                            for i, x in enumerate(rest)]
    # carried floats always get a tangent (a captured one can feed them)
    g, touts = _tangent_body(body, 1, nc, tangent_of)
    carried_t = [i for i in range(nc) if tangent_of[1 + i]]
    caps_t = [i for i in range(nc, len(rest)) if tangent_of[1 + i]]
    outs = list(g.outputs)
    body_outs = outs[:nc] + [_need(touts[i], outs[i]) for i in carried_t] + outs[nc:]
    ny = len(outs) - nc
    ty_idx = [j for j in range(ny) if touts[nc + j] is not None]
    body_outs += [touts[nc + j] for j in ty_idx]
    g = _finish(g, body_outs)
    ins = [start, stop] + list(rest[:nc]) + [_zero_or(e, ts[2 + i], rest[i]) for i in carried_t] + \
        list(rest[nc:]) + [ts[2 + i] for i in caps_t]
    res = emit_control(e, "for", ins, body=g, n_caps=len(rest) - nc + len(caps_t), trip=trip,
                       reverse=reverse, saves=0, checkpoint=checkpoint)
    nct = len(carried_t)
    tan = [None] * len(body.outputs)
    for k, i in enumerate(carried_t):
        tan[i] = res[nc + k]
    for k, j in enumerate(ty_idx):
        tan[nc + j] = res[nc + nct + ny + k]
    return tan


def _need(t, like):
    """A tangent output that must exist (a loop-carried tangent): zeros where none flows."""
    return t if t is not None else ("zero", like)


def _finish(g, outs):
    """g with outputs outs; ("zero", like) entries become zero constants appended to g."""
    from .builder import Emitter
    e = Emitter(g.nodes)
    real = [e.zeros_like(o[1]) if isinstance(o, tuple) else o for o in outs]
    return replace(g, nodes=tuple(e.nodes), outputs=tuple(real))


def _while_jvp(e, ts, out, *rest, cond, body, n_caps):
    nc = len(rest) - n_caps
    tangent_of = [x.dtype in FLOATS and (i < nc or ts[i] is not None) for i, x in enumerate(rest)]
    g, touts = _tangent_body(body, 0, nc, tangent_of)
    carried_t = [i for i in range(nc) if tangent_of[i]]
    caps_t = [i for i in range(nc, len(rest)) if tangent_of[i]]
    outs = list(g.outputs)
    g = _finish(g, outs + [_need(touts[i], outs[i]) for i in carried_t])
    # the condition sees the state, its tangents and the captures; it reads the first and last
    cps = fresh_like(list(rest[:nc]) + [rest[i] for i in carried_t] + list(rest[nc:]) +
                     [rest[i] for i in caps_t])
    from .builder import Emitter
    ce = Emitter()
    r = ce.call(cond, *(cps[:nc] + cps[nc + len(carried_t):nc + len(carried_t) + len(rest) - nc]))
    c = Graph(cond.name + ".jvp", tuple(cps), tuple(ce.nodes), tuple(r))
    ins = list(rest[:nc]) + [_zero_or(e, ts[i], rest[i]) for i in carried_t] + list(rest[nc:]) + \
        [ts[i] for i in caps_t]
    res = emit_control(e, "while", ins, cond=c, body=g, n_caps=len(rest) - nc + len(caps_t))
    tan = [None] * (nc + 1)
    for k, i in enumerate(carried_t):
        tan[i] = res[nc + k]
    return tan


def _if_jvp(e, ts, out, c, *caps, then, orelse):
    tangent_of = [x.dtype in FLOATS and ts[1 + i] is not None for i, x in enumerate(caps)]
    branches = []
    for b in (then, orelse):
        g, touts = _tangent_body(b, 0, 0, tangent_of)
        branches.append((g, touts))
    n = len(then.outputs)
    want = [i for i in range(n) if then.outputs[i].dtype in FLOATS and
            (branches[0][1][i] is not None or branches[1][1][i] is not None)]
    gs = [_finish(g, list(g.outputs) + [_need(touts[i], g.outputs[i]) for i in want])
          for g, touts in branches]
    ins = [c] + list(caps) + [ts[1 + i] for i in range(len(caps)) if tangent_of[i]]
    res = emit_control(e, "if", ins, then=gs[0], orelse=gs[1])
    tan = [None] * n
    for k, i in enumerate(want):
        tan[i] = res[n + k]
    return tan


# ---- reverse mode


def _reverse_body(body, ct_outs, wrt_mask):
    """The reverse pass of body for given output cotangents: (params, cotangent params, emitter,
    cotangents of the params in wrt_mask (zeros where none), map from body values to their
    copies, number of forward nodes). The body's forward values are computed again first
    (a loop's reverse pass then reads the stored ones in their place).
    ct_outs[i]: output i has a cotangent param."""
    from .autodiff import backprop
    from .builder import Emitter
    ps = fresh_like(body.params)
    e = Emitter()
    env = dict(zip(body.params, ps))
    for n in body.nodes:
        env[n.out] = e.add_node(n.op, tuple(env[i] for i in n.ins), n.attrs, n.loc)
    outs = [env[o] for o in body.outputs]
    n_fwd = len(e.nodes)
    cts = [fresh_like([o])[0] if ct_outs[i] else None for i, o in enumerate(body.outputs)]
    g = _graph_of(e)
    seeds = {}
    for o, c in zip(outs, cts):
        if c is not None:
            seeds[o] = c if o not in seeds else e.add(seeds[o], c)
    wrt = [p for p, m in zip(ps, wrt_mask) if m]
    got = backprop(e, g, seeds, wrt)
    # a body returning a param as is passes its cotangent straight back
    res = [c if c is not None else e.zeros_like(w) for c, w in zip(got, wrt)]
    return ps, [c for c in cts if c is not None], e, res, env, n_fwd


def _cheap(n: Node) -> bool:
    op = OPS[n.op]
    return op.kind in ("layout", "source", "check") or (op.kind == "elementwise" and op.cheap is not None)


def _residuals(body, nc) -> tuple:
    """The body's values that its reverse pass reads and that are not cheap to compute again
    from the state, the captured values and the index (a product, a reduction, a
    transcendental function, a nested loop's result): a loop's forward pass stores them
    per iteration; everything else the reverse pass recomputes."""
    fl = _floats(body.params[1:])
    ct_outs = [o.dtype in FLOATS for o in body.outputs]
    ps, _, be, res, env, n_fwd = _reverse_body(body, ct_outs, [False] + fl)
    copy_of = {v: k for k, v in env.items()}
    fwd = [n.out for n in be.nodes[:n_fwd]]
    fset = set(fwd)
    used = {i for n in be.nodes[n_fwd:] for i in n.ins if i in fset} | {r for r in res if r in fset}
    cheap = set(ps)
    for n in be.nodes[:n_fwd]:
        if _cheap(n) and all(i in cheap for i in n.ins):
            cheap.add(n.out)
    # a value sized by a loop inside the body may differ in size from one iteration to the
    # next: it cannot be a row of a stack, so the reverse pass runs that loop again
    outer = set()
    for p in body.params:
        outer |= symbols(p.shape)
    fixed = lambda v: all(not s.startswith("#") or s in outer for s in symbols(v.shape))
    return [copy_of[v] for v in fwd if v in used and v not in cheap and v.dtype != TUPLE and fixed(v)], \
        [copy_of[v] for v in fwd if v in used and v in cheap]


def residuals(body, nc) -> list:
    return _residuals(body, nc)[0]


def recomputed(body, nc) -> list:
    """The body's values its reverse pass computes again (cheap ones it reads)."""
    return _residuals(body, nc)[1]


def _for_saving(e, start, stop, rest, body, n_caps, trip, reverse, checkpoint):
    """A forward `for` like the given one that also stacks, per iteration, the state at its
    start and the residuals its reverse pass reads: (result parts, state stacks, residuals,
    residual stacks)."""
    nc = len(rest) - n_caps
    rs = residuals(body, nc)
    g = replace(body, outputs=body.outputs + body.params[1:1 + nc] + tuple(rs))
    ny = len(body.outputs) - nc
    res = emit_control(e, "for", [start, stop] + list(rest), body=g, n_caps=n_caps, trip=trip,
                       reverse=reverse, saves=nc + len(rs), checkpoint=checkpoint)
    return res, res[nc + ny:nc + ny + nc], rs, res[nc + ny + nc:]


def _for_vjp(e, gbar, out, start, stop, *rest, body, n_caps, trip, reverse=False, saves=0, checkpoint=0):
    nc = len(rest) - n_caps
    nys = len(body.outputs) - nc
    if checkpoint and nys == 0 and not reverse:
        return _for_vjp_checkpointed(e, gbar, start, stop, rest, body, n_caps, trip, checkpoint)
    _, stacks, rs, rstacks = _for_saving(e, start, stop, rest, body, n_caps, trip, reverse, 0)
    return [None, None] + backward_for(e, gbar, start, stop, rest, body, n_caps, trip, reverse, stacks,
                                       rs, rstacks)


def backward_for(e, gbar, start, stop, rest, body, n_caps, trip, reverse, stacks, rs=(), rstacks=()):
    """Cotangents of (*init, *caps) of a `for` from those of its results, given the stacked
    state at the start of each of its iterations and the stacked residuals rs (body values)."""
    nc = len(rest) - n_caps
    nys = len(body.outputs) - nc
    gbar = list(gbar) + [None] * (nc + nys - len(gbar))
    fl = _floats(rest)
    ct_outs = [fl[i] if i < nc else gbar[i] is not None and body.outputs[i].dtype in FLOATS
               for i in range(nc + nys)]
    wrt_mask = [False] + fl
    ps, ctps, be, res, copies, n_fwd = _reverse_body(body, ct_outs, wrt_mask)
    # the reverse loop: carry (ct of float state, accumulated ct of float caps),
    # caps (start, state stacks, residual stacks, ct stacks of ys, caps)
    from .builder import Emitter
    t = ps[0]
    st = fresh_like(stacks)
    rst = fresh_like(rstacks)
    cty = fresh_like([gbar[nc + j] for j in range(nys) if ct_outs[nc + j]])
    st0 = fresh_like([start])[0]
    carried_ct = list(ctps[:sum(ct_outs[:nc])])
    acc = fresh_like([rest[i] for i in range(nc, len(rest)) if fl[i]])
    rb = Emitter()
    i = rb.sub(t, st0)
    row = lambda s: rb.dyn_slice(s, i, axis=0, size=1, keep=False)
    state = [row(s) for s in st]
    rows = [row(s) for s in cty]
    cap_params = fresh_like(rest[nc:])
    env = dict(zip(ps, [t] + state + cap_params))
    # a stored residual is read, not computed again (what only it needed goes with it)
    stored = {copies[r]: row(s) for r, s in zip(rs, rst)}
    # ct params of the reverse body: the carried state's, then the ys'
    ct_env = dict(zip(ctps, carried_ct + rows))
    for n in be.nodes:
        if n.out in stored:
            env[n.out] = stored[n.out]
            continue
        env[n.out] = rb.add_node(n.op, tuple(env.get(x, ct_env.get(x)) for x in n.ins), n.attrs, n.loc)
    look = lambda v: env.get(v, ct_env.get(v))
    cts = [look(r) for r in res]
    state_ct = cts[:sum(fl[:nc])]
    cap_ct = cts[sum(fl[:nc]):]
    new_acc = [rb.add(a, c) for a, c in zip(acc, cap_ct)]
    params = [t] + carried_ct + acc + [st0] + st + rst + cty + cap_params
    from .passes.dce import dce
    g = dce(Graph(body.name + ".rev", tuple(params), tuple(rb.nodes), tuple(state_ct + new_acc)))
    init_ct = [gbar[i] if gbar[i] is not None else e.zeros_like(rest[i]) for i in range(nc) if fl[i]]
    init_acc = [e.zeros_like(rest[i]) for i in range(nc, len(rest)) if fl[i]]
    ct_ys = [gbar[nc + j] for j in range(nys) if ct_outs[nc + j]]
    ins = [start, stop] + init_ct + init_acc + [start] + list(stacks) + list(rstacks) + ct_ys + list(rest[nc:])
    r = emit_control(e, "for", ins, body=g,
                     n_caps=1 + len(stacks) + len(rstacks) + len(ct_ys) + len(rest) - nc,
                     trip=new_trip(), reverse=not reverse, saves=0, checkpoint=0)
    out = [None] * len(rest)
    k = 0
    for i in range(len(rest)):
        if fl[i]:
            out[i] = r[k]
            k += 1
    return out


def _for_vjp_checkpointed(e, gbar, start, stop, rest, body, n_caps, trip, checkpoint):
    """Store every k-th state: an outer loop over segments stores the state at each segment's
    start; the reverse pass runs each segment forward again (storing its k states) then back."""
    nc = len(rest) - n_caps
    n = e.sub(stop, start)
    if checkpoint < 0:          # k = ceil(sqrt(n)), at least 1
        r = e.cast(e.sqrt(e.cast(n, dtype="f64")), dtype="i64")
        r = e.add(r, e.cast(e.lt(e.mul(r, r), n), dtype="i64"))
        k = e.maximum(r, e.const(1, "i64"))
    else:
        k = e.const(int(checkpoint), "i64")
    m = e.floordiv(e.add(n, e.sub(k, e.const(1, "i64"))), k)
    zero = e.const(0, "i64")

    def segment_bounds(b, s, st0, k, stop):
        lo = b.add(st0, b.mul(s, k))
        hi = b.minimum(b.add(lo, k), stop)
        return lo, hi

    # forward over segments: carry the state, stack it at each segment's start
    s = fresh_like([zero])[0]
    cps = fresh_like(rest)
    extra = fresh_like([start, k, stop])

    def seg_forward(b, s, *args):
        carry, caps, (st0, kk, sp) = args[:nc], args[nc:nc + n_caps], args[nc + n_caps:]
        lo, hi = segment_bounds(b, s, st0, kk, sp)
        res = emit_control(b, "for", [lo, hi] + list(carry) + list(caps), body=body, n_caps=n_caps,
                           trip=new_trip(), reverse=False, saves=0, checkpoint=0)
        return res[:nc] + list(carry)
    fwd = build(body.name + ".segments", [s] + cps[:nc] + cps[nc:] + extra, seg_forward)
    if len(body.param_names) == len(body.params):
        fwd = replace(fwd, param_names=("segment",) + body.param_names[1:] + ("start", "k", "stop"))
    seg_trip = new_trip()
    # (its checkpoint attribute keeps the interval for the memory report; a loop with stacked
    # results is never checkpointed again)
    res = emit_control(e, "for", [zero, m] + list(rest) + [start, k, stop], body=fwd,
                       n_caps=n_caps + 3, trip=seg_trip, reverse=False, saves=nc, checkpoint=checkpoint)
    seg_states = res[nc:]
    # reverse over segments: carry (ct of state, acc ct of caps); each segment's own reverse pass
    fl = _floats(rest)
    gbar = list(gbar) + [None] * (nc - len(gbar))
    ct_state = fresh_like([rest[i] for i in range(nc) if fl[i]])
    acc = fresh_like([rest[i] for i in range(nc, len(rest)) if fl[i]])
    st = fresh_like(seg_states)
    cps2 = fresh_like(rest[nc:])
    extra2 = fresh_like([start, k, stop])
    s2 = fresh_like([zero])[0]

    def seg_reverse(b, s, *args):
        a = list(args)
        cts, accs = a[:len(ct_state)], a[len(ct_state):len(ct_state) + len(acc)]
        a = a[len(ct_state) + len(acc):]
        sts, caps, (st0, kk, sp) = a[:nc], a[nc:nc + n_caps], a[nc + n_caps:]
        lo, hi = segment_bounds(b, s, st0, kk, sp)
        state = [b.dyn_slice(x, s, axis=0, size=1, keep=False) for x in sts]
        seg = list(state) + list(caps)
        inner_trip = new_trip()
        _, stacks, rs, rstacks = _for_saving(b, lo, hi, seg, body, n_caps, inner_trip, False, 0)
        it = iter(cts)
        g_in = [next(it) if fl[i] else None for i in range(nc)]
        got = backward_for(b, g_in, lo, hi, seg, body, n_caps, inner_trip, False, stacks, rs, rstacks)
        new_ct = [got[i] for i in range(nc) if fl[i]]
        cap_ct = [got[i] for i in range(nc, len(rest)) if fl[i]]
        return new_ct + [b.add(x, y) for x, y in zip(accs, cap_ct)]
    rev = build(body.name + ".segments.rev", [s2] + ct_state + acc + st + cps2 + extra2, seg_reverse)
    init_ct = [gbar[i] if gbar[i] is not None else e.zeros_like(rest[i]) for i in range(nc) if fl[i]]
    init_acc = [e.zeros_like(rest[i]) for i in range(nc, len(rest)) if fl[i]]
    r = emit_control(e, "for", [zero, m] + init_ct + init_acc + list(seg_states) + list(rest[nc:]) +
                     [start, k, stop], body=rev, n_caps=len(seg_states) + n_caps + 3, trip=new_trip(),
                     reverse=True, saves=0, checkpoint=0)
    out = [None, None] + [None] * len(rest)
    it = iter(r)
    for i in range(len(rest)):
        if fl[i]:
            out[2 + i] = next(it)
    return out


def _while_vjp(e, gbar, out, *rest, cond, body, n_caps):
    """Reverse through a while loop: its trip count (from the forward loop) bounds a `for` that
    runs the body again storing each state, whose reverse pass gives the cotangents."""
    nc = len(rest) - n_caps
    trips = e.emit("item", out, index=nc, shape=(), dtype="i64")
    t = fresh_like([trips])[0]
    ps = fresh_like(body.params)

    def step(b, t, *args):
        return list(b.call(body, *args))
    fb = build(body.name + ".for", [t] + ps, step)
    zero = e.const(0, "i64")
    trip = new_trip()
    _, stacks, rs, rstacks = _for_saving(e, zero, trips, rest, fb, n_caps, trip, False, 0)
    return backward_for(e, list(gbar)[:nc], zero, trips, rest, fb, n_caps, trip, False, stacks, rs, rstacks)


def _if_vjp(e, gbar, out, c, *caps, then, orelse):
    fl = _floats(caps)
    n = len(then.outputs)
    gbar = list(gbar) + [None] * (n - len(gbar))
    ct_outs = [gbar[i] is not None and then.outputs[i].dtype in FLOATS for i in range(n)]
    gs = []
    for b in (then, orelse):
        ps, ctps, be, res, _, _ = _reverse_body(b, ct_outs, fl)
        gs.append(Graph(b.name + ".rev", tuple(ps + ctps), tuple(be.nodes), tuple(res)))
    cts = [gbar[i] for i in range(n) if ct_outs[i]]
    r = emit_control(e, "if", [c] + list(caps) + cts, then=gs[0], orelse=gs[1])
    outc = [None]
    it = iter(r)
    for i in range(len(caps)):
        outc.append(next(it) if fl[i] else None)
    return outc


defop("for", _for_rule, _for_ref, _for_vjp, _for_jvp, kind="control")
defop("while", _while_rule, _while_ref, _while_vjp, _while_jvp, kind="control")
defop("if", _if_rule, _if_ref, _if_vjp, _if_jvp, kind="control")
defop("item", lambda t, index, shape, dtype: (tuple(shape), dtype),
      lambda t, index, shape, dtype: t[index], kind="item")


# ---- helpers for the passes


def map_bodies(g: Graph, fn) -> Graph:
    """g with fn applied to the graph of every body of its control nodes (not recursively)."""
    if not any(is_control(n) for n in g.nodes):
        return g
    nodes = []
    for n in g.nodes:
        if is_control(n):
            n = replace(n, attrs=tuple((k, fn(v) if isinstance(v, Graph) else v) for k, v in n.attrs))
        nodes.append(n)
    return replace(g, nodes=tuple(nodes))


def has_control(g: Graph) -> bool:
    return any(is_control(n) for n in g.nodes)


def describe(v) -> str:
    return type_str(v.shape, v.dtype)


def merge_saves(g: Graph) -> Graph:
    """A forward loop and the copy of it that its reverse pass made to store its states become
    one loop, the storing one, where the first was: the forward runs once."""
    plain = {}
    for n in g.nodes:
        if n.op == "for" and not n.attr("saves"):
            b = n.attr("body")
            plain[(n.ins, id(b.nodes), b.outputs, n.attr("reverse"))] = n
    repl, alias = {}, {}
    for n in g.nodes:
        if n.op == "for" and n.attr("saves"):
            b = n.attr("body")
            key = (n.ins, id(b.nodes), b.outputs[:len(b.outputs) - n.attr("saves")], n.attr("reverse"))
            base = plain.get(key)
            if base is not None and base.out not in repl:
                repl[base.out] = n
                alias[n.out] = base.out
    if not repl:
        return g
    nodes = []
    for n in g.nodes:
        if n.out in alias:
            continue
        if n.out in repl:
            n = replace(n, attrs=repl[n.out].attrs)
        nodes.append(replace(n, ins=tuple(alias.get(i, i) for i in n.ins)))
    return replace(g, nodes=tuple(nodes), outputs=tuple(alias.get(o, o) for o in g.outputs))


def prune_loops(g: Graph) -> Graph:
    """Loop-level dead code: a carried value that nothing after the loop reads and that feeds
    only itself in the body is dropped (a cotangent accumulated for a value no one asked the
    gradient of); so are stacked results no one reads and captures the body no longer uses."""
    from .passes.dce import dce
    used = {i for n in g.nodes for i in n.ins} | set(g.outputs)
    read = {}
    for n in g.nodes:
        if n.op == "item" and n.out in used:
            read.setdefault(n.ins[0], set()).add(n.attr("index"))
    nodes, changed = [], False
    for n in g.nodes:
        if n.op == "for" and n.out in used:
            new = _prune_for(n, read.get(n.out, set()), dce)
            if new is not None:
                n, changed = new, True
        nodes.append(n)
    if not changed:
        return g
    # items of removed parts are dead; the others follow their parts' new places
    out = []
    moved = {}
    for n in nodes:
        if n.op == "for" and n.attr("_remap") is not None:
            remap = n.attr("_remap")
            moved[n.out] = remap
            n = replace(n, attrs=tuple((k, v) for k, v in n.attrs if k != "_remap"))
        elif n.op == "item" and n.ins[0] in moved:
            j = moved[n.ins[0]].get(n.attr("index"))
            if j is None:
                continue
            n = replace(n, attrs=tuple((k, j if k == "index" else v) for k, v in n.attrs))
        out.append(n)
    return dce(replace(g, nodes=tuple(out)))


def _prune_for(n: Node, read: set, dce):
    kw = n.kw
    body = kw["body"]
    n_caps = kw["n_caps"]
    nc = len(n.ins) - 2 - n_caps
    ny = len(body.outputs) - nc
    saves = kw["saves"]
    # which outputs each param reaches, within the body
    reach = {p: {p} for p in body.params}
    for m in body.nodes:
        s = set()
        for i in m.ins:
            s |= reach.get(i, set())
        reach[m.out] = s
    dead = set()
    while True:
        grow = False
        for k in range(nc):
            if k in dead or k in read:
                continue
            p = body.params[1 + k]
            others = [o for j, o in enumerate(body.outputs) if j != k and j not in dead]
            if not any(p in reach.get(o, {o}) for o in others):
                dead.add(k)
                grow = True
        if not grow:
            break
    dead_ys = {nc + j for j in range(ny) if nc + j not in read and j < ny - saves}
    if not dead and not dead_ys:
        return None
    keep_c = [k for k in range(nc) if k not in dead]
    keep_o = keep_c + [nc + j for j in range(ny) if nc + j not in dead_ys]
    b = dce(replace(body, outputs=tuple(body.outputs[j] for j in keep_o)))
    b = prune_loops(b)            # what the body's own loops no longer need
    usedp = {i for m in b.nodes for i in m.ins} | set(b.outputs)
    caps = [j for j in range(n_caps) if body.params[1 + nc + j] in usedp]
    params = (body.params[0],) + tuple(body.params[1 + k] for k in keep_c) + \
        tuple(body.params[1 + nc + j] for j in caps)
    ins = n.ins[:2] + tuple(n.ins[2 + k] for k in keep_c) + tuple(n.ins[2 + nc + j] for j in caps)
    idx = [0] + [1 + k for k in keep_c] + [1 + nc + j for j in caps]
    names = tuple(body.param_names[i] for i in idx) if len(body.param_names) == len(body.params) else ()
    b = replace(b, params=params, param_names=names)
    remap = {old: new for new, old in enumerate(keep_o)}
    attrs = dict(kw, body=b, n_caps=len(caps), _remap=remap)
    return replace(n, ins=ins, attrs=tuple(sorted(attrs.items(), key=lambda kv: kv[0])))


def rename_dims(g: Graph, mapping: dict) -> Graph:
    """g with the dimension symbols in mapping renamed, in its values, attributes and bodies."""
    from .builder import fresh
    from .ir import dim_parts

    def dim(d):
        if isinstance(d, str):
            sym, off = dim_parts(d)
            if sym in mapping:
                return mapping[sym] if off == 0 else f"{mapping[sym]}{off:+d}"
        return d

    def shape(s):
        return tuple(dim(d) for d in s)

    vals = {}

    def val(v):
        if v not in vals:
            s = shape(v.shape)
            vals[v] = fresh(s, v.dtype) if s != v.shape else v
        return vals[v]

    def attr(a):
        if isinstance(a, Graph):
            return rename_dims(a, mapping)
        if isinstance(a, tuple) and all(isinstance(d, (int, str)) for d in a):
            return shape(a)
        if isinstance(a, str) and a.startswith("#"):
            return dim(a)
        return a
    nodes = tuple(Node(n.op, tuple(val(i) for i in n.ins), val(n.out),
                       tuple((k, attr(a) if k != "message" and k != "error" else a) for k, a in n.attrs), n.loc)
                  for n in g.nodes)
    return replace(g, params=tuple(val(p) for p in g.params), nodes=nodes,
                   outputs=tuple(val(o) for o in g.outputs),
                   names=tuple((k, val(v)) for k, v in g.names))


def fresh_trips(g: Graph) -> Graph:
    """g with a new trip symbol for each of its loops: an inlined copy of a graph must not share
    them with the original (the two may run different numbers of times)."""
    trips = {n.attr("trip") for n in g.nodes if n.op == "for"}
    return rename_dims(g, {t: new_trip() for t in trips}) if trips else g


def checkpoint_loops(g: Graph, k: int) -> Graph:
    """g with every loop of its own (not those of derived passes) checkpointed: the transform's
    checkpoint= option. A loop that asks for an interval itself keeps it."""
    nodes = []
    for n in g.nodes:
        if n.op == "for" and not n.attr("checkpoint") and not n.attr("saves") and \
                len(n.attr("body").outputs) == len(n.ins) - 2 - n.attr("n_caps"):
            n = replace(n, attrs=tuple((a, k if a == "checkpoint" else v) for a, v in n.attrs))
        nodes.append(n)
    return replace(g, nodes=tuple(nodes))
