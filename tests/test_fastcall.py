"""The direct native entries: scalar functions by value, arrays by plain pointers, against the reference."""
import inspect
import sys
import threading

import numpy as np
import pytest

import gradc
import gradc.runtime.cpu
from gradc.vocab import python_abi

SRC = """
fn z(x: f64, y: f64) -> f64 { return x * y + y ** 2 }
let vg = value_and_grad(z, wrt=(x, y))
fn h(x: f32, y: f32) -> f32 { return sin(x) * exp(y) - x / (1 + y * y) }
let hg = value_and_grad(h, wrt=(x, y))
fn mixed(a: f32, b: f64) -> (f32, f64) { return a * 3, b * 0.1 }
fn one(x: f64) -> f64 { return x }
fn s(x: f32[N]) -> f32 { return sum(x * x) }
fn t(x: f64[N], k: f64) -> (f64[N], f64) { return x * k, sum(x) }
"""

F32, F64 = np.float32, np.float64


@pytest.fixture(scope="module")
def mods():
    return gradc.compile(SRC), gradc.compile(SRC, target="reference")


def same(got, want):
    """Equal values and exactly the same result types: NumPy scalars of the declared dtype."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w)
        return
    assert type(got) is type(want), (got, want)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    f32 = np.asarray(want).dtype == F32
    np.testing.assert_allclose(got, want, rtol=1e-5 if f32 else 1e-13, atol=1e-6 if f32 else 1e-300)


def error_of(f, *args, **kwargs):
    with pytest.raises((TypeError, ValueError)) as e:
        f(*args, **kwargs)
    return e.type, str(e.value)


def test_scalar_functions_have_the_direct_entry(mods):
    cpu, _ = mods
    for name in ("z", "vg", "h", "hg", "mixed", "one"):
        assert getattr(cpu, name)._scalar is not None, name
    assert cpu.s._scalar is None and cpu.t._scalar is None


@pytest.mark.parametrize("name", ["z", "vg", "h", "hg", "mixed", "one"])
@pytest.mark.parametrize("conv", [float, int, np.float64, np.float32, np.asarray], ids=lambda c: c.__name__)
def test_numbers_of_every_kind_give_the_reference_results(mods, name, conv):
    cpu, ref = mods
    n = len(getattr(ref, name).sig.params)
    for vals in ((2.0, 3.0), (-1.0, 0.5), (0.0, -7.0), (1e30, 4.0)):
        args = [conv(v) for v in vals[:n]]
        try:
            want = getattr(ref, name)(*args)
        except TypeError:
            assert error_of(getattr(cpu, name), *args) == error_of(getattr(ref, name), *args)
            continue
        same(getattr(cpu, name)(*args), want)


def test_result_types_are_numpy_scalars_of_the_declared_dtype(mods):
    cpu, _ = mods
    assert type(cpu.z(2.0, 3.0)) is F64
    assert [type(r) for r in cpu.vg(2.0, 3.0)] == [F64, F64, F64]
    assert [type(r) for r in cpu.hg(F32(0.5), 2)] == [F32, F32, F32]
    assert [type(r) for r in cpu.mixed(1.0, 2.0)] == [F32, F64]
    assert type(cpu.s(np.ones(4, F32))) is F32
    assert [type(r) for r in cpu.t(np.ones(3), 2.0)] == [np.ndarray, F64]


def test_keyword_calls_and_f32_rounding(mods):
    cpu, ref = mods
    same(cpu.vg(y=3.0, x=2.0), ref.vg(2.0, 3.0))
    same(cpu.hg(0.1, y=0.7), ref.hg(x=0.1, y=0.7))
    # a Python float for an f32 parameter is rounded once, as astype(np.float32) does
    same(cpu.one(0.1), ref.one(0.1))
    assert cpu.mixed(0.1, 0.1)[0] == F32(F32(0.1) * F32(3))
    # ints beyond 2**53 (or beyond int64) take the checked path and match it
    for big in (2 ** 53 + 1, -(2 ** 60) - 3, 2 ** 70):
        try:
            want = ref.mixed(big, big)
        except TypeError:
            assert error_of(cpu.mixed, big, big) == error_of(ref.mixed, big, big)
        else:
            same(cpu.mixed(big, big), want)
    same(cpu.z(True, 2.0), ref.z(True, 2.0))


@pytest.mark.parametrize("call", [
    lambda f: f(1.0), lambda f: f(1.0, 2.0, 3.0), lambda f: f(1.0, x=2.0), lambda f: f(1.0, w=2.0),
    lambda f: f(F32(1.0), 2.0), lambda f: f("1", 2.0), lambda f: f(None, 2.0), lambda f: f([1.0], 2.0),
    lambda f: f(np.ones(2), 2.0), lambda f: f(np.int32(1), 2.0), lambda f: f(1j, 2.0),
    lambda f: f(1.0, 2.0, accumulate=True)])
def test_wrong_arguments_raise_what_the_checks_raise(mods, call):
    cpu, ref = mods
    with pytest.raises((TypeError, ValueError)) as want:
        call(ref.vg)
    with pytest.raises(want.type) as got:
        call(cpu.vg)
    assert str(got.value) == str(want.value)


def test_out_and_accumulate_on_scalar_functions(mods):
    cpu, _ = mods
    bufs = [np.zeros((), F64) for _ in range(3)]
    r = cpu.vg(2.0, 3.0, out=bufs)
    assert all(a is b for a, b in zip(r, bufs)) and [float(b) for b in bufs] == [15.0, 3.0, 8.0]
    cpu.vg(2.0, 3.0, out=bufs, accumulate=True)
    assert [float(b) for b in bufs] == [30.0, 6.0, 16.0]


def test_array_calls_through_the_flat_entry(mods):
    cpu, ref = mods
    x = np.linspace(-1, 1, 7, dtype=F32)
    same(cpu.s(x), ref.s(x))
    same(cpu.s(x[::2]), ref.s(x[::2]))                        # not contiguous
    ro = x.copy()
    ro.flags.writeable = False
    same(cpu.s(ro), ref.s(ro))
    same(cpu.s(list(map(float, x))), ref.s(list(map(float, x))))
    y = np.arange(5.0)
    a, b = cpu.t(y, 2.0)
    np.testing.assert_array_equal(a, y * 2)
    assert b == 10.0
    o = np.zeros(5)
    r = cpu.t(y, 3.0, out=(o, np.zeros(())))
    assert r[0] is o and o[4] == 12.0
    assert error_of(cpu.s, x.astype(F64)) == error_of(ref.s, x.astype(F64))
    assert error_of(cpu.s, np.ones((2, 2), F32)) == error_of(ref.s, np.ones((2, 2), F32))


def test_calls_from_many_threads_at_once(mods):
    cpu, ref = mods
    errors, start = [], threading.Barrier(8)

    def work(k):
        start.wait()
        try:
            for i in range(2000):
                x, y = float(k), float(i % 17)
                got = cpu.vg(x, y)
                if got != (x * y + y * y, y, x + 2 * y):
                    errors.append((k, i, got))
                if i % 100 == 0:
                    same(cpu.hg(F32(x / 8), F32(y / 17)), ref.hg(F32(x / 8), F32(y / 17)))
        except Exception as e:          # noqa: BLE001 -- reported below, from the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_scalar_functions_are_called_through_their_cpython_entry(mods):
    cpu, ref = mods
    for name in ("z", "vg", "h", "hg", "mixed", "one"):
        f = getattr(cpu, name)
        assert f._native is not None and type(f).__call__ is f._native, name
        assert isinstance(f, gradc.runtime.cpu.CpuFunction) and repr(f) == f"<gradc function {f.sig}>"
    assert cpu.s._native is None and cpu.t._native is None
    assert str(inspect.signature(cpu.vg)) == "(x, y, *, out=None, accumulate=False)"
    # what the entry takes itself, and what it hands to the checked path, give the reference results
    for args in ((2.0, 3.0), (F64(2.5), -1), (2 ** 53, -(2 ** 53)), (F64("nan"), F64("inf"))):
        same(cpu.vg(*args), ref.vg(*args))
    for args in ((F32(0.25), 0.5), (1, F32(-2)), (0.1, 3e38), (F64(0.5), F32(0.5))):
        try:
            want = ref.hg(*args)
        except TypeError:
            assert error_of(cpu.hg, *args) == error_of(ref.hg, *args)
        else:
            same(cpu.hg(*args), want)


def test_the_cpython_entry_holds_no_extra_references(mods):
    cpu, _ = mods
    x, y = 1.5 + 0.0, F64(2.5)
    before = sys.getrefcount(x), sys.getrefcount(y)
    for _ in range(1000):
        r = cpu.vg(x, y)
        one = cpu.z(x, 7)
    assert (sys.getrefcount(x), sys.getrefcount(y)) == before
    assert sys.getrefcount(r) == 2 and [sys.getrefcount(r[i]) for i in range(3)] == [2, 2, 2]
    assert sys.getrefcount(one) == 2


def test_a_module_compiled_for_another_interpreter_takes_the_ctypes_path(mods, monkeypatch):
    from gradc.runtime import fastcall
    _, ref = mods
    real = fastcall._python_api()
    assert real is not None and real[0] == python_abi().encode()
    monkeypatch.setattr(fastcall, "_api", [(b"cpython-0", *real[1:])])
    other = gradc.compile(SRC, cache=False)
    assert other.vg._native is None and other.vg._scalar is not None
    same(other.vg(2.0, 3.0), ref.vg(2.0, 3.0))


def test_module_files_record_the_interpreter(tmp_path, mods):
    from gradc.runtime import artifact
    from gradc.backends import BACKENDS, Options
    _, ref = mods
    p = tmp_path / "w.ad"
    p.write_text(SRC)
    out = gradc.build(p, tmp_path / "w.gcm")
    header, _ = artifact.read(out)
    assert header["python"] == python_abi()
    loaded = gradc.load(out)
    assert loaded.vg._native is not None
    same(loaded.vg(2.0, 3.0), ref.vg(2.0, 3.0))
    for options in (Options(), Options(cpu="znver3")):
        with pytest.raises(artifact.ArtifactMismatch, match="built for Python cpython-0, but this is"):
            artifact.check_compatible(dict(header, python="cpython-0", **({"cpu_chosen": True} if options.cpu else {})),
                                      "cpu", BACKENDS["cpu"].host_facts(options), gradc.api.VERSION, "w.gcm")
