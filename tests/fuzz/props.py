"""The two properties the fuzzer checks, each returning an outcome instead of raising.

1. `check_source`: a source compiles (lowering and optimization, no native code), or gets a
   CompileError that carries a source position. Anything else is a failure.
2. `check_programs`: generated programs give the same value and derivatives on the native
   targets (TARGETS: cpu and cuda-sim), on target reference, and in float64 by the NumPy oracle and central differences.

A failure kind is a short stable string (it keys the campaign's table and the shrinker);
the detail says what differed.
"""
from __future__ import annotations

import os
import tempfile
import traceback
import warnings

import numpy as np

from . import gen

OK, COMPILE_ERROR = "ok", "CompileError"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _where(ex: BaseException) -> str:
    """The innermost frame inside gradc, as file:function (what identifies a bug)."""
    tb = traceback.extract_tb(ex.__traceback__)
    ours = [f for f in tb if f.filename.startswith(ROOT)
            and not any(d in f.filename[len(ROOT):] for d in ("/tests/", "/.venv/", "site-packages"))]
    f = ours[-1] if ours else (tb[-1] if tb else None)
    return f"{os.path.basename(f.filename)}:{f.name}" if f else "?"


def exception_kind(ex: BaseException) -> str:
    # an internal compiler error wraps the exception that is the finding: name that one
    inner = ex.__cause__ if type(ex).__name__ == "InternalError" and ex.__cause__ is not None else ex
    prefix = "InternalError: " if inner is not ex else ""
    return f"{prefix}{type(inner).__name__} at {_where(inner)}"


def check_source(src) -> tuple[str, str]:
    """Property 1 for source text (str) or file contents (bytes, read through a file path)."""
    import gradc
    from gradc.frontend.diagnostics import CompileError
    path = None
    try:
        if isinstance(src, bytes):
            fd, path = tempfile.mkstemp(suffix=".ad", prefix="gradc-fuzz-")
            with os.fdopen(fd, "wb") as f:
                f.write(src)
            target = path
        else:
            target = src if "\n" in src else src + "\n"     # text, never taken for a path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gradc.compile(target, target="reference", cache=False)
        return OK, ""
    except CompileError as ex:
        loc = getattr(ex, "loc", None)
        if loc is None or not getattr(loc, "line", 0) >= 1 or not getattr(loc, "col", 0) >= 1:
            return "CompileError without a position", str(ex)[:300]
        return COMPILE_ERROR, ""
    except RecursionError as ex:      # its traceback is thousands of frames: keep the kind short
        return exception_kind(ex), "maximum recursion depth exceeded"
    except Exception as ex:           # noqa: BLE001 - every other exception is the finding
        return exception_kind(ex), f"{type(ex).__name__}: {str(ex)[:300]}"
    finally:
        if path:
            os.unlink(path)


# ---- property 2

F64_TOL = dict(rtol=1e-8, atol=1e-9)     # cpu against reference, reference against the oracle
F32_TOL = dict(rtol=2e-3, atol=2e-4)
FD_TOL = dict(rtol=2e-5, atol=2e-6)      # derivatives against central differences
STEPS = (1e-5, 2.5e-5)                   # two steps: where they disagree a kink is near; skip


def as_tuple(r):
    return tuple(r) if isinstance(r, tuple) else (r,)


def close(a, b, rtol, atol) -> bool:
    """|a - b| <= rtol |b| + atol max(1, max|b|), elementwise; NaN only where both are NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    ok = np.isnan(a) | (a == b)
    scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]), initial=0)))
    with np.errstate(invalid="ignore"):
        ok |= np.abs(a - b) <= rtol * np.abs(b) + atol * scale
    return bool(np.all(ok))


def _dot(a, b) -> float:
    return float(sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(a, b)))


class Checker:
    """Runs one program's exported functions on both targets and compares them."""

    def __init__(self, prog, ref_mod, native, seed):
        # native: {target: module}, or one module taken for cpu
        self.p, self.ref = prog, ref_mod
        self.native = native if isinstance(native, dict) else {"cpu": native}
        self.rng = np.random.default_rng(seed)
        self.sizes = gen.sizes_for(self.rng)
        self.x = gen.inputs(prog, self.rng, self.sizes)
        self.f64 = prog.dtype == "f64"
        self.np_dt = np.float64 if self.f64 else np.float32
        self.failures, self.skipped = [], 0
        self.frozen = {}
        self.base = gen.evaluate(prog, self.sizes, self.x, self.frozen, True)

    def fail(self, kind, detail):
        self.failures.append((kind, detail))

    def args(self, extra=()):
        return [self.x[p[0]] for p in self.p.params] + list(extra)

    def like(self, shape):
        return np.asarray(self.rng.uniform(-1, 1, size=shape), self.np_dt)

    def call(self, name, extra=()):
        """(native results..., reference result) as tuples, or None after recording a failure."""
        out = []
        targets = list(self.native.items()) + [("reference", self.ref)]
        for target, mod in targets:
            try:
                with np.errstate(all="ignore"):
                    out.append(as_tuple(getattr(mod, name)(*self.args(extra))))
            except Exception as ex:   # noqa: BLE001
                self.fail(f"call raised {exception_kind(ex)} ({target})", f"{name}: {str(ex)[:200]}")
                return None
        tol = F64_TOL if self.f64 else F32_TOL
        kind = name[len(self.p.prefix) + 1:]
        for (target, _), got in zip(targets, out):
            for i, (a, b) in enumerate(zip(got, out[-1])):
                if not close(a, b, **tol):
                    self.fail(f"{target} != reference: {kind}",
                              f"{name} output {i}: {target} {a!r} reference {b!r}")
                    return None
        for i, b in enumerate(out[-1]):
            if self.f64 and not np.all(np.isfinite(b)):
                self.fail(f"non-finite result: {kind}", f"{name} output {i}: {b!r}")
                return None
        return out

    # oracle helpers: the loss or the outputs at x + s * direction (params and lets)
    def oracle(self, direction, s, rev):
        x = {k: (v + s * direction[k] if k in direction and k in self.x else v) for k, v in self.x.items()}
        perturb = {k: s * d for k, d in direction.items() if k not in self.x}
        return gen.evaluate(self.p, self.sizes, x, self.frozen, rev, perturb)

    def fd(self, fn, kind, got: float):
        """Compare a directional derivative with central differences of fn(s) at two steps."""
        if self.frozen.get("kink"):
            self.skipped += 1            # the point is exactly on a kink: no reference value
            return
        ests = []
        for h in STEPS:
            with np.errstate(all="ignore"):
                ests.append((fn(h) - fn(-h)) / (2 * h))
        if not np.isfinite(ests[0]) or not close(ests[0], ests[1], 1e-4, 1e-6):
            self.skipped += 1            # a kink or a jump within a step: no reference value
            return
        if not close(got, ests[0], **FD_TOL):
            self.fail(f"derivative != finite differences: {kind}",
                      f"{self.p.prefix}_{kind}: directional derivative {got!r}, differences {ests[0]!r}")

    def shape_of(self, name):
        if name in self.x:
            return np.shape(self.x[name])
        return np.shape(self.base[name])

    def run(self):
        p = self.p
        # values: the two functions against each other and against the oracle
        for fn, want in ((f"{p.prefix}_f", [self.base["__loss__"]]),
                         (f"{p.prefix}_h", [self.base[o] for o in p.outs])):
            r = self.call(fn)
            if r is not None and self.f64:
                for a, b in zip(r[-1], want):
                    if not close(a, b, **F64_TOL):
                        self.fail("reference != oracle: value", f"{fn}: reference {a!r}, oracle {b!r}")
        for name, kind, wrt, _ in p.transforms:
            getattr(self, "t_" + kind)(name, kind, wrt)
        return self.failures

    def _grads(self, name, kind, wrt, results):
        if not self.f64:
            return
        d = {w: self.like(self.shape_of(w)) for w in wrt}
        got = _dot(results, [d[w] for w in wrt])
        self.fd(lambda s: float(self.oracle(d, s, True)["__loss__"]), kind, got)

    def t_grad(self, name, kind, wrt):
        r = self.call(name)
        if r is not None:
            self._grads(name, kind, wrt, r[-1])

    def t_value_and_grad(self, name, kind, wrt):
        r = self.call(name)
        if r is not None:
            if self.f64 and not close(r[-1][0], self.base["__loss__"], **F64_TOL):
                self.fail("reference != oracle: value_and_grad", f"{name}: value {r[-1][0]!r}")
            self._grads(name, kind, wrt, r[-1][1:])

    def t_vjp(self, name, kind, wrt):
        cts = [self.like(np.shape(self.base[o])) for o in self.p.outs]
        r = self.call(name, cts)
        if r is not None and self.f64:
            d = {w: self.like(self.shape_of(w)) for w in wrt}
            got = _dot(r[-1], [d[w] for w in wrt])
            self.fd(lambda s: _dot([self.oracle(d, s, True)[o] for o in self.p.outs], cts), kind, got)

    def t_jvp(self, name, kind, wrt):
        ts = [self.like(self.shape_of(w)) for w in wrt]
        r = self.call(name, ts)
        if r is not None and self.f64:
            d = dict(zip(wrt, ts))
            w = [self.like(np.shape(self.base[o])) for o in self.p.outs]
            got = _dot(r[-1][len(self.p.outs):], w)
            self.fd(lambda s: _dot([self.oracle(d, s, False)[o] for o in self.p.outs], w), kind, got)

    def _grad_at(self, name, extra, wrt, s, t):
        """The reference's gradient (first output of name) with wrt moved by s t."""
        x0 = self.x[wrt]
        self.x[wrt] = x0 + s * t
        try:
            return np.asarray(as_tuple(getattr(self.ref, name)(*self.args(extra)))[0], np.float64)
        finally:
            self.x[wrt] = x0

    def t_jvp_grad(self, name, kind, wrt):
        t = self.like(self.shape_of(wrt[0]))
        r = self.call(name, [t])
        if r is not None and self.f64 and self.second_order(False):
            w = self.like(np.shape(r[-1][1]))
            self.fd(lambda s: _dot([self._grad_at(name, [t], wrt[0], s, t)], [w]), kind, _dot([r[-1][1]], [w]))

    def second_order(self, reverse: bool) -> bool:
        """Whether differences of the gradient function check a second-order derivative.

        Not with detach: its value moves with the point while its derivative is zero, in the
        gradient graph too (as in PyTorch). Not for a second reverse pass with a hook: a hook
        acts in every reverse pass (as in PyTorch), not only on the gradient being differenced.
        """
        if self.p.has("detach") or (reverse and self.p.hooks()):
            self.skipped += 1
            return False
        return True

    def t_vjp_grad(self, name, kind, wrt):
        ct = self.like(self.shape_of(wrt[0]))
        r = self.call(name, [ct])
        if r is not None and self.f64 and self.second_order(True):
            v = self.like(self.shape_of(wrt[0]))
            # the gradient itself comes from jvp(grad) with any tangent: its first output
            gx = f"{self.p.prefix}_gx"
            self.fd(lambda s: _dot([self._grad_at(gx, [], wrt[0], s, v)], [ct]), kind, _dot([r[-1][0]], [v]))

    def t_gx(self, name, kind, wrt):
        self.call(name)

    def t_inline(self, name, kind, wrt):
        r = self.call(name)
        rg = self.call(name + "_g")
        if r is not None and rg is not None and self.f64 and self.second_order(True):
            v = self.like(self.shape_of(wrt[0]))
            x0 = self.x[wrt[0]]

            def value(s):
                self.x[wrt[0]] = x0 + s * v
                try:
                    return float(getattr(self.ref, name)(*self.args()))
                finally:
                    self.x[wrt[0]] = x0
            self.fd(value, kind, _dot([rg[-1][0]], [v]))


TARGETS = ("cpu", "cuda-sim")


def compile_both(src, targets=TARGETS):
    """(reference module, {target: module}) of a source, or a failure (kind, detail)."""
    import gradc
    from gradc.frontend.diagnostics import CompileError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (gradc.compile(src, target="reference", cache=False),
                    {t: gradc.compile(src, target=t, cache=False) for t in targets})
    except CompileError as ex:
        return "generated program rejected (CompileError)", str(ex)[:400]
    except Exception as ex:   # noqa: BLE001
        return f"compile raised {exception_kind(ex)}", f"{type(ex).__name__}: {str(ex)[:300]}"


def check_programs(programs, seed: int, targets=TARGETS) -> list:
    """Property 2 for programs compiled as one module: [(kind, detail, program index)] and skips."""
    mods = compile_both(gen.source(programs), targets)
    if isinstance(mods[0], str):
        return [(mods[0], mods[1], None)], 0
    out, skipped = [], 0
    for i, prog in enumerate(programs):
        try:
            c = Checker(prog, mods[0], mods[1], seed * 1000 + i)
            out += [(k, d, i) for k, d in c.run()]
            skipped += c.skipped
        except Exception as ex:   # noqa: BLE001 - a bug of the checker is reported like any other
            out.append((f"checker raised {exception_kind(ex)}", str(ex)[:300], i))
    return out, skipped


# ---- property 3: a program under vmap agrees with a loop over its rows

ROWS = 3


def vmap_source(programs) -> str:
    """The programs, and for each its function P_h and its gradient mapped over a new leading
    axis of every parameter (P_vmap_h, P_vmap_g), with the gradient itself (P_vmap_g0) for the loop."""
    src = gen.source(programs)
    for p in programs:
        src += f"let {p.prefix}_vmap_h = vmap({p.prefix}_h)\n"
        wrt = next((w for _, kind, w, _ in p.transforms if kind == "grad"), None)
        if wrt:
            w = "(" + ", ".join(wrt) + ",)"
            src += f"let {p.prefix}_vmap_g0 = grad({p.prefix}_f, wrt={w})\nlet {p.prefix}_vmap_g = vmap({p.prefix}_vmap_g0)\n"
    return src


def check_vmap(programs, seed: int, targets=TARGETS) -> list:
    """Property 3: P_vmap_h and P_vmap_g on rows stacked along a new axis, on every target, against
    P_h and the gradient called on each row in turn on the reference: [(kind, detail, index)]."""
    mods = compile_both(vmap_source(programs), targets)
    if isinstance(mods[0], str):
        return [(mods[0], mods[1], None)]
    ref, native = mods
    out = []
    for i, p in enumerate(programs):
        rng = np.random.default_rng(seed * 1000 + i)
        sizes = gen.sizes_for(rng)
        rows = [gen.inputs(p, rng, sizes) for _ in range(ROWS)]
        args = [np.stack([r[n] for r in rows]) for n, _, _, _ in p.params]
        tol = F64_TOL if p.dtype == "f64" else F32_TOL
        for fn, base in ((f"{p.prefix}_vmap_h", f"{p.prefix}_h"), (f"{p.prefix}_vmap_g", f"{p.prefix}_vmap_g0")):
            if not hasattr(ref, fn):
                continue
            try:
                with np.errstate(all="ignore"):
                    loop = [as_tuple(getattr(ref, base)(*[r[n] for n, _, _, _ in p.params])) for r in rows]
                    want = [np.stack(o) for o in zip(*loop)]
                    got = {t: as_tuple(getattr(m, fn)(*args)) for t, m in [("reference", ref)] + list(native.items())}
            except Exception as ex:   # noqa: BLE001
                out.append((f"vmap call raised {exception_kind(ex)}", f"{fn}: {str(ex)[:200]}", i))
                continue
            for t, g in got.items():
                for k, (a, b) in enumerate(zip(g, want)):
                    if not close(a, b, **tol):
                        out.append((f"vmap != loop ({t})", f"{fn} output {k}: {a!r} loop {b!r}", i))
    return out
