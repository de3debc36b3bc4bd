"""The native CPU target against the NumPy reference: every op, forward and derivative, f32 and f64."""
import threading

import numpy as np
import pytest

import gradc
from gradc.api import signature
from gradc.compiler import autodiff
from gradc.compiler.builder import Emitter, fresh
from gradc.compiler.codegen import compile_graphs
from gradc.compiler.interp import run
from gradc.compiler.ir import FLOATS, Graph, concrete
from gradc.compiler.ops import OPS
from gradc.compiler.ops_index import arg_extremum
from gradc.compiler.pipeline import optimize
from gradc.runtime.cpu import load_native

import control_cases as cc
import rule_cases as rc

SIZES = ({"N": 3, "M": 5}, {"N": 8, "M": 2})
TOL = {"f32": 1e-5, "f64": 1e-12}


def _case(name, params, body):
    """params: [(shape, dtype or 'F' for the case's float type, domain)]; body(e, *values) -> outputs."""
    return name, params, body


def _un(op, dom="any", **kw):
    return _case(op, [(("N", 4), "F", dom)], lambda e, x: e.emit(op, x, **kw))


def _bin(op, sa, sb, da="any", db="any"):
    return _case(f"{op}{sa}{sb}", [(sa, "F", da), (sb, "F", db)], lambda e, x, y: e.emit(op, x, y))


CASES = [_un(op, dom) for op, dom in [
    ("neg", "any"), ("sin", "any"), ("cos", "any"), ("tan", "unit"), ("exp", "any"), ("log", "pos"),
    ("log1p", "pos"), ("expm1", "any"), ("sqrt", "pos"), ("tanh", "any"), ("sigmoid", "wide"),
    ("softplus", "wide"), ("abs", "any"), ("relu", "any"), ("sign", "zeros"), ("detach", "any")]]
TIES = ("gmul", "tie", "maximum", "minimum")
CASES += [_bin(op, sa, sb, "pos" if op == "pow" else "ties" if op in TIES else "any",
               "ties" if op in TIES else "any")
          for op in ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "gmul", "tie")
          for sa, sb in ((("N", 4), ("N", 4)), (("N", 4), (4,)), (("N", 1), (1, "M")), ((), ("N",)))]
CASES += [_bin(op, ("N", 3), (3,), "ties", "ties") for op in ("lt", "le", "gt", "ge", "eq", "ne")]
CASES += [_bin(op, sa, sb, "any", db) for op in ("floordiv", "mod")
          for sa, sb, db in ((("N", 4), ("N", 4), "ties"), (("N", 4), (4,), "pos"), ((), ("N",), "any"))]
CASES += [
    _case("logic", [(("N",), "F", "zeros"), (("N",), "F", "zeros")],
          lambda e, x, y: e.where(e.or_(e.and_(e.lt(x, y), e.not_(e.eq(x, 0))), e.ge(y, 0.5)), x, e.mul(y, 3))),
    _case("where", [(("N", 4), "F", "any"), ((4,), "F", "any")],
          lambda e, x, y: e.where(e.gt(x, 0), x, y)),
    _case("clamp", [(("N", 4), "F", "any"), ((), "F", "lo"), ((4,), "F", "hi")],
          lambda e, x, lo, hi: e.clamp(x, lo, hi)),
    _case("cast", [(("N", 4), "F", "any")], lambda e, x: e.mul(e.cast(e.cast(x, dtype="f32"), dtype=x.dtype),
                                                                e.cast(e.cast(e.mul(x, 4), dtype="i32"), dtype=x.dtype))),
    _case("const", [(("N", 4), "F", "any")], lambda e, x: (e.add(x, e.const(2.5, x.dtype, ("N", 4))),
                                                           e.const(-1.5, x.dtype, ("N",)))),
    _case("literal", [(("N", 3), "F", "any")],
          lambda e, x: e.mul(x, e.emit("literal", data=(1.5, -2.0, 0.25), shape=(3,), dtype=x.dtype))),
    _case("numel", [(("N", "M"), "F", "any")],
          lambda e, x: e.div(e.sum(x, axes=(0, 1), keepdims=False), e.numel(x, axes=(0, 1), dtype=x.dtype))),
    _case("sum_all", [(("N", 4), "F", "any")], lambda e, x: e.sum(e.exp(x), axes=(0, 1), keepdims=False)),
    _case("sum_0", [(("N", "M", 3), "F", "any")], lambda e, x: e.sum(e.sin(x), axes=(0,), keepdims=False)),
    _case("sum_1k", [(("N", "M", 3), "F", "any")], lambda e, x: e.sum(x, axes=(1,), keepdims=True)),
    _case("sum_2", [(("N", "M", 3), "F", "any")], lambda e, x: e.sum(x, axes=(1, 2), keepdims=False)),
    _case("max", [(("N", 4), "F", "ties")], lambda e, x: e.max(x, axes=(1,), keepdims=False)),
    _case("max0", [(("N", 4), "F", "ties")], lambda e, x: e.max(x, axes=(0,), keepdims=True)),
    _case("min", [(("N", 4), "F", "ties")], lambda e, x: e.min(x, axes=(0, 1), keepdims=False)),
    _case("reshape", [((3, 4), "F", "any")], lambda e, x: e.reshape(e.exp(x), shape=(2, 6))),
    _case("reshape_sym", [(("N", 4), "F", "any")], lambda e, x: e.reshape(x, shape=(4, "N"))),
    _case("reshape_unit", [(("N", 4), "F", "any")], lambda e, x: e.reshape(x, shape=("N", 1, 4, 1))),
    _case("broadcast_to", [(("N", 1), "F", "any")], lambda e, x: e.broadcast_to(x, shape=(2, "N", 4))),
    _case("transpose", [((2, "N", 4), "F", "any")], lambda e, x: e.transpose(e.sin(x), perm=(2, 0, 1))),
    _case("slice", [(("N", 4), "F", "any")], lambda e, x: e.slice(x, spec=(("s", 1, None, None), ("i", -1)))),
    _case("slice_neg", [(("N", 4), "F", "any")], lambda e, x: e.sub(e.slice(x, spec=(("s", 1, None, None),)),
                                                                   e.slice(x, spec=(("s", None, -1, None),)))),
    _case("slice_step", [((6, "N"), "F", "any")],
          lambda e, x: e.slice(x, spec=(("s", None, -1, 2), ("s", -2, None, None)))),
    _case("slice_rev", [((6, 4), "F", "any")], lambda e, x: e.slice(x, spec=(("s", None, None, -2), ("i", 1)))),
    _case("pad", [((2, "N"), "F", "any")],
          lambda e, x: e.pad(x, spec=(("s", 1, 3, None), ("s", 0, None, None)), shape=(4, "N"))),
    _case("concat", [((2, "N"), "F", "any"), ((1, "N"), "F", "any"), ((3, "N"), "F", "any")],
          lambda e, x, y, z: e.concat(x, e.exp(y), z, axis=0)),
    _case("concat_sym", [((3, 2), "F", "any"), (("N", 2), "F", "any")], lambda e, x, y: e.concat(x, y, axis=0)),
    _case("matmul", [(("N", 4), "F", "any"), ((4, "M"), "F", "any")], lambda e, x, y: e.matmul(x, y)),
    _case("matmul_t", [((4, "N"), "F", "any"), (("M", 4), "F", "any")],
          lambda e, x, y: e.matmul(e.transpose(e.tanh(x), perm=(1, 0)), e.transpose(y, perm=(1, 0)))),
    _case("one_hot", [(("N",), "i32", "labels"), (("N", 5), "F", "any")],
          lambda e, i, y: e.mul(e.one_hot(e.check_range(i, lo=0, hi=5, error="ValueError", message="{value}"),
                                          n=5, dtype=y.dtype), y)),
    _case("softmax", [(("N", 4), "F", "any")], lambda e, x: e.softmax(x, axis=-1)),
    _case("logsumexp", [(("N", 4), "F", "any")], lambda e, x: e.logsumexp(x, axis=0)),
    # loops and branches: native loops around their bodies (tests/control_cases.py)
    _case("for", [(("N", 3), "F", "any"), ((3,), "F", "unit")], cc.recurrence),
    _case("for_ckpt", [(("N", 3), "F", "any"), ((3,), "F", "unit")],
          lambda e, x, w: cc.recurrence(e, x, w, checkpoint=-1)),
    _case("for_rev", [(("N", 3), "F", "any"), ((3,), "F", "unit")],
          lambda e, x, w: cc.recurrence(e, x, w, checkpoint=2, reverse=True)),
    _case("while", [((3,), "F", "pos")], cc.shrink),
    _case("if", [((), "F", "any"), ((3,), "F", "any")], cc.branch),
    _case("dyn_slice", [((4, "N"), "F", "any")], lambda e, x: cc.window(e, e.slice(x, spec=(("s", 0, 4, None), ("s", 0, 3, None))))),
    _case("dyn_unslice", [(("N", 3), "F", "any")], lambda e, g: cc.unwindow(e, e.slice(g, spec=(("s", 0, 2, None),)))),
    # products, convolution and pooling (compiler/ops_nn.py)
    _case("bmm", [(("N", 3, 4), "F", "any"), (("N", 4, 5), "F", "any")], lambda e, x, y: e.matmul(x, y)),
    _case("bmm_bcast", [((2, 1, 3, 4), "F", "any"), (("N", 4, 2), "F", "any")],
          lambda e, x, y: e.matmul(e.tanh(x), y)),
    _case("bmm_t", [(("N", 4, 3), "F", "any"), ((5, 4), "F", "any")],
          lambda e, x, y: e.matmul(e.transpose(x, perm=(0, 2, 1)), e.transpose(y, perm=(1, 0)))),
    _case("mm_rows", [(("N", 3, 4), "F", "any"), ((4, "M"), "F", "any")],
          lambda e, x, y: e.matmul(x, y, mkn=(2, 1, 1))),
    _case("mm_groups", [((2, "N", 2, 3), "F", "any"), ((2, 3, "M"), "F", "any")],
          lambda e, x, y: e.matmul(x, y, mkn=(1, 2, 1))),
    _case("mm_vec", [((4,), "F", "any"), (("N", 4, 3), "F", "any")], lambda e, x, y: e.matmul(x, y, mkn=(0, 1, 1))),
    _case("window", [(("N", 5, 4), "F", "any")], lambda e, x: e.window(
        x, offset=(1, 2), kernel=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 1), fill=-1.5)),
    _case("unwindow", [(("N", 3, 4), "F", "any")], lambda e, g: e.unwindow(
        g, offset=(1, 0), kernel=(2, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), shape=(5, 6))),
    _case("im2col", [((2, 4, 5, "N"), "F", "any")], lambda e, x: e.im2col(
        x, kernel=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 1), groups=2)),
    _case("col2im", [(("N", 3, 3, 2), "F", "any")], lambda e, c: e.col2im(
        c, kernel=(2,), stride=(2,), padding=(1,), dilation=(2,), groups=1, shape=("N", 3, 5))),
    _case("conv2d", [(("N", 4, 5, "M"), "F", "any"), ((6, 2, 2, 3), "F", "any"), ((6,), "F", "any")],
          lambda e, x, w, b: e.conv(x, w, b, stride=(1, 1), padding=(1, 1), dilation=(2, 1), groups=2)),
    _case("conv1d", [(("N", 2, 7), "F", "any"), ((3, 2, 3), "F", "any")],
          lambda e, x, w: e.relu(e.conv(x, w, stride=(2,), padding=(1,), dilation=(1,)))),
    _case("max_pool", [(("N", 2, 5, 4), "F", "ties")],
          lambda e, x: e.max_pool(x, (2, 2), (2, 1), (1, 1), (1, 1))),
    _case("avg_pool", [(("N", 3, "M"), "F", "any")], lambda e, x: e.avg_pool(x, (3,), (1,), (1,))),
    _case("einsum", [(("N", 3, 4), "F", "any"), (("N", 4), "F", "any")],
          lambda e, x, y: (e.einsum(x, y, spec="bij,bj->bi"), e.einsum(x, spec="bij->j"))),
]
# calls of functions with derivative rules of their own (tests/rule_cases.py), inlined
CASES += [
    _case("custom", [(("N", 4), "F", "any"), ((4,), "F", "any")], rc.ruled),
    _case("custom_jvp", [(("N", 4), "F", "any"), ((4,), "F", "any")], rc.ruled_jvp),
    # batching: a loop's stacked rows read as the batch (as_shape)
    _case("as_shape", [(("N", 3), "F", "any")], cc.stack_rows),
]
INT_OPS = ("lt", "ge", "eq", "clamp", "where", "neg", "abs", "sign", "relu")


def _checked(e, i, n):
    return e.check_range(i, lo=-n, hi=n, error="IndexError", message="{value}")


# integer indexing, scans, iota, erf (compiler/ops_index.py): index parameters in [-4, 5), on
# axes of size 5 (negative ones count from the end; repeats add up in the scatters)
CASES += [
    _case("take", [((5, "N"), "F", "any"), (("M", 2), "i64", "any")],
          lambda e, x, i: e.take(x, _checked(e, i, 5), axis=0)),
    _case("take_1", [(("N", 5), "F", "any"), (("M",), "i32", "any")],
          lambda e, x, i: e.take(e.exp(x), _checked(e, i, 5), axis=1)),
    _case("index_add", [((5, "N"), "F", "any"), (("M",), "i64", "any"), (("M", "N"), "F", "any")],
          lambda e, x, i, v: e.index_add(x, _checked(e, i, 5), e.sin(v), axis=0)),
    _case("take_along_axis", [(("N", 5), "F", "any"), (("N", 3), "i64", "any")],
          lambda e, x, i: e.take_along_axis(x, _checked(e, i, 5), axis=1)),
    _case("index_add_along", [(("N", 5), "F", "any"), ((1, 3), "i64", "any"), (("N", 3), "F", "any")],
          lambda e, x, i, v: e.index_add_along(x, _checked(e, i, 5), v, axis=1)),
    _case("cumsum", [(("N", 4), "F", "any")], lambda e, x: e.cumsum(x, axis=1, reverse=False)),
    _case("cumsum_rev", [(("N", 4), "F", "any")], lambda e, x: e.cumsum(e.tanh(x), axis=0, reverse=True)),
    _case("cumprod", [(("N", 4), "F", "zeros")], lambda e, x: e.cumprod(x, axis=1)),
    _case("cumprod_0", [(("N", 3), "F", "zeros")], lambda e, x: e.cumprod(x, axis=0)),
    _case("erf", [(("N", 4), "F", "wide")], lambda e, x: e.erf(e.mul(x, 0.1))),
    _case("iota", [(("N", 4), "F", "any")],
          lambda e, x: e.mul(x, e.cast(e.iota(shape=("N", 4), axis=0, dtype="i64"), dtype=x.dtype))),
    _case("argmax", [(("N", 4), "F", "ties")],
          lambda e, x: (arg_extremum(e, x, 1, False, True), arg_extremum(e, x, 0, True, False))),
]


def _sample(rng, shape, dtype, dom):
    if dtype in ("i32", "i64"):
        lo, hi = (0, 5) if dom == "labels" else (-4, 5)
        return rng.integers(lo, hi, shape).astype(dtype.replace("i", "int"))
    lo, hi = {"any": (-2, 2), "pos": (0.5, 2), "unit": (-0.9, 0.9), "wide": (-40, 40),
              "lo": (-0.6, -0.5), "hi": (0.5, 0.6), "zeros": (-2, 2), "ties": (-2, 2)}[dom]
    x = rng.uniform(lo, hi, shape)
    if dom == "zeros" and x.size:
        x.flat[::3] = 0.0
    if dom == "ties":
        x = rng.integers(-2, 3, shape) * 0.5    # many exact ties and zeros
    return x.astype(dtype.replace("f", "float"))


def _graphs(name, params, body, dtype):
    e = Emitter()
    ps = tuple(fresh(s, dtype if d == "F" else d) for s, d, _ in params)
    outs = body(e, *ps)
    outs = outs if isinstance(outs, tuple) else (outs,)
    names = tuple(f"p{i}" for i in range(len(ps)))
    g = Graph(name, ps, tuple(e.nodes), outs, names, (), len(outs) > 1)
    graphs = {name: g}
    wrt = [n for n, p in zip(names, ps) if p.dtype in FLOATS]
    for kind in ("vjp", "jvp"):
        try:
            graphs[f"{name}_{kind}"] = getattr(autodiff, kind)(g, wrt, f"{name}_{kind}", warn=lambda m: None)
        except autodiff.AutodiffError:
            pass
    return graphs


def _modules(dtype, cases):
    graphs, doms = {}, {}
    for name, params, body in cases:
        for k, g in _graphs(name, params, body, dtype).items():
            graphs[k] = g
            doms[k] = [dom for _, _, dom in params]
    opt = {k: optimize(g) for k, g in graphs.items()}
    c = compile_graphs(opt, f"ops_{dtype}")
    fns = [{"signature": signature(g).to_json(), "symbol": c.entries[k][0], "dims": list(c.entries[k][1]),
            "checks": c.entries[k][2]}
           for k, g in graphs.items()]
    return opt, doms, load_native(f"ops_{dtype}", c.obj, fns)


@pytest.fixture(scope="module", params=["f32", "f64"])
def ops_module(request):
    return request.param, _modules(request.param, CASES)


def _compare(got, ref, dtype, what):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    if ref.dtype.kind in "biu":
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    tol = TOL[dtype]
    finite = np.abs(ref[np.isfinite(ref)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, equal_nan=True, err_msg=what)


def _check(opt, doms, module, dtype, name):
    g = opt[name]
    for sizes in SIZES:
        rng = np.random.default_rng(7)
        args = []
        for i, p in enumerate(g.params):
            dom = doms[name][i] if i < len(doms[name]) else "any"
            args.append(_sample(rng, concrete(p.shape, sizes), p.dtype, dom))
        ref = run(g, args)
        got = getattr(module, name)(*args)
        got = got if isinstance(got, tuple) else (got,)
        for k, (a, b) in enumerate(zip(got, ref)):
            _compare(a, b, dtype, f"{name} output {k} at {sizes}")


def test_every_op_is_covered():
    used = set()
    for name, params, body in CASES:
        e = Emitter()
        body(e, *(fresh(s, "f64" if d == "F" else d) for s, d, _ in params))
        used |= {n.op for n in e.nodes}
    missing = set(OPS) - used - {"hook"}       # hook needs a function value: covered by the samples
    assert not missing, f"ops without a cpu test: {sorted(missing)}"


@pytest.mark.parametrize("name", [n for n, _, _ in CASES])
def test_op(ops_module, name):
    dtype, (opt, doms, module) = ops_module
    for k in (name, f"{name}_vjp", f"{name}_jvp"):
        if k in opt:
            _check(opt, doms, module, dtype, k)


@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_integer_ops(dtype):
    cases = [_case(op, [(("N", 4), dtype, "any"), ((4,), dtype, "any")],
                   (lambda op: lambda e, x, y: e.emit(op, x, y))(op)) for op in INT_OPS[:3] + ("floordiv", "mod")]
    cases += [_case("iclamp", [(("N", 4), dtype, "any"), ((4,), dtype, "any")],
                    lambda e, x, y: e.where(e.gt(x, 0), e.clamp(x, y, e.abs(y)), y))]
    cases += [_case(op, [(("N", 4), dtype, "any")], (lambda op: lambda e, x: e.emit(op, x))(op))
              for op in INT_OPS[5:]]
    cases += [_case("isum", [(("N", 4), dtype, "any")], lambda e, x: (e.sum(x, axes=(0,), keepdims=False),
                                                                       e.max(x, axes=(1,), keepdims=True),
                                                                       e.cast(x, dtype="f64")))]
    opt, doms, module = _modules(dtype, cases)
    for name in opt:
        _check(opt, doms, module, "f64", name)


PROGRAM = """
fn mlp(w1: f64[D, H], b1: f64[H], w2: f64[H, K], x: f64[N, D], y: f64[N, K]) -> f64 {
    let h = tanh(x @ w1 + b1)
    return cross_entropy(h @ w2, y) + 0.01 * sum(w1 * w1)
}
let mlp_grad = grad(mlp, wrt=(w1, b1, w2))
let hvp = jvp(grad(mlp, wrt=w2), wrt=w2)
fn f(x: f32[N], y: f32[N]) -> f32 { return sum(1 / exp(sin(x ** 2)) * y) }
let g = grad(f, wrt=(x, y))
"""


@pytest.fixture(scope="module")
def program():
    return gradc.compile(PROGRAM, target="cpu", cache=False), gradc.compile(PROGRAM, target="reference")


def _mlp_args(rng, n):
    y = np.eye(3)[rng.integers(0, 3, n)]
    return [rng.standard_normal(s) for s in ((4, 5), (5,), (5, 3), (n, 4))] + [y]


def test_program_matches_reference(program):
    cpu, ref = program
    rng = np.random.default_rng(0)
    for n in (1, 6, 33):
        args = _mlp_args(rng, n)
        _compare(cpu.mlp(*args), ref.mlp(*args), "f64", "mlp")
        for a, b in zip(cpu.mlp_grad(*args), ref.mlp_grad(*args)):
            _compare(a, b, "f64", "mlp_grad")
        t = rng.standard_normal((5, 3))
        for a, b in zip(cpu.hvp(*args, t), ref.hvp(*args, t)):
            _compare(a, b, "f64", "hvp")
    x = rng.standard_normal(9).astype(np.float32)
    for a, b in zip(cpu.g(x, x), ref.g(x, x)):
        _compare(a, b, "f32", "g")


def test_inputs_noncontiguous_readonly_and_numbers(program):
    cpu, ref = program
    x = np.linspace(-1, 1, 20, dtype=np.float32)[::2]
    ro = np.linspace(0, 1, 10, dtype=np.float32)
    ro.flags.writeable = False
    for a, b in zip(cpu.g(x, ro), ref.g(x, ro)):
        _compare(a, b, "f32", "g")
    assert np.isclose(cpu.f(x=[1.0, 2.0], y=[3.0, 4.0]), ref.f([1.0, 2.0], [3.0, 4.0]))


def test_argument_errors(program):
    cpu, _ = program
    with pytest.raises(TypeError, match="x"):
        cpu.f(np.zeros(3, np.float64), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="N"):
        cpu.f(np.zeros(3, np.float32), np.zeros(4, np.float32))


def test_out_and_accumulate(program):
    cpu, ref = program
    rng = np.random.default_rng(1)
    args = _mlp_args(rng, 5)
    want = ref.mlp_grad(*args)
    outs = tuple(np.zeros_like(w) for w in want)
    got = cpu.mlp_grad(*args, out=outs)
    assert all(a is b for a, b in zip(got, outs))
    cpu.mlp_grad(*args, out=outs, accumulate=True)
    for a, b in zip(outs, want):
        _compare(a, 2 * b, "f64", "accumulate")
    bad = np.zeros((2, 2))
    with pytest.raises(ValueError, match="out"):
        cpu.mlp_grad(*args, out=(bad, outs[1], outs[2]))


def test_threads(program):
    cpu, ref = program
    rng = np.random.default_rng(2)
    jobs = [_mlp_args(rng, n) for n in (3, 40, 7, 64, 5, 18)]
    want = [ref.mlp_grad(*a) for a in jobs]
    errors = []

    def work(i):
        for _ in range(20):
            for a, b in zip(cpu.mlp_grad(*jobs[i]), want[i]):
                if not np.allclose(a, b, rtol=1e-12, atol=1e-12):
                    errors.append(i)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_emit_llvm_and_asm():
    src = "fn f(x: f64[N]) -> f64 { return sum(sin(x) * x) }\n"
    assert "@gradc_fn_f(" in gradc.api.emit_llvm(src)
    assert "gradc_fn_f" in gradc.api.emit_asm(src)


def test_fast_math_is_opt_in_and_close():
    """fast_math=True compiles a separate module whose results stay within float32 rounding."""
    src = "fn f(x: f32[N]) -> f32 { return sum(1 / exp(sin(x ** 2))) }\nlet g = value_and_grad(f)\n"
    x = np.linspace(-2, 2, 100_001).astype(np.float32)
    exact = gradc.compile(src, cache=False).g(x)
    fast = gradc.compile(src, cache=False, fast_math=True).g(x)
    for a, b in zip(exact, fast):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert " fast " in gradc.api.emit_llvm(src, fast_math=True)
    assert " fast " not in gradc.api.emit_llvm(src)


def test_fast_math_is_recorded_in_the_module_file(tmp_path):
    src = tmp_path / "m.ad"
    src.write_text("fn f(x: f64) -> f64 { return x * x + 1 }\n")
    from gradc.runtime import artifact
    gradc.build(str(src), str(tmp_path / "fast.gcm"), fast_math=True)
    gradc.build(str(src), str(tmp_path / "exact.gcm"))
    assert artifact.read(str(tmp_path / "fast.gcm"))[0]["fast_math"] is True
    assert artifact.read(str(tmp_path / "exact.gcm"))[0]["fast_math"] is False
    assert gradc.load(str(tmp_path / "fast.gcm")).f(3.0) == 10.0


STENCILS = """
fn rosen(x: f64[N]) -> f64 {
    return sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
}
let g = grad(rosen)
let hv = jvp(grad(rosen), wrt=x)
fn lap(u: f64[M, N]) -> f64 {
    return sum((u[1:, 1:] - u[:-1, 1:]) ** 2 + (u[1:, 1:] - u[1:, :-1]) ** 2)
}
let glap = grad(lap)
fn wide(x: f64[N]) -> f64 { return sum(x[3:] * x[:-3]) + sum(exp(x[1:-1]) * x[2:]) }
let gwide = value_and_grad(wide)
"""


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 300_001])
def test_shifted_slices_split_their_loops(n):
    """Gradients of shifted slices are pads; the innermost loop runs in three parts around their
    edges (no test in the middle one): every size, tiny to threaded, agrees with the reference."""
    cpu = gradc.compile(STENCILS, target="cpu")
    ref = gradc.compile(STENCILS, target="reference")
    rng = np.random.default_rng(n)
    x, t = rng.normal(size=n), rng.normal(size=n)
    pairs = [(cpu.g(x), ref.g(x)), (cpu.hv(x, t), ref.hv(x, t))]
    if n >= 3:
        pairs += list(zip(cpu.gwide(x), ref.gwide(x)))
    m = 3 if n > 1000 else n
    u = rng.normal(size=(m, min(n, 5000)))
    pairs.append((cpu.glap(u), ref.glap(u)))
    for got, want in pairs:
        _compare(got, want, "f64", f"stencil at n={n}")


# max pooling by the winner's index (ops_nn.py): overlapping windows with padding (the sum over
# kernel offsets), and windows apart (stride > kernel on H: elements in no window; W: a last
# column no window reaches)
_POOL_OVER = dict(kernel=(2, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 1))
_POOL_APART = dict(kernel=(2, 2), stride=(3, 2), padding=(1, 0), dilation=(1, 1))
CASES += [
    _case("pool_argmax", [(("N", 2, 5, 4), "F", "ties")], lambda e, x: e.pool_argmax(x, **_POOL_OVER)),
    _case("pool_max", [(("N", 2, 5, 4), "F", "ties")], lambda e, x: e.pool_max(x, **_POOL_OVER)),
    _case("pool_gather", [(("N", 2, 5, 4), "F", "ties"), (("N", 2, 5, 4), "F", "any")],
          lambda e, x, y: e.pool_gather(y, e.pool_argmax(x, **_POOL_OVER), fill=0.0, **_POOL_OVER)),
    _case("pool_scatter", [(("N", 2, 5, 4), "F", "ties"), (("N", 2, 3, 5), "F", "any")],
          lambda e, x, g: e.pool_scatter(g, e.pool_argmax(x, **_POOL_OVER), shape=(5, 4), **_POOL_OVER)),
    _case("pool_scatter_apart", [(("N", 2, 7, 5), "F", "ties"), (("N", 2, 3, 2), "F", "any")],
          lambda e, x, g: e.pool_scatter(g, e.pool_argmax(x, **_POOL_APART), shape=(7, 5), **_POOL_APART)),
    _case("max_pool_apart", [(("N", 2, 7, 5), "F", "ties")],
          lambda e, x: e.max_pool(x, (2, 2), (3, 2), (1, 0), (1, 1))),
]

# reshapes that keep leading and trailing axes: only the axes between are flattened and split
CASES += [
    _case("reshape_mid", [(("N", 2, 6, 3), "F", "any")], lambda e, x: e.reshape(e.exp(x), shape=("N", 3, 4, 3))),
    _case("reshape_split", [(("N", 12), "F", "any")], lambda e, x: e.reshape(x, shape=("N", 3, 2, 2))),
    _case("reshape_join", [((2, "N", 3, 2), "F", "any")], lambda e, x: e.reshape(x, shape=(2, "N", 6))),
]
