"""Safe on every input: size requirements, run-time checks (the error channel), integer ranges, // and %."""
import subprocess
import sys

import numpy as np
import pytest

import gradc
from gradc.frontend.diagnostics import CompileError

from conftest import fd_grad

PROGRAM = """
fn far(x: f64[N]) -> f64 { return x[100000000] }
fn five(x: f64[N]) -> f64 { return x[5] }
fn head(x: f64[N]) -> f64[10] { return x[0:10] * 2.0 }
fn first(x: f64[N]) -> f64 { return x[0] }
fn col(a: f64[N, M]) -> f64[N] { return a[:, 0] }
fn last(x: f64[N]) -> f64 { return x[-1] }
fn inner(x: f64[N]) -> f64[N-2] { return x[1:-1] }
fn tail(x: f64[N]) -> f64[N-1] { return x[1:] }
fn mid(x: f64[N]) -> f64 { return (x * 2.0)[3] }
fn top(x: f64[N]) -> f64 { return max(x) }
fn bottom(x: f64[N, M]) -> f64[N] { return min(x, axis=1) }
fn lse(x: f64[N]) -> f64 { return logsumexp(x) }
fn sm(x: f64[N]) -> f64[N] { return softmax(x) }
fn total(x: f64[N]) -> f64 { return sum(x) }
fn col_loss(a: f64[N, M]) -> f64 { return sum(a[:, 2] * a[:, 2]) }
let col_grad = grad(col_loss, wrt=a)
"""

LABELS = """
fn oh(labels: i64[N]) -> f32[N, 4] { return one_hot(labels, 4) }
fn oh32(labels: i32[N]) -> f32[N, 4] { return one_hot(labels, 4) }
fn shifted(labels: i64[B, T], w: f64[B, T, 3]) -> f64 {
    return sum(one_hot(labels * 2 - 1, 3, dtype=f64) * w)
}
fn ce(z: f64[N, 3], labels: i32[N]) -> f64 { return cross_entropy(z, one_hot(labels, 3, dtype=f64)) }
let ce_grad = grad(ce, wrt=z)
fn scalar(x: f64, k: f64) -> f64 { return x * sum(one_hot(cast(k, i64), 3, dtype=f64)) }
fn divmod(x: i64[N], y: i64[N]) -> (i64[N], i64[N]) { return x // y, x % y }
fn divmod32(x: i32[N], y: i32[N]) -> (i32[N], i32[N]) { return x // y, x % y }
fn fdivmod(x: f64[N], y: f64[N]) -> (f64[N], f64[N]) { return x // y, x % y }
fn fdivmod32(x: f32[N], y: f32[N]) -> (f32[N], f32[N]) { return x // y, x % y }
fn consts() -> (f64, i64, i64, i64) { return 7.5 // 2, -7 % 3, 7 // -2, 5 // 0 }
fn rem(x: f64, y: f64) -> f64 { return x % y + 0.5 * (x // y) }
let rem_grad = grad(rem, wrt=(x, y))
"""

TARGETS = ["cpu", "reference", "cuda-sim"]


@pytest.fixture(scope="module", params=TARGETS)
def m(request):
    return gradc.compile(PROGRAM, target=request.param)


@pytest.fixture(scope="module", params=TARGETS)
def lab(request):
    return gradc.compile(LABELS, target=request.param)


def _raises(exc, f, *args, **kw):
    with pytest.raises(exc) as info:
        f(*args, **kw)
    return str(info.value)


@pytest.mark.parametrize("as_list", [False, True])       # the fast array path and the checked path
def test_index_out_of_range_is_index_error(m, as_list):
    x = [1.0] if as_list else np.array([1.0])
    msg = _raises(IndexError, m.far, x)
    for part in ("far:", "index 100000000", "axis 0", "parameter 'x'", "size 1", "<source>:2:"):
        assert part in msg, msg
    x3 = [1.0, 2.0, 3.0] if as_list else np.arange(3.0)
    assert "index 5" in _raises(IndexError, m.five, x3)
    assert "slice 0:10" in _raises(IndexError, m.head, x3)
    assert "size 0" in _raises(IndexError, m.first, np.zeros(0))
    assert "size 0" in _raises(IndexError, m.last, np.zeros(0))
    msg = _raises(IndexError, m.col, np.zeros((2, 0)))
    assert "axis 1" in msg and "parameter 'a'" in msg and "size 0" in msg


def test_slices_take_no_clamping(m):
    """x[0:10] of 3 elements is an error (its shape says 10), x[1:] of none too; in range they work."""
    assert "slice 1:-1" in _raises(IndexError, m.inner, np.zeros(1))
    assert "slice 1:" in _raises(IndexError, m.tail, np.zeros(0))
    np.testing.assert_array_equal(m.tail(np.array([4.0])), np.zeros(0))
    np.testing.assert_array_equal(m.inner(np.arange(4.0)), [1.0, 2.0])
    np.testing.assert_array_equal(m.head(np.arange(10.0)), 2 * np.arange(10.0))
    assert m.last(np.arange(3.0)) == 2.0
    assert m.five(np.arange(6.0)) == 5.0


def test_index_of_an_intermediate_value_names_its_position(m):
    msg = _raises(IndexError, m.mid, np.zeros(2))
    assert "mid: index 3" in msg and "the value at <source>:10:" in msg


def test_derived_functions_check_too(m):
    assert "index 2" in _raises(IndexError, m.col_grad, np.zeros((3, 2)))
    a = np.arange(12.0).reshape(4, 3)
    want = np.zeros_like(a)
    want[:, 2] = 2 * a[:, 2]
    np.testing.assert_allclose(m.col_grad(a), want)


def test_out_buffers_take_the_same_checks(m):
    assert "slice 0:10" in _raises(IndexError, m.head, np.arange(3.0), out=np.zeros(10))


def test_reductions_without_identity_on_an_empty_axis(m):
    for f, x in ((m.top, np.zeros(0)), (m.bottom, np.zeros((2, 0))), (m.lse, np.zeros(0)), (m.sm, np.zeros(0))):
        msg = _raises(ValueError, f, x)
        assert "size 0" in msg and "no identity" in msg and f.__name__ in msg
    assert m.total(np.zeros(0)) == 0.0
    assert m.bottom(np.zeros((0, 3))).shape == (0,)


def test_requirements_travel_in_the_module_file(tmp_path):
    path = gradc.build(PROGRAM, tmp_path / "safe.gcm")
    loaded = gradc.load(path)
    assert "index 5" in _raises(IndexError, loaded.five, np.zeros(3))
    assert loaded.five.sig.to_json()["needs"] == [
        {"error": "IndexError", "dim": "N", "min": 6,
         "message": "index 5 is out of range for axis 0 of parameter 'x' at <source>:3:36, which has size {size}"}]


def test_cli_run_prints_the_index_error(tmp_path):
    src = tmp_path / "far.ad"
    src.write_text("fn f(x: f64[N]) -> f64 { return x[100000000] }\n")
    for target in TARGETS:
        res = subprocess.run([sys.executable, "-m", "gradc", "run", str(src), "f", "x=[1.0]", "--target", target],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 1
        assert "Traceback" not in res.stderr
        assert "f: index 100000000 is out of range for axis 0 of parameter 'x'" in res.stderr
        assert "which has size 1" in res.stderr


# ---- labels: the run-time error channel

def test_one_hot_labels_out_of_range(lab):
    np.testing.assert_array_equal(lab.oh(np.array([0, 3, 1])), np.eye(4, dtype=np.float32)[[0, 3, 1]])
    assert lab.oh(np.zeros(0, np.int64)).shape == (0, 4)
    for bad in ([0, 4, 1], [-1, 2], [2 ** 32 + 1]):
        msg = _raises(ValueError, lab.oh, np.array(bad, np.int64))
        first = next(b for b in bad if not 0 <= b < 4)
        assert msg.startswith(f"oh: one_hot: the label {first} is outside [0, 4) (at <source>:2:")
    # an i32 parameter: 2**32 + 1 no longer wraps to 1 on the way in
    assert "out of the range of i32" in _raises(ValueError, lab.oh32, [2 ** 32 + 1])


def test_computed_labels_checked_on_many_threads(lab):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 3, (300, 400))       # 2 * l - 1 in {1, 3}: 3 is out of range
    labels[labels == 2] = 1
    w = rng.normal(size=(300, 400, 3))
    want = np.sum(np.eye(3)[2 * labels - 1] * w)
    np.testing.assert_allclose(lab.shifted(labels, w), want)
    labels[123, 45] = 0                           # -1
    assert "the label -1 is outside [0, 3)" in _raises(ValueError, lab.shifted, labels, w)


def test_cross_entropy_labels(lab):
    z = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 0.3]])
    labels = np.array([2, 0], np.int32)
    want = np.mean(np.log(np.sum(np.exp(z), axis=1)) - z[[0, 1], labels])
    np.testing.assert_allclose(lab.ce(z, labels), want)
    for f in (lab.ce, lab.ce_grad):
        msg = _raises(ValueError, f, z, np.array([0, 3], np.int32))
        assert "the label 3 is outside [0, 3)" in msg and f.__name__ in msg
        assert "the label -2 is outside [0, 3)" in _raises(ValueError, f, z, np.array([1, -2], np.int32))


def test_scalar_entry_reports_a_failed_check(lab):
    assert lab.scalar(2.0, 1.0) == 2.0
    assert "scalar: one_hot: the label 3 is outside" in _raises(ValueError, lab.scalar, 2.0, 3.0)
    assert lab.scalar(2.0, 0.0) == 2.0           # the thread's buffers are fine after a failure


# ---- integers

@pytest.mark.parametrize("fn,dtype", [("divmod", np.int64), ("divmod32", np.int32)])
def test_integer_floor_division_and_modulo(lab, fn, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-20, 20, 200).astype(dtype)
    y = rng.integers(-4, 5, 200).astype(dtype)
    x[:2], y[:2] = np.iinfo(dtype).min, [-1, 0]
    q, r = getattr(lab, fn)(x, y)
    with np.errstate(all="ignore"):             # NumPy: 0 for a divisor of 0, with a warning
        np.testing.assert_array_equal(q, np.floor_divide(x, y))
        np.testing.assert_array_equal(r, np.mod(x, y))
    assert q[1] == 0 and r[1] == 0


@pytest.mark.parametrize("fn,dtype", [("fdivmod", np.float64), ("fdivmod32", np.float32)])
def test_float_floor_division_and_modulo(lab, fn, dtype):
    rng = np.random.default_rng(2)
    x = (rng.normal(size=200) * 10).astype(dtype)
    y = (rng.normal(size=200) * 3).astype(dtype)
    x[:8] = [1, -1, 1, -1, 0, np.inf, 1, -0.0]
    y[:8] = [0.1, 0.1, -0.1, -0.1, 0, 2, np.inf, 3]
    q, r = getattr(lab, fn)(x, y)
    with np.errstate(all="ignore"):
        wq, wr = np.floor_divide(x, y), np.mod(x, y)
    np.testing.assert_array_equal(q, wq)
    np.testing.assert_array_equal(r, wr)
    assert (np.signbit(r) == np.signbit(wr)).all()


def test_floor_division_constants(lab):
    assert lab.consts() == (3.0, 2, -4, 0)


def test_modulo_derivatives_against_finite_differences(lab):
    for x, y in ((7.3, 2.0), (-7.3, 2.0), (5.1, -1.5)):
        got = lab.rem_grad(x, y)
        for i in range(2):
            np.testing.assert_allclose(got[i], fd_grad(lambda a, b: lab.rem(a, b), [x, y], i), rtol=1e-6)


@pytest.mark.parametrize("src,where", [
    ("fn f(x: i32) -> i32 { return x + 3000000000 }", "<source>:1:34"),
    ("fn f(x: i32) -> i32 { return 2147483648 - x }", "<source>:1:30"),
    ("fn f(x: i64) -> i64 { return x * 9223372036854775808 }", "<source>:1:34"),
    ("fn f(x: i32[2]) -> i32[2] { return x + [1, 4294967296] }", "<source>:1:40"),
    ("fn f(x: i64[2]) -> i64[2] { return x + [1, 99999999999999999999] }", "<source>:1:40"),
])
def test_integer_literal_out_of_range(src, where):
    with pytest.raises(CompileError) as info:
        gradc.compile(src, target="reference")
    assert where in str(info.value) and "out of range for i" in str(info.value)


def test_integer_literals_at_the_ends_of_the_range():
    m = gradc.compile("fn f(x: i32) -> (i32, i32) { return x + 2147483647, x + -2147483648 }\n"
                      "fn g(x: i64) -> i64 { return x - 9223372036854775807 }", target="cpu")
    assert m.f(np.int32(0)) == (2147483647, -2147483648)
    assert m.g(np.int64(-1)) == -2 ** 63


def test_check_range_with_a_dimension_bound():
    """The error channel as gather indices will use it: indices in [0, N) of another parameter."""
    from gradc.api import signature
    from gradc.compiler.builder import Emitter, fresh
    from gradc.compiler.codegen import compile_graphs
    from gradc.compiler.interp import run
    from gradc.compiler.ir import Graph
    from gradc.compiler.ops import CheckFailed
    from gradc.compiler.pipeline import optimize
    from gradc.runtime.cpu import load_native
    e = Emitter()
    i, x = fresh(("K",), "i32"), fresh(("N",), "f64")
    j = e.check_range(i, lo=0, hi="N", error="IndexError", message="index {value} is past the end")
    out = e.add(e.sum(e.cast(j, dtype="f64"), axes=(0,), keepdims=False), e.sum(x, axes=(0,), keepdims=False))
    g = optimize(Graph("t", (i, x), tuple(e.nodes), (out,), ("i", "x")))
    c = compile_graphs({"t": g}, "t")
    m = load_native("t", c.obj, [{"signature": signature(g).to_json(), "symbol": c.entries["t"][0],
                                  "dims": list(c.entries["t"][1]), "checks": c.entries["t"][2]}])
    assert m.t(np.array([0, 2], np.int32), np.ones(3)) == 5.0
    assert str(_raises(IndexError, m.t, np.array([0, 3, 7], np.int32), np.ones(3))) == "t: index 3 is past the end"
    with pytest.raises(CheckFailed) as info:
        run(g, [np.array([0, 3, 7], np.int32), np.ones(3)])
    assert info.value.args == ("IndexError", "index {value} is past the end", 3)
