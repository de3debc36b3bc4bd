"""The cuda-sim target against the NumPy reference: every op forward and derivative, f32 and f64,
through the kernels generated from graphs and the launch-plan executor of runtime/cuda.py; and
every kernel's PTX assembled by ptxas for sm_80 and sm_90."""
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import gradc
from gradc.api import signature
from gradc.compiler.codegen.cuda import toolkit
from gradc.compiler.codegen.cuda.graphs import compile_graphs, function_kernels
from gradc.compiler.pipeline import optimize
from gradc.runtime import cuda

_spec = importlib.util.spec_from_file_location("cpu_cases", Path(__file__).with_name("test_cpu.py"))
cases = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cpu_cases", cases)
_spec.loader.exec_module(cases)


def _sim_module(dtype, case_list):
    graphs, doms = {}, {}
    for name, params, body in case_list:
        for k, g in cases._graphs(name, params, body, dtype).items():
            graphs[k] = g
            doms[k] = [dom for _, _, dom in params]
    opt = {k: optimize(g) for k, g in graphs.items()}
    code = compile_graphs(opt, f"ops_{dtype}", sim=True)
    fns = cuda.load(code, {k: signature(g) for k, g in graphs.items()}, "cuda-sim")
    return opt, doms, gradc.runtime.module.Module(f"ops_{dtype}", fns, "cuda-sim"), code


@pytest.fixture(scope="module", params=["f32", "f64"])
def sim_ops(request):
    return request.param, _sim_module(request.param, cases.CASES)


@pytest.mark.parametrize("name", [n for n, _, _ in cases.CASES])
def test_op(sim_ops, name):
    dtype, (opt, doms, module, _) = sim_ops
    for k in (name, f"{name}_vjp", f"{name}_jvp"):
        if k in opt:
            cases._check(opt, doms, module, dtype, k)


@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_integer_ops(dtype):
    c = cases
    ops = [c._case(op, [(("N", 4), dtype, "any"), ((4,), dtype, "any")],
                   (lambda op: lambda e, x, y: e.emit(op, x, y))(op)) for op in c.INT_OPS[:3] + ("floordiv", "mod")]
    ops += [c._case(op, [(("N", 4), dtype, "any")], (lambda op: lambda e, x: e.emit(op, x))(op))
            for op in c.INT_OPS[5:]]
    ops += [c._case("isum", [(("N", 4), dtype, "any")], lambda e, x: (e.sum(x, axes=(0,), keepdims=False),
                                                                       e.max(x, axes=(1,), keepdims=True),
                                                                       e.cast(x, dtype="f64")))]
    opt, doms, module, _ = _sim_module(dtype, ops)
    for name in opt:
        c._check(opt, doms, module, "f64", name)


@pytest.fixture(scope="module")
def program():
    return (gradc.compile(cases.PROGRAM, target="cuda-sim", cache=False),
            gradc.compile(cases.PROGRAM, target="reference"))


def test_program_matches_reference_at_two_sizes(program):
    """One compile, two batch sizes: sizes are kernel arguments, nothing recompiles."""
    sim, ref = program
    rng = np.random.default_rng(3)
    for n in (3, 40):
        args = cases._mlp_args(rng, n)
        for a, b in zip(sim.mlp_grad(*args), ref.mlp_grad(*args)):
            cases._compare(a, b, "f64", "mlp_grad")
        t = rng.normal(size=args[2].shape)
        for a, b in zip(sim.hvp(*args, t), ref.hvp(*args, t)):
            cases._compare(a, b, "f64", "hvp")
        x = rng.normal(size=n * 37).astype(np.float32)
        for a, b in zip(sim.g(x, x), ref.g(x, x)):
            cases._compare(a, b, "f32", "g")


def test_reductions_are_deterministic(program):
    sim, _ = program
    x = np.random.default_rng(4).normal(size=50_000).astype(np.float32)
    first = sim.f(x, x)
    assert all(sim.f(x, x).tobytes() == first.tobytes() for _ in range(3))


def test_argument_errors_and_checks():
    m = gradc.compile("fn f(i: i32[N], x: f32[N, 3]) -> f32[N, 3] { return one_hot(i, 3) * x }",
                      target="cuda-sim", cache=False)
    with pytest.raises(TypeError, match="expects f32"):
        m.f(np.zeros(2, np.int32), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dimension N"):
        m.f(np.zeros(2, np.int32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="7"):
        m.f(np.array([0, 7], np.int32), np.ones((2, 3), np.float32))
    got = m.f(np.array([2, 0], np.int32), np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(got, [[0, 0, 1], [1, 0, 0]])


def test_device_arrays_in_and_out(program):
    """Device inputs give device results, passed on without a copy; NumPy in gives NumPy out."""
    sim, ref = program
    x = np.linspace(-1, 1, 1000).astype(np.float32)
    dx = cuda.to_device(x, "cuda-sim")
    gx, gy = sim.g(dx, dx)
    assert isinstance(gx, cuda.DeviceArray) and gx.shape == (1000,)
    assert gx.__cuda_array_interface__["typestr"] == "<f4"
    for a, b in zip((gx.get(), np.asarray(gy)), ref.g(x, x)):
        cases._compare(a, b, "f32", "g on device arrays")
    again = sim.g(gx, gy)                      # a result fed back in
    for a, b in zip(again, ref.g(gx.get(), gy.get())):
        cases._compare(a.get(), b, "f32", "g on results")

    class Foreign:                             # any object with the interface, as CuPy or Numba gives
        def __init__(self, d):
            self.__cuda_array_interface__ = dict(d.__cuda_array_interface__)
    np.testing.assert_array_equal(sim.g(Foreign(dx), Foreign(dx))[0].get(), gx.get())
    bad = dict(dx.__cuda_array_interface__, typestr="<f8")
    with pytest.raises(TypeError, match="typestr <f8"):
        sim.g(type("F", (), {"__cuda_array_interface__": bad})(), dx)


def test_several_host_threads(program):
    sim, ref = program
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=200 + 37 * i).astype(np.float32) for i in range(6)]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = sim.g(inputs[i], inputs[i])
        except Exception as ex:           # pragma: no cover - reported below
            errors.append(ex)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(6):
        for a, b in zip(results[i], ref.g(inputs[i], inputs[i])):
            cases._compare(a, b, "f32", f"thread {i}")


def test_launches_and_bytes_are_counted():
    m = gradc.compile("fn f(x: f32[N]) -> f32[N] { return exp(x) * x + 1 }\n"
                      "fn s(x: f32[N]) -> f32 { return sum(x * x) }", target="cuda-sim", cache=False)
    x = np.ones(10_000, np.float32)
    with cuda.stats() as st:
        m.f(x)
    assert (st.launches, st.bytes_loaded, st.bytes_stored) == (1, x.nbytes, x.nbytes)
    with cuda.stats() as st:
        m.s(x)
    # the first pass reads x once and writes one f64 partial per block; the second reads those
    assert st.launches == 2 and x.nbytes <= st.bytes_loaded <= x.nbytes * 1.01


def test_cuda_without_a_driver_says_what_to_do():
    ok, why = cuda.cuda_available()
    if ok:
        pytest.skip("this machine can run target cuda")
    with pytest.raises(ValueError, match="cuda-sim"):
        gradc.compile("fn f(x: f32) -> f32 { return x }", target="cuda")


# ---- PTX: every kernel of the op tests assembled by ptxas


@pytest.fixture(scope="module")
def ptxas_available():
    try:
        toolkit.ptxas_path()
        toolkit.libdevice_path()
    except toolkit.ToolkitError as ex:
        pytest.skip(f"CUDA's ptxas or libdevice is missing here: {ex}")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_every_op_kernel_assembles(ptxas_available, arch, dtype):
    graphs = {}
    for name, params, body in cases.CASES:
        for k, g in cases._graphs(name, params, body, dtype).items():
            graphs[k] = optimize(g)
    code = compile_graphs(graphs, f"ops_{dtype}", sim=False, arch=arch)
    kernels, _ = function_kernels(graphs)
    assert len(code["kernels"]) == len(kernels) > 100
    for k in code["kernels"]:
        assert f".entry {k}(" in code["ptx"]
    assert f".target {arch}" in code["ptx"]
    toolkit.ptxas(code["ptx"], arch)          # PtxasError if ptxas rejects any of it


# ---- the cuda-bindings driver, against a stand-in for NVIDIA's driver API that runs each
# launch in the simulator: the calls, their arguments and the kernel parameters as packed


class FakeDriverAPI:
    """cuda.bindings.driver's calls as the BindingsDriver makes them: each returns (CUresult,
    values...); memory is host memory; cuLaunchKernel unpacks the parameter array (void **)
    and runs the kernel in a SimModule built from the same graphs."""

    def __init__(self, sim):
        self.sim, self.memory, self.calls = sim, {}, []

    def _ok(self, *values):
        return (0, *values)

    def cuInit(self, flags):
        return self._ok()

    def cuDeviceGetCount(self):
        return self._ok(1)

    def cuDeviceGet(self, i):
        return self._ok(i)

    def cuDevicePrimaryCtxRetain(self, dev):
        return self._ok("ctx")

    def cuCtxSetCurrent(self, ctx):
        return self._ok()

    def cuGetErrorName(self, err):
        return self._ok(b"CUDA_ERROR_TEST")

    def cuModuleLoadData(self, image):
        assert image.endswith(b"\0") and b".entry" in image
        return self._ok("module")

    def cuModuleGetFunction(self, module, name):
        return self._ok(name.decode())

    def cuMemAlloc(self, n):
        buf = np.zeros(n, np.uint8)
        self.memory[buf.ctypes.data] = buf
        return self._ok(buf.ctypes.data)

    def cuMemFree(self, ptr):
        self.memory.pop(int(ptr))
        return self._ok()

    def _copy(self, dst, src, n):
        import ctypes
        ctypes.memmove(dst, src, n)
        return self._ok()

    cuMemcpyHtoD = cuMemcpyDtoH = cuMemcpyDtoD = _copy

    def _elements(self, ptr, dtype):
        for start, buf in self.memory.items():
            if start <= ptr < start + buf.size:
                return (start + buf.size - ptr) // np.dtype(NP[dtype]).itemsize
        raise AssertionError(f"pointer {ptr:#x} is not device memory")

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        import ctypes
        assert (gy, gz, by, bz, shared, stream, extra) == (1, 1, 1, 1, 0, 0, 0)
        info = self.sim.infos[f]
        pointers = (ctypes.c_void_p * len(info.params)).from_address(params)
        slots, sizes = [], []
        for p, addr in zip(info.params, pointers):
            if p.buffer:
                ptr = ctypes.c_uint64.from_address(addr).value
                slots.append(ptr)
                sizes.append(self._elements(ptr, p.dtype))
            else:
                raw = ctypes.c_uint64.from_address(addr).value
                slots.append(raw if p.dtype.endswith("64") else raw & 0xFFFFFFFF)
                sizes.append(0)
        self.calls.append(f)
        self.sim.launch_raw(f, gx, bx, slots, sizes)
        return self._ok()

    def cuCtxSynchronize(self):
        return self._ok()


NP = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "bool": np.bool_}


def test_bindings_driver_end_to_end():
    from gradc.compiler.codegen.cuda import SimModule
    from gradc.compiler.codegen.cuda.kernel import KernelInfo
    mod, graphs = gradc.api._optimized(cases.PROGRAM, "p.ad")
    graphs = {k: graphs[k] for k in ("mlp_grad", "g")}
    sim_code = compile_graphs(graphs, "p", sim=True)
    sim = SimModule.from_ir(sim_code["sim_ir"], {k: KernelInfo.from_json(v) for k, v in sim_code["kernels"].items()})
    api = FakeDriverAPI(sim)
    # the driver as its constructor sets it up, with the stand-in in place of the binding
    drv = cuda.BindingsDriver.__new__(cuda.BindingsDriver)
    drv.cu, drv._current = api, threading.local()
    drv._check(api.cuInit(0), "cuInit")
    drv.device = drv._check(api.cuDeviceGet(0), "cuDeviceGet")
    drv.context = drv._check(api.cuDevicePrimaryCtxRetain(drv.device), "cuDevicePrimaryCtxRetain")
    code = compile_graphs(graphs, "p", sim=False)
    sigs = {k: signature(mod.graphs[k]) for k in graphs}
    loaded = drv.load(code)
    fns = {k: cuda.CudaFunction(s, code["functions"][k], loaded, drv) for k, s in sigs.items()}
    ref = gradc.compile(cases.PROGRAM, target="reference")
    rng = np.random.default_rng(9)
    args = cases._mlp_args(rng, 7)
    for a, b in zip(fns["mlp_grad"](*args), ref.mlp_grad(*args)):
        cases._compare(a, b, "f64", "mlp_grad through the bindings driver")
    x = rng.normal(size=300).astype(np.float32)
    for a, b in zip(fns["g"](x, x), ref.g(x, x)):
        cases._compare(a, b, "f32", "g through the bindings driver")
    assert set(api.calls) <= set(code["kernels"]) and len(api.calls) > 5
    with pytest.raises(cuda.CudaError, match="cuMemAlloc failed: CUDA_ERROR_TEST"):
        drv._check((2, None), "cuMemAlloc")


# ---- matrix products: register-blocked tiles, transposes in place, fused epilogues

GEMM = """
fn mm(a: F[M, K], b: F[K, N]) -> F[M, N] { return a @ b }
fn mm_tt(a: F[K, M], b: F[N, K]) -> F[M, N] { return transpose(a) @ transpose(b) }
fn mm_ta(a: F[K, M], b: F[K, N]) -> F[M, N] { return transpose(a) @ b }
fn mm_tb(a: F[M, K], b: F[N, K]) -> F[M, N] { return a @ transpose(b) }
fn layer(x: F[M, K], w: F[K, N], c: F[N]) -> F[M, N] { return tanh(x @ w + c) }
fn row(x: F[1, K], w: F[K, N], c: F[N]) -> F[1, N] { return relu(x @ w + c) * 2 }
fn col(w: F[M, K], v: F[K, 1]) -> F[M, 1] { return exp(w @ v) }
"""


@pytest.fixture(scope="module", params=["f32", "f64"])
def gemm(request):
    src = GEMM.replace("F[", request.param + "[")
    return request.param, gradc.compile(src, target="cuda-sim", cache=False)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (65, 17, 130), (3, 64, 64), (0, 5, 4), (4, 0, 3), (7, 3, 0)])
def test_products_of_any_shape(gemm, m, k, n):
    dtype, mod = gemm
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    f = NP[dtype]
    a, b, c = rng.normal(size=(m, k)).astype(f), rng.normal(size=(k, n)).astype(f), rng.normal(size=n).astype(f)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "f32" else dict(rtol=1e-12, atol=1e-12)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_allclose(mod.mm(a, b), a64 @ b64, **tol)
    np.testing.assert_allclose(mod.mm_tt(a.T.copy(), b.T.copy()), a64 @ b64, **tol)
    np.testing.assert_allclose(mod.mm_ta(a.T.copy(), b), a64 @ b64, **tol)
    np.testing.assert_allclose(mod.mm_tb(a, b.T.copy()), a64 @ b64, **tol)
    np.testing.assert_allclose(mod.layer(a, b, c), np.tanh(a64 @ b64 + c), **tol)
    # a unit axis: the epilogue indexes the product as the element lowering does (found by fuzzing)
    if m:
        np.testing.assert_allclose(mod.row(a[:1], b, c), np.maximum(a64[:1] @ b64 + c, 0) * 2, **tol)
    if n:
        np.testing.assert_allclose(mod.col(a, b[:, :1]), np.exp(a64 @ b64[:, :1]), **tol)


def test_product_traffic_and_epilogue(gemm):
    """A 128 x 128 x 128 product reads each operand once per 64-wide tile of the other side (twice
    here), and a fused epilogue stores only its result: the raw product never goes to memory."""
    from gradc.compiler.codegen.cuda.graphs import BM, BN
    dtype, mod = gemm
    size = np.dtype(NP[dtype]).itemsize
    n = 128
    a, b = np.ones((n, n), NP[dtype]), np.ones((n, n), NP[dtype])
    with cuda.stats() as st:
        mod.mm(a, b)
    reads = n * n * size * (n // BN + n // BM)
    assert (st.launches, st.bytes_loaded, st.bytes_stored) == (1, reads, n * n * size)
    with cuda.stats() as st:
        mod.layer(a, b, np.zeros(n, NP[dtype]))
    assert st.launches == 1 and st.bytes_stored == n * n * size


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_sample_kernel_assembles(ptxas_available, arch):
    """The kernels of every sample (those that compile: some carry an expected error), as one
    module per architecture, accepted by ptxas; each an .entry of the PTX."""
    samples = sorted((Path(__file__).parent.parent / "samples").glob("*.ad"))
    graphs = {}
    for i, path in enumerate(samples):
        try:
            _, gs = gradc.api._optimized(path.read_text(), str(path))
        except gradc.CompileError:
            continue
        graphs.update({f"s{i}_{k}": g for k, g in gs.items()})
    code = compile_graphs(graphs, "samples", sim=False, arch=arch)
    assert len(code["kernels"]) > 50
    assert all(f".entry {k}(" in code["ptx"] for k in code["kernels"])
    toolkit.ptxas(code["ptx"], arch)
