"""Lower the statements of control flow: var, assignment, for, while and if (compiler/control.py
has the ops they become)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..frontend import ast as A
from ..frontend.diagnostics import CompileError
from .builder import Emitter, fresh, literal_dtype
from .control import emit_control, new_trip
from .ir import INTS, Graph, ShapeError, Value, type_str
from .values import DimRef

_AUG = {"+": "+", "-": "-", "*": "*", "/": "/"}


def statement(scope, stmt):
    if isinstance(stmt, A.Let):
        for name in A.pattern_names(stmt.targets):
            if name in scope.vars:
                raise CompileError(f"'{name}' is a var: assign it with {name} = ...", stmt.pattern or stmt.loc)
        scope.let(stmt)
    elif isinstance(stmt, A.Var):
        v = scope.expr(stmt.value)
        if not isinstance(v, (Value, bool, int, float, np.ndarray)) or isinstance(v, DimRef):
            raise CompileError(f"a var holds an array or a number, not {scope.describe(v)}", stmt.value.loc)
        if isinstance(v, np.ndarray):
            v = scope.as_value(v, stmt.value)
        scope.env[stmt.name] = v
        scope.vars.add(stmt.name)
        if isinstance(v, Value):
            scope.lets.append((stmt.name, v))
    elif isinstance(stmt, A.Assign):
        assign(scope, stmt)
    elif isinstance(stmt, A.For):
        lower_for(scope, stmt)
    elif isinstance(stmt, A.While):
        lower_while(scope, stmt)
    elif isinstance(stmt, A.If):
        lower_if(scope, stmt)
    elif isinstance(stmt, A.Return):
        raise CompileError("return inside a loop or a branch: assign a var there and return it after",
                           stmt.loc)
    else:
        raise CompileError(f"internal: unknown statement {type(stmt).__name__}", stmt.loc)


def assign(scope, stmt: A.Assign):
    name = stmt.name
    if name not in scope.vars:
        if name in scope.env:
            raise CompileError(f"cannot assign to '{name}': it is not a var", stmt.loc,
                               [f"declare it with `var {name} = ...` to assign it again"])
        raise CompileError(f"cannot assign to '{name}': no var of that name is declared", stmt.loc,
                           [f"declare it first with `var {name} = ...`"])
    value = stmt.value
    if stmt.op:
        value = A.BinOp(stmt.loc, _AUG[stmt.op], A.Name(stmt.loc, name), stmt.value)
    v = scope.expr(value)
    if not isinstance(v, (Value, bool, int, float, np.ndarray)) or isinstance(v, DimRef):
        raise CompileError(f"a var holds an array or a number, not {scope.describe(v)}", stmt.value.loc)
    if isinstance(v, np.ndarray):
        v = scope.as_value(v, stmt.value)
    scope.env[name] = v
    scope.assigned[name] = stmt.loc


def assigned_vars(body) -> list:
    """Names assigned anywhere in a block (nested blocks included), in order of first assignment;
    minus those the block declares itself."""
    out, local = [], set()

    def walk(stmts, local):
        local = set(local)
        for s in stmts:
            if isinstance(s, A.Var):
                local.add(s.name)
            elif isinstance(s, A.Assign):
                if s.name not in local and s.name not in out:
                    out.append(s.name)
            elif isinstance(s, A.For):
                walk(s.body, local | {s.var})
            elif isinstance(s, A.While):
                walk(s.body, local)
            elif isinstance(s, A.If):
                walk(s.then, local)
                walk(s.orelse, local)
    walk(body, local)
    return out


def _type_of(v):
    """(shape, dtype) a var's value has; a Python number has its literal's."""
    if isinstance(v, Value):
        return v.shape, v.dtype
    return (), literal_dtype(v)


class _Body:
    """A block lowered on its own emitter: the names it reads from outside become captures."""

    def __init__(self, scope, params: dict):
        self.e = Emitter(loc=scope.e.loc)
        env = dict(scope.env)
        env.update(params)
        self.scope = type(scope)(scope.low, self.e, env, scope.vars, runtime_dims=True)
        self.params = params

    def run(self, stmts):
        for s in stmts:
            statement(self.scope, s)

    def value(self, name, like, loc):
        """The final value of var name, as a Value typed like `like` (shape, dtype)."""
        v = self.scope.env[name]
        if isinstance(v, Value):
            return v
        try:
            return self.e.const(v, like[1]) if not isinstance(v, bool) or like[1] == "bool" else \
                self.e.const(v, "bool")
        except ShapeError as ex:
            raise CompileError(str(ex), loc) from None


def close(name, lead_params, nodes, outputs, extra_free=(), lead_names=(), env=None) -> tuple:
    """(graph, captured outer values): params are lead_params then one fresh param per value
    from outside that the nodes or outputs read (in first-use order). Params are named by
    lead_names and, for captures, by the name env gives the value (what reports print)."""
    free = list(dict.fromkeys(list(extra_free) + _free_of(nodes, lead_params, outputs)))
    sub = {v: fresh(v.shape, v.dtype) for v in free}
    new = [replace(n, ins=tuple(sub.get(i, i) for i in n.ins)) for n in nodes]
    names = {}
    for k, v in (env or {}).items():
        if isinstance(v, Value):
            names.setdefault(v, k)
    pnames = tuple(lead_names) + tuple(f"p{i}" for i in range(len(lead_names), len(lead_params)))
    pnames += tuple(names.get(v, f"cap{i}") for i, v in enumerate(free))
    g = Graph(name, tuple(lead_params) + tuple(sub[v] for v in free), tuple(new),
              tuple(sub.get(o, o) for o in outputs), pnames)
    return g, free


def _free_of(nodes, params, outputs) -> list:
    """The values from outside that nodes or outputs read, in first-use order."""
    defined = set(params) | {n.out for n in nodes}
    out = []
    for n in nodes:
        for i in n.ins:
            if i not in defined and i not in out:
                out.append(i)
    for o in outputs:
        if o not in defined and o not in out:
            out.append(o)
    return out


def _bound(scope, node) -> Value:
    """A loop bound: an integer constant, dimension or scalar expression, as an i64 Value."""
    saved = scope.runtime_dims
    scope.runtime_dims = True
    try:
        v = scope.expr(node)
        if isinstance(v, DimRef):
            v = scope.dim_number(v, node)
    finally:
        scope.runtime_dims = saved
    if isinstance(v, bool) or not isinstance(v, (int, Value)):
        raise CompileError(f"a loop bound must be an integer, got {scope.describe(v)}", node.loc)
    if isinstance(v, int):
        return scope.as_value(v, node, "i64")
    if v.shape != () or v.dtype not in INTS:
        raise CompileError(f"a loop bound must be an integer scalar, got {v.type}", node.loc)
    return v if v.dtype == "i64" else scope.e.cast(v, dtype="i64")


def _carried(scope, body_stmts, where):
    names = [n for n in assigned_vars(body_stmts) if n in scope.vars]
    return names


def _loop_body(scope, stmts, carried, lead, types, name, extra=None):
    """Lower a loop body with the carried vars as params of the given types; returns
    (body scope, param values, outputs) or raises _Retype when a literal-initialized var
    takes another type in the loop."""
    params = {c: fresh(t[0], t[1]) for c, t in zip(carried, types)}
    params.update(lead)
    b = _Body(scope, params)
    if extra is not None:
        extra(b)
    b.run(stmts)
    outs = []
    for c, t in zip(carried, types):
        v = b.value(c, t, b.scope.assigned.get(c))
        outs.append(v)
    return b, params, outs


def _settle_types(scope, stmts, carried, lead, where, extra=None):
    """Lower the body until the carried vars' types are fixed points: a var initialized with a
    number takes the type the loop gives it (var s = 0.0 then s = s + x with x f32 is f32)."""
    init = [scope.env[c] for c in carried]
    types = [_type_of(v) for v in init]
    for _ in range(3):
        b, params, outs = _loop_body(scope, stmts, carried, lead, types, where, extra)
        new = list(types)
        for i, (c, o) in enumerate(zip(carried, outs)):
            if (o.shape, o.dtype) != tuple(types[i]) and not isinstance(init[i], Value):
                new[i] = (o.shape, o.dtype)
        if new == types:
            break
        types = new
    for c, o, t, v in zip(carried, outs, types, init):
        if (o.shape, o.dtype) != tuple(t):
            loc = b.scope.assigned.get(c, where)
            raise CompileError(f"the loop changes '{c}' from {type_str(*t)} to {o.type}: a variable "
                               "carried by a loop keeps its type", loc,
                               [("the loop is here", where)])
    return b, params, outs, types


def _init_values(scope, carried, types, node):
    out = []
    for c, t in zip(carried, types):
        v = scope.env[c]
        if not isinstance(v, Value):
            v = scope.e.const(v, t[1]) if t[0] == () else scope.e.broadcast_to(scope.e.const(v, t[1]), shape=t[0])
        out.append(v)
    return out


def lower_for(scope, stmt: A.For):
    start, stop = _bound(scope, stmt.start), _bound(scope, stmt.stop)
    if stmt.var in scope.vars:
        raise CompileError(f"the loop index '{stmt.var}' hides the var of that name", stmt.loc)
    ckpt = 0
    if stmt.checkpoint is True:
        ckpt = -1
    elif stmt.checkpoint is not None:
        ckpt = scope.const(stmt.checkpoint, what="a constant checkpoint interval")
        if ckpt < 1:
            raise CompileError("the checkpoint interval must be at least 1", stmt.checkpoint.loc)
    carried = _carried(scope, stmt.body, stmt.loc)
    t = fresh((), "i64")
    b, params, outs, types = _settle_types(scope, stmt.body, carried, {stmt.var: t}, stmt.loc)
    lead = [t] + [params[c] for c in carried]
    g, caps = close(f"for@{stmt.loc.line}", lead, b.e.nodes, outs, lead_names=[stmt.var] + carried,
                    env=scope.env)
    init = _init_values(scope, carried, types, stmt)
    scope.e.loc = stmt.loc
    try:
        res = emit_control(scope.e, "for", [start, stop] + init + caps, body=g, n_caps=len(caps),
                           trip=new_trip(), reverse=False, saves=0, checkpoint=ckpt)
    except ShapeError as ex:
        raise CompileError(str(ex), stmt.loc) from None
    for c, v in zip(carried, res):
        scope.env[c] = v


def lower_while(scope, stmt: A.While):
    carried = _carried(scope, stmt.body, stmt.loc)
    if not carried:
        raise CompileError("this while loop assigns no var: its condition could never change", stmt.loc)
    holder = {}

    def cond(b):
        c = b.scope.expr(stmt.cond)
        if isinstance(c, bool):
            c = b.e.const(c, "bool")
        if not isinstance(c, Value) or c.shape != () or c.dtype != "bool":
            raise CompileError(f"a while condition must be a scalar bool, got {b.scope.describe(c)}",
                               stmt.cond.loc)
        holder["cond"] = (list(b.e.nodes), c)
        del b.e.nodes[:]
    b, params, outs, types = _settle_types(scope, stmt.body, carried, {}, stmt.loc, cond)
    cnodes, c = holder["cond"]
    lead = [params[n] for n in carried]
    # one set of captures for the condition and the body
    free = _free_of(cnodes, lead, [c]) + [v for v in _free_of(b.e.nodes, lead, outs)]
    free = list(dict.fromkeys(free))
    cg, _ = close(f"while@{stmt.loc.line}.cond", lead, cnodes, [c], free, carried, scope.env)
    bg, _ = close(f"while@{stmt.loc.line}", lead, b.e.nodes, outs, free, carried, scope.env)
    init = _init_values(scope, carried, types, stmt)
    scope.e.loc = stmt.loc
    try:
        res = emit_control(scope.e, "while", init + free, cond=cg, body=bg, n_caps=len(free))
    except ShapeError as ex:
        raise CompileError(str(ex), stmt.loc) from None
    for n, v in zip(carried, res):
        scope.env[n] = v


def lower_if(scope, stmt: A.If):
    c = scope.expr(stmt.cond)
    if isinstance(c, bool):
        # a constant condition: only the branch taken is lowered
        for s in (stmt.then if c else stmt.orelse):
            statement(scope, s)
        return
    if not isinstance(c, Value) or c.shape != () or c.dtype != "bool":
        raise CompileError(f"an if condition must be a scalar bool, got {scope.describe(c)}", stmt.cond.loc)
    names = [n for n in assigned_vars(stmt.then + stmt.orelse) if n in scope.vars]
    branches = []
    for stmts in (stmt.then, stmt.orelse):
        b = _Body(scope, {})
        b.run(stmts)
        branches.append(b)
    outs = [[], []]
    for name in names:
        vs = [b.scope.env[name] for b in branches]
        typed = [v for v in vs if isinstance(v, Value)]
        like = (typed[0].shape, typed[0].dtype) if typed else _type_of(vs[0])
        for k, (b, v) in enumerate(zip(branches, vs)):
            v = b.value(name, like, b.scope.assigned.get(name, stmt.loc))
            outs[k].append(v)
        a, o = outs[0][-1], outs[1][-1]
        if (a.shape, a.dtype) != (o.shape, o.dtype):
            raise CompileError(f"'{name}' is {a.type} after one branch and {o.type} after the other: "
                               "a variable has one type after an if", stmt.loc,
                               [("assigned here", branches[k].scope.assigned[name])
                                for k in (0, 1) if name in branches[k].scope.assigned])
    if not names:
        return
    free = list(dict.fromkeys(_free_of(branches[0].e.nodes, [], outs[0]) +
                              _free_of(branches[1].e.nodes, [], outs[1])))
    g1, _ = close(f"if@{stmt.loc.line}.then", [], branches[0].e.nodes, outs[0], free, (), scope.env)
    g2, _ = close(f"if@{stmt.loc.line}.else", [], branches[1].e.nodes, outs[1], free, (), scope.env)
    scope.e.loc = stmt.loc
    res = emit_control(scope.e, "if", [c] + free, then=g1, orelse=g2)
    for name, v in zip(names, res):
        scope.env[name] = v
