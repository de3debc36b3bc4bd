"""Lower the AST to graph IR: names, types and shapes, inlined calls, derivative transforms."""
from __future__ import annotations

import difflib
import inspect
import keyword
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..frontend import ast as A
from ..frontend.diagnostics import PRELUDE, CompileError, Diagnostics, prelude_source
from ..frontend.parse import parse
from .builder import INT_RANGE, Emitter, fresh, literal_dtype
from .ir import DTYPES, Graph, ShapeError, Value, dim_add, dim_parts, type_str
from .builtins import BUILTINS
from .builtins_index import checked_index, is_index_array
from .ops_nn import matmul_of
from .records import RecordType, RecordValue, Struct
from . import records as R
from .transforms import Transforms, called_from
from .values import Derived, DimRef, DType, FnValue, UserFn, is_const

TRANSFORMS = ("grad", "value_and_grad", "vjp", "jvp", "vmap", "jacobian", "hessian")
AUTODIFF = ("grad", "value_and_grad", "vjp", "jvp")
# expressions inside expressions, and inlined calls inside calls, lower recursively: this bound
# keeps the recursion well inside Python's stack (1,000 frames); chains a + b + c ... are a loop
MAX_NESTING = 100


# ---- values in expressions: Value, Python number, np.ndarray (array literal), tuple, FnValue


def _binop_name(op):
    return {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod", "**": "pow",
            "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne", "and": "and",
            "or": "or"}[op]


_PY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
       "pow": lambda a, b: a ** b, "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b,
       "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
       "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "eq": lambda a, b: a == b,
       "ne": lambda a, b: a != b, "and": lambda a, b: a and b, "or": lambda a, b: a or b}


I64_RANGE = (-2 ** 63, 2 ** 63 - 1)


def _fold(node, op, a, b):
    """Two numbers combined at compile time: integers exactly (their type is i64), floats as IEEE
    f64 arithmetic does (1 / 0 is inf, 0 ** -1 is inf); never a Python exception."""
    floats = isinstance(a, float) or isinstance(b, float) or op == "div" or (op == "pow" and b < 0)
    if op == "pow" and not floats and abs(a) > 1 and b * (abs(a).bit_length() - 1) > 64:
        r = None                      # far outside i64: not worth computing (10 ** 10 ** 10)
    elif op in ("floordiv", "mod") and not floats and b == 0:
        r = 0                         # as at run time (NumPy's integer result), not an error
    else:
        try:
            if floats:
                with np.errstate(all="ignore"):
                    r = _PY_F64[op](_f64(a), _f64(b))
            else:
                r = _PY[op](a, b)
        except ArithmeticError as ex:  # integer division by zero
            raise CompileError(f"the constant expression {_num(a)} {node.op} {_num(b)} has no value: {ex}",
                               node.loc) from None
        r = r.item() if isinstance(r, np.generic) else r
    if r is None or (isinstance(r, int) and not isinstance(r, bool) and not
                     I64_RANGE[0] <= r <= I64_RANGE[1]):
        raise CompileError(f"the integer constant expression {_num(a)} {node.op} {_num(b)} overflows i64",
                           node.loc, ["for a floating-point constant, write one operand as a float "
                                      "(2.0 ** 100)"])
    return r


def _num(x) -> str:
    text = repr(x)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


def _f64(x) -> np.float64:
    try:
        return np.float64(x)
    except OverflowError:             # an integer beyond the largest f64
        return np.float64(np.inf if x > 0 else -np.inf)


_PY_F64 = dict(_PY, div=lambda a, b: a / b)


class Scope:
    def __init__(self, lowering, e: Emitter, env: dict, vars=(), runtime_dims=False):
        self.low = lowering
        self.e = e
        self.env = env
        self.lets = []                # (name, Value) of this function's own bindings
        self.vars = set(vars)         # names declared with var: they may be assigned again
        self.runtime_dims = runtime_dims   # a symbolic dimension as a number is read at run time
        self.assigned = {}            # var name -> where it was last assigned in this scope

    # -- names

    def lookup(self, node: A.Name):
        name = node.id
        if name in self.env:
            return self.env[name]
        found = self.low.lookup(name)
        if found is not None:
            return found
        candidates = list(self.env) + self.low.visible_names()
        close = difflib.get_close_matches(name, candidates, n=1)
        raise CompileError(f"unknown name '{name}'", node.loc,
                           [f"did you mean '{close[0]}'?"] if close else ())

    # -- expressions

    def expr(self, node):
        low = self.low
        if low.depth >= MAX_NESTING:
            raise CompileError(f"expression nested too deeply (more than {MAX_NESTING} levels, inlined "
                               "calls included)", node.loc,
                               ["give inner parts names with let"])
        low.depth += 1
        saved, self.e.loc = self.e.loc, node.loc
        try:
            return getattr(self, "x_" + type(node).__name__)(node)
        except ShapeError as ex:
            raise CompileError(str(ex), node.loc) from None
        finally:
            self.e.loc = saved
            low.depth -= 1

    def value(self, node, dtype=None) -> Value:
        """An expression that must be one array value (numbers become constants)."""
        v = self.expr(node)
        return self.as_value(v, node, dtype)

    def as_value(self, v, node, dtype=None) -> Value:
        if isinstance(v, Value):
            return v
        if isinstance(v, DimRef):
            v = self.dim_number(v, node)
        try:
            if isinstance(v, np.ndarray):
                return self.e.array(v, dtype or ("f64" if v.dtype.kind == "f" else
                                                 "bool" if v.dtype.kind == "b" else "i64"))
            if isinstance(v, (bool, int, float)):
                return self.e.const(v, dtype or literal_dtype(v))
        except ShapeError as ex:          # a number that does not fit the type asked for
            raise CompileError(str(ex), node.loc) from None
        raise CompileError(f"expected an array value, got {self.describe(v)}", node.loc)

    def dim_number(self, d: DimRef, node):
        if isinstance(d.value, int):
            return d.value
        if self.runtime_dims:
            v = self.dim_value(d.value)
            if v is not None:
                return v
        raise CompileError(f"the symbolic dimension {d.name} cannot be used as a number here", node.loc,
                           ["use it in a shape, or pass the number as a parameter"])

    def const(self, node, kinds=(int,), what="a constant integer"):
        v = self.expr(node)
        if isinstance(v, DimRef) and int in kinds:
            v = self.dim_number(v, node)
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise CompileError(f"expected {what}, got {self.describe(v)}", node.loc)
        return v

    @staticmethod
    def describe(v) -> str:
        if isinstance(v, Value):
            return f"a value of type {v.type}"
        if isinstance(v, FnValue):
            return f"the function {v.name}"
        if isinstance(v, tuple):
            return f"a tuple of {len(v)}"
        if isinstance(v, DType):
            return f"the type {v.name}"
        if isinstance(v, DimRef):
            return f"the dimension {v.name}"
        if isinstance(v, RecordValue):
            return f"a record of type {v.struct}"
        return repr(v.tolist() if isinstance(v, np.ndarray) else v)

    def x_Num(self, node):
        return node.value

    def x_Bool(self, node):
        return node.value

    def x_Str(self, node):
        return node.value

    def x_Name(self, node):
        return self.lookup(node)

    def x_Attr(self, node):
        v = self.expr(node.value)
        if not isinstance(v, RecordValue):
            raise CompileError(f"`.{node.name}` reads a field of a record, but this is {self.describe(v)}",
                               node.loc)
        x = v.get(node.name)
        if x is None:
            close = difflib.get_close_matches(node.name, v.names, n=1)
            raise CompileError(f"{v.struct} has no field '{node.name}'", node.loc,
                               [f"did you mean '{close[0]}'?" if close else f"its fields: {', '.join(v.names)}"])
        return x

    def x_Record(self, node):
        st = self.low.structs.get(node.name)
        if st is None:
            close = difflib.get_close_matches(node.name, list(self.low.structs), n=1)
            raise CompileError(f"unknown struct '{node.name}'", node.loc,
                               [f"did you mean '{close[0]}'?"] if close else ())
        given = {}
        for name, value, loc in node.fields:
            if name in given:
                raise CompileError(f"field '{name}' is given twice", loc)
            if name not in st.names:
                raise CompileError(f"{st.name} has no field '{name}'", loc, [f"its fields: {', '.join(st.names)}"])
            given[name] = (value, loc)
        missing = [n for n in st.names if n not in given]
        if missing:
            raise CompileError(f"{st.name} needs the field(s) {', '.join(missing)}", node.loc)
        dims, vals = {}, []
        for name, wdims, wdtype in st.fields:
            value, loc = given[name]
            x = self.value(value, wdtype)
            if not R.fits(x, wdims, wdtype, dims):
                raise CompileError(f"field {name} of {st.name} is {type_str(wdims, wdtype)}, got {x.type}",
                                   value.loc)
            vals.append(x)
        return RecordValue(st.name, st.names, tuple(vals))

    def x_Tuple(self, node):
        return tuple(self.expr(i) for i in node.items)

    def x_List(self, node):
        items = [self.expr(i) for i in node.items]
        if all(is_const(i) for i in items):
            try:
                arr = np.array(items)
            except ValueError:
                raise CompileError("array literal rows differ in length", node.loc) from None
            except OverflowError:
                arr = np.array([], object)
            if arr.dtype == object and all(isinstance(i, int) for i in arr.ravel()):
                raise CompileError("an integer literal in this array is out of range for i64", node.loc)
            if arr.dtype.kind not in "biuf":
                raise CompileError("array literal values must be numbers within the range of "
                                   "i64 or f64", node.loc)
            return arr
        return items

    def x_UnOp(self, node):
        x = self.expr(node.operand)
        if node.op == "-":
            if is_const(x) and not isinstance(x, bool):
                return -x
            return self.e.neg(self.as_value(x, node.operand))
        if isinstance(x, bool):
            return not x
        return self.e.not_(self.as_value(x, node.operand))

    def x_BinOp(self, node):
        # a chain a + b + c ... nests to the left: walked with a loop, its length costs no stack
        spine = [node]
        while isinstance(spine[-1].left, A.BinOp):
            spine.append(spine[-1].left)
        a = self.expr(spine[-1].left)
        for n in reversed(spine):
            saved, self.e.loc = self.e.loc, n.loc
            try:
                a = self.binop(n, a, self.expr(n.right))
            except ShapeError as ex:
                raise CompileError(str(ex), n.loc) from None
            finally:
                self.e.loc = saved
        return a

    def binop(self, node, a, b):
        a = self.dim_number(a, node.left) if isinstance(a, DimRef) else a
        b = self.dim_number(b, node.right) if isinstance(b, DimRef) else b
        if node.op == "@":
            return self.matmul(self.as_value(a, node.left), self.as_value(b, node.right))
        op = _binop_name(node.op)
        for x, n in ((a, node.left), (b, node.right)):
            if not (isinstance(x, Value) or is_const(x)):
                raise CompileError(f"`{node.op}` needs array values, got {self.describe(x)}", n.loc)
        if op == "div" and any(isinstance(x, Value) and x.dtype in INT_RANGE for x in (a, b)):
            raise CompileError("`/` is not defined for integers", node.loc,
                               ["use // for floor division, or cast to f32 or f64 for true division"])
        if isinstance(a, (bool, int, float)) and isinstance(b, (bool, int, float)) and \
                (op in _PY or op == "div"):
            return _fold(node, op, a, b)
        # a number or array literal takes an integer operand's dtype, which it must fit: made a
        # value here, so an error points at the literal rather than at the operator
        if isinstance(a, Value) and a.dtype in INT_RANGE and not isinstance(b, Value):
            b = self.as_value(b, node.right, a.dtype)
        elif isinstance(b, Value) and b.dtype in INT_RANGE and not isinstance(a, Value):
            a = self.as_value(a, node.left, b.dtype)
        return self.e.emit(op, a, b)

    def matmul(self, a: Value, b: Value) -> Value:
        if not a.shape or not b.shape:
            raise ShapeError(f"@: cannot multiply {a.type} by {b.type} (use * for scalars)")
        return matmul_of(self.e, a, b)

    def x_Index(self, node):
        x = self.value(node.value)
        # None adds a unit axis; an integer array gathers along its axis (take); the rest are
        # slices and scalar indices, constant or run-time
        subs, written = [], []        # subs: (subscript, its value or None for a slice)
        for s in node.subs:
            if isinstance(s, A.Name) and s.id == "None" and "None" not in self.env:
                written.append(("none", s))
                continue
            v = None if isinstance(s, A.Slice) else self.expr(s)
            if isinstance(v, (list, np.ndarray)) or is_index_array(v):
                v = self.as_value(v if not isinstance(v, list) else np.array(v), s, "i64")
                written.append(("array", s))
            else:
                written.append(("slice" if v is None else "int", s))
            subs.append((s, v))
        arrays = [k for k, (_, v) in enumerate(subs) if is_index_array(v)]
        if len(arrays) > 1:
            raise CompileError("only one integer-array index per subscript; use take for the others",
                               subs[arrays[1]][0].loc)
        kinds = [w for w, _ in written if w != "none"]
        if arrays and "int" in kinds:
            adv = [k for k, w in enumerate(kinds) if w in ("int", "array")]
            if adv != list(range(adv[0], adv[-1] + 1)):
                raise CompileError("an integer-array index and a scalar index apart from it (NumPy "
                                   "would move the gathered axes first): index in two steps",
                                   subs[arrays[0]][0].loc)
        if len(subs) > len(x.shape):
            raise CompileError(f"too many indices for {x.type}", node.loc)
        gather = None
        if arrays:
            k = arrays[0]
            s, v = subs[k]
            gather = (k, checked_index(self, node, None, v, x, k, loc=s.loc))
            subs[k] = (A.Slice(s.loc, None, None, None), None)
        out = self._basic_index(x, subs)
        if gather is not None:
            k, idx = gather
            axis = k - sum(1 for _, v in subs[:k] if v is not None)
            out = self.e.take(out, idx, axis=axis)
        nones, pos = [], 0
        for w, s in written:
            if w == "none":
                nones.append(pos)
            pos += {"none": 1, "slice": 1, "int": 0}.get(w, len(gather[1].shape) if gather else 0)
        if nones:
            shape = list(out.shape)
            for p in nones:
                shape.insert(p, 1)
            out = self.e.reshape(out, shape=tuple(shape))
        return out

    def _basic_index(self, x, subs):
        spec, dyn = [], []            # dyn: (axis of x, start Value, size or None for an index)
        for k, (s, v) in enumerate(subs):
            if isinstance(s, A.Slice):
                dynamic = self._dyn_slice(s, k, x, dyn)
                if dynamic:
                    spec.append(("s", None, None, None))
                    continue
                spec.append(("s",) + tuple(None if p is None else self.const(p) for p in
                                           (s.start, s.stop, s.step)))
                if spec[-1][3] is not None and spec[-1][3] <= 0:
                    raise CompileError("slice step must be positive", s.loc)
            else:
                if isinstance(v, DimRef):
                    v = self.dim_number(v, s)
                if isinstance(v, Value):
                    dyn.append((k, self._run_index(v, s), None, s))
                    spec.append(("s", None, None, None))
                else:
                    if isinstance(v, bool) or not isinstance(v, int):
                        raise CompileError(f"expected a constant integer index, got {self.describe(v)}", s.loc)
                    spec.append(("i", v))
        out = self.e.slice(x, spec=tuple(spec)) if any(p != ("s", None, None, None) for p in spec) else x
        # the axes static indices removed come before the run-time ones: count them off
        removed = lambda k: sum(1 for p in spec[:k] if p[0] == "i")
        for k, start, size, sub in reversed(dyn):
            axis = k - removed(k)
            d = x.shape[k] if k < len(x.shape) else None
            if d is None:
                raise CompileError(f"too many indices for {x.type}", sub.loc)
            n = 1 if size is None else size
            hi = d - n + 1 if isinstance(d, int) else dim_add(d, 1 - n)
            if isinstance(hi, int) and hi <= 0:
                raise CompileError(f"a slice of {n} elements does not fit axis {k} of {x.type}", sub.loc)
            what = "index {value}" if size is None else f"slice {{value}}:{{value}}+{n}"
            start = self.e.check_range(start, lo=0, hi=hi, error="IndexError",
                                       message=f"{what} is out of range for axis {k} (size {d}) at {sub.loc}")
            out = self.e.dyn_slice(out, start, axis=axis, size=n, keep=size is not None)
        return out

    def _run_index(self, v: Value, node) -> Value:
        if v.shape != () or v.dtype not in ("i32", "i64"):
            raise CompileError(f"an index must be an integer scalar, got {v.type}", node.loc)
        return v if v.dtype == "i64" else self.e.cast(v, dtype="i64")

    def _dyn_slice(self, s: A.Slice, k, x, dyn) -> bool:
        """A slice whose start is a run-time value, x[i : i + n] (n a constant): appended to dyn."""
        if s.start is None or s.stop is None:
            return False
        start = self.expr(s.start)
        if isinstance(start, DimRef) and self.runtime_dims:
            start = self.dim_number(start, s.start)
        if not isinstance(start, Value):
            return False
        if s.step is not None:
            raise CompileError("a slice with a run-time start takes no step", s.step.loc)
        stop = s.stop
        size = None
        if isinstance(stop, A.BinOp) and stop.op in "+-" and stop.left == s.start:
            size = self.const(stop.right, what="a constant slice length")
            size = size if stop.op == "+" else -size
        if size is None or size < 0:
            raise CompileError("a slice with a run-time start needs a constant length: write "
                               "x[i : i + n]", s.loc)
        dyn.append((k, self._run_index(start, s.start), size, s))
        return True

    def dim_value(self, d):
        """A symbolic dimension's size as an i64 Value, read from a value that has it."""
        sym, off = dim_parts(d)
        for v in [x for v in list(self.env.values()) for x in (v.values if isinstance(v, RecordValue) else (v,))]:
            if isinstance(v, Value):
                for k, vd in enumerate(v.shape):
                    if vd == sym:
                        n = self.e.numel(v, axes=(k,), dtype="i64")
                        return self.e.add(n, off) if off else n
        return None

    def x_Call(self, node):
        given = set()
        for k, _, loc in node.kwargs:
            if k in given:
                raise CompileError(f"keyword argument '{k}' is given twice", loc)
            given.add(k)
        # a transform or builtin name, unless the program binds that name itself
        name = node.func.id if isinstance(node.func, A.Name) else None
        if name is not None and name not in self.env and self.low.lookup(name, builtins=False) is None:
            if name in TRANSFORMS:
                return self.transform(node)
            if name in BUILTINS:
                return self.builtin(name, node)
        f = self.expr(node.func)
        if not isinstance(f, FnValue):
            raise CompileError(f"{self.describe(f)} is not a function", node.func.loc)
        if node.kwargs:
            raise CompileError(f"{f.name} takes no keyword arguments", node.kwargs[0][2])
        args = [self.expr(a) for a in node.args]
        out = self.low.call(f, args, node, self)
        return out[0] if len(out) == 1 and not self.low.returns_tuple(f) else out

    def transform(self, node):
        kind = node.func.id
        if not node.args:
            raise CompileError(f"{kind} needs a function to differentiate", node.loc)
        if len(node.args) > 1:
            raise CompileError(f"{kind} takes one function; name the values with wrt=",
                               node.args[1].loc)
        f = self.expr(node.args[0])
        if not isinstance(f, FnValue):
            raise CompileError(f"{kind} needs a function, got {self.describe(f)}", node.args[0].loc)
        if kind == "vmap":
            return self.vmap_transform(node, f)
        wrt, locs, ckpt, mode = (), (), 0, ""
        for name, value, loc in node.kwargs:
            if name == "mode" and kind == "jacobian":
                mode = self.expr(value)
                if not isinstance(mode, str) or mode not in ("forward", "reverse"):
                    raise CompileError(f'mode= takes "forward" or "reverse", got {self.describe(mode)}',
                                       value.loc)
                continue
            if name == "checkpoint" and kind in ("grad", "value_and_grad", "vjp"):
                v = self.expr(value)
                if v is True:
                    ckpt = -1
                elif v is False:
                    ckpt = 0
                elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
                    ckpt = v
                else:
                    raise CompileError("checkpoint= takes true, false or an interval of at least 1, "
                                       f"got {self.describe(v)}", value.loc)
                continue
            if name != "wrt":
                raise CompileError(f"{kind} has no argument '{name}'", loc,
                                   ["its arguments are wrt= and checkpoint=" if kind not in (
                                       "jvp", "jacobian", "hessian") else
                                    "its arguments are wrt= and mode=" if kind == "jacobian" else
                                    "its argument is wrt="])
            items = value.items if isinstance(value, A.Tuple) else [value]
            for it in items:
                if not isinstance(it, A.Name) and not (isinstance(it, A.Attr) and isinstance(it.value, A.Name)):
                    raise CompileError("wrt names parameters or let bindings of the function", it.loc)
            name = lambda it: it.id if isinstance(it, A.Name) else f"{it.value.id}.{it.name}"
            wrt, locs = tuple(name(i) for i in items), tuple(i.loc for i in items)
            for i, it in enumerate(items):
                if wrt[i] in wrt[:i]:
                    raise CompileError(f"wrt names {wrt[i]} twice", it.loc)
        return Derived(kind, f, wrt, locs, node.loc, node.args[0].loc,
                       f"{kind}({f.name})", ckpt, mode=mode)

    def vmap_transform(self, node, f):
        """vmap(f, axes=...): axes 0 (map every parameter), or a tuple of 0 and None."""
        axes, where = 0, node.loc
        for name, value, loc in node.kwargs:
            if name != "axes":
                raise CompileError(f"vmap has no argument '{name}'", loc, ["its argument is axes="])
            where = value.loc
            items = value.items if isinstance(value, A.Tuple) else None
            axes = tuple(self._vmap_axis(i) for i in items) if items is not None else self._vmap_axis(value)
        return Derived("vmap", f, (), (), node.loc, node.args[0].loc, f"vmap({f.name})", axes=axes,
                       axes_loc=where)

    def _vmap_axis(self, item):
        if isinstance(item, A.Name) and item.id == "None":
            return None
        v = self.expr(item)
        if isinstance(v, bool) or not isinstance(v, int) or v != 0:
            raise CompileError(f"vmap maps over axis 0 or None (not mapped), got {self.describe(v)}", item.loc,
                               ["move the axis to the front with transpose first"] if isinstance(v, int) else ())
        return 0

    def builtin(self, name, node):
        fn = BUILTINS[name]
        args = [self.expr(a) for a in node.args]
        kwargs = {k: self.expr(v) for k, v, _ in node.kwargs}
        try:
            inspect.signature(fn).bind(self, node, *args, **kwargs)
        except TypeError as ex:
            raise CompileError(f"{name}(): {ex}", node.loc) from None
        self.e.loc = node.loc
        return fn(self, node, *args, **kwargs)

    # -- statements

    def statement(self, stmt):
        from .flow import statement
        statement(self, stmt)

    def let(self, stmt: A.Let):
        where = stmt.pattern or stmt.loc
        named = [t for t in A.pattern_names(stmt.targets) if t != "_"]
        twice = sorted({t for t in named if named.count(t) > 1})
        if twice:
            raise CompileError(f"'{twice[0]}' is bound twice in one pattern", where)
        self._bind(stmt.targets, self.expr(stmt.value), where, True)

    def _bind(self, targets, v, where, whole):
        """Names (and nested patterns) bound to a value; a single name takes the whole value."""
        if whole and len(targets) == 1:
            vals = [v]
        elif isinstance(v, tuple) and len(v) == len(targets):
            vals = list(v)
        else:
            got = f"{len(v)} values" if isinstance(v, tuple) else "one value, not a tuple,"
            raise CompileError(f"cannot unpack {got} into {len(targets)} names", where)
        for name, val in zip(targets, vals):
            if isinstance(name, list):
                self._bind(name, val, where, False)
                continue
            if name == "_":
                continue                # the part not wanted: dead code elimination drops it
            self.env[name] = val
            if isinstance(val, Value):
                self.lets.append((name, val))
            elif isinstance(val, RecordValue):
                self.lets += [(f"{name}.{f}", x) for f, x in zip(val.names, val.values)]


# ---- the module


@dataclass
class Module:
    """A lowered program: one graph per exported function, in source order."""
    file: str
    source: str
    graphs: dict = field(default_factory=dict)
    locs: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)      # name -> (kind, base Graph, wrt names)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)


@lru_cache(maxsize=None)
def _prelude() -> A.Program:
    """The losses written in the language (frontend/prelude.ad), parsed once per process."""
    return parse(prelude_source(), PRELUDE)


class Lowering(Transforms):
    def __init__(self, program: A.Program, diagnostics: Diagnostics):
        self.diag = diagnostics
        self.globals = {}
        self.prelude = {f.name: UserFn(f, self) for f in _prelude().items}
        self.cache = {}
        self.stack = []
        self.program = program
        self.depth = 0                # nesting of expressions and inlined calls being lowered
        self.structs = {}             # name -> records.Struct
        self.rules = {}               # function name -> {"vjp": UserFn, "jvp": UserFn}
        self.plain = set()            # functions whose own rules are being lowered: a call runs the body

    def lookup(self, name, builtins=True):
        if name in self.globals:
            return self.globals[name]
        if name in self.prelude:
            return self.prelude[name]
        if builtins and name in DTYPES:
            return DType(name)
        return None

    def visible_names(self):
        return list(self.globals) + list(self.prelude) + list(BUILTINS) + list(TRANSFORMS)

    def returns_tuple(self, f: FnValue) -> bool:
        if isinstance(f, UserFn):
            return f.defn.ret_tuple or any(len(r.values) > 1 for r in f.defn.body if isinstance(r, A.Return))
        if f.kind == "vmap":
            return self.returns_tuple(f.base)
        return f.kind in ("value_and_grad", "jvp") or len(self.wrt_of(f)) > 1


    # -- instantiating functions at argument types

    def instantiate(self, f: FnValue, types, node, plain=False) -> Graph:
        """f's graph at argument types (None: the declared ones); plain: a function with rules
        of its own as its body alone, else one `custom` node holding body and rules."""
        plain = plain or f in self.plain or not self.has_rules(f)
        # keyed on f itself, which the key keeps alive: a function value freed after its call
        # (grad(l)(x)) must not leave its graph to a later function at the same id()
        key = (f, tuple(types) if types is not None else None, plain)
        if key in self.cache:
            return self.cache[key]
        if not plain:
            g = self.cache[key] = self._ruled_graph(f, types, node)
            return g
        if f in self.stack:
            raise CompileError(f"recursive call to {f.name} is not supported", node.loc)
        self.stack.append(f)
        try:
            g = self._user(f, types, node) if isinstance(f, UserFn) else self._derived(f, types, node)
        finally:
            self.stack.pop()
        self.cache[key] = g
        return g

    def declared_types(self, f: UserFn) -> list:
        d = f.defn
        if not f.typed:
            raise CompileError(f"{d.name} has parameters without types", d.loc,
                               ["give every parameter a type to compile it on its own"])
        out = []
        for p in d.params:
            st = self.structs.get(p.type.dtype)
            out.append(RecordType(st.name, st.names, tuple((dims, dt) for _, dims, dt in st.fields))
                       if st is not None else (p.type.dims, p.type.dtype))
        return out

    def _user(self, f: UserFn, types, node) -> Graph:
        d = f.defn
        if types is None:
            types = self.declared_types(f)
        args = [RecordValue(t.struct, t.names, tuple(fresh(sh, dt) for sh, dt in t.types))
                if isinstance(t, RecordType) else fresh(*t) for t in types]
        e = Emitter()
        outs, lets = self.body(f, args, e, node)
        names = []
        for p, a in zip(d.params, args):
            names += [f"{p.name}.{k}" for k in a.names] if isinstance(a, RecordValue) else [p.name]
        layout = (tuple(R.entry(a) for a in args), tuple(R.entry(o) for o in outs))
        return Graph(d.name, tuple(R.flatten(args)), tuple(e.nodes), tuple(R.flatten(outs)), tuple(names),
                     tuple(lets), self.returns_tuple(f), layout if R.has_records(layout) else ())

    # -- functions with derivative rules of their own (compiler/rules.py)

    def bind(self, d: A.FnDef, args, node):
        """Check call arguments against a function's declared types; bind its dimension names."""
        dims = {}
        for p, a in zip(d.params, args):
            st = self.structs.get(p.type.dtype) if p.type is not None else None
            if st is not None:
                R.check_record(st, a, f"argument '{p.name}' of {d.name}", node.loc, dims)
                continue
            if isinstance(a, RecordValue) and p.type is not None:
                raise CompileError(f"argument '{p.name}' of {d.name}: expected "
                                   f"{type_str(p.type.dims, p.type.dtype)}, got a record of type {a.struct}",
                                   node.loc)
            if p.type is None or not isinstance(a, Value):
                continue
            want = p.type
            ok = a.dtype == want.dtype and len(a.shape) == len(want.dims)
            for wd, ad in zip(want.dims, a.shape) if ok else ():
                if isinstance(wd, int):
                    ok = ok and wd == ad
                else:
                    ok = ok and dims.setdefault(wd, ad) == ad
            if not ok:
                raise CompileError(f"argument '{p.name}' of {d.name}: expected "
                                   f"{type_str(want.dims, want.dtype)}, got {a.type}", node.loc)
        for p in d.params:
            st = self.structs.get(p.type.dtype) if p.type is not None else None
            decl = [dims for _, dims, _ in st.fields] if st is not None else \
                [p.type.dims if p.type is not None else ()]
            for wd in (x for ds in decl for x in ds):
                if isinstance(wd, str):
                    dims.setdefault(wd, wd)
        return dims

    def body(self, f: UserFn, args, e: Emitter, node):
        """Lower f's body with its parameters bound to args; returns (outputs, let bindings)."""
        d = f.defn
        dims = self.bind(d, args, node)
        env = {name: DimRef(name, v) for name, v in dims.items()}
        env.update({p.name: a for p, a in zip(d.params, args)})
        scope = Scope(self, e, env)
        for stmt in d.body:
            if isinstance(stmt, A.Return):
                vals = [scope.expr(v) for v in stmt.values]
                if len(vals) == 1 and isinstance(vals[0], tuple):
                    vals = list(vals[0])
                return self.check_return(d, scope, stmt, vals, dims), scope.lets
            scope.statement(stmt)
        raise CompileError(f"{d.name} has no return statement", d.loc)

    def check_return(self, d, scope, stmt, vals, dims):
        ret = d.ret
        if ret is not None and len(ret) != len(vals):
            raise CompileError(f"{d.name} is declared to return {len(ret)} value(s), but returns "
                               f"{len(vals)}", stmt.loc)
        outs = []
        for i, v in enumerate(vals):
            want = ret[i] if ret is not None else None
            node = stmt.values[i] if i < len(stmt.values) else stmt
            st = self.structs.get(want.dtype) if want is not None else None
            if st is not None:
                R.check_record(st, v, f"{d.name} returns", node.loc, dict(dims))
                outs.append(v)
                continue
            if isinstance(v, RecordValue):
                if want is not None:
                    raise CompileError(f"{d.name} returns a record of type {v.struct}, but is declared to "
                                       f"return {type_str(want.dims, want.dtype)}", node.loc)
                outs.append(v)
                continue
            v = scope.as_value(v, node, want.dtype if want is not None else None)
            if want is not None:
                shape = tuple(self._bound(x, dims) for x in want.dims)
                if v.dtype != want.dtype or len(v.shape) != len(shape) or \
                        any(a != b for a, b in zip(v.shape, shape)):
                    raise CompileError(f"{d.name} returns {v.type}, but is declared to return "
                                       f"{type_str(want.dims, want.dtype)}", node.loc)
            outs.append(v)
        return outs

    @staticmethod
    def _bound(d, dims):
        """A declared dimension with the call's sizes put in: N-1 with N bound to 5 is 4."""
        if isinstance(d, int):
            return d
        sym, off = dim_parts(d)
        size = dims.get(sym, sym)
        return size + off if isinstance(size, int) else dim_add(size, off)

    def call(self, f: FnValue, args, node: A.Call, scope: Scope):
        arity = self._arity(f) if isinstance(f, UserFn) else None
        if isinstance(f, UserFn):
            if len(args) != arity:
                raise CompileError(f"{f.name} takes {arity} argument(s), but {len(args)} were given", node.loc)
            if f in self.stack:
                raise CompileError(f"recursive call to {f.name} is not supported", node.loc)
            vals = []
            for p, a, n in zip(f.defn.params, args, node.args):
                if isinstance(a, FnValue) or (p.type is None and not isinstance(a, (tuple, list))) or \
                        (p.type is not None and p.type.dtype in self.structs):
                    vals.append(a)
                else:
                    vals.append(scope.as_value(a, n, p.type.dtype if p.type is not None else None))
            if self.has_rules(f) and f not in self.plain:
                return self._call_ruled(f, vals, node, scope)
            self.stack.append(f)
            saved = scope.e.loc
            try:
                outs, _ = self.body(f, vals, scope.e, node)
            except CompileError as ex:
                raise called_from(ex, f, node) from None
            finally:
                self.stack.pop()
                scope.e.loc = saved
            return tuple(outs)
        need = self._nparams(f)
        if need is not None and len(args) != need:
            raise CompileError(f"{f.name} takes {need} argument(s), but {len(args)} were given", node.loc)
        vals = [a if isinstance(a, RecordValue) else scope.as_value(a, n) for a, n in zip(args, node.args)]
        try:
            g = self.instantiate(f, [R.type_of(v) for v in vals], node)
        except CompileError as ex:
            raise called_from(ex, f, node) from None
        if len(vals) != len(R.param_entries(g)):
            raise CompileError(f"{f.name} takes {len(R.param_entries(g))} argument(s), but {len(args)} were given",
                               node.loc)
        for (pname, en, ps), v, n in zip(R.user_params(g), vals, node.args):
            if R.entry(v) != en:
                want = f"a record of type {en[0]}" if en is not None else ps[0].type
                raise CompileError(f"argument of {f.name}: expected {want}, got {scope.describe(v)}", n.loc)
            for p, x in zip(ps, R.flatten([v])):
                if p.shape != x.shape or p.dtype != x.dtype:
                    raise CompileError(f"argument of {f.name}: expected {p.type}, got {x.type}", n.loc)
        return tuple(R.group(list(scope.e.call(g, *R.flatten(vals))), R.output_entries(g)))


    # -- the module

    def module(self, file, source) -> Module:
        mod = Module(file, source, diagnostics=self.diag)
        seen = {}
        # structs and rules first: a function anywhere in the file may use them
        for item in self.program.items:
            if isinstance(item, A.StructDef):
                self._struct(item, seen)
        fns = {i.name: i for i in self.program.items if isinstance(i, A.FnDef)}
        for item in self.program.items:
            if isinstance(item, A.RuleDef):
                self._rule_def(item, fns)
        for item in self.program.items:
            if isinstance(item, (A.StructDef, A.RuleDef)):
                continue
            names = [item.name] if isinstance(item, A.FnDef) else A.pattern_names(item.targets)
            for name in names:
                if name in seen:
                    raise CompileError(f"'{name}' is defined twice", item.loc,
                                       [f"first defined at {seen[name]}"])
                if name in BUILTINS or name in TRANSFORMS or name in DTYPES:
                    raise CompileError(f"'{name}' is a built-in name; choose another", item.loc)
                seen[name] = item.loc
            if isinstance(item, A.FnDef):
                self._check_fn(item)
                f = UserFn(item, self)
                self.globals[item.name] = f
                if f.typed:
                    self._export(mod, item.name, f, item)
                continue
            scope = Scope(self, Emitter(), {})
            v = scope.expr(item.value)
            if len(item.targets) != 1:
                raise CompileError("a top-level let binds one name", item.loc)
            if isinstance(v, Derived):
                v.name = item.targets[0]
                self.globals[v.name] = v
                self._export(mod, v.name, v, item)
            elif is_const(v):
                self.globals[item.targets[0]] = v
            else:
                raise CompileError(f"a top-level let binds a derived function or a constant, not "
                                   f"{scope.describe(v)}", item.value.loc)
        return mod

    def _struct(self, item: A.StructDef, seen):
        if item.name in seen:
            raise CompileError(f"'{item.name}' is defined twice", item.loc, [f"first defined at {seen[item.name]}"])
        if item.name in BUILTINS or item.name in TRANSFORMS or item.name in DTYPES:
            raise CompileError(f"'{item.name}' is a built-in name; choose another", item.loc)
        seen[item.name] = item.loc
        if keyword.iskeyword(item.name):
            raise CompileError(f"struct '{item.name}': a record reaches Python as a named tuple, and "
                               f"'{item.name}' is a Python keyword", item.loc)
        fields = []
        for fd in item.fields:
            if fd.name in [f[0] for f in fields]:
                raise CompileError(f"field '{fd.name}' appears twice in {item.name}", fd.loc)
            if fd.name.startswith("_") or keyword.iskeyword(fd.name):
                raise CompileError(f"field '{fd.name}' of {item.name}: a record reaches Python as a named "
                                   "tuple, whose field names cannot start with _ or be Python keywords", fd.loc)
            t = fd.type
            if t.dtype not in DTYPES:
                hint = ["records do not nest: a field is an array"] if any(
                    isinstance(i, A.StructDef) and i.name == t.dtype for i in self.program.items) else \
                    [f"the types are {', '.join(DTYPES)}"]
                raise CompileError(f"field '{fd.name}' of {item.name} has the type '{t.dtype}'", t.loc, hint)
            for dim in t.dims:
                if isinstance(dim, str) and not dim.isidentifier():
                    raise CompileError(f"field '{fd.name}' has dimension {dim}: a field's dimensions are "
                                       "numbers or names", t.loc)
            fields.append((fd.name, t.dims, t.dtype))
        self.structs[item.name] = Struct(item.name, tuple(fields), item.loc)

    def _check_fn(self, d: A.FnDef):
        """What a function's definition alone gets wrong: parameters, types, unreachable statements."""
        for stmt, after in zip(d.body, d.body[1:]):
            if isinstance(stmt, A.Return):
                raise CompileError(f"statement after return: {d.name} never runs it", after.loc,
                                   [("the function returns here", stmt.loc)])
        seen = set()
        for p in d.params:
            if p.name in seen:
                raise CompileError(f"parameter '{p.name}' appears twice in {d.name}", p.loc)
            seen.add(p.name)
        for p in d.params:
            for dim in p.type.dims if p.type is not None else ():
                if isinstance(dim, str) and not dim.isidentifier():
                    raise CompileError(f"parameter '{p.name}' has dimension {dim}: a parameter's "
                                       "dimensions are numbers or names", p.type.loc,
                                       ["derived dimensions such as N-1 belong in the result type"])
        for t in [p.type for p in d.params if p.type is not None] + list(d.ret or []):
            if t.dtype in self.structs:
                if t.dims:
                    raise CompileError(f"the record type {t.dtype} takes no dimensions", t.loc,
                                       ["its fields' dimensions are names shared with the other parameters"])
                continue
            if t.dtype not in DTYPES:
                close = difflib.get_close_matches(t.dtype, list(DTYPES) + list(self.structs), n=1)
                raise CompileError(f"unknown type '{t.dtype}'", t.loc,
                                   [f"did you mean '{close[0]}'?" if close else
                                    f"the types are {', '.join(DTYPES)} and the structs of the file"])

    def _export(self, mod, name, f, item):
        g = self.instantiate(f, None, item)
        if not name.startswith("_"):
            mod.graphs[name] = g
            mod.locs[name] = item.loc
            if isinstance(f, Derived) and f.kind in AUTODIFF:
                mod.derived[name] = (f.kind, self.instantiate(f.base, None, item), self.wrt_of(f))


def lower_program(program: A.Program, file: str, source: str) -> Module:
    return Lowering(program, Diagnostics()).module(file, source)
