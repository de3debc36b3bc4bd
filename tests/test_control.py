"""Loops and branches: the language, every transform through them against finite differences in
float64, run-time indices, native loops (a new trip count does not recompile), diagnostics."""
import numpy as np
import pytest

import gradc
from gradc.frontend.diagnostics import CompileError
from conftest import with_iree

RNG = np.random.default_rng(42)
EPS = 1e-6

PROGRAM = """
fn rnn(h0: f64[B, H], xs: f64[T, B, H], W: f64[H, H]) -> f64 {
    var h = h0
    for t in 0..T { h = tanh(h @ W + xs[t]) }
    return sum(h * h)
}
let rnn_grad = grad(rnn, wrt=(h0, xs, W))
let rnn_vg = value_and_grad(rnn, wrt=W)
let rnn_vjp = vjp(rnn, wrt=(h0, W))
let rnn_jvp = jvp(rnn, wrt=(h0, W))
let rnn_hvp = jvp(grad(rnn, wrt=W), wrt=W)

fn rnn_ckpt(h0: f64[B, H], xs: f64[T, B, H], W: f64[H, H]) -> f64 {
    var h = h0
    for t in 0..T checkpoint(2) { h = tanh(h @ W + xs[t]) }
    return sum(h * h)
}
let rnn_ckpt_grad = grad(rnn_ckpt, wrt=(h0, xs, W))

# wrt a var defined before the loop: the gradient with respect to its initial value
fn pre(h0: f64[B, H], xs: f64[T, B, H], W: f64[H, H]) -> f64 {
    var h = h0 * 2.0
    for t in 0..T { h = tanh(h @ W + xs[t]) }
    return sum(h)
}
let pre_grad = grad(pre, wrt=h)

# a scaled sum of neighbouring differences: x[t + 1] and slices whose start is t
fn window(x: f64[N]) -> f64 {
    var s = 0.0
    for t in 0..N-2 {
        s += sum(x[t:t+3] * x[t:t+3]) * cast(t + 1, f64)
        s = s + x[t + 1] * x[t]
    }
    return s
}
let window_grad = grad(window)

# nested loops and a branch in a loop
fn nested(A: f64[N, N], v: f64[N]) -> f64 {
    var u = v
    for i in 0..3 {
        var w = u
        for j in 0..2 { w = tanh(A @ w) }
        if sum(w) > 0.0 { u = u + w } else { u = u - 0.5 * w }
    }
    return sum(u * u)
}
let nested_grad = grad(nested, wrt=(A, v))
let nested_gv = grad(nested, wrt=v)
fn nested_gsum(A: f64[N, N], v: f64[N]) -> f64 { return sum(nested_gv(A, v)) }
let nested_gg = grad(nested_gsum, wrt=A)

# an integer counter beside a float state in a while loop
fn halve(x: f64, n: i64) -> f64 {
    var y = x
    var k = 0
    while k < n {
        y = y * 0.5 + sin(y)
        k = k + 1
    }
    return y
}
let halve_grad = grad(halve, wrt=x)
let halve_gg = grad(grad(halve, wrt=x), wrt=x)

# hooks and detach inside a body
fn doubler(g: f64) -> f64 { return 2.0 * g }
fn hooked(h0: f64, w: f64) -> f64 {
    var h = h0
    for t in 0..3 { h = hook(h * w, doubler) }
    return h
}
let hooked_grad = grad(hooked, wrt=h0)
fn detached(h0: f64, w: f64) -> f64 {
    var h = h0
    for t in 0..3 { h = detach(h) * w + h * 0.0 + h }
    return h
}
let detached_grad = grad(detached, wrt=(h0, w))

# a derived function with a loop, called twice with different trip counts, differentiated again
fn acc(x: f64[N]) -> f64 {
    var s = 0.0
    for t in 0..N { s = s + sin(x[t]) * s + x[t] }
    return s
}
let acc_grad = grad(acc)
fn twice(a: f64[N], b: f64[M]) -> f64 { return sum(acc_grad(a) * acc_grad(a)) + sum(acc_grad(b)) * 2.0 }
let twice_grad = grad(twice, wrt=(a, b))

let rnn_grad_c3 = grad(rnn, wrt=(h0, xs, W), checkpoint=3)
let rnn_grad_cs = grad(rnn, wrt=W, checkpoint=true)

fn count(xs: f64[N]) -> f64 {
    var s = 0.0
    for t in 0..N+1 { s = s + xs[t] }
    return s
}
"""


@pytest.fixture(scope="module", params=with_iree(["cpu", "reference", "cuda-sim"]))
def m(request):
    return gradc.compile(PROGRAM, target=request.param)


@pytest.fixture(scope="module")
def ref():
    return gradc.compile(PROGRAM, target="reference")


def fd(f, args, i):
    """The central-difference gradient of the scalar f(*args) with respect to args[i]."""
    x = np.asarray(args[i], np.float64)
    out = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        vals = []
        for s in (1, -1):
            xx = x.copy()
            xx[k] += s * EPS
            vals.append(float(f(*(args[:i] + [xx] + args[i + 1:]))))
        out[k] = (vals[0] - vals[1]) / (2 * EPS)
    return out


def rnn_args(T=4, B=2, H=3):
    return [RNG.standard_normal((B, H)), RNG.standard_normal((T, B, H)), 0.5 * RNG.standard_normal((H, H))]


def np_rnn(h0, xs, W):
    h = h0
    for x in xs:
        h = np.tanh(h @ W + x)
    return np.sum(h * h)


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_rnn_value_matches_numpy(m):
    args = rnn_args()
    close(m.rnn(*args), np_rnn(*args), 1e-12)


@pytest.mark.parametrize("fn", ["rnn_grad", "rnn_ckpt_grad", "rnn_grad_c3"])
def test_rnn_grad_against_finite_differences(m, fn):
    args = rnn_args(T=5)
    got = getattr(m, fn)(*args)
    for i, g in enumerate(got):
        close(g, fd(np_rnn, args, i))


def test_value_and_grad_vjp_jvp(m):
    args = rnn_args()
    v, gW = m.rnn_vg(*args)
    close(v, np_rnn(*args), 1e-12)
    close(gW, fd(np_rnn, args, 2))
    gh, gW2 = m.rnn_vjp(*args, 2.0)
    close(gh, 2 * fd(np_rnn, args, 0))
    close(gW2, 2 * gW)
    th, tW = RNG.standard_normal(args[0].shape), RNG.standard_normal(args[2].shape)
    value, tangent = m.rnn_jvp(*args, th, tW)
    want = (np_rnn(args[0] + EPS * th, args[1], args[2] + EPS * tW) -
            np_rnn(args[0] - EPS * th, args[1], args[2] - EPS * tW)) / (2 * EPS)
    close(value, np_rnn(*args), 1e-12)
    close(tangent, want)


def test_hessian_vector_product_through_the_loop(m):
    """jvp(grad(f)): forward over reverse through the recurrence."""
    args = rnn_args(T=3)
    t = RNG.standard_normal(args[2].shape)
    g, hv = m.rnn_hvp(*args, t)
    gW = lambda W: m.rnn_grad(args[0], args[1], W)[2]
    close(g, gW(args[2]))
    close(hv, (gW(args[2] + EPS * t) - gW(args[2] - EPS * t)) / (2 * EPS), 1e-5)


def test_wrt_a_var_defined_before_the_loop(m):
    args = rnn_args()
    f = lambda h: np.sum(_after(h, args[1], args[2]))
    close(m.pre_grad(*args), fd(f, [args[0] * 2.0], 0))


def _after(h, xs, W):
    for x in xs:
        h = np.tanh(h @ W + x)
    return h


def test_run_time_indices_and_slices(m):
    x = RNG.standard_normal(7)

    def f(x):
        s = 0.0
        for t in range(len(x) - 2):
            s += np.sum(x[t:t + 3] ** 2) * (t + 1)
            s += x[t + 1] * x[t]
        return s
    close(m.window(x), f(x), 1e-12)
    close(m.window_grad(x), fd(f, [x], 0))


def test_nested_loops_and_branches(m, ref):
    A, v = 0.5 * RNG.standard_normal((3, 3)), RNG.standard_normal(3)

    def f(A, v):
        u = v
        for _ in range(3):
            w = u
            for _ in range(2):
                w = np.tanh(A @ w)
            u = u + w if np.sum(w) > 0 else u - 0.5 * w
        return np.sum(u * u)
    close(m.nested(A, v), f(A, v), 1e-12)
    gA, gv = m.nested_grad(A, v)
    close(gA, fd(f, [A, v], 0))
    close(gv, fd(f, [A, v], 1))
    # the second derivative d/dA of sum(d f / d v), against differences of the first derivative
    h = lambda A: np.sum(m.nested_grad(A, v)[1])
    close(m.nested_gg(A, v), fd(h, [A], 0), 1e-5)


def test_while_with_an_integer_counter(m):
    def f(x, n=4):
        for _ in range(n):
            x = x * 0.5 + np.sin(x)
        return x
    close(m.halve(0.7, 4), f(0.7), 1e-12)
    close(m.halve_grad(0.7, 4), fd(f, [0.7], 0))
    close(m.halve_gg(0.7, 4), fd(lambda x: m.halve_grad(x, 4), [0.7], 0), 1e-5)
    # no trips: the result is the input, its derivative 1
    close(m.halve(0.7, 0), 0.7, 0)
    close(m.halve_grad(0.7, 0), 1.0, 0)


def test_hook_and_detach_in_a_body(m):
    # h3 = h0 w^3; each step's hook doubles the gradient flowing back through it: 8 w^3
    close(m.hooked_grad(1.5, 0.7), 8 * 0.7 ** 3, 1e-12)
    # h <- detach(h) w + h: d h_{t+1} / d h_t = 1 (the detached part is constant), d/dw = h_t
    gh, gw = m.detached_grad(1.5, 0.7)
    close(gh, 1.0, 1e-12)
    h = [1.5]
    for _ in range(3):
        h.append(h[-1] * 0.7 + h[-1])
    close(gw, sum(h[:3]), 1e-12)


def test_a_new_trip_count_does_not_recompile(m):
    for T in (1, 6, 0, 3):
        args = rnn_args(T=T)
        close(m.rnn(*args), np_rnn(*args), 1e-12)
        got = m.rnn_grad(*args)
        close(got[2], fd(np_rnn, args, 2))


def test_a_run_time_index_out_of_range_raises(m):
    with pytest.raises(IndexError, match=r"index 3 is out of range for axis 0 \(size N\)"):
        m.count(np.ones(3))


def _err(src):
    with pytest.raises(CompileError) as info:
        gradc.compile(src, target="reference")
    return info.value


@pytest.mark.parametrize("src,says,line", [
    ("fn f(x: f64) -> f64 {\n  let y = x\n  y = 2.0\n  return y\n}", "cannot assign to 'y': it is not a var", 3),
    ("fn f(x: f64) -> f64 {\n  z = 2.0\n  return x\n}", "no var of that name", 2),
    ("fn f(x: f64[N]) -> f64 {\n  var h = x\n  for t in 0..3 {\n    h = sum(h)\n  }\n  return h\n}",
     "the loop changes 'h' from f64[N] to f64", 4),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  if x > 0 { y = x * 2.0 } else { y = cast(x, f32) }\n  return y\n}",
     "a variable has one type after an if", 3),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  while y { y = y * 0.5 }\n  return y\n}",
     "a while condition must be a scalar bool", 3),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  for t in 0..2.5 { y = y * 0.5 }\n  return y\n}",
     "a loop bound must be an integer", 3),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  for t in 0..3 { return y }\n  return y\n}",
     "return inside a loop", 3),
    ("fn f(x: f64[N]) -> f64 {\n  var y = 0.0\n  for t in 0..N { y = y + sum(x[t:N]) }\n  return y\n}",
     "needs a constant length", 3),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  let y = 2.0\n  return y\n}", "'y' is a var", 3),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  for t in 0..3 checkpoint(0) { y = y * 0.5 }\n  return y\n}",
     "checkpoint interval must be at least 1", 3),
    ("fn f(x: f64) -> f64 {\n  var y = x\n  while x > 0.0 { let z = 1 }\n  return y\n}",
     "assigns no var", 3),
    ("fn f(x: f64[N]) -> f64 {\n  var y = 0.0\n  for t in 0..3 { y = y + x[cast(t, f64)] }\n  return y\n}",
     "an index must be an integer scalar", 3),
    ("fn f(x: f64[3]) -> f64 {\n  var y = 0.0\n  for t in 0..3 { y = y + sum(x[t:t+4]) }\n  return y\n}",
     "does not fit axis 0", 3),
    ("fn f(x: f64) -> f64 { return x * x }\nlet g = jvp(f, checkpoint=true)", "jvp has no argument 'checkpoint'", 2),
    ("fn f(x: f64) -> f64 { return x * x }\nlet g = grad(f, checkpoint=0)", "checkpoint= takes true", 2),
])
def test_diagnostics_with_positions(src, says, line):
    ex = _err(src)
    assert says in str(ex), str(ex)
    assert ex.loc is not None and ex.loc.line == line, (ex.loc, str(ex))


def test_a_derived_loop_called_twice_and_differentiated_again(m):
    def acc(x):
        s = 0.0
        for v in x:
            s = s + np.sin(v) * s + v
        return s
    a, b = np.linspace(0.1, 1, 3), np.linspace(-1, 0.5, 6)
    ga = lambda x: fd(acc, [x], 0)
    f = lambda a, b: np.sum(m.acc_grad(a) ** 2) + 2 * np.sum(m.acc_grad(b))
    close(m.acc_grad(a), ga(a))
    close(m.twice(a, b), f(a, b), 1e-12)
    got = m.twice_grad(a, b)
    close(got[0], fd(f, [a, b], 0), 1e-5)
    close(got[1], fd(f, [a, b], 1), 1e-5)


def test_checkpoint_per_transform(m):
    for T in (1, 7, 10):
        args = rnn_args(T=T)
        close(m.rnn_grad_cs(*args), fd(np_rnn, args, 2))


def test_memory_report_counts_what_the_reverse_pass_reads():
    """Per iteration the reverse pass of h <- tanh(h @ W + x) reads h (for the product's
    gradient) and tanh's result (for its derivative): 2 f64[B, H] a step, T steps. With
    checkpoint(2), the states of every second step; each segment's 2 steps then store the
    same two values again."""
    T, B, H = 100, 8, 16
    text = gradc.memory_report(PROGRAM, "rnn_grad", T=T, B=B, H=H)
    assert f"stored in all: 16·T·B·H bytes = {16 * T * B * H:,} bytes" in text, text
    assert "stores per iteration: state 'h': f64[B, H] (8·B·H bytes)" in text
    assert "stores per iteration: tanh" in text
    text = gradc.memory_report(PROGRAM, "rnn_ckpt_grad", T=T, B=B, H=H)
    assert "ceil(T / 2) iterations" in text, text
    assert f"stored in all: 8·ceil(T / 2)·B·H bytes = {8 * 50 * B * H:,} bytes" in text, text
    assert f"stored in all: 32·B·H bytes = {32 * B * H:,} bytes" in text, text
    text = gradc.memory_report(PROGRAM, "rnn_grad_cs", T=T, B=B, H=H)
    assert "ceil(T / ceil(sqrt(T))) iterations" in text, text
    assert f"= {8 * 10 * B * H:,} bytes" in text, text
    assert "stores nothing for a reverse pass" in gradc.memory_report(PROGRAM, "rnn")


def test_memory_report_from_the_command_line(tmp_path):
    import subprocess
    import sys
    f = tmp_path / "rnn.ad"
    f.write_text(PROGRAM)
    r = subprocess.run([sys.executable, "-m", "gradc", "build", "--emit", "memory", str(f), "--size", "T=10",
                        "--size", "B=2", "--size", "H=3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "function rnn_grad" in r.stdout and f"= {16 * 10 * 2 * 3:,} bytes" in r.stdout
    r = subprocess.run([sys.executable, "-m", "gradc", "build", "--emit", "memory", str(f), "--size", "T"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "expected DIM=N" in r.stderr


SAMPLES = __import__("pathlib").Path(__file__).parent.parent / "samples"


def test_samples_against_finite_differences():
    """The loop samples' derivatives against central differences of NumPy versions of them."""
    rk4 = gradc.compile(SAMPLES / "rk4_lotka_volterra.ad")

    def lv(z, p):
        x, y = z
        return np.array([p[0] * x - p[1] * x * y, p[2] * x * y - p[3] * y])

    def prey(z0, p, dt=0.05, n=13):
        z = np.array(z0, float)
        for _ in range(n):
            k1 = lv(z, p)
            k2 = lv(z + 0.5 * dt * k1, p)
            k3 = lv(z + 0.5 * dt * k2, p)
            k4 = lv(z + dt * k3, p)
            z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return z[0]
    z0, p = np.array([0.8, 0.6]), np.array([1.0, 0.5, 0.2, 0.3])
    close(rk4.prey_final(z0, p, 0.05, 13), prey(z0, p), 1e-12)
    gz, gp = rk4.prey_grad(z0, p, 0.05, 13)
    close(gz, fd(prey, [z0, p], 0))
    close(gp, fd(prey, [z0, p], 1))
    close(rk4.prey_grad2(z0, p, 0.05, 13), fd(lambda z: rk4.prey_grad(z, p, 0.05, 13)[0][0], [z0], 0), 1e-5)

    newton = gradc.compile(SAMPLES / "newton_sqrt.ad")
    for a in (0.3, 2.0, 17.0):
        close(newton.newton_sqrt(a), np.sqrt(a), 1e-12)
        close(newton.newton_sqrt_grad(a), 0.5 / np.sqrt(a), 1e-9)
        close(newton.newton_sqrt_grad2(a), -0.25 * a ** -1.5, 1e-7)

    pw = gradc.compile(SAMPLES / "piecewise.ad")
    f = lambda x: x * x if x > 0 else -x
    for x in (-1.3, 0.4, 2.0):
        close(pw.piecewise_grad(x), fd(f, [x], 0))


def test_a_stack_too_large_for_memory_is_a_memory_error():
    """A trip count whose stored states could not fit: MemoryError, never a wrapped size."""
    m = gradc.compile("""
fn f(x: f64[N], n: i64) -> f64 {
    var s = 0.0
    for t in 0..n { s = sin(s) + x[0] }
    return s
}
let g = grad(f, wrt=x)
""")
    close(m.g(np.ones(3), 2), [np.cos(1.0) + 1, 0, 0], 1e-12)
    with pytest.raises(MemoryError):
        m.g(np.ones(3), 10 ** 17)
