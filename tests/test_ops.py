"""Every op's VJP and JVP, and their derivatives, against central finite differences in float64."""
import numpy as np
import pytest

from gradc.compiler import autodiff
from gradc.compiler.builder import Emitter, fresh
from gradc.compiler.interp import run
from gradc.compiler.ir import Graph
from gradc.compiler.ops import COMPOSITES, OPS

import control_cases as cc
import rule_cases as rc

RNG = np.random.default_rng(1234)
STEP = 1e-6


def _double(shape):
    e = Emitter()
    g = fresh(shape, "f64")
    out = e.mul(g, 2.0)
    return Graph("double", (g,), tuple(e.nodes), (out,), ("g",))


# (op, [(shape, domain)], attrs). Domains: "any" (-2, 2), "pos" (0.5, 2), "unit" (-0.9, 0.9), "nz" |x| > 0.5
CASES = [
    (name, [((3, 4), dom)], {}) for name, dom in [
        ("neg", "any"), ("sin", "any"), ("cos", "any"), ("tan", "unit"), ("exp", "any"), ("log", "pos"),
        ("log1p", "pos"), ("expm1", "any"), ("sqrt", "pos"), ("tanh", "any"), ("sigmoid", "any"),
        ("softplus", "any"), ("abs", "nz"), ("relu", "nz")]
] + [
    (name, shapes, {}) for name in ("add", "sub", "mul", "div", "mod", "pow", "maximum", "minimum", "gmul")
    for shapes in ([((3, 4), "pos"), ((3, 4), "nz")], [((3, 4), "pos"), ((4,), "nz")],
                   [((3, 1), "pos"), ((1, 4), "nz")], [((), "pos"), ((3,), "nz")])
] + [
    ("where", [((3, 4), "bool"), ((3, 4), "any"), ((4,), "any")], {}),
    ("clamp", [((3, 4), "any"), ((), "lo"), ((4,), "hi")], {}),
    ("cast", [((3, 4), "any")], {"dtype": "f64"}),
    ("sum", [((3, 4), "any")], {"axes": (0, 1), "keepdims": False}),
    ("sum", [((3, 4, 2), "any")], {"axes": (1,), "keepdims": True}),
    ("max", [((3, 4), "any")], {"axes": (1,), "keepdims": False}),
    ("min", [((3, 4), "any")], {"axes": (0, 1), "keepdims": True}),
    ("reshape", [((3, 4), "any")], {"shape": (2, 6)}),
    ("broadcast_to", [((3, 1), "any")], {"shape": (2, 3, 4)}),
    ("transpose", [((2, 3, 4), "any")], {"perm": (2, 0, 1)}),
    ("slice", [((5, 4), "any")], {"spec": (("s", 1, None, None), ("i", -1))}),
    ("slice", [((6, 4), "any")], {"spec": (("s", None, -1, 2), ("s", -3, -1, None))}),
    ("pad", [((2, 3), "any")], {"spec": (("s", 1, 3, None), ("s", 0, 3, None)), "shape": (4, 3)}),
    ("concat", [((2, 3), "any"), ((1, 3), "any"), ((4, 3), "any")], {"axis": 0}),
    ("matmul", [((3, 4), "any"), ((4, 2), "any")], {}),
    ("mean", [((3, 4), "any")], {"axis": 1}),
    ("logsumexp", [((3, 4), "any")], {"axis": 1}),
    ("softmax", [((3, 4), "any")], {"axis": -1}),
    ("log_softmax", [((3, 4), "any")], {"axis": 0}),
    # loops and branches (tests/control_cases.py builds them)
    ("for", [((4, 3), "any"), ((3,), "unit")], {}),
    ("for", [((5, 3), "any"), ((3,), "unit")], {"checkpoint": 2}),
    ("for", [((4, 3), "any"), ((3,), "unit")], {"checkpoint": -1, "reverse": True}),
    ("while", [((3,), "pos")], {}),
    ("if", [((), "any"), ((3,), "any")], {}),
    ("dyn_slice", [((4, 3), "any")], {}),
    ("dyn_unslice", [((2, 3), "any")], {}),
] + [
    # products, convolution and pooling (compiler/ops_nn.py)
    ("matmul", [((2, 1, 3, 4), "any"), ((3, 4, 2), "any")], {}),
    ("matmul", [((2, 3, 4), "any"), ((4, 2), "any")], {"mkn": (2, 1, 1)}),
    ("matmul", [((4,), "any"), ((2, 4, 3), "any")], {"mkn": (0, 1, 1)}),
    ("matmul", [((2, 3, 2, 4), "any"), ((2, 4, 3), "any")], {"mkn": (1, 2, 1)}),
    ("window", [((2, 5, 4), "any")], {"offset": (1, 2), "kernel": (2, 3), "stride": (2, 1),
                                      "padding": (1, 1), "dilation": (1, 1), "fill": 0.0}),
    ("unwindow", [((2, 3, 4), "any")], {"offset": (1, 0), "kernel": (2, 2), "stride": (2, 1),
                                        "padding": (1, 0), "dilation": (1, 2), "shape": (5, 6)}),
    ("im2col", [((2, 4, 5, 4), "any")], {"kernel": (2, 3), "stride": (2, 1), "padding": (1, 0),
                                         "dilation": (1, 1), "groups": 2}),
    ("col2im", [((2, 3, 3, 2), "any")], {"kernel": (2,), "stride": (2,), "padding": (1,),
                                            "dilation": (2,), "groups": 1, "shape": (2, 3, 5)}),
    ("conv", [((1, 4, 4, 3), "any"), ((4, 2, 2, 2), "any"), ((4,), "any")],
     {"stride": (1, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 2}),
    ("conv", [((2, 2, 5), "any"), ((3, 2, 2), "any")], {"stride": 2, "padding": 1, "dilation": 2}),
    ("max_pool", [((1, 2, 4, 5), "any")], {"kernel": (2, 2), "stride": (1, 2), "padding": (1, 1)}),
    ("avg_pool", [((2, 3, 5), "any")], {"kernel": (3,), "stride": (2,), "padding": (1,)}),
    ("einsum", [((2, 3, 4), "any"), ((2, 4, 3), "any")], {"spec": "bij,bjk->bik"}),
    ("einsum", [((3, 3, 2), "any"), ((2, 4), "any")], {"spec": "iij,jk->ki"}),
    ("einsum", [((3, 4), "any"), ((4,), "any"), ((2, 3), "any")], {"spec": "ij,j,ki->k"}),
    ("einsum", [((3, 4), "any"), ((3, 4), "any")], {"spec": "ij,ij->i"}),
    # batching (compiler/batching.py): a loop's stacked rows read as the batch
    ("as_shape", [((4, 3), "any")], {}),
]
BUILDERS = {"for": cc.recurrence, "while": cc.shrink, "if": cc.branch, "dyn_slice": cc.window,
            "dyn_unslice": cc.unwindow, "as_shape": cc.stack_rows}

# integer indexing, scans and erf (compiler/ops_index.py); index arrays are i64 literals of the
# graph (negative ones count from the end; repeated ones add up in the scatters)
CASES += [
    ("take", [((4, 3), "any")], {"idx": [[3, 0], [-1, 3]], "axis": 0}),
    ("take", [((2, 4), "any")], {"idx": [1, -4, 1], "axis": 1}),
    ("take_along_axis", [((3, 4), "any")], {"idx": [[0, 3], [-1, -1], [2, 0]], "axis": 1}),
    ("take_along_axis", [((1, 4), "any")], {"idx": [[0], [3], [-3]], "axis": 1}),     # x broadcasts
    ("index_add", [((4, 3), "any"), ((5, 3), "any")], {"idx": [1, 1, -1, 0, 1], "axis": 0}),
    ("index_add", [((2, 3), "any"), ((2, 2, 2), "any")], {"idx": [[0, 2], [2, -1]], "axis": 1}),
    ("index_add_along", [((3, 4), "any"), ((3, 2), "any")], {"idx": [[0, 0], [3, -1], [2, 1]], "axis": 1}),
    ("cumsum", [((3, 4), "any")], {"axis": 1, "reverse": False}),
    ("cumsum", [((3, 4), "any")], {"axis": 0, "reverse": True}),
    ("cumprod", [((3, 4), "zeros")], {"axis": 1}),          # zeros in x: no division anywhere
    ("cumprod", [((4, 2), "zeros")], {"axis": 0}),
    ("erf", [((3, 4), "any")], {}),
]
BUILDERS.update({op: (lambda op: lambda e, *xs, idx, axis: e.emit(
    op, xs[0], e.array(np.array(idx), "i64"), *xs[1:], axis=axis))(op)
    for op in ("take", "take_along_axis", "index_add", "index_add_along")})
# calls of functions with derivative rules of their own (tests/rule_cases.py): rules used as
# written, and a jvp rule transposed for reverse mode
CASES += [
    ("custom", [((3, 4), "any"), ((4,), "any")], {}),
    ("custom", [((3, 4), "any"), ((4,), "any")], {"rules": "jvp"}),
]
BUILDERS["custom"] = rc.ruled
# max pooling by the winner's index (ops_nn.py): the winners a fixed array, the windows
# overlapping with padding (fill 0 there, so finite differences see no infinity) or apart
_POOL_R = np.random.default_rng(3)
CASES += [
    ("pool_max", [((1, 2, 4, 5), "any")], {"kernel": (2, 2), "stride": (1, 2), "padding": (1, 1), "dilation": (1, 1)}),
    ("pool_max", [((2, 7, 5), "any")], {"kernel": (2, 2), "stride": (3, 2), "padding": (1, 0), "dilation": (1, 1)}),
    ("pool_gather", [((1, 2, 4, 5), "any")], {"idx": _POOL_R.integers(0, 4, (1, 2, 5, 3)).tolist(),
     "kernel": (2, 2), "stride": (1, 2), "padding": (1, 1), "dilation": (1, 1), "fill": 0.0}),
    ("pool_scatter", [((1, 2, 5, 3), "any")], {"idx": _POOL_R.integers(0, 4, (1, 2, 5, 3)).tolist(),
     "kernel": (2, 2), "stride": (1, 2), "padding": (1, 1), "dilation": (1, 1), "shape": (4, 5)}),
    ("pool_scatter", [((2, 3, 2), "any")], {"idx": _POOL_R.integers(0, 6, (2, 3, 2)).tolist(),
     "kernel": (2, 3), "stride": (3, 3), "padding": (1, 0), "dilation": (1, 1), "shape": (7, 7)}),
]
BUILDERS.update({op: (lambda op: lambda e, *xs, idx, **kw: e.emit(
    op, xs[0], e.array(np.array(idx, np.int32), "i32"), **kw))(op) for op in ("pool_gather", "pool_scatter")})


def _sample(shape, dom):
    if dom == "bool":
        return RNG.random(shape) < 0.5
    lo, hi = {"any": (-2, 2), "pos": (0.5, 2), "unit": (-0.9, 0.9), "nz": (0.5, 2),
              "lo": (-0.6, -0.5), "hi": (0.5, 0.6), "zeros": (-2, 2)}[dom]
    x = RNG.uniform(lo, hi, shape)
    if dom == "zeros":
        x.flat[::3] = 0.0
    if dom == "nz":
        x = x * RNG.choice([-1.0, 1.0], shape)
    return np.asarray(x, np.float64)


def _graph(op, specs, attrs):
    params = tuple(fresh(s, "bool" if d == "bool" else "f64") for s, d in specs)
    e = Emitter()
    if op in BUILDERS:
        out = BUILDERS[op](e, *params, **attrs)
    else:
        out = e.emit(op, *params, **attrs) if op in OPS else COMPOSITES[op](e, *params, **attrs)
    names = tuple(f"x{i}" for i in range(len(params)))
    return Graph(op, params, tuple(e.nodes), (out,), names)


def _wrt(g):
    return [n for n, p in zip(g.param_names, g.params) if p.dtype == "f64"]


def _fd_vjp(g, args, ct, i):
    x = args[i]
    out = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        vals = []
        for s in (1, -1):
            xx = x.copy()
            xx[k] += s * STEP
            vals.append(np.sum(ct * run(g, args[:i] + [xx] + args[i + 1:])[0]))
        out[k] = (vals[0] - vals[1]) / (2 * STEP)
    return out


def _check_vjp(g, args):
    """The graph's vjp at args against finite differences; returns the vjp graph and its args."""
    wrt = _wrt(g)
    vg = autodiff.vjp(g, wrt, "vjp", warn=lambda m: None)
    ct = RNG.uniform(-1, 1, g.outputs[0].shape)
    grads = run(vg, args + [ct])
    idx = [g.param_names.index(w) for w in wrt]
    for i, got in zip(idx, grads):
        np.testing.assert_allclose(got, _fd_vjp(g, args, ct, i), rtol=1e-5, atol=1e-7,
                                   err_msg=f"vjp of {g.name} wrt {g.param_names[i]}")
    return vg, args + [ct]


def _check_jvp(g, args):
    wrt = _wrt(g)
    jg = autodiff.jvp(g, wrt, "jvp", warn=lambda m: None)
    idx = [g.param_names.index(w) for w in wrt]
    tans = [RNG.uniform(-1, 1, args[i].shape) for i in idx]
    n_out = len(g.outputs)
    got = run(jg, args + tans)
    plus, minus = list(args), list(args)
    for i, t in zip(idx, tans):
        plus[i] = args[i] + STEP * t
        minus[i] = args[i] - STEP * t
    fd = [(p - m) / (2 * STEP) for p, m in zip(run(g, plus), run(g, minus))]
    for k in range(n_out):
        np.testing.assert_allclose(got[k], run(g, args)[k], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[n_out + k], fd[k], rtol=1e-5, atol=1e-7, err_msg=f"jvp of {g.name}")


@pytest.mark.parametrize("op,specs,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_first_order(op, specs, attrs):
    g = _graph(op, specs, attrs)
    args = [_sample(s, d) for s, d in specs]
    np.testing.assert_equal(run(g, args)[0].shape, g.outputs[0].shape)
    _check_vjp(g, args)
    _check_jvp(g, args)


@pytest.mark.parametrize("op,specs,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_second_order(op, specs, attrs):
    """The derivative rules are graphs too: differentiate the vjp once more, in both modes."""
    g = _graph(op, specs, attrs)
    args = [_sample(s, d) for s, d in specs]
    vg, vargs = _check_vjp(g, args)
    wrt = _wrt(g) + ["ct"]         # with the cotangent, so that linear ops have something to check
    # reduce the vjp's outputs to one value: sum of (random weight * gradient)
    e = Emitter(vg.nodes)
    weights = [fresh(o.shape, o.dtype) for o in vg.outputs]
    total = None
    for o, w in zip(vg.outputs, weights):
        s = e.sum(e.mul(o, w), axes=tuple(range(len(o.shape))), keepdims=False)
        total = s if total is None else e.add(total, s)
    h = Graph("second", vg.params + tuple(weights), tuple(e.nodes), (total,),
              vg.param_names + tuple(f"w{i}" for i in range(len(weights))))
    hargs = vargs + [RNG.uniform(-1, 1, o.shape) for o in vg.outputs]
    hg = autodiff.grad(h, wrt, "hess", warn=lambda m: None)
    got = run(hg, hargs)
    idx = [h.param_names.index(w) for w in wrt]
    for i, gval in zip(idx, got):
        np.testing.assert_allclose(gval, _fd_vjp(h, hargs, np.ones(()), i), rtol=1e-4, atol=1e-6,
                                   err_msg=f"second derivative of {op} wrt {h.param_names[i]}")
    _check_jvp(h, hargs)


def test_every_op_is_tested_or_has_no_gradient():
    # hook: test_hook_passes_gradient_through_its_fn; item: in every loop and branch case
    tested = {c[0] for c in CASES} | {"hook", "item"}
    for name, op in OPS.items():
        if op.vjp is not None:
            assert name in tested, f"op {name} has a gradient rule but no test case"
        else:
            assert op.jvp is None, f"op {name} has a jvp rule but no vjp rule"
    assert set(COMPOSITES) <= tested


@pytest.mark.parametrize("op", ["lt", "le", "gt", "ge", "eq", "ne", "sign", "tie", "floordiv"])
def test_ops_without_gradient_cut_the_chain(op):
    """f(x) = sum(cast(op(x, 0.25)) * x): the op's result is a constant factor, so df/dx is it."""
    x = fresh((5,), "f64")
    e = Emitter()
    c = e.emit(op, x, 0.25) if op != "sign" else e.sign(e.sub(x, 0.25))
    f = e.cast(c, dtype="f64")
    out = e.sum(e.mul(f, x), axes=(0,), keepdims=False)
    g = Graph("t", (x,), tuple(e.nodes), (out,), ("x",))
    xs = np.array([-1.0, 0.0, 0.25, 0.5, 2.0])
    factor = run(Graph("c", (x,), tuple(e.nodes), (f,), ("x",)), [xs])[0]
    got = run(autodiff.grad(g, ("x",), "g", warn=lambda m: None), [xs])[0]
    np.testing.assert_array_equal(got, factor)


def test_hook_passes_gradient_through_its_fn():
    """A hook that doubles the gradient: vjp is twice the finite differences; jvp is untouched."""
    g = _graph("hook", [((3, 4), "any")], {"fn": _double((3, 4))})
    args = [_sample((3, 4), "any")]
    ct = RNG.uniform(-1, 1, (3, 4))
    got = run(autodiff.vjp(g, ("x0",), "v", warn=lambda m: None), args + [ct])[0]
    np.testing.assert_allclose(got, 2 * _fd_vjp(g, args, ct, 0), rtol=1e-6)
    t = RNG.uniform(-1, 1, (3, 4))
    np.testing.assert_allclose(run(autodiff.jvp(g, ("x0",), "j", warn=lambda m: None), args + [t])[1], t)
