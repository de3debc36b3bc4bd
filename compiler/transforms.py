"""Function values and their transforms in the lowering: derivative transforms (grad, vjp, jvp,
jacobian, hessian, vmap) of user functions, and calls of functions with derivative rules of
their own (a mixin of lower_ast.Lowering)."""
from __future__ import annotations

import difflib
from dataclasses import replace

from ..frontend import ast as A
from ..frontend.diagnostics import CompileError
from . import autodiff
from . import records as R
from .builder import Emitter, fresh
from .ir import FLOATS, Graph, Value, type_str
from .passes.simplify import before_derivatives
from .records import RecordType, RecordValue
from .values import Derived, FnValue, UserFn, is_const


def called_from(ex: CompileError, f: FnValue, node) -> CompileError:
    """ex, with the call that inlined the function it happened in (a prelude loss, a user fn)."""
    if ex.loc is not None and ex.loc != node.loc:
        ex.notes += ((f"in the call of {f.name} here", node.loc),)
    return ex


class Transforms:
    """What Lowering does with function values: instantiating transforms and ruled calls."""

    def wrt_of(self, f: Derived):
        if f.wrt:
            return f.wrt
        base = f.base
        while isinstance(base, Derived):
            base = base.base
        return (base.defn.params[0].name,) if base.defn.params else ()

    def has_rules(self, f) -> bool:
        return isinstance(f, UserFn) and f.module is self and f.name in self.rules and \
            self.globals.get(f.name) is f

    def _ruled_graph(self, f: UserFn, types, node) -> Graph:
        """f at types as one `custom` node: what an exported f and the transforms of f see."""
        primal, vjp, jvp = self.ruled(f, types, node)
        params = [fresh(p.shape, p.dtype) for p in primal.params]
        e = Emitter()
        outs = self.emit_custom(e, primal, vjp, jvp, params, f.defn.loc)
        return replace(primal, params=tuple(params), nodes=tuple(e.nodes), outputs=tuple(outs), names=())

    @staticmethod
    def emit_custom(e, primal, vjp, jvp, args, loc) -> list:
        saved, e.loc = e.loc, loc
        try:
            tup = e.emit("custom", *args, fn=primal, vjp=vjp, jvp=jvp)
            return [e.emit("item", tup, index=i, shape=o.shape, dtype=o.dtype) for i, o in enumerate(primal.outputs)]
        finally:
            e.loc = saved

    def ruled(self, f: UserFn, types, node) -> tuple:
        """(body, vjp rule, jvp rule) graphs of f at argument types; a rule f lacks is None."""
        key = (f, tuple(types) if types is not None else None, "rules")   # f, not id(f): see instantiate
        if key in self.cache:
            return self.cache[key]
        primal = self.instantiate(f, types, node, plain=True)
        if types is None:
            types = self.declared_types(f)
        outs = [R.type_of(o) for o in R.group(list(primal.outputs), R.output_entries(primal))]
        rules = self.rules[f.name]
        saved = self.stack
        # inside its own rules, a call of f runs f's body (a rule may use the function it belongs to)
        self.stack = [x for x in self.stack if x is not f]
        self.plain.add(f)
        try:
            vjp = self._rule(f, "vjp", list(types), list(types) + outs, node) if "vjp" in rules else None
            jvp = self._rule(f, "jvp", outs, list(types) + list(types), node) if "jvp" in rules else None
        finally:
            self.plain.discard(f)
            self.stack = saved
        self.cache[key] = (primal, vjp, jvp)
        return primal, vjp, jvp

    def _rule(self, f: UserFn, kind, want, types, node) -> Graph:
        """The graph of f's rule at types; its results must have the types in want (those of f's
        parameters for vjp, of f's results for jvp), where they are floating point."""
        rule = self.rules[f.name][kind]
        d = rule.defn
        n = len(f.defn.params)
        if len(d.params) != len(types):
            what = ("one cotangent per result of" if kind == "vjp" else "one tangent per parameter of")
            raise CompileError(f"the {kind} rule of {f.name} takes {f.name}'s {n} parameter(s) and "
                               f"{what} {f.name} ({len(types)} in all), but has {len(d.params)}",
                               d.loc, [("in the call of " + f.name + " here", node.loc)] if node.loc != f.defn.loc
                               else ())
        g = self.instantiate(rule, types, node)
        got = R.group(list(g.outputs), R.output_entries(g))
        ret = [st for st in d.body if isinstance(st, A.Return)]
        at = ret[-1].loc if ret else d.loc
        what = "cotangent per parameter" if kind == "vjp" else "tangent per result"
        if len(got) != len(want):
            raise CompileError(f"the {kind} rule of {f.name} must return one {what} ({len(want)}), "
                               f"but returns {len(got)}", at)
        names = [p.name for p in f.defn.params] if kind == "vjp" else [None] * len(want)
        for i, (v, w) in enumerate(zip(got, want)):
            floats = all(dt in FLOATS for _, dt in (w.types if isinstance(w, RecordType) else [w]))
            if not floats or R.type_of(v) == w:
                continue
            shown = (lambda t: t.struct if isinstance(t, RecordType) else type_str(*t))
            whose = f"the cotangent of '{names[i]}'" if kind == "vjp" else f"the tangent of result {i}"
            raise CompileError(f"the {kind} rule of {f.name} returns {shown(R.type_of(v))} as {whose}, "
                               f"which must be {shown(w)}", at)
        return g

    def _derived(self, f: Derived, types, node) -> Graph:
        if f.kind == "vmap":
            return self._vmap(f, types, node)
        base_types = None
        if types is not None:
            base_types = types[:self._arity(f.base)]
        base = self.instantiate(f.base, base_types, node)
        if f.checkpoint:
            from .control import checkpoint_loops
            base = checkpoint_loops(base, f.checkpoint)
        base = before_derivatives(base)
        wrt = self.wrt_of(f)
        flat, entries = R.expand_wrt(base, wrt)
        warn = lambda msg: self.diag.warn(msg, f.loc)
        try:
            if f.kind in ("grad", "value_and_grad"):
                g = autodiff.grad(base, flat, f.name, f.kind == "value_and_grad", warn)
            elif f.kind in ("jacobian", "hessian"):
                from . import jacobian
                g = getattr(jacobian, f.kind)(base, flat, f.name, f.mode, warn)
            else:
                g = getattr(autodiff, f.kind)(base, flat, f.name, warn)
        except autodiff.AutodiffError as ex:
            loc = f.base_loc
            for name, l in zip(f.wrt, f.wrt_locs):
                if f"'{name}'" in str(ex) or f"'{name}." in str(ex):
                    loc = l
            raise CompileError(str(ex), loc, ex.notes) from None
        except CompileError as ex:      # a derivative rule that does not serve this transform
            if ex.loc != f.loc and not any(isinstance(n, tuple) and n[1] == f.loc for n in ex.notes):
                ex.notes += ((f"in {f.kind}({f.base.name}) here", f.loc),)
            raise
        return self._derived_layout(f.kind, base, wrt, entries, g)

    @staticmethod
    def _derived_layout(kind, base, wrt, entries, g) -> Graph:
        """g, a transform of base, with the records of its parameters and results."""
        ps, os_ = R.param_entries(base), R.output_entries(base)
        if not R.has_records((ps, os_, entries)):
            return g
        names = list(g.param_names)
        if kind in ("grad", "value_and_grad"):
            outs, out_tuple = ([None] if kind == "value_and_grad" else []) + entries, \
                kind == "value_and_grad" or len(wrt) > 1
        elif kind in ("jacobian", "hessian"):      # plain arrays, one per field of a record wrt
            outs, out_tuple = [None] * len(g.outputs), len(g.outputs) > 1
        elif kind == "vjp":
            outs, out_tuple = entries, len(wrt) > 1
            names = list(base.param_names)
            for i, en in enumerate(os_):
                ct = "ct" if len(os_) == 1 else f"ct{i}"
                names += [ct] if en is None else [f"{ct}.{k}" for k in en[1]]
            ps = ps + os_
        else:
            outs, out_tuple = os_ + os_, True
            ps = ps + entries
        return replace(g, param_names=tuple(names), out_tuple=out_tuple, layout=(tuple(ps), tuple(outs)))

    def _arity(self, f: FnValue) -> int:
        if isinstance(f, UserFn):
            return len(f.defn.params)
        return self._arity(f.base)

    def _nparams(self, f: FnValue):
        """How many parameters f takes (None: known once it is instantiated, as vjp's)."""
        if isinstance(f, UserFn):
            return len(f.defn.params)
        n = None if f.kind == "vjp" else self._nparams(f.base)
        if n is not None and f.kind == "jvp":
            n += len(self.wrt_of(f))
        return n

    def _vmap(self, f: Derived, types, node) -> Graph:
        """The graph of vmap(f): f instantiated at the rows' types, then batched."""
        from .batching import BatchError, new_dim, vmap
        what = f"vmap({f.base.name})"
        if types is None:
            base = self.instantiate(f.base, None, node)
            mapped = self._mapped(f, len(base.params))
            size = new_dim(base)
        else:
            mapped = self._mapped(f, len(types))
            sizes = []
            for k, ((shape, dtype), m) in enumerate(zip(types, mapped)):
                if m and not shape:
                    raise CompileError(f"{what} maps over axis 0 of argument {k + 1}, but it is a scalar "
                                       f"({dtype})", node.loc)
                if m:
                    sizes.append((shape[0], k))
            for (d, k) in sizes[1:]:
                if d != sizes[0][0]:
                    raise CompileError(f"{what}: the mapped arguments differ in size on axis 0: argument "
                                       f"{sizes[0][1] + 1} has {sizes[0][0]}, argument {k + 1} has {d}", node.loc)
            size = sizes[0][0]
            rows = [(tuple(shape[1:]), dtype) if m else (tuple(shape), dtype)
                    for (shape, dtype), m in zip(types, mapped)]
            base = self.instantiate(f.base, rows, node)
            if len(base.params) != len(types):
                raise CompileError(f"{what} takes {len(base.params)} argument(s), but {len(types)} were given",
                                   node.loc)
        try:
            return vmap(base, mapped, f.name, size)
        except BatchError as ex:
            raise CompileError(f"{what}: {ex}", f.loc) from None

    def _mapped(self, f: Derived, n: int) -> list:
        """Which of n parameters vmap maps, from its axes=."""
        axes, what = f.axes, f"vmap({f.base.name})"
        if isinstance(axes, tuple):
            if len(axes) != n:
                raise CompileError(f"{what}: axes has {len(axes)} entries, but {f.base.name} takes {n} "
                                   "parameter(s)", f.axes_loc)
            mapped = [a is not None for a in axes]
        else:
            mapped = [axes is not None] * n
        if not any(mapped):
            raise CompileError(f"{what} maps over no parameter", f.axes_loc or f.loc,
                               ["give axis 0 to at least one parameter"])
        return mapped

    def _call_ruled(self, f: UserFn, vals, node, scope):
        """A call of a function with rules of its own: one `custom` node."""
        vals = list(vals)
        for i, (a, n) in enumerate(zip(vals, node.args)):
            if is_const(a):
                vals[i] = scope.as_value(a, n)
            elif not isinstance(a, (Value, RecordValue)):
                raise CompileError(f"{f.name} has derivative rules of its own: its arguments must be array "
                                   f"values or records, got {scope.describe(a)}", n.loc)
        try:
            primal, vjp, jvp = self.ruled(f, [R.type_of(a) for a in vals], node)
        except CompileError as ex:
            raise called_from(ex, f, node) from None
        outs = self.emit_custom(scope.e, primal, vjp, jvp, R.flatten(vals), node.loc)
        return tuple(R.group(outs, R.output_entries(primal)))

    def _rule_def(self, r: A.RuleDef, fns):
        """A vjp or jvp rule: its function must be in this file, its parameters named as the function's."""
        f = fns.get(r.name)
        if f is None:
            close = difflib.get_close_matches(r.name, list(fns), n=1)
            raise CompileError(f"{r.kind} rule for '{r.name}', which is not a function of this file", r.loc,
                               [f"did you mean '{close[0]}'?"] if close else ())
        rules = self.rules.setdefault(r.name, {})
        if r.kind in rules:
            raise CompileError(f"{r.name} has two {r.kind} rules", r.loc,
                               [("the first is here", rules[r.kind].defn.loc)])
        n = len(f.params)
        extra = "one cotangent per result" if r.kind == "vjp" else "one tangent per parameter"
        if len(r.params) <= n or (r.kind == "jvp" and len(r.params) != 2 * n):
            raise CompileError(f"the {r.kind} rule of {r.name} takes {r.name}'s {n} parameter(s), then "
                               f"{extra}; it has {len(r.params)} parameter(s)", r.loc,
                               [f"write: {r.kind} {r.name}({', '.join(p.name for p in f.params)}, "
                                + ("g" if r.kind == "vjp" else ", ".join("t_" + p.name for p in f.params))
                                + ") { ... }"])
        for k, (p, q) in enumerate(zip(r.params, f.params)):
            if p.name != q.name:
                raise CompileError(f"parameter {k + 1} of the {r.kind} rule of {r.name} is '{p.name}', but "
                                   f"{r.name} calls it '{q.name}'", p.loc,
                                   ["a rule names the function's parameters as the function does"])
        seen = set()
        for p in r.params:
            if p.name in seen:
                raise CompileError(f"parameter '{p.name}' appears twice in the {r.kind} rule of {r.name}", p.loc)
            seen.add(p.name)
        defn = A.FnDef(r.loc, f"{r.name}.{r.kind}", r.params, None, False, r.body)
        self._check_fn(defn)
        rules[r.kind] = UserFn(defn, self)
