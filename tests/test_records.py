"""Records (`struct`): fields read as p.W1, gradients as records of the same type, records built
and returned; from Python dicts, dataclasses and named tuples in, named tuples out, on every
target, through module files, the import hook and the command line; the diagnostics."""
import collections
import dataclasses
import json
import sys

import numpy as np
import pytest

import gradc
from gradc import cli
from conftest import compile_error, with_iree

TARGETS = with_iree(("reference", "cpu", "cuda-sim"))

PROGRAM = """
struct Mlp { W1: f64[D, H], b1: f64[H], W2: f64[H, C], b2: f64[C] }

fn loss(p: Mlp, x: f64[N, D], y: f64[N, C]) -> f64 {
    return cross_entropy(tanh(x @ p.W1 + p.b1) @ p.W2 + p.b2, y)
}
let loss_grad = grad(loss, wrt=p)
let loss_vg = value_and_grad(loss, wrt=(p, x))
let loss_jvp = jvp(loss, wrt=p)

fn step(p: Mlp, x: f64[N, D], y: f64[N, C], lr: f64) -> Mlp {
    let g = loss_grad(p, x, y)
    return Mlp { W1: p.W1 - lr * g.W1, b1: p.b1 - lr * g.b1, W2: p.W2 - lr * g.W2, b2: p.b2 - lr * g.b2 }
}
let step_vjp = vjp(step, wrt=p)

fn scaled(p: Mlp, k: f64) -> (Mlp, f64) {
    return Mlp { b2: p.b2 * k, W2: p.W2, b1: p.b1, W1: p.W1 * k }, sum(p.b1)
}
"""

D, H, C, N = 3, 4, 2, 6


def _data(seed=0):
    rng = np.random.default_rng(seed)
    p = {"W1": rng.normal(0, 0.5, (D, H)), "b1": rng.normal(0, 0.1, H),
         "W2": rng.normal(0, 0.5, (H, C)), "b2": np.zeros(C)}
    x = rng.normal(size=(N, D))
    y = np.eye(C)[(x[:, 0] > 0).astype(int)]
    return p, x, y


def _np_loss(p, x, y):
    z = np.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    z = z - z.max(-1, keepdims=True)
    return np.mean(-np.sum(y * (z - np.log(np.exp(z).sum(-1, keepdims=True))), -1))


@pytest.fixture(scope="module", params=TARGETS)
def mod(request):
    return gradc.compile(PROGRAM, target=request.param)


def test_training_an_mlp_lowers_the_loss(mod):
    p, x, y = _data()
    losses = [mod.loss(p, x, y)]
    for _ in range(20):
        p = mod.step(p, x, y, 0.5)
        assert type(p) is mod.Mlp and p._fields == ("W1", "b1", "W2", "b2")
        losses.append(mod.loss(p, x, y))
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    np.testing.assert_allclose(losses[-1], _np_loss(p._asdict(), x, y), rtol=1e-12)


def test_the_gradient_is_a_record_that_matches_finite_differences(mod):
    p, x, y = _data(1)
    g = mod.loss_grad(p, x, y)
    assert type(g).__name__ == "Mlp" and type(g) is mod.Mlp
    eps = 1e-6
    for name in g._fields:
        fd = np.zeros_like(p[name])
        for k in np.ndindex(p[name].shape):
            hi, lo = {**p, name: p[name].copy()}, {**p, name: p[name].copy()}
            hi[name][k] += eps
            lo[name][k] -= eps
            fd[k] = (_np_loss(hi, x, y) - _np_loss(lo, x, y)) / (2 * eps)
        np.testing.assert_allclose(getattr(g, name), fd, rtol=1e-6, atol=1e-9, err_msg=name)


def test_every_transform_with_records(mod):
    p, x, y = _data(2)
    g = mod.loss_grad(p, x, y)
    value, gp, gx = mod.loss_vg(p, x, y)
    np.testing.assert_allclose(value, _np_loss(p, x, y), rtol=1e-12)
    assert type(gp) is mod.Mlp and gx.shape == (N, D)
    for a, b in zip(g, gp):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # jvp: the tangent of p is a record (t_p); its tangent is the gradient's dot product with it
    t = {k: np.ones_like(v) for k, v in p.items()}
    v, tan = mod.loss_jvp(p, x, y, t)
    np.testing.assert_allclose(tan, sum(np.sum(a) for a in g), rtol=1e-10)
    # vjp of a function returning a record: one record cotangent (ct)
    ct = mod.Mlp(*(np.full_like(v, 0.5) for v in p.values()))
    got = mod.step_vjp(p, x, y, 0.1, ct)
    assert type(got) is mod.Mlp
    q = mod.step(p, x, y, 0.1)
    eps = 1e-6
    hi, lo = {**p, "b2": p["b2"] + eps * np.eye(C)[0]}, {**p, "b2": p["b2"] - eps * np.eye(C)[0]}
    fd = sum(np.sum(0.5 * (a - b)) for a, b in zip(mod.step(hi, x, y, 0.1), mod.step(lo, x, y, 0.1))) / (2 * eps)
    np.testing.assert_allclose(got.b2[0], fd, rtol=1e-6)
    # a record among several results, its fields built in any order
    r, s = mod.scaled(q, 2.0)
    np.testing.assert_allclose(r.W1, 2 * q.W1)
    np.testing.assert_allclose(s, q.b1.sum())


def test_a_record_is_a_dict_a_dataclass_or_a_named_tuple(mod):
    p, x, y = _data(3)
    want = mod.loss(p, x, y)

    @dataclasses.dataclass
    class Params:
        W1: np.ndarray
        b1: np.ndarray
        W2: np.ndarray
        b2: np.ndarray
    Mine = collections.namedtuple("Mine", ["b2", "W2", "b1", "W1"])      # any order of fields
    for given in (Params(**p), Mine(**p), mod.Mlp(**p)):
        assert mod.loss(given, x, y) == want
    assert mod.loss(p=p, x=x, y=y) == want


def test_mistakes_in_records_name_the_parameter_and_the_field(mod):
    p, x, y = _data(4)
    with pytest.raises(TypeError, match=r"loss: parameter 'p' \(Mlp\) is missing the field\(s\) b2"):
        mod.loss({k: v for k, v in p.items() if k != "b2"}, x, y)
    with pytest.raises(TypeError, match=r"loss: parameter 'p' \(Mlp\) has no field 'b3'"):
        mod.loss({**p, "b3": p["b2"]}, x, y)
    with pytest.raises(TypeError, match=r"loss: parameter 'p' expects a Mlp record \(a dict, dataclass or "
                                        r"named tuple with the fields W1, b1, W2, b2\), got ndarray"):
        mod.loss(x, x, y)
    with pytest.raises(ValueError, match=r"loss: dimension H is 4 from parameter 'p.W1', but parameter "
                                         r"'p.b1' has H = 5"):
        mod.loss({**p, "b1": np.zeros(5)}, x, y)
    with pytest.raises(ValueError, match=r"loss: dimension D is 3 from parameter 'p.W1', but parameter 'x'"):
        mod.loss(p, x[:, :2], y)
    with pytest.raises(TypeError, match=r"parameter 'p.b1' expects f64\[H\], got an array of dtype float32"):
        mod.loss({**p, "b1": p["b1"].astype(np.float32)}, x, y)


def test_out_buffers_and_accumulation_take_records(mod):
    p, x, y = _data(5)
    g = mod.loss_grad(p, x, y)
    acc = {k: np.zeros_like(v) for k, v in p.items()}
    for _ in range(2):
        r = mod.loss_grad(p, x, y, out=acc, accumulate=True)
    assert type(r) is mod.Mlp and r.W1 is acc["W1"]
    for k in g._fields:
        np.testing.assert_allclose(acc[k], 2 * getattr(g, k), rtol=1e-12)


def test_signatures_show_records(mod):
    assert repr(mod.loss_grad) == "<gradc function loss_grad(p: Mlp, x: f64[N, D], y: f64[N, C]) -> Mlp>"
    assert "Mlp {W1: f64[D, H], b1: f64[H], W2: f64[H, C], b2: f64[C]}" in mod.loss_grad.__doc__
    import inspect
    assert list(inspect.signature(mod.scaled).parameters)[:2] == ["p", "k"]
    assert "scaled(p: Mlp, k: f64) -> (Mlp, f64)" in repr(mod)


@pytest.mark.parametrize("target", ["cpu", "cuda-sim"])
def test_module_files_keep_the_records(tmp_path, target):
    path = gradc.build(PROGRAM, tmp_path / "mlp.gcm", target=target)
    m = gradc.load(path)
    p, x, y = _data(6)
    g = m.loss_grad(p, x, y)
    assert type(g) is gradc.compile(PROGRAM, target="reference").Mlp
    ref = gradc.compile(PROGRAM, target="reference").loss_grad(p, x, y)
    for a, b in zip(g, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_the_import_hook_gives_the_record_types(tmp_path, monkeypatch):
    (tmp_path / "mlp_rec_mod.ad").write_text(PROGRAM)
    monkeypatch.syspath_prepend(str(tmp_path))
    gradc.install_import_hook(target="reference")
    try:
        import mlp_rec_mod
        p, x, y = _data(7)
        assert type(mlp_rec_mod.loss_grad(mlp_rec_mod.Mlp(**p), x, y)) is mlp_rec_mod.Mlp
    finally:
        gradc.uninstall_import_hook()
        sys.modules.pop("mlp_rec_mod", None)


def test_the_command_line_reads_and_prints_records(tmp_path, capsys):
    f = tmp_path / "lin.ad"
    f.write_text("struct Lin { w: f64[K], b: f64 }\n"
                 "fn f(p: Lin, x: f64[K]) -> f64 { return sum(p.w * x) + p.b }\n"
                 "let df = grad(f, wrt=p)\n")
    assert cli.main(["run", str(f), "df", 'p={"w": [1, 2], "b": 3}', "x=[3, 4]", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"function": "df", "outputs": [{"w": [3.0, 4.0], "b": 1.0}]}
    assert cli.main(["run", str(f), "df", "p.w=[1, 2]", "p.b=3", "x=[3, 4]"]) == 0
    assert capsys.readouterr().out.strip() == "Lin(w=[3., 4.], b=1.)"
    assert cli.main(["run", str(f), "df", "p.w=[1, 2]", "x=[3, 4]"]) == 1
    assert "parameter 'p' (Lin) is missing the field(s) b" in capsys.readouterr().err


def test_rules_of_a_function_of_records():
    src = """
struct Lin { w: f64[K], b: f64 }
fn apply(p: Lin, x: f64[K]) -> f64 { return sum(p.w * x) + p.b }
vjp apply(p, x, g) { return Lin { w: g * x * 0.5, b: g }, g * p.w }     # half the weight's gradient
jvp apply(p, x, t_p, t_x) { return sum(t_p.w * x) * 0.5 + t_p.b + sum(p.w * t_x) }
fn f(p: Lin, x: f64[K]) -> f64 { return apply(p, x) ** 2 }
let g = grad(f, wrt=(p, x))
let j = jvp(f, wrt=p)
"""
    p, x = {"w": np.array([1.0, -2.0]), "b": 0.5}, np.array([0.5, 0.25])
    a = p["w"] @ x + p["b"]
    for target in TARGETS:
        m = gradc.compile(src, target=target)
        gp, gx = m.g(p, x)
        np.testing.assert_allclose(gp.w, 2 * a * x * 0.5)
        np.testing.assert_allclose(gp.b, 2 * a)
        np.testing.assert_allclose(gx, 2 * a * p["w"])
        np.testing.assert_allclose(m.j(p, x, {"w": np.ones(2), "b": 1.0})[1], 2 * a * (x.sum() * 0.5 + 1))


def test_fields_in_loops_and_wrt_one_field():
    src = """
struct Lin { w: f64[K], b: f64 }
fn f(p: Lin, x: f64[K]) -> f64 {
    var h = x
    for t in 0..3 { h = tanh(h * p.w + p.b) }
    return sum(h)
}
let df = grad(f, wrt=p.w)
"""
    p, x = {"w": np.array([0.3, -0.7]), "b": 0.1}, np.array([0.5, 1.0])

    def f(w):
        h = x
        for _ in range(3):
            h = np.tanh(h * w + p["b"])
        return h.sum()
    eps = 1e-6
    fd = np.array([(f(p["w"] + eps * e) - f(p["w"] - eps * e)) / (2 * eps) for e in np.eye(2)])
    for target in TARGETS:
        np.testing.assert_allclose(gradc.compile(src, target=target).df(p, x), fd, rtol=1e-7)


@pytest.mark.parametrize("src,where,message", [
    ("struct P { a: f64[N] }\nfn f(p: P) -> f64 { return sum(p.b) }\n", "2:34", "P has no field 'b'"),
    ("struct P { a: f64[N] }\nfn f(x: f64[N]) -> f64 { return sum(x.a) }\n", "2:39",
     "`.a` reads a field of a record, but this is a value of type f64[N]"),
    ("struct P { a: f64[N], a: f64 }\n", "1:23", "field 'a' appears twice in P"),
    ("struct P { a: f64[N] }\nstruct P { b: f64 }\n", "2:1", "'P' is defined twice"),
    ("struct P { a: f64[N] }\nfn P(x: f64) -> f64 { return x }\n", "2:1", "'P' is defined twice"),
    ("struct P { a: f64[N] }\nfn f(p: P[N]) -> f64 { return 1.0 }\n", "2:9", "the record type P takes no dimensions"),
    ("struct P { a: Q }\n", "1:15", "field 'a' of P has the type 'Q'"),
    ("struct P { _a: f64 }\n", "1:12", "field '_a' of P: a record reaches Python as a named tuple"),
    ("struct P {}\n", "1:1", "struct P has no fields"),
    ("struct P { a: f64[N], b: f64 }\nfn f(x: f64[N]) -> P { return P { a: x } }\n", "2:31",
     "P needs the field(s) b"),
    ("struct P { a: f64[N], b: f64 }\nfn f(x: f64[N]) -> P { return P { a: x, b: x } }\n", "2:44",
     "field b of P is f64, got f64[N]"),
    ("struct P { a: f64[N] }\nfn f(x: f64[N]) -> P { return Q { a: x } }\n", "2:31", "unknown struct 'Q'"),
    ("struct P { a: f64[N] }\nfn f(x: f64[N]) -> P { return P { a: x, c: x } }\n", "2:41", "P has no field 'c'"),
    ("struct P { a: f64[N] }\nfn f(x: f64[N]) -> f64[N] { return P { a: x } }\n", "2:36",
     "f returns a record of type P, but is declared to return f64[N]"),
    ("struct P { a: f64[N] }\nfn g(p: P) -> f64 { return sum(p.a) }\nfn f(x: f64[N]) -> f64 { return g(x) }\n",
     "3:33", "argument 'p' of g: expected a record of type P, got a value of type f64[N]"),
    ("struct P { a: f64[N] }\nfn g(p: P) -> f64 { return sum(p.a) }\nfn f(x: f64[M]) -> f64 { return g(P { a: sum(x) }) }\n",
     "3:42", "field a of P is f64[N], got f64"),
    ("struct P { a: f64[N] }\nfn f(p: P) -> f64 { return sum(p) }\n", "2:28",
     "expected an array value, got a record of type P"),
    ("struct P { a: f64[N] }\nfn f(p: P) -> f64 { return sum(p.a) }\nlet g = grad(f, wrt=q)\n", "3:21",
     "'q' is not a parameter or a let binding of f"),
])
def test_record_diagnostics(src, where, message):
    err = str(compile_error(src))
    assert f"<source>:{where}: error: {message}" in err, err
