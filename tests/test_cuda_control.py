"""Loops and branches on cuda-sim: the structured launch plan run as a host-side loop of launches
(runtime/cuda_control.py), against target cpu and finite differences in float64."""
import numpy as np
import pytest

import gradc
from gradc.runtime import cuda

from test_control import close, fd, np_rnn

RNG = np.random.default_rng(7)
EPS = 1e-6

PROGRAM = """
fn rnn(h0: f64[B, H], xs: f64[T, B, H], W: f64[H, H]) -> f64 {
    var h = h0
    for t in 0..T { h = tanh(h @ W + xs[t]) }
    return sum(h * h)
}
let rnn_grad = grad(rnn, wrt=(h0, W))
let rnn_jvp = jvp(rnn, wrt=(h0, W))

fn rnn_ckpt(h0: f64[B, H], xs: f64[T, B, H], W: f64[H, H]) -> f64 {
    var h = h0
    for t in 0..T checkpoint { h = tanh(h @ W + xs[t]) }
    return sum(h * h)
}
let rnn_ckpt_grad = grad(rnn_ckpt, wrt=(h0, xs, W))

fn newton_sqrt(a: f64) -> f64 {
    var x = a
    while abs(x * x - a) > 1e-12 * a { x = 0.5 * (x + a / x) }
    return x
}
let newton_sqrt_grad = grad(newton_sqrt)

fn piecewise(x: f64) -> f64 {
    var y = 0.0
    if x > 0 { y = x * x } else { y = -x }
    return y
}
let piecewise_grad = grad(piecewise)

# a body with control of its own: a loop and a branch inside a loop
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

fn count(xs: f64[N]) -> f64 {
    var s = 0.0
    for t in 0..N+1 { s = s + xs[t] }
    return s
}
"""


@pytest.fixture(scope="module")
def sim():
    return gradc.compile(PROGRAM, target="cuda-sim", cache=False)


@pytest.fixture(scope="module")
def cpu():
    return gradc.compile(PROGRAM, target="cpu")


def rnn_args(T=3, B=2, H=3):
    return [RNG.standard_normal((B, H)), RNG.standard_normal((T, B, H)), 0.5 * RNG.standard_normal((H, H))]


def test_plan_is_a_program_of_plans(sim):
    """A function with a loop gets a structured plan; one without keeps its plain plan."""
    from gradc.runtime.cuda_control import plan_launches
    plan = sim.rnn.plan
    assert "program" in plan and plan["symbols"] == ["B", "H", "T"]
    loops = [s for s in plan["program"]["steps"] if "for" in s]
    assert len(loops) == 1 and loops[0]["for"]["trip"].startswith("#trip")
    assert all(s["launch"] in sim.rnn.loaded.infos for s in plan_launches(plan))


def test_rnn_and_its_gradient(sim, cpu):
    args = rnn_args()
    close(sim.rnn(*args), np_rnn(*args), 1e-12)
    close(sim.rnn(*args), cpu.rnn(*args), 1e-12)
    gh, gW = sim.rnn_grad(*args)
    ch, cW = cpu.rnn_grad(*args)
    close(gh, ch, 1e-12)
    close(gW, cW, 1e-12)
    close(gh, fd(np_rnn, args, 0))
    close(gW, fd(np_rnn, args, 2))


def test_jvp_through_the_loop(sim, cpu):
    args = rnn_args()
    th, tW = RNG.standard_normal(args[0].shape), RNG.standard_normal(args[2].shape)
    value, tangent = sim.rnn_jvp(*args, th, tW)
    want = (np_rnn(args[0] + EPS * th, args[1], args[2] + EPS * tW) -
            np_rnn(args[0] - EPS * th, args[1], args[2] - EPS * tW)) / (2 * EPS)
    close(value, np_rnn(*args), 1e-12)
    close(tangent, want)
    close(tangent, cpu.rnn_jvp(*args, th, tW)[1], 1e-12)


def test_checkpointed_loop_gradient(sim, cpu):
    args = rnn_args(T=5)
    got = sim.rnn_ckpt_grad(*args)
    for g, c, i in zip(got, cpu.rnn_ckpt_grad(*args), range(3)):
        close(g, c, 1e-12)
        close(g, fd(np_rnn, args, i))


def test_no_trips(sim, cpu):
    """T = 0 from the shape of xs: the state is the initial one, the stacks have no rows."""
    args = rnn_args(T=0)
    h0 = args[0]
    close(sim.rnn(*args), np.sum(h0 * h0), 1e-12)
    gh, gW = sim.rnn_grad(*args)
    close(gh, 2 * h0, 1e-12)
    close(gW, np.zeros_like(args[2]), 0)
    ckpt = sim.rnn_ckpt_grad(*args)
    assert ckpt[1].shape == (0, 2, 3)
    close(ckpt[0], 2 * h0, 1e-12)


def test_a_new_trip_count_reuses_the_plan(sim):
    for T in (1, 4):
        args = rnn_args(T=T)
        with cuda.stats() as st:
            close(sim.rnn(*args), np_rnn(*args), 1e-12)
        assert st.launches >= T


def test_while_newton_sqrt(sim, cpu):
    for a in (2.0, 9.0, 0.3):
        close(sim.newton_sqrt(a), np.sqrt(a), 1e-12)
        close(sim.newton_sqrt_grad(a), 1 / (2 * np.sqrt(a)), 1e-10)
        close(sim.newton_sqrt_grad(a), cpu.newton_sqrt_grad(a), 1e-12)


def test_if_piecewise_both_sides(sim, cpu):
    for x, y, dy in ((1.5, 2.25, 3.0), (-2.0, 2.0, -1.0), (0.0, 0.0, -1.0)):
        close(sim.piecewise(x), y, 1e-12)
        close(sim.piecewise_grad(x), dy, 1e-12)
        close(sim.piecewise_grad(x), cpu.piecewise_grad(x), 0)
        if x != 0.0:
            close(sim.piecewise_grad(x), fd(lambda v: cpu.piecewise(v), [x], 0))


def test_nested_loops_and_a_branch_in_a_loop(sim, cpu):
    A, v = 0.5 * RNG.standard_normal((3, 3)), RNG.standard_normal(3)
    close(sim.nested(A, v), cpu.nested(A, v), 1e-12)
    for g, c in zip(sim.nested_grad(A, v), cpu.nested_grad(A, v)):
        close(g, c, 1e-12)
    close(sim.nested_grad(A, v)[1], fd(cpu.nested, [A, v], 1))


def test_a_run_time_index_out_of_range_raises(sim, cpu):
    xs = np.ones(3)
    with pytest.raises(IndexError) as on_cpu:
        cpu.count(xs)
    with pytest.raises(IndexError, match=r"index 3 is out of range for axis 0 \(size N\)") as on_sim:
        sim.count(xs)
    assert str(on_sim.value) == str(on_cpu.value)
    # the function still works after a failed call (its scratch and buffers are intact)
    with pytest.raises(IndexError):
        sim.count(np.ones(0))


def test_device_arrays_through_a_loop(sim):
    args = rnn_args()
    dev = [cuda.to_device(a, "cuda-sim") for a in args]
    gh, gW = sim.rnn_grad(*dev)
    assert isinstance(gW, cuda.DeviceArray)
    want = sim.rnn_grad(*args)
    close(gh.get(), want[0], 0)
    close(gW.get(), want[1], 0)


def test_a_module_file_round_trip(tmp_path):
    """gradc build writes the structured plans; loading checks their launches."""
    src = "fn f(x: f64[N]) -> f64 {\n  var s = 0.0\n  for t in 0..N { s = s + x[t] * x[t] }\n  return s\n}\n"
    path = gradc.build(src, tmp_path / "loop.gcm", target="cuda-sim")
    m = gradc.load(path)
    close(m.f(np.arange(4.0)), 14.0, 0)


def test_bindings_driver_runs_a_loop():
    """The cuda-bindings driver (what target cuda uses where PyCUDA is absent) through a loop and
    its gradient, against the stand-in for NVIDIA's driver API of test_cuda_graphs.py: scalars
    read back with cuMemcpyDtoH, carried state copied with cuMemcpyDtoD, rows written in place."""
    import threading

    from gradc.api import signature
    from gradc.compiler.codegen.cuda import SimModule
    from gradc.compiler.codegen.cuda.graphs import compile_graphs
    from gradc.compiler.codegen.cuda.kernel import KernelInfo
    from test_cuda_graphs import FakeDriverAPI
    mod, graphs = gradc.api._optimized(PROGRAM, "p.ad")
    graphs = {k: graphs[k] for k in ("rnn_grad", "newton_sqrt", "piecewise_grad")}
    sim_code = compile_graphs(graphs, "p", sim=True)
    api = FakeDriverAPI(SimModule.from_ir(sim_code["sim_ir"], {k: KernelInfo.from_json(v)
                                                               for k, v in sim_code["kernels"].items()}))
    drv = cuda.BindingsDriver.__new__(cuda.BindingsDriver)
    drv.cu, drv._current = api, threading.local()
    drv.device, drv.context = 0, "ctx"
    code = compile_graphs(graphs, "p", sim=False)
    loaded = drv.load(code)
    fns = {k: cuda.CudaFunction(signature(mod.graphs[k]), code["functions"][k], loaded, drv) for k in graphs}
    args = rnn_args()
    gh, gW = fns["rnn_grad"](*args)
    close(gh, fd(np_rnn, args, 0))
    close(gW, fd(np_rnn, args, 2))
    close(fns["newton_sqrt"](np.array(2.0)), np.sqrt(2.0), 1e-12)
    close(fns["piecewise_grad"](np.array(-2.0)), -1.0, 0)
    assert len(api.calls) > 10 and not api.memory.keys() - set(_scratch_blocks(fns))


def _scratch_blocks(fns):
    """The addresses of the scratch blocks the functions keep between calls (all else is freed)."""
    return [blk[0].ptr for f in fns.values() for blk in getattr(f._scratch, "blocks", {}).values()]


def test_several_host_threads_through_a_loop(sim):
    """Each host thread has its own scratch per plan; each call its own device buffers."""
    import threading
    inputs = [rnn_args(T=2 + i % 3) for i in range(4)]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = sim.rnn_grad(*inputs[i])
        except Exception as ex:           # pragma: no cover - reported below
            errors.append(ex)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        for g, want in zip(results[i], sim.rnn_grad(*inputs[i])):
            close(g, want, 0)
