"""DLPack both ways on cuda-sim: results taken by np.from_dlpack, DLPack tensors taken as inputs
(the ctypes reading of 0.x and 1.x capsules), argument errors, round trips, and no leak."""
import gc
import weakref

import numpy as np
import pytest

import gradc
from gradc.runtime import cuda

SRC = """
fn f(x: f32[N], y: f32[N]) -> f32[N] { return x * y + sin(x) }
fn g(w: f64[N, 3], v: f64[3]) -> (f64[N], f64) { let z = w @ v
  return (z, sum(z * z)) }
fn h(i: i32[N], x: f32[N, 3]) -> f32[N, 3] { return one_hot(i, 3) * x }
"""


@pytest.fixture(scope="module")
def mods():
    return (gradc.compile(SRC, target="cuda-sim", cache=False), gradc.compile(SRC, target="reference"))


class Only:
    """An object with only the DLPack protocol, delegating to another's (NumPy's, gradc's)."""

    def __init__(self, a, versions=True):
        self.a, self.versions, self.calls = a, versions, []

    def __dlpack__(self, stream=None, **kw):
        self.calls.append(dict(kw, stream=stream))
        if not self.versions:                 # a DLPack 0.x producer: no max_version
            if kw:
                raise TypeError("unexpected keyword")
            return self.a.__dlpack__(stream=stream)
        return self.a.__dlpack__(stream=stream, **kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class Given:
    """A capsule already made, handed to np.from_dlpack."""

    def __init__(self, cap):
        self.cap = cap

    def __dlpack__(self, **kw):
        return self.cap

    def __dlpack_device__(self):
        return (cuda.kDLCPU, 0)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_results_through_from_dlpack(mods):
    sim, ref = mods
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 50)).astype(np.float32)
    w, v = rng.normal(size=(7, 3)), rng.normal(size=3)
    r = sim.f(cuda.to_device(x, "cuda-sim"), cuda.to_device(y, "cuda-sim"))
    assert isinstance(r, cuda.DeviceArray) and r.__dlpack_device__() == (cuda.kDLCPU, 0)
    a = np.from_dlpack(r)
    assert a.dtype == np.float32 and a.shape == (50,)
    assert a.ctypes.data == r.ptr                        # no copy
    _close(a, ref.f(x, y))
    z, s = sim.g(cuda.to_device(w, "cuda-sim"), cuda.to_device(v, "cuda-sim"))
    rz, rs = ref.g(w, v)
    np.testing.assert_allclose(np.from_dlpack(z), rz, rtol=1e-12)
    np.testing.assert_allclose(np.from_dlpack(s), rs, rtol=1e-12)
    assert np.from_dlpack(s).shape == ()
    # both capsule versions, a copy, and a host copy asked by dl_device
    for kw in ({}, {"max_version": (1, 0)}, {"max_version": (1, 3), "copy": True},
               {"dl_device": (cuda.kDLCPU, 0)}):
        cap = r.__dlpack__(**kw)
        assert ('"dltensor_versioned"' in repr(cap)) == ("max_version" in kw)
        b = np.from_dlpack(Given(cap))
        _close(b, a)
        assert (b.ctypes.data == r.ptr) == (not kw.get("copy"))
    with pytest.raises(BufferError, match="stream"):
        r.__dlpack__(stream=1)
    with pytest.raises(BufferError, match="copy=False"):
        r.__dlpack__(dl_device=(cuda.kDLCUDA, 0), copy=False)


def test_dlpack_inputs(mods):
    sim, ref = mods
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 40)).astype(np.float32)
    for versions in (True, False):                     # "dltensor_versioned" and "dltensor"
        ox, oy = Only(x, versions), Only(y, versions)
        r = sim.f(ox, oy)
        assert isinstance(r, cuda.DeviceArray)          # a device input gives device results
        _close(r.get(), ref.f(x, y))
        assert ox.calls[0].get("max_version") == (1, 0) and ox.calls[0]["stream"] is None
        assert ("max_version" in ox.calls[-1]) == versions
    i = np.array([2, 0, 1, 2], np.int32)
    xs = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(sim.h(Only(i), Only(xs)).get(), ref.h(i, xs))
    # a view with a byte offset: a contiguous slice of a bigger array
    big = rng.normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_array_equal(sim.h(Only(i), Only(big[3:7])).get(), ref.h(i, big[3:7]))
    # mixed: a DLPack input, a device array and a NumPy array in one call
    _close(sim.f(Only(x), cuda.to_device(y, "cuda-sim")).get(), ref.f(x, y))
    _close(sim.f(Only(x), y).get(), ref.f(x, y))


def test_dlpack_input_errors(mods):
    sim, _ = mods
    x = np.ones(6, np.float32)
    with pytest.raises(TypeError, match=r"f: parameter 'x' expects f32\[N\], got a DLPack tensor of dtype float64"):
        sim.f(Only(x.astype(np.float64)), x)
    with pytest.raises(TypeError, match=r"parameter 'y' .*dtype int32"):
        sim.f(x, Only(x.astype(np.int32)))
    with pytest.raises(ValueError, match=r"f: parameter 'y': the DLPack tensor must be C-contiguous"):
        sim.f(x[::2], Only(np.ones(12, np.float32)[::2]))
    with pytest.raises(ValueError, match=r"parameter 'x': the DLPack tensor must be C-contiguous"):
        sim.h(Only(np.zeros(3, np.int32)), Only(np.ones((3, 3), np.float32).T))
    with pytest.raises(ValueError, match="dimension N"):
        sim.f(Only(x), Only(np.ones(5, np.float32)))

    class OnGpu(Only):
        def __dlpack_device__(self):
            return (cuda.kDLCUDA, 0)
    with pytest.raises(TypeError, match="parameter 'x'.*kDLCUDA.*host memory only"):
        sim.f(OnGpu(x), x)

    class Pinned(Only):                        # page-locked host memory: the simulator reads it
        def __dlpack_device__(self):
            return (cuda.kDLCUDAHost, 0)
    with pytest.raises(TypeError, match="on kDLCPU, but __dlpack_device__ said kDLCUDAHost"):
        sim.f(Pinned(x), x)                       # NumPy's capsule says kDLCPU: a mismatch

    class PinnedOwn:                            # a capsule that says kDLCUDAHost too: accepted
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, stream=None, max_version=None):
            assert stream is None
            return cuda._export(self.a, self.a.ctypes.data, self.a.shape, "f32",
                                (cuda.kDLCUDAHost, 0), max_version is not None)

        def __dlpack_device__(self):
            return (cuda.kDLCUDAHost, 0)
    y = np.arange(6, dtype=np.float32)
    np.testing.assert_allclose(sim.f(PinnedOwn(y), x).get(), y + np.sin(y), rtol=1e-6)

    class NotCapsule(Only):
        def __dlpack__(self, **kw):
            return object()
    with pytest.raises(TypeError, match="not a capsule"):
        sim.f(NotCapsule(x), x)
    # a rejected tensor is still deleted: the producer's memory is released
    owner = np.ones(6, np.float64)
    ref = weakref.ref(owner)
    with pytest.raises(TypeError):
        sim.f(Only(owner), x)
    del owner
    gc.collect()
    assert ref() is None


def test_round_trip_result_to_input(mods):
    sim, ref = mods
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 30)).astype(np.float32)
    r = sim.f(x, y)                                    # NumPy in: NumPy out
    d = sim.f(Only(x), Only(y))                        # DLPack in: device out
    _close(d.get(), r)
    again = sim.f(Only(d), Only(d))                   # a result's own capsule, read by ctypes
    _close(again.get(), ref.f(r, r))
    again2 = sim.f(Only(d, versions=False), d)        # 0.x capsule and __cuda_array_interface__
    _close(again2.get(), ref.f(r, r))


def _live():
    gc.collect()
    return len(cuda._exported)


def test_no_leak_over_round_trips(mods):
    sim, ref = mods
    x = np.linspace(-1, 1, 64).astype(np.float32)
    base = _live()
    d = cuda.to_device(x, "cuda-sim")
    owners = []
    for k in range(200):
        r = sim.f(Only(d), d)                          # consumed: deleted after the call
        owners.append(weakref.ref(r._owner))
        a = np.from_dlpack(r)                          # exported and consumed by NumPy
        cap = r.__dlpack__(max_version=(1, 0))         # exported, never consumed
        if k % 2:
            b = sim.f(Only(r, versions=bool(k % 3)), a)
            _close(b.get(), ref.f(a, a))
        del r, cap
        assert _live() == base + 1                     # only a's
        del a
    assert _live() == base
    assert all(w() is None for w in owners)            # every result's memory was freed
    # the array outlives the result it came from: NumPy holds the memory through the deleter
    r = sim.f(d, d)
    w = weakref.ref(r._owner)
    a = np.from_dlpack(r)
    expect = r.get()
    del r
    gc.collect()
    assert w() is not None
    np.testing.assert_array_equal(a, expect)
    del a
    gc.collect()
    assert w() is None and _live() == base
