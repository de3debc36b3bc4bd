"""Derivative rules written in .ad (`vjp f(...)`, `jvp f(...)`): every transform uses them, to any
order, through loops, branches, hooks and detach, on every target; their signatures are checked."""
import numpy as np
import pytest

import gradc
from conftest import compile_error, with_iree

TARGETS = with_iree(("reference", "cpu", "cuda-sim"))
RNG = np.random.default_rng(7)

# ste: round in the forward pass, the identity's derivative in both modes (straight-through)
# lse: its body hides its derivative behind detach; the rules give the true one, so every
#      derivative below equals that of log(sum(exp(x))), to any order
PROGRAM = """
fn ste(x: f64[N]) -> f64[N] { return (x + 0.5) // 1.0 }
vjp ste(x, g) { return g }
jvp ste(x, t) { return t }

fn f(x: f64[N], w: f64[N]) -> f64 { return sum(ste(x * 3.0) * w * x) }
let f_grad = grad(f, wrt=(x, w))
let f_vg = value_and_grad(f)
let f_vjp = vjp(f, wrt=x)
let f_jvp = jvp(f, wrt=(x, w))

fn lse(x: f64[N]) -> f64 { return detach(log(sum(exp(x)))) }
vjp lse(x, g) { return g * softmax(x) }
jvp lse(x, t) { return sum(t * softmax(x)) }

fn l(x: f64[N]) -> f64 { return lse(x * 2.0) }
let l_grad = grad(l)
let l_jvp = jvp(l)
fn l_sum(x: f64[N]) -> f64 { return sum(grad(l)(x)) }
let l_hess_row = grad(l_sum)                   # differentiates the vjp rule
let l_hvp = jvp(grad(l), wrt=x)                # the jvp rule of the vjp rule's nodes, and lse's jvp rule
fn l_g3(x: f64[N], v: f64[N]) -> f64 { return sum(grad(l)(x) * v) }
fn l_g4(x: f64[N], v: f64[N]) -> f64 { return sum(grad(l_g3, wrt=x)(x, v) * v) }
let l_third = grad(l_g4, wrt=x)                # third order

# through a loop, a branch, a hook and detach
fn double(g) { return g * 2.0 }
fn loop(x: f64[N], w: f64[N]) -> f64 {
    var h = x
    for t in 0..3 { h = ste(h * w) + h }
    if sum(h) > 0.0 { h = hook(ste(h), double) } else { h = h * 3.0 }
    return sum(h * h) + sum(detach(ste(x)) * x)
}
let loop_grad = grad(loop, wrt=(x, w))
let loop_jvp = jvp(loop, wrt=x)
"""


def _round(x):
    return np.floor(x + 0.5)


@pytest.fixture(scope="module", params=TARGETS)
def mod(request):
    return gradc.compile(PROGRAM, target=request.param)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_straight_through_in_every_transform(mod):
    x, w = RNG.uniform(-1, 1, 5), RNG.uniform(-1, 1, 5)
    r = _round(3 * x)
    value = np.sum(r * w * x)
    dx = 3 * w * x + r * w                 # d/dx of round(3x) taken as 3
    dw = r * x
    gx, gw = mod.f_grad(x, w)
    np.testing.assert_allclose(gx, dx, rtol=1e-12)
    np.testing.assert_allclose(gw, dw, rtol=1e-12)
    v, g = mod.f_vg(x, w)
    np.testing.assert_allclose([v], [value], rtol=1e-12)
    np.testing.assert_allclose(g, dx, rtol=1e-12)
    np.testing.assert_allclose(mod.f_vjp(x, w, 2.5), 2.5 * dx, rtol=1e-12)
    tx, tw = RNG.uniform(-1, 1, 5), RNG.uniform(-1, 1, 5)
    v, t = mod.f_jvp(x, w, tx, tw)
    np.testing.assert_allclose([v, t], [value, dx @ tx + dw @ tw], rtol=1e-12)


def test_rules_are_differentiated_to_any_order(mod):
    x = RNG.uniform(-1, 1, 4)
    s = _softmax(2 * x)
    hess = 4 * (np.diag(s) - np.outer(s, s))
    np.testing.assert_allclose(mod.l(x), np.log(np.sum(np.exp(2 * x))), rtol=1e-12)
    np.testing.assert_allclose(mod.l_grad(x), 2 * s, rtol=1e-12)
    t = RNG.uniform(-1, 1, 4)
    np.testing.assert_allclose(mod.l_jvp(x, t)[1], 2 * s @ t, rtol=1e-12)
    np.testing.assert_allclose(mod.l_hess_row(x), hess.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mod.l_hvp(x, t)[1], hess @ t, rtol=1e-10, atol=1e-12)
    # the third derivative by central differences of the analytic Hessian, in float64
    v = RNG.uniform(-1, 1, 4)

    def hv(x):
        s = _softmax(2 * x)
        return 4 * (np.diag(s) - np.outer(s, s)) @ v
    eps = 1e-5
    third = np.array([v @ (hv(x + eps * e) - hv(x - eps * e)) / (2 * eps) for e in np.eye(4)])
    np.testing.assert_allclose(mod.l_third(x, v), third, rtol=1e-6, atol=1e-8)


def _loop(x, w):
    """loop with the straight-through derivative, in NumPy: (value, d/dx, d/dw, tangent fn)."""
    h, dh_dx, dh_dw = x.copy(), np.ones_like(x), np.zeros_like(x)      # elementwise: diagonal Jacobians
    for _ in range(3):
        h, dh_dx, dh_dw = _round(h * w) + h, dh_dx * w + dh_dx, (dh_dw * w + h) + dh_dw
    if np.sum(h) > 0:
        out = _round(h)
        value = np.sum(out * out) + np.sum(_round(x) * x)
        gh = 2 * out * 2.0                                 # the hook doubles the gradient into ste(h)
        th = 2 * out
    else:
        value = np.sum(9 * h * h) + np.sum(_round(x) * x)
        gh = th = 18 * h
    return value, gh * dh_dx + _round(x), gh * dh_dw, th * dh_dx + _round(x)


def test_rules_inside_loops_branches_hooks_and_detach(mod):
    for sign in (1, -1):
        x, w = sign * RNG.uniform(0.2, 1, 4), RNG.uniform(0.2, 1, 4)
        value, gx, gw, tx = _loop(x, w)
        np.testing.assert_allclose(mod.loop(x, w), value, rtol=1e-12)
        got = mod.loop_grad(x, w)
        np.testing.assert_allclose(got[0], gx, rtol=1e-12)
        np.testing.assert_allclose(got[1], gw, rtol=1e-12)
        t = RNG.uniform(-1, 1, 4)
        np.testing.assert_allclose(mod.loop_jvp(x, w, t)[1], tx @ t, rtol=1e-12)


def test_a_function_value_dropped_after_its_call_keeps_its_graph():
    """grad(sq)(x) makes a function value that nothing holds once its call is lowered; the
    lowering's graphs are keyed on function values and keep them alive, so a function made
    later (h{i}, at the address the dropped one had) is never handed the dropped one's graph."""
    import gc
    from gradc.compiler.lower_ast import Lowering
    from gradc.compiler.values import Derived
    from gradc.frontend.diagnostics import Diagnostics
    from gradc.frontend.parse import parse
    src = "fn sq(x: f64[N]) -> f64 { return sum(x * x) }\n" + "".join(
        f"fn a{i}(x: f64[N]) -> f64 {{ return sum(grad(sq)(x)) }}\n"
        f"fn h{i}(g) {{ return g * {i + 2}.0 }}\n"
        f"fn u{i}(x: f64[N]) -> f64 {{ return sum(hook(x, h{i})) }}\n"
        f"let du{i} = grad(u{i})\n" for i in range(40))
    low = Lowering(parse(src, "<source>"), Diagnostics())
    low.module("<source>", src)
    gc.collect()
    sq = low.globals["sq"]
    assert sum(isinstance(o, Derived) and o.base is sq for o in gc.get_objects()) == 40
    x = np.array([0.5, -1.0, 2.0])
    for _ in range(3):                 # where addresses fall differs from one compile to the next
        m = gradc.compile(src, target="reference")
        for i in range(40):
            np.testing.assert_array_equal(getattr(m, f"du{i}")(x), np.full(3, i + 2.0))


def test_a_rule_may_call_its_own_function_and_rules_are_generic():
    src = """
fn e(x) { return exp(x) }
vjp e(x, g) { return g * e(x) }            # e's body, not a recursion
jvp e(x, t) { return t * e(x) }
fn f(x: f64) -> f64 { return e(x) }
fn v(x: f32[N]) -> f32 { return sum(e(x)) }
let d3 = grad(grad(grad(f)))
let dv = grad(v)
let dj = jvp(grad(f))
"""
    for target in TARGETS:
        m = gradc.compile(src, target=target)
        np.testing.assert_allclose(m.d3(0.3), np.exp(0.3), rtol=1e-12)
        np.testing.assert_allclose(m.dj(0.3, 2.0)[1], 2 * np.exp(0.3), rtol=1e-12)
        x = np.float32([0.1, -0.2])
        assert m.dv(x).dtype == np.float32
        np.testing.assert_allclose(m.dv(x), np.exp(x), rtol=1e-6)


def test_several_parameters_and_results():
    src = """
fn pm(a: f64, b: f64[K]) -> (f64[K], f64) { return a + b, a * sum(b) }
vjp pm(a, b, ga, gb) { return sum(ga) + gb * sum(b), ga + gb * a }
jvp pm(a, b, ta, tb) { return ta + tb, ta * sum(b) + a * sum(tb) }
fn f(a: f64, b: f64[K]) -> f64 { let (s, p) = pm(a, b)
    return sum(s * s) + p * p }
let g = grad(f, wrt=(a, b))
let j = jvp(f, wrt=(a, b))
"""
    a, b = 0.7, np.array([0.5, -1.0, 2.0])
    s, p = a + b, a * b.sum()
    ga, gb = 2 * s, 2 * p                     # cotangents of pm's two results
    da, db = ga.sum() + gb * b.sum(), ga + gb * a
    for target in TARGETS:
        m = gradc.compile(src, target=target)
        got = m.g(a, b)
        np.testing.assert_allclose(got[0], da, rtol=1e-12)
        np.testing.assert_allclose(got[1], db, rtol=1e-12)
        tb = np.array([1.0, 0.0, -1.0])
        np.testing.assert_allclose(m.j(a, b, 0.5, tb)[1], da * 0.5 + db @ tb, rtol=1e-12)


def test_reverse_mode_transposes_a_jvp_rule():
    src = """
fn soft(x: f64[N]) -> f64[N] { return detach(log1p(exp(x))) }
jvp soft(x, t) { return t * sigmoid(x) }
fn f(x: f64[N]) -> f64 { return sum(soft(x) * x) }
let g = grad(f)
fn gs(x: f64[N]) -> f64 { return sum(grad(f)(x)) }
let gg = grad(gs)
"""
    x = np.array([-1.0, 0.2, 1.5])
    sig = 1 / (1 + np.exp(-x))
    for target in TARGETS:
        m = gradc.compile(src, target=target)
        np.testing.assert_allclose(m.g(x), sig * x + np.log1p(np.exp(x)), rtol=1e-12)
        np.testing.assert_allclose(m.gg(x), sig * (1 - sig) * x + 2 * sig, rtol=1e-12)


def test_a_jvp_rule_that_is_not_linear_is_not_transposed():
    src = """
fn sq(x: f64) -> f64 { return x * x }
jvp sq(x, t) { return t * t }
let g = grad(sq)
"""
    msg = str(compile_error(src))
    assert "<source>:2:1: error: reverse mode reaches sq, which has a jvp rule but no vjp rule" in msg
    assert "<source>:4:9: note: in grad(sq) here" in msg
    assert "not linear in its tangents" in msg


def test_forward_mode_needs_a_jvp_rule():
    src = """
fn clip(x: f32[N]) -> f32[N] { return x }
vjp clip(x, g) { return clamp(g, -1.0, 1.0) }
fn f(x: f32[N]) -> f32 {
    return sum(clip(x) * x)
}
let g = grad(f)
let h = jvp(grad(f))
"""
    gradc.compile(src.replace("let h = jvp(grad(f))", ""), target="reference")
    msg = str(compile_error(src))
    assert "<source>:5:16: error: forward mode (jvp) reaches clip, which has a vjp rule but no jvp rule" in msg
    assert "<source>:8:9: note: in jvp(grad(f)) here" in msg


def test_rules_are_inlined_once_no_transform_follows():
    from gradc.compiler.pipeline import lower, optimize
    mod = lower(PROGRAM)
    assert any(n.op == "custom" for n in mod.graphs["f_grad"].nodes)
    for name, g in mod.graphs.items():
        text = str(optimize(g))
        assert " custom " not in text, name


@pytest.mark.parametrize("src,where,message", [
    ("fn f(x: f64) -> f64 { return x }\nvjp f(y, g) { return g }\n", "2:7",
     "parameter 1 of the vjp rule of f is 'y', but f calls it 'x'"),
    ("fn f(x: f64) -> f64 { return x }\nvjp f(x) { return x }\n", "2:1",
     "the vjp rule of f takes f's 1 parameter(s), then one cotangent per result; it has 1"),
    ("fn f(x: f64) -> f64 { return x }\njvp f(x, t, u) { return t }\n", "2:1",
     "the jvp rule of f takes f's 1 parameter(s), then one tangent per parameter; it has 3"),
    ("fn f(x: f64) -> f64 { return x }\nvjp f(x, g, h) { return g }\n", "2:1",
     "the vjp rule of f takes f's 1 parameter(s) and one cotangent per result of f (2 in all), but has 3"),
    ("fn f(x: f64[N]) -> f64[N] { return x }\nvjp f(x, g) { return sum(g) }\n", "2:15",
     "the vjp rule of f returns f64 as the cotangent of 'x', which must be f64[N]"),
    ("fn f(x: f64[N]) -> f64 { return sum(x) }\njvp f(x, t) { return t }\n", "2:15",
     "the jvp rule of f returns f64[N] as the tangent of result 0, which must be f64"),
    ("fn f(x: f64, y: f64) -> f64 { return x }\nvjp f(x, y, g) { return g }\n", "2:18",
     "the vjp rule of f must return one cotangent per parameter (2), but returns 1"),
    ("fn f(x: f64) -> f64 { return x }\nvjp g(x, g) { return g }\n", "2:1",
     "vjp rule for 'g', which is not a function of this file"),
    ("fn f(x: f64) -> f64 { return x }\njvp f(x, t) { return t }\njvp f(x, t) { return t }\n", "3:1",
     "f has two jvp rules"),
    ("fn f(x: f64) -> f64 { return x }\nvjp f(x: f32, g) { return g }\n", "1:1",
     "argument 'x' of f.vjp: expected f32, got f64"),
    ("fn f(x: f64) -> f64 { return x }\nfoo f(x, g) { return g }\n", "2:1",
     "unexpected `foo`; expected one of: `fn`, `let`, `struct`, end of file, vjp or jvp"),
])
def test_rule_signatures_are_checked(src, where, message):
    err = str(compile_error(src))
    assert f"<source>:{where}: error: {message}" in err, err


def test_a_generic_function_checks_its_rules_at_each_call():
    src = """
fn f(x) { return x * 2.0 }
vjp f(x, g) { return sum(g) }
fn h(x: f64[N]) -> f64 { return sum(f(x)) }
let dh = grad(h)
"""
    msg = str(compile_error(src))
    assert "<source>:3:15: error: the vjp rule of f returns f64 as the cotangent of 'x', which must be f64[N]" in msg
    assert "<source>:4:37: note: in the call of f here" in msg
