"""Random well-typed .ad programs with their derivative transforms, and a NumPy oracle of their values.

A generated program is a function body (a few `let`s of random expressions over typed
parameters), emitted twice: `P_h` returns one or two of its values (for vjp and jvp) and `P_f`
reduces them to a scalar (for grad, value_and_grad and the second-order transforms). Types,
shapes and value intervals are tracked while generating (see optable.py), so every program
is meant to compile and to stay inside the domains of its ops at inputs in [-1.5, 1.5].
Generation uses the `random` module, seeded once per program, so a seed names a program.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import numpy as np

from .expr import INPUT, OPS, SYMS, Ex, dim_str, dim_val, mk, num, ref, text, type_str, walk
from .optable import HOOKS, INT_FORMS, LOOPS, RULED

PARAM_NAMES = ("x", "y", "z", "w")
ALIASES = ("ref",)
MAX_PARAMS = 4


@dataclass
class Program:
    prefix: str
    dtype: str
    params: list = field(default_factory=list)      # (name, shape, dtype, classes or None)
    lets: list = field(default_factory=list)        # (name, Ex)
    outs: list = field(default_factory=list)        # names of lets P_h returns
    loss: Ex | None = None                          # P_f's scalar, over refs to outs
    transforms: list = field(default_factory=list)  # (exported name, kind, wrt names, extra)
    annotate: bool = True

    def float_params(self):
        return [p[0] for p in self.params if p[2] != "i64"]

    def hooks(self) -> set:
        return {e.attrs["fn"] for _, x in self.lets for e in walk(x) if e.op == "hook"}

    def loops(self) -> set:
        return {e.op for _, x in self.lets for e in walk(x) if e.op in LOOPS}

    def has(self, op: str) -> bool:
        return any(e.op == op for _, x in self.lets for e in walk(x))

    def functions(self) -> str:
        """The program's own functions and transforms, without the hook helpers."""
        pre = self.prefix
        sig = ", ".join(f"{n}: {type_str(s, d)}" for n, s, d, _ in self.params)
        body = "".join(f"    let {n} = {text(e)}\n" for n, e in self.lets)
        lets = dict(self.lets)
        h_type = [type_str(lets[o].shape, lets[o].dtype) for o in self.outs]
        ret = (f" -> {h_type[0]}" if len(h_type) == 1 else f" -> ({', '.join(h_type)})") if self.annotate else ""
        lines = [f"fn {pre}_h({sig}){ret} {{\n{body}    return {', '.join(self.outs)}\n}}",
                 f"fn {pre}_f({sig}){' -> ' + self.dtype if self.annotate else ''} {{\n{body}"
                 f"    return {text(self.loss)}\n}}"]
        for name, kind, wrt, extra in self.transforms:
            w = wrt[0] if len(wrt) == 1 else "(" + ", ".join(wrt) + ")"
            if kind == "gx":
                lines.append(f"let {name} = grad({pre}_f, wrt={w})")
            elif kind in ("grad", "value_and_grad"):
                lines.append(f"let {name} = {kind}({pre}_f, wrt={w})")
            elif kind in ("vjp", "jvp"):
                lines.append(f"let {name} = {kind}({pre}_h, wrt={w})")
            elif kind in ("jvp_grad", "vjp_grad"):
                lines.append(f"let {name} = {kind[:3]}(grad({pre}_f, wrt={w}), wrt={w})")
            elif kind == "grad_grad":
                lines.append(f"let {name} = grad(grad({pre}_f, wrt={w}), wrt={w})")
            elif kind == "inline" and extra == "destructure":
                args = ", ".join(p[0] for p in self.params)
                lines.append(f"fn {name}({sig}) -> {self.dtype} {{\n"
                             f"    let (_, g) = value_and_grad({pre}_f, wrt={w})({args})\n"
                             f"    return sum(g ** 2)\n}}")
                lines.append(f"let {name}_g = grad({name}, wrt={w})")
            elif kind == "inline":
                args = ", ".join(p[0] for p in self.params)
                lines.append(f"fn {name}({sig}) -> {self.dtype} {{\n"
                             f"    return sum(grad({pre}_f, wrt={w})({args}) ** 2)\n}}")
                lines.append(f"let {name}_g = grad({name}, wrt={w})")
        return "\n".join(lines) + "\n"


def source(programs) -> str:
    """One .ad module holding several programs and the hook, loop and ruled helpers they use."""
    hooks = sorted(set().union(*(p.hooks() for p in programs)))
    head = "".join(f"fn {h}(g) {{ return {HOOKS[h][0]} }}\n" for h in hooks)
    head += "".join(LOOPS[f][0] for f in sorted(set().union(*(p.loops() for p in programs))))
    used = {e.op for p in programs for _, x in p.lets for e in walk(x)}
    head += "".join(RULED[f][0] for f in sorted(used & set(RULED)))
    return head + "\n".join(p.functions() for p in programs)


class Gen:
    """Builds one program; the optable builders call back into it for operands."""

    def __init__(self, prefix: str, dtype: str):
        self.p = Program(prefix, dtype)
        self.pool: list[Ex] = []

    # ---- operands

    def new_dim(self, bound_only=False):
        """A fixed or symbolic dimension; bound_only: a symbolic one only where a parameter has it."""
        bound = {d for p in self.p.params for d in p[1] if not isinstance(d, int)}
        d = random.choice([1, 2, 3, 4, (SYMS[0], 0), (SYMS[0], 0), (SYMS[1], 0)])
        return d if not bound_only or isinstance(d, int) or d in bound else random.choice([2, 3])

    def param(self, shape, dtype=None, classes=None) -> Ex | None:
        names = [n for n in PARAM_NAMES if n not in {p[0] for p in self.p.params}]
        if dtype != "i64" and (len(self.p.float_params()) >= MAX_PARAMS or not names):
            return None
        if any(not isinstance(d, int) and d[1] != 0 for d in shape):
            return None
        name = names[0] if dtype != "i64" else f"lab{len(self.p.params)}"
        dtype = dtype or self.p.dtype
        self.p.params.append((name, tuple(shape), dtype, classes))
        e = ref(name, shape, dtype)
        if dtype != "i64":
            self.pool.append(e)
        return e

    def leaf(self) -> Ex:
        if self.pool and random.random() < 0.85:
            return random.choice(self.pool)
        return self.param(self.random_shape()) or random.choice(self.pool)

    def random_shape(self):
        rank = random.choice([0, 1, 1, 2, 2, 2, 3])
        return tuple(self.new_dim() for _ in range(rank))

    def of_shape(self, shape, dtype, depth) -> Ex:
        same = [e for e in self.pool if e.shape == tuple(shape) and e.dtype == dtype]
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1 and random.random() < 0.15:
            e = self.labels(shape, dtype)             # one_hot of integer labels
            if e is not None:
                return e
        if same and random.random() < 0.7:
            e = random.choice(same)
        else:
            e = self.param(shape) if dtype == self.p.dtype else None
            if e is None:
                e = self.constant(shape, dtype)
        if depth > 0 and random.random() < 0.4:
            e = mk(random.choice(["sin", "tanh", "sigmoid", "neg", "softplus"]), e) or e
        return e

    def constant(self, shape, dtype) -> Ex:
        if len(shape) == 1 and isinstance(shape[0], int) and random.random() < 0.5:
            vals = [round(random.uniform(-1.5, 1.5), 2) for _ in range(shape[0])]
            lit = mk("literal", values=vals, dtype=dtype)
            return lit if dtype == "f64" else mk("cast", lit, to=dtype)
        if any(not isinstance(d, int) and d[1] != 0 for d in shape):
            same = [e for e in self.pool if e.shape == tuple(shape) and e.dtype == dtype]
            return random.choice(same) if same else None
        bound = {d for p in self.p.params for d in p[1] if not isinstance(d, int)}
        if any(not isinstance(d, int) and d not in bound for d in shape):
            return None
        c = num(round(random.uniform(-1.5, 1.5), 2) or 0.5)
        if random.random() < 0.3:
            return mk("add", mk("fill", value=0, shape=tuple(shape), dtype=dtype), c)
        return mk("mul", mk("fill", value=1, shape=tuple(shape), dtype=dtype), c)

    def partner(self, a: Ex, depth, literal=True) -> Ex:
        """An operand that broadcasts with a."""
        if a is None:
            return num(2.0)
        if literal and random.random() < 0.2:
            return num(random.choice([2.0, 0.5, -1.0, 3.0, 1.5, 1]))
        s = list(a.shape)
        r = random.random()
        if r < 0.45 or not s:
            shape = s
        elif r < 0.6:
            shape = s[random.randint(1, len(s)):]
        elif r < 0.8:
            shape = [1 if random.random() < 0.5 else d for d in s]
        elif r < 0.9:
            shape = [self.new_dim()] + s
        else:
            shape = []
        e = self.of_shape(tuple(shape), a.dtype, depth)
        return e if e is not None else num(2.0)

    def labels(self, shape, dtype) -> Ex | None:
        lab = self.param(shape[:1], "i64", classes=shape[1])
        if lab is not None and random.random() < 0.6:
            lab = mk("int_label", lab, n=shape[1], form=random.choice(sorted(INT_FORMS)))
        return None if lab is None else mk("one_hot", lab, n=shape[1], dtype=dtype)

    def cond(self, a: Ex) -> Ex:
        c = mk(random.choice(["lt", "le", "gt", "ge", "ne", "eq"]), a, self.partner(a, 0))
        if c is not None and random.random() < 0.3:
            d = mk(random.choice(["lt", "gt"]), a, num(round(random.uniform(-1, 1), 2)))
            c = mk(random.choice(["and", "or"]), c, d) or c
        if c is not None and random.random() < 0.2:
            c = mk("not", c)
        return c

    # ---- domain repair

    def squash(self, a: Ex) -> Ex:
        if a is None or a.op == "num":
            return a
        return mk(random.choice(["tanh", "sin", "sigmoid"]), a) or a

    def fix(self, a: Ex, kind: str) -> Ex:
        if a is None:
            return None
        if a.op == "num":
            v = float(a.attrs["v"])
            return num({"pos": abs(v) + 0.5, "unit": 0.5, "prob": 0.3}[kind])
        if kind == "unit":
            return mk(random.choice(["tanh", "sin"]), a)
        if kind == "prob":
            return mk("sigmoid", mk("tanh", a))
        r = random.randrange(5)
        if r == 0:
            return mk("add", mk("softplus", a), num(0.1))
        if r == 1:
            return mk("exp", mk("tanh", a))
        if r == 2:
            return mk("add", mk("mul", a, a) if max(abs(a.lo), abs(a.hi)) < 7 else mk("tanh", a), num(0.25))
        if r == 3:
            return mk("add", mk("sigmoid", a), num(0.1))
        return mk("sqrt", mk("add", mk("mul", mk("tanh", a), mk("tanh", a)), num(1.0)))

    # ---- expressions and statements

    def expr(self, depth: int) -> Ex:
        if depth <= 0 or random.random() < 0.2:
            return self.leaf()
        names = [n for n, op in OPS.items() if op.weight > 0]
        weights = [OPS[n].weight for n in names]
        for _ in range(8):
            op = random.choices(names, weights)[0]
            e = OPS[op].build(self, depth)
            if e is not None and e.dtype == self.p.dtype:
                return e
        return self.leaf()

    def let(self, e: Ex):
        name = f"t{len(self.p.lets)}"
        self.p.lets.append((name, e))
        r = ref(name, e.shape, e.dtype, e.lo, e.hi)
        r.smooth = e.smooth
        self.pool.append(r)


def live(prog: Program, e: Ex, lets=None) -> set:
    """Names (parameters and lets) that e depends on through differentiable paths."""
    lets = lets if lets is not None else dict(prog.lets)
    out, stack = set(), [e]
    while stack:
        x = stack.pop()
        if x.op in ("detach", "sign", "one_hot") or x.dtype == "bool":
            continue
        if x.op == "ref":
            n = x.attrs["name"]
            if n not in out:
                out.add(n)
                if n in lets:
                    stack.append(lets[n])
            continue
        stack.extend(x.args)
    return out


def generate(seed: int, prefix: str = "p0", dtype: str | None = None) -> Program:
    """The program a seed names (dtype f64 three times in four unless given)."""
    random.seed(seed)
    dtype = dtype or ("f64" if random.random() < 0.75 else "f32")
    g = Gen(prefix, dtype)
    for _ in range(random.randint(1, 2)):
        g.param(g.random_shape())
    for _ in range(random.randint(1, 4)):
        g.let(g.expr(random.randint(1, 3)))
    p = g.p
    _wrap_in_loop(g, seed)
    names = [n for n, _ in p.lets]
    p.outs = [names[-1]] + ([random.choice(names[:-1])] if len(names) > 1 and random.random() < 0.2 else [])
    p.annotate = random.random() < 0.5
    lets = dict(p.lets)
    parts = []
    for o in p.outs:
        r = ref(o, lets[o].shape, lets[o].dtype, lets[o].lo, lets[o].hi)
        # a nonlinear loss, so the gradient depends on the inputs and second order is defined
        sq = (mk("pow", r, num(2)) if random.random() < 0.4 else None) or mk("mul", r, r)
        if random.random() < 0.3:
            sq = mk("softplus", r)
        parts.append(sq if not r.shape else mk(random.choice(["sum", "mean"]), sq, axis=None, keep=False))
    p.loss = parts[0] if len(parts) == 1 else mk("add", parts[0], parts[1])
    # wrt: parameters the outputs really depend on (else "does not require grad" is right)
    floats = set(p.float_params())
    f_live = sorted(live(p, p.loss) & floats)
    h_live = sorted(set().union(*(live(p, ref(o, (), dtype)) for o in p.outs)) & floats)
    # `let t = x` names the same value as x, whose gradient at t is then x's whole gradient
    # (as PyTorch's retain_grad on an alias of a tensor): not an intermediate of its own
    inter = sorted(n for n in live(p, p.loss) if n in lets and lets[n].op not in ALIASES)
    if f_live:
        wrt = random.sample(f_live, random.randint(1, len(f_live)))
        p.transforms.append((f"{prefix}_g", "grad", wrt, None))
        vg = [random.choice(f_live)] + ([random.choice(inter)] if inter and random.random() < 0.5 else [])
        p.transforms.append((f"{prefix}_vg", "value_and_grad", vg, None))
        x = [random.choice(f_live)]
        kind = random.choice(["jvp_grad", "jvp_grad", "vjp_grad", "inline"])
        if kind == "vjp_grad":
            p.transforms.append((f"{prefix}_gx", "gx", x, None))
        # half the inline second derivatives take the gradient out of value_and_grad's tuple with
        # a destructuring let (chosen by name, so the random stream is the same either way)
        form = "destructure" if kind == "inline" and zlib.crc32(prefix.encode()) % 2 else None
        p.transforms.append((f"{prefix}_{kind}", kind, x, form))
    if h_live:
        wrt = random.sample(h_live, random.randint(1, len(h_live)))
        p.transforms.append((f"{prefix}_vjp", "vjp", wrt, None))
        p.transforms.append((f"{prefix}_jvp", "jvp", random.sample(h_live, random.randint(1, len(h_live))), None))
    return p


def _wrap_in_loop(g: Gen, seed: int):
    """One program in three gets its last let computed by a loop or a branch (optable.LOOPS)
    over it and an earlier value. A generator of its own decides, so the programs the other
    seeds name stay as they were; the last let is the one no other let reads, so the new
    interval constrains nothing downstream."""
    rng = random.Random(seed * 7919 + 17)
    if rng.random() >= 1 / 3:
        return
    name, e = g.p.lets[-1]
    form = rng.choice(sorted(LOOPS))
    others = [x for x in g.pool if x.op == "ref" and x.attrs["name"] != name and x.dtype == e.dtype]
    rng.shuffle(others)
    for b in others + [num(0.5)]:
        w = mk(form, e, b, form=form)
        if w is not None:
            g.p.lets[-1] = (name, w)
            for i, x in enumerate(g.pool):
                if x.op == "ref" and x.attrs["name"] == name:
                    r = ref(name, w.shape, w.dtype, w.lo, w.hi)
                    r.smooth = w.smooth
                    g.pool[i] = r
            return


# ---- the oracle: the program's values in float64, with NumPy

def concrete(shape, sizes):
    return tuple(d if isinstance(d, int) else dim_val(d, sizes) for d in shape)


def evaluate(prog: Program, sizes: dict, inputs: dict, frozen: dict, hook_scale: bool,
             perturb: dict | None = None) -> dict:
    """Every let, the outputs and the loss, in float64.

    frozen maps a detach or hook node to its value at the base point: empty on the base run,
    which fills it and notes (key "kink") whether a non-smooth op sits exactly on its kink. hook_scale gives reverse mode's view of a hook g -> c g: the value
    c e + (1 - c) frozen(e). perturb adds to named lets (for gradients at intermediates).
    """
    env = {n: np.asarray(v, np.float64) if prog_dtype(prog, n) != "i64" else np.asarray(v)
           for n, v in inputs.items()}

    def ev(e: Ex):
        if e.op == "ref":
            return env[e.attrs["name"]]
        if e.op == "num":
            return np.float64(e.attrs["v"])
        xs = [ev(a) for a in e.args]
        at = dict(e.attrs)
        if "shape" in at:
            at["_concrete"] = lambda _x, s=at["shape"]: tuple(-1 if d == -1 else dim_val(d, sizes) for d in s)
        v = np.asarray(OPS[e.op].ev(xs, at), np.float64 if e.dtype in ("f32", "f64") else None)
        if base_run and not OPS[e.op].smooth and _at_kink(e, xs, v):
            frozen["kink"] = True
        if e.op in ("detach", "hook"):
            base = frozen.setdefault(id(e), v)
            if e.op == "detach":
                return base
            if hook_scale:
                c = HOOKS[e.attrs["fn"]][1]
                return c * v + (1 - c) * base
        return v

    base_run = "base" not in frozen
    for name, e in prog.lets:
        env[name] = ev(e) + (perturb[name] if perturb and name in perturb else 0)
    env["__loss__"] = ev(prog.loss)
    frozen["base"] = True
    return env


def _at_kink(e: Ex, xs, v) -> bool:
    """Whether a non-smooth op sits exactly on its kink: a tie (max, maximum, a comparison),
    zero (abs, relu, sign) or a bound (clamp). Central differences there see the average of
    the one-sided slopes at both step sizes, which no kink check can tell from a derivative."""
    with np.errstate(all="ignore"):
        if e.op in ("max", "min"):
            axes = tuple(range(xs[0].ndim)) if e.attrs["axis"] is None else tuple(
                a % xs[0].ndim for a in (e.attrs["axis"] if isinstance(e.attrs["axis"], tuple) else (e.attrs["axis"],)))
            ext = np.max(xs[0], axis=axes, keepdims=True) if e.op == "max" else np.min(xs[0], axis=axes, keepdims=True)
            return bool(np.any(np.sum(xs[0] == ext, axis=axes) > 1))
        if e.op in ("maximum", "minimum") or e.op in ("lt", "le", "gt", "ge", "eq", "ne"):
            return bool(np.any(np.asarray(xs[0]) == np.asarray(xs[1])))
        if e.op in ("abs", "relu", "sign"):
            return bool(np.any(xs[0] == 0))
        if e.op == "clamp":
            return bool(np.any((xs[0] == e.attrs["lo"]) | (xs[0] == e.attrs["hi"])))
    return False


def prog_dtype(prog: Program, name: str) -> str:
    return next((d for n, _, d, _ in prog.params if n == name), prog.dtype)


def inputs(prog: Program, rng: np.random.Generator, sizes: dict) -> dict:
    """Random arguments for the parameters: floats in [-INPUT, INPUT], labels in [0, classes)."""
    out = {}
    np_dt = np.float64 if prog.dtype == "f64" else np.float32
    for name, shape, dtype, classes in prog.params:
        s = concrete(shape, sizes)
        if dtype == "i64":
            out[name] = rng.integers(0, classes, size=s).astype(np.int64)
        else:
            out[name] = np.asarray(rng.uniform(-INPUT, INPUT, size=s), np_dt)
    return out


def sizes_for(rng: np.random.Generator) -> dict:
    return {s: int(rng.integers(3, 6)) for s in SYMS}


__all__ = ["Program", "generate", "source", "evaluate", "inputs", "sizes_for", "concrete", "live",
           "dim_str"]
