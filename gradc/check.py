"""`gradc check`: derivatives against central finite differences in float64."""
from __future__ import annotations

import numpy as np

from .compiler import autodiff
from .compiler.checks import requirements
from .compiler.interp import run
from .compiler.ir import FLOATS, dim_parts
from .compiler.ops import CheckFailed
from .compiler.records import expand_wrt
from .frontend.examples import ExampleError, parse_examples

STEP = 1e-6


def random_args(g, rng, given=None, given_values=True):
    """Arguments for g: the given ones, random values elsewhere (symbolic dims of 3, 4, ...).

    With given_values=False, given floating-point arguments lend only their shapes: random
    points keep finite differences away from kinks an example may sit on on purpose.
    """
    given = dict(given or {})
    for k, v in list(given.items()):
        if isinstance(v, dict):          # a record: its fields are the parameters k.field
            given.update({f"{k}.{f}": x for f, x in v.items()})
    sizes = {}
    args = []
    least = {}                  # symbol -> the least size the function's indices and slices allow
    for need in requirements(g):
        sym, off = dim_parts(need["dim"])
        if sym is not None:
            least[sym] = max(least.get(sym, 0), need["min"] - off)
    for name, p in zip(g.param_names, g.params):
        if name in given:
            a = np.asarray(given[name], dtype=np.float64 if p.dtype in FLOATS else None)
            for d, n in zip(p.shape, a.shape):
                if not isinstance(d, int):
                    sizes.setdefault(dim_parts(d)[0], n)
            if p.dtype not in FLOATS or given_values:
                args.append(a)
                continue
        shape = []
        for d in p.shape:
            sym, off = dim_parts(d)
            shape.append(off if sym is None else sizes.setdefault(sym, max(3 + len(sizes), least.get(sym, 0))) + off)
        if p.dtype in FLOATS:
            args.append(rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
                        if name.startswith("ct") or name.startswith("t_") else rng.uniform(0.2, 1.0, shape))
        elif p.dtype == "bool":
            args.append(rng.random(shape) < 0.5)
        else:
            args.append(rng.integers(0, 3, shape))
    return args


def _richardson(d):
    """Central differences at steps h and h/2 combined to cancel the h**2 error term."""
    return (4 * d(0.5) - d(1.0)) / 3


def _fd_vjp(base, args, cts, i):
    """d/d args[i] of sum(ct * base(args)), by central differences."""
    x = np.array(args[i], dtype=np.float64)
    grad = np.zeros_like(x)

    def phi(xx):
        outs = run(base, args[:i] + [xx] + args[i + 1:], promote=True)
        return sum(float(np.sum(c * o)) for c, o in zip(cts, outs) if c is not None)

    for k in np.ndindex(x.shape) if x.shape else [()]:
        h = STEP * max(1.0, abs(float(x[k])))

        def d(scale, k=k, h=h):
            plus, minus = x.copy(), x.copy()
            plus[k] += scale * h
            minus[k] -= scale * h
            return (phi(plus) - phi(minus)) / (2 * scale * h)
        grad[k] = _richardson(d)
    return grad


def _fd_jvp(base, args, wrt_idx, tans):
    def at(sign):
        moved = list(args)
        for i, t in zip(wrt_idx, tans):
            moved[i] = np.asarray(args[i], np.float64) + sign * t
        return run(base, moved, promote=True)

    def d(scale):
        plus, minus = at(scale * STEP), at(-scale * STEP)
        return [(p - m) / (2 * scale * STEP) for p, m in zip(plus, minus)]
    fine, coarse = d(0.5), d(1.0)
    return [(4 * f - c) / 3 for f, c in zip(fine, coarse)]


def _line(name, got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    abs_err = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-8)
    rel = abs_err / scale
    ok = rel <= rtol or abs_err <= 1e-9
    return f"  {name}: max abs error {abs_err:.3g}, max rel error {rel:.3g}  {'ok' if ok else 'FAIL'}", ok


def check_function(mod, name, args, rng, rtol):
    """Lines of the report for one function, and whether all passed."""
    if name in mod.derived:
        kind, base, wrt = mod.derived[name]
        wrt = expand_wrt(base, wrt)[0]         # a record: each of its fields
        g = mod.graphs[name]
    else:
        base = mod.graphs[name]
        wrt = tuple(n for n, p in zip(base.param_names, base.params) if p.dtype in FLOATS)
        outs = [o for o in base.outputs if o.dtype in FLOATS]
        if not wrt or not outs:
            return [f"{name}: nothing to differentiate"], True
        kind = "vjp"
        g = autodiff.vjp(base, wrt, f"vjp({name})", warn=lambda m: None)
        args = args + random_args(g, rng, dict(zip(base.param_names, args)))[len(args):]
    lines, ok_all = [f"{name} ({kind} of {base.name}, wrt {', '.join(wrt)})"], True
    if kind != "jvp" and any(n.op == "hook" for n in base.nodes):
        lines.append("  note: a gradient hook changes this gradient on purpose")
    ruled = sorted({n.attr("fn").name for n in base.nodes if n.op == "custom"})
    if ruled:
        lines.append(f"  note: derivative rules of {', '.join(ruled)} decide this derivative; they may differ "
                     "from finite differences on purpose")
    n = len(base.params)
    result = run(g, args, promote=True)
    params = dict(zip(base.param_names, range(n)))
    if kind == "jvp":
        idx = [params[w] for w in wrt]
        if len(idx) != len(wrt):
            return lines + ["  jvp at intermediate values is not checked by finite differences"], True
        fd = _fd_jvp(base, args[:n], idx, args[n:])
        for k, (got, want) in enumerate(zip(result[len(base.outputs):], fd)):
            line, ok = _line(f"tangent of output {k}", got, want, rtol)
            lines.append(line)
            ok_all &= ok
        return lines, ok_all
    if kind == "vjp":
        cts = [a if o.dtype in FLOATS else None for a, o in zip(args[n:], base.outputs)]
        grads = result
    else:
        cts = [np.ones(())]
        grads = result[1:] if kind == "value_and_grad" else result
    for w, got in zip(wrt, grads):
        if w not in params:
            lines.append(f"  {w}: an intermediate value, not checked by finite differences")
            continue
        line, ok = _line(w, got, _fd_vjp(base, args[:n], cts, params[w]), rtol)
        lines.append(line)
        ok_all &= ok
    return lines, ok_all


def check_program(mod, text, func=None, seed=0, rtol=1e-5, at_examples=False):
    names = [func] if func else list(mod.graphs)
    if func and func not in mod.graphs:
        return f"no function '{func}'; the program has: {', '.join(mod.graphs)}", False
    try:
        calls = {c.func: c.args for c in parse_examples(text).calls}
    except ExampleError:
        calls = {}
    rng = np.random.default_rng(seed)
    lines, ok = [], True
    for name in names:
        g = mod.graphs[name]
        args = random_args(g, rng, calls.get(name), at_examples)
        try:
            more, good = check_function(mod, name, args, rng, rtol)
        except CheckFailed as ex:       # random labels outside one_hot's classes, say
            error, message, value = ex.args
            more, good = [f"{name}: not checked: at random arguments, " + message.replace("{value}", str(value))], True
        lines += more
        ok &= good
    lines.append("all gradients agree with finite differences" if ok else "some gradients disagree")
    return "\n".join(lines), ok
