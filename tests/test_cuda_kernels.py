"""The CUDA kernel toolchain on hand-built kernels: the simulator against NumPy, and ptxas on their PTX."""
import math
import re

import numpy as np
import pytest
from llvmlite import ir

import llvmlite.binding as llvm
from gradc.compiler.codegen.cuda import (
    ARCHS, BarrierError, Kernel, KernelError, OutOfBoundsError, Param, PtxasError, SimModule, ToolkitError,
    build_module, compile_ptx, emit_ptx, nvptx_ir, ptxas)
from gradc.compiler.codegen.cuda import mathlib, toolkit
from gradc.compiler.codegen.cuda.kernel import ELEMENT, I64
from gradc.compiler.codegen.cuda.nvptx import CudaTarget
from gradc.compiler.codegen.cuda.simcontext import LAUNCH, THREAD
from gradc.compiler.codegen.cuda.simtarget import SimTarget, symbol

NP = {"f32": np.float32, "f64": np.float64}
BLOCK = 64                                   # the reduction's block size, fixed in its code


def c64(v):
    return ir.Constant(I64, v)


# ---- the kernels


def elementwise(dtype):
    """y[i] = a * x[i] + sin(x[i]) over a grid-stride loop."""
    def body(kb):
        x, y, a, n = kb.arg("x"), kb.arg("y"), kb.arg("a"), kb.arg("n")
        with kb.grid_stride(n) as i:
            v = kb.load(x, i)
            kb.store(y, i, kb.b.fadd(kb.b.fmul(a, v), kb.math("sin", v)))
    return Kernel(f"axpy_sin_{dtype}", (Param("x", dtype), Param("y", dtype), Param("a", dtype, buffer=False),
                                        Param("n", "i64", buffer=False)), body)


def block_sum(dtype):
    """out[block] = the sum of the block's grid-stride share of x: a tree in shared memory."""
    def body(kb):
        b, t = kb.b, ELEMENT[dtype]
        x, out, n = kb.arg("x"), kb.arg("out"), kb.arg("n")
        s = kb.shared("partial", dtype, BLOCK)
        acc = kb.local(t, ir.Constant(t, 0.0))
        with kb.grid_stride(n) as i:
            b.store(b.fadd(b.load(acc), kb.load(x, i)), acc)
        tid = kb.i64(kb.tid())
        kb.store(s, tid, b.load(acc))
        kb.barrier("partials written")
        levels = BLOCK.bit_length() - 1
        with kb.loop(0, levels) as k:
            width = b.lshr(c64(BLOCK // 2), k)
            with kb.if_then(b.icmp_signed("<", tid, width)):
                kb.store(s, tid, b.fadd(kb.load(s, tid), kb.load(s, b.add(tid, width))))
            kb.barrier("tree level")
        with kb.if_then(b.icmp_signed("==", tid, c64(0))):
            kb.store(out, kb.ctaid(), kb.load(s, 0))
    return Kernel(f"block_sum_{dtype}", (Param("x", dtype), Param("out", dtype), Param("n", "i64", buffer=False)),
                  body)


def indices_kernel():
    """out[flat thread number] = tid.x, tid.y, ctaid.x, ctaid.y, ntid.x, nctaid.y packed in decimal digits."""
    def body(kb):
        b, out = kb.b, kb.arg("out")
        gx, gy = kb.global_id("x"), kb.global_id("y")
        flat = b.add(b.mul(gy, kb.grid_size("x")), gx)
        v = c64(0)
        for reg, axis in (("tid", "x"), ("tid", "y"), ("ctaid", "x"), ("ctaid", "y"), ("ntid", "x"), ("nctaid", "y")):
            v = b.add(b.mul(v, c64(10)), b.zext(kb.index(reg, axis), I64))
        kb.store(out, flat, v)
    return Kernel("indices", (Param("out", "i64"),), body)


def guarded_double():
    """One element per thread, the threads past n return early."""
    def body(kb):
        x, y, n = kb.arg("x"), kb.arg("y"), kb.arg("n")
        i = kb.global_id()
        with kb.if_then(kb.b.icmp_signed(">=", i, n)):
            kb.ret()
        kb.store(y, i, kb.b.fmul(kb.load(x, i), ir.Constant(ir.DoubleType(), 2.0)))
    return Kernel("guarded_double", (Param("x", "f64"), Param("y", "f64"), Param("n", "i64", buffer=False)), body)


def half_barrier():
    def body(kb):
        with kb.if_then(kb.b.icmp_signed("<", kb.i64(kb.tid()), c64(16))):
            kb.barrier("only the first half")
    return Kernel("half_barrier", (), body)


def two_barriers():
    def body(kb):
        low = kb.b.icmp_signed("<", kb.i64(kb.tid()), c64(8))
        with kb.b.if_else(low) as (then, otherwise):
            with then:
                kb.barrier("low side")
            with otherwise:
                kb.barrier("high side")
    return Kernel("two_barriers", (), body)


def shift_copy():
    """y[i] = x[i + k]: out of bounds for the last k threads when n = len(x)."""
    def body(kb):
        x, y, k, n = kb.arg("x"), kb.arg("y"), kb.arg("k"), kb.arg("n")
        with kb.grid_stride(n) as i:
            kb.store(y, i, kb.load(x, kb.b.add(i, k)))
    return Kernel("shift_copy", (Param("x", "f32"), Param("y", "f32"), Param("k", "i64", buffer=False),
                                 Param("n", "i64", buffer=False)), body)


def shared_overrun():
    def body(kb):
        s = kb.shared("tile", "f32", 8)
        kb.store(s, kb.tid(), ir.Constant(ir.FloatType(), 1.0))
    return Kernel("shared_overrun", (), body)


def shared_unwritten():
    def body(kb):
        s = kb.shared("tile", "f32", 32)
        kb.store(kb.arg("out"), kb.global_id(), kb.load(s, kb.tid()))
    return Kernel("shared_unwritten", (Param("out", "f32"),), body)


def sim_kernels():
    return [elementwise("f32"), elementwise("f64"), block_sum("f32"), block_sum("f64"), indices_kernel(),
            guarded_double(), half_barrier(), two_barriers(), shift_copy(), shared_overrun(), shared_unwritten()]


UNARY_DOMAINS = {
    "sin": (-10, 10), "cos": (-10, 10), "tan": (-1.5, 1.5), "asin": (-0.99, 0.99), "acos": (-0.99, 0.99),
    "atan": (-10, 10), "sinh": (-10, 10), "cosh": (-10, 10), "tanh": (-10, 10), "asinh": (-10, 10),
    "acosh": (1, 10), "atanh": (-0.99, 0.99), "exp": (-10, 10), "exp2": (-10, 10), "exp10": (-5, 5),
    "expm1": (-10, 10), "log": (0.01, 100), "log2": (0.01, 100), "log10": (0.01, 100), "log1p": (-0.9, 10),
    "sqrt": (0, 100), "cbrt": (-100, 100), "erf": (-4, 4), "erfc": (-4, 4), "floor": (-10, 10),
    "ceil": (-10, 10), "trunc": (-10, 10), "round": (-10, 10), "rint": (-10, 10), "fabs": (-10, 10),
}
BINARY_DOMAINS = {"pow": ((0.1, 10), (-3, 3)), "atan2": ((-10, 10), (-10, 10)), "fmod": ((-10, 10), (0.5, 3)),
                  "fmin": ((-10, 10), (-10, 10)), "fmax": ((-10, 10), (-10, 10)), "hypot": ((-10, 10), (-10, 10)),
                  "copysign": ((-10, 10), (-10, 10))}


def _c_round(x):
    r = np.trunc(x)
    return r + np.where(np.abs(x - r) >= 0.5, np.sign(x), 0)


# the oracle of each function, evaluated in float64
ORACLES = {
    "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "asinh": np.arcsinh, "acosh": np.arccosh,
    "atanh": np.arctanh, "exp10": lambda x: np.power(10.0, x), "erf": np.vectorize(math.erf),
    "erfc": np.vectorize(math.erfc), "round": _c_round, "pow": np.power, "atan2": np.arctan2,
}


MATH = sorted(mathlib.FUNCTIONS)


def math_kernel(dtype, names=MATH):
    """y[k, i] = f_k(x[k, i]) or f_k(x[k, i], z[k, i]) for the k-th function of names."""
    def body(kb):
        x, z, y, n = kb.arg("x"), kb.arg("z"), kb.arg("y"), kb.arg("n")
        with kb.grid_stride(n) as i:
            for k, name in enumerate(names):
                at = kb.b.add(kb.b.mul(c64(k), n), i)
                args = [kb.load(x, at)] + ([kb.load(z, at)] if mathlib.FUNCTIONS[name] == 2 else [])
                kb.store(y, at, kb.math(name, *args))
    suffix = "" if names is MATH else "_" + "_".join(names)
    return Kernel(f"math_{dtype}{suffix}", (Param("x", dtype), Param("z", dtype), Param("y", dtype),
                                            Param("n", "i64", buffer=False)), body)


def math_kernels():
    return [math_kernel("f32"), math_kernel("f64")]


@pytest.fixture(scope="module")
def sim():
    return SimModule(sim_kernels())


@pytest.fixture(scope="module")
def math_sim():
    return SimModule(math_kernels())


# ---- the simulator


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_elementwise_grid_stride(sim, dtype):
    rng = np.random.default_rng(1)
    n = 1000                                  # 4 blocks of 64 threads: each thread takes about 4
    x = rng.uniform(-3, 3, n).astype(NP[dtype])
    y = np.full(n, np.nan, NP[dtype])
    stats = sim.launch(f"axpy_sin_{dtype}", 4, 64, x, y, 0.5, n)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, 0.5 * x64 + np.sin(x64), rtol=1e-6 if dtype == "f32" else 1e-14, atol=1e-7)
    # each input element read once, each output written once
    size = np.dtype(NP[dtype]).itemsize
    assert (stats.threads, stats.bytes_loaded, stats.bytes_stored) == (256, n * size, n * size)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_block_tree_reduction_then_second_pass(sim, dtype):
    rng = np.random.default_rng(2)
    n, blocks = 5000, 8
    x = rng.uniform(-1, 1, n).astype(NP[dtype])
    results = []
    for _ in range(2):
        partial, total = np.zeros(blocks, NP[dtype]), np.zeros(1, NP[dtype])
        first = sim.launch(f"block_sum_{dtype}", blocks, BLOCK, x, partial, n)
        sim.launch(f"block_sum_{dtype}", 1, BLOCK, partial, total, blocks)
        results.append(total[0])
    # a tree, not atomics: the same input gives the same bits
    assert results[0].tobytes() == results[1].tobytes()
    np.testing.assert_allclose(results[0], x.astype(np.float64).sum(), rtol=1e-5 if dtype == "f32" else 1e-13)
    size = np.dtype(NP[dtype]).itemsize
    assert (first.bytes_loaded, first.bytes_stored) == (n * size, blocks * size)
    assert first.threads == blocks * BLOCK


def test_a_module_reloads_from_its_ir_and_kernel_infos(sim):
    """What a cuda-sim module file keeps: the simulator IR and each kernel's description."""
    from gradc.compiler.codegen.cuda.kernel import KernelInfo
    infos = {k: KernelInfo.from_json(i.to_json()) for k, i in sim.infos.items()}
    assert infos == sim.infos
    again = SimModule.from_ir(sim.llvm_ir, infos)
    x = np.linspace(-2, 2, 300).astype(np.float32)
    y, z = np.zeros_like(x), np.zeros_like(x)
    sim.launch("axpy_sin_f32", 2, 64, x, y, 1.5, x.size)
    again.launch("axpy_sin_f32", 2, 64, x, z, 1.5, x.size)
    assert y.tobytes() == z.tobytes() and np.abs(y - (1.5 * x + np.sin(x))).max() < 1e-5


def test_launches_from_several_host_threads(sim):
    from concurrent.futures import ThreadPoolExecutor
    x = np.random.default_rng(4).uniform(-1, 1, 3000)
    expect = np.zeros(4)
    sim.launch("block_sum_f64", 4, BLOCK, x, expect, x.size)

    def run(_):
        out = np.zeros(4)
        sim.launch("block_sum_f64", 4, BLOCK, x, out, x.size)
        return out
    with ThreadPoolExecutor(4) as pool:
        for out in pool.map(run, range(8)):
            np.testing.assert_array_equal(out, expect)


def test_index_registers_in_two_dimensions(sim):
    grid, block = (3, 2), (4, 2)
    out = np.zeros(3 * 2 * 4 * 2, np.int64)
    stats = sim.launch("indices", grid, block, out)
    assert stats.threads == 48 and stats.grid == (3, 2, 1) and stats.block == (4, 2, 1)
    expect = np.zeros_like(out)
    for by in range(2):
        for bx in range(3):
            for ty in range(2):
                for tx in range(4):
                    flat = (by * 2 + ty) * 12 + bx * 4 + tx
                    expect[flat] = int(f"{tx}{ty}{bx}{by}42")
    np.testing.assert_array_equal(out, expect)


def test_a_kernel_may_share_a_name_with_the_c_library():
    # the simulator's kernels call sin and sinf from the C library
    x, y = np.array([0.5, 1.0]), np.zeros(2)
    kernel = math_kernel("f64", ["sin"])
    SimModule([Kernel("sin", kernel.params, kernel.body)]).launch("sin", 1, 4, x, x, y, 2)
    np.testing.assert_allclose(y, np.sin(x), rtol=1e-15)


def test_early_return(sim):
    x, y = np.arange(70, dtype=np.float64), np.zeros(70)
    stats = sim.launch("guarded_double", 3, 32, x, y, 70)
    np.testing.assert_array_equal(y, 2 * x)
    assert (stats.threads, stats.bytes_loaded, stats.bytes_stored) == (96, 70 * 8, 70 * 8)


def test_barrier_reached_by_half_the_threads(sim):
    with pytest.raises(BarrierError, match=r"kernel 'half_barrier'.*16 of 32 threads waited at barrier 1 "
                                           r"\('only the first half'\) while thread \(16, 0, 0\) had returned"):
        sim.launch("half_barrier", 1, 32)


def test_threads_at_different_barriers(sim):
    with pytest.raises(BarrierError, match=r"8 of 32 threads waited at barrier 1 \('low side'\) while "
                                           r"thread \(8, 0, 0\) waited at barrier 2 \('high side'\)"):
        sim.launch("two_barriers", 1, 32)


def test_out_of_bounds_global_load(sim):
    x, y = np.arange(100, dtype=np.float32), np.zeros(100, np.float32)
    sim.launch("shift_copy", 2, 32, x, y, 0, 100)
    np.testing.assert_array_equal(y, x)
    with pytest.raises(OutOfBoundsError, match=r"kernel 'shift_copy'.*load from buffer 'x' \(argument 0\) "
                                               r"at index 10[0-2], out of bounds \(it has 100 elements\)"):
        sim.launch("shift_copy", 2, 32, x, y, 3, 100)
    with pytest.raises(OutOfBoundsError, match=r"at index -1,"):
        sim.launch("shift_copy", 1, 32, x, y, -1, 100)


def test_out_of_bounds_global_store(sim):
    x, y = np.arange(100, dtype=np.float32), np.zeros(50, np.float32)
    # threads run one after another up to a barrier: thread 0 gets to its second element first
    with pytest.raises(OutOfBoundsError, match=r"thread \(0, 0, 0\) of block \(0, 0, 0\): store to buffer 'y' "
                                               r"\(argument 1\) at index 64, out of bounds \(it has 50 elements\)"):
        sim.launch("shift_copy", 1, 64, x, y, 0, 100)


def test_out_of_bounds_shared_store(sim):
    with pytest.raises(OutOfBoundsError, match=r"kernel 'shared_overrun': thread \(8, 0, 0\) of block \(0, 0, 0\): "
                                               r"store to shared array 'tile' at index 8, out of bounds "
                                               r"\(it has 8 elements\)"):
        sim.launch("shared_overrun", 1, 16)


def test_unwritten_shared_memory_reads_nan(sim):
    out = np.zeros(64, np.float32)
    sim.launch("shared_unwritten", 2, 32, out)
    assert np.isnan(out).all()


def test_launch_mistakes(sim):
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"kernel 'shift_copy' takes 4 arguments \(x, y, k, n\), got 2"):
        sim.launch("shift_copy", 1, 32, x, x)
    with pytest.raises(TypeError, match=r"parameter 'x': expected f32 elements, got float64"):
        sim.launch("shift_copy", 1, 32, x.astype(np.float64), x, 0, 4)
    with pytest.raises(TypeError, match=r"parameter 'k': expected a number"):
        sim.launch("shift_copy", 1, 32, x, x, x, 4)
    with pytest.raises(ValueError, match="C-contiguous"):
        sim.launch("shift_copy", 1, 32, np.zeros(8, np.float32)[::2], x, 0, 4)
    with pytest.raises(ValueError, match="2048 threads per block; at most 1024"):
        sim.launch("shift_copy", 1, (64, 32), x, x, 0, 4)
    with pytest.raises(ValueError, match="grid must be 1 to 3 positive integers"):
        sim.launch("shift_copy", 0, 32, x, x, 0, 4)
    with pytest.raises(ValueError, match="block must be 1 to 3 positive integers, got 2.0"):
        sim.launch("shift_copy", 1, 2.0, x, x, 0, 4)
    with pytest.raises(ValueError, match=r"parameter 'k': 18446744073709551616 does not fit in i64"):
        sim.launch("shift_copy", 1, 32, x, x, 2 ** 64, 4)
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        sim.launch("nope", 1, 1)


@pytest.fixture(scope="module", params=["f32", "f64"])
def math_results(request, math_sim):
    """{function: (inputs, the simulator's results)} for one dtype, from one launch."""
    dtype, n = request.param, 257
    rng = np.random.default_rng(3)
    x, z = np.zeros((len(MATH), n), NP[dtype]), np.ones((len(MATH), n), NP[dtype])
    for k, name in enumerate(MATH):
        domains = [UNARY_DOMAINS[name]] if name in UNARY_DOMAINS else BINARY_DOMAINS[name]
        for row, (lo, hi) in zip((x, z), domains):
            row[k] = rng.uniform(lo, hi, n)
        if name in ("round", "rint", "floor", "ceil", "trunc"):
            x[k, :8] = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -3.0]   # halfway cases decide
    y = np.zeros_like(x)
    math_sim.launch(f"math_{dtype}", 2, 64, x, z, y, n)
    return dtype, {name: ((x[k], z[k]), y[k]) for k, name in enumerate(MATH)}


@pytest.mark.parametrize("name", MATH)
def test_math_against_numpy(math_results, name):
    dtype, results = math_results
    (x, z), y = results[name]
    oracle = ORACLES.get(name) or getattr(np, name)
    args = [x.astype(np.float64), z.astype(np.float64)][:mathlib.FUNCTIONS[name]]
    expect = np.asarray(oracle(*args)).astype(NP[dtype])
    ulps = np.abs(y.astype(np.float64) - expect) / np.spacing(np.abs(expect))
    assert ulps.max() <= 2, f"{name} {dtype}: {ulps.max()} ulp at {[a[ulps.argmax()] for a in args]}"


def test_layouts_agree_with_llvm():
    llvm.initialize_native_target()
    td = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine().target_data
    for layout in (LAUNCH, THREAD):
        assert layout.type.get_abi_size(td) == layout.size
        for i, name in enumerate(layout.names):
            assert layout.type.get_element_offset(td, i) == getattr(layout.ctype, name).offset


def test_both_targets_emit_the_same_arithmetic():
    kernels = [elementwise("f32"), block_sum("f64")]
    gpu, _ = build_module(kernels, CudaTarget())
    host, _ = build_module(kernels, SimTarget())
    op = re.compile(r"= (fadd|fsub|fmul|fdiv|fneg|fcmp \w+) (float|double)")
    call = re.compile(r"call (?:float|double) @\"?(?:__nv_)?(\w+)\"?\(")
    for k in kernels:
        texts = [str(gpu.get_global(k.name)), str(host.get_global(symbol(k.name)))]
        assert [op.findall(t) for t in texts][0] == [op.findall(t) for t in texts][1]
        assert [call.findall(t) for t in texts][0] == [call.findall(t) for t in texts][1]


# ---- PTX


def _ptxas_or_skip():
    try:
        return toolkit.ptxas_path()
    except ToolkitError as e:
        pytest.skip(f"ptxas is not installed here: {e}")


def _libdevice_or_skip():
    try:
        return toolkit.libdevice_path()
    except ToolkitError as e:
        pytest.skip(f"libdevice is not installed here: {e}")


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def ptx(request):
    _libdevice_or_skip()
    arch = request.param
    return arch, emit_ptx(sim_kernels() + math_kernels(), arch)


def test_every_kernel_is_an_entry_that_ptxas_accepts(ptx):
    arch, text = ptx
    _ptxas_or_skip()
    assert f".target {arch}" in text and ".version 7.8" in text
    for k in sim_kernels() + math_kernels():
        assert f".entry {k.name}(" in text
    log = ptxas(text, arch).log
    assert "Compiling entry function 'axpy_sin_f32'" in log


def test_indexing_is_64_bit(ptx):
    _, text = ptx
    body = text[text.index(".entry axpy_sin_f64("):]
    body = body[:body.index("\n}")]
    # ctaid * ntid widened before it can overflow; the loop counter and addresses in 64 bits
    assert re.search(r"mul\.wide\.u32", body)
    assert not re.search(r"mad\.lo\.s32|mul\.lo\.s32", body)


def test_shared_memory_and_barriers_in_ptx(ptx):
    _, text = ptx
    body = text[text.index(".entry block_sum_f32("):]
    body = body[:body.index("\n}")]
    assert re.search(r"\.shared \.align 16 \.b8 block_sum_f32\S*partial\[256\]", body)
    assert "bar.sync" in body or "barrier.sync" in body


def test_math_is_libdevice_not_llvm_intrinsics():
    _libdevice_or_skip()
    text, infos = nvptx_ir([math_kernel("f32", ["sin"]), math_kernel("f64", ["pow"])])
    assert "@\"__nv_sinf\"" in text and "@\"__nv_pow\"" in text and "llvm.sin" not in text
    ptx = compile_ptx(text, list(infos), "sm_80")
    assert ".extern" not in ptx and "__nv_" not in ptx       # inlined, internal, gone


def test_an_llvm_math_intrinsic_is_refused_before_code_generation():
    # NVPTX would abort the process on this module ("Cannot select: fsin")
    text = """
    declare float @llvm.sin.f32(float)
    define ptx_kernel void @k(ptr %p) {
      %x = load float, ptr %p
      %y = call float @llvm.sin.f32(float %x)
      store float %y, ptr %p
      ret void
    }"""
    with pytest.raises(KernelError, match="intrinsic llvm.sin.f32, which NVPTX cannot compile"):
        compile_ptx(text, ["k"], "sm_80")


def test_an_undefined_function_is_refused():
    text = """
    declare float @sinf(float)
    define ptx_kernel void @k(ptr %p) {
      %x = load float, ptr %p
      %y = call float @sinf(float %x)
      store float %y, ptr %p
      ret void
    }"""
    with pytest.raises(KernelError, match="the kernels call sinf, which nothing defines for the GPU"):
        compile_ptx(text, ["k"], "sm_80")


def test_a_function_that_is_not_a_kernel_is_refused():
    text = "define void @k(ptr %p) {\n  store float 1.0, ptr %p\n  ret void\n}"
    with pytest.raises(KernelError, match=r"kernel k is not an \.entry"):
        compile_ptx(text, ["k"], "sm_80")


def test_libdevice_variants_flush_to_zero_on_request_and_sqrt_is_ieee():
    _libdevice_or_skip()
    k = [math_kernel("f32", ["sqrt"])]
    assert "sqrt.rn.ftz.f32" in emit_ptx(k, "sm_80", ftz=True)
    ptx = emit_ptx(k, "sm_80")
    assert "sqrt.rn.f32" in ptx and "approx" not in ptx


def test_arch_and_ptx_version_are_checked():
    with pytest.raises(ValueError, match="GPU architecture 'sm_70'"):
        emit_ptx([shared_overrun()], "sm_70")
    with pytest.raises(ValueError, match="PTX version 7.0 cannot target sm_90"):
        emit_ptx([shared_overrun()], "sm_90", ptx_version=70)
    assert set(ARCHS) >= {"sm_80", "sm_90"}


def test_ptxas_errors_are_reported():
    _ptxas_or_skip()
    with pytest.raises(PtxasError, match="ptxas refused the PTX for sm_80"):
        ptxas(".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry k() { bogus; }\n", "sm_80")


def test_missing_toolkit_names_what_and_where(monkeypatch, tmp_path):
    monkeypatch.setattr(toolkit, "toolkit_roots", lambda: [tmp_path])
    with pytest.raises(ToolkitError, match=r"libdevice .* not found: looked for .*nvvm/libdevice/libdevice\.10\.bc; "
                                           r"install the CUDA toolkit or set CUDA_HOME"):
        toolkit.libdevice_path()


def test_kernel_descriptions_are_checked():
    with pytest.raises(ValueError, match="kernel name 'a.b'"):
        Kernel("a.b", (), lambda kb: None)
    with pytest.raises(ValueError, match="kernel name '__nv_sinf'"):
        Kernel("__nv_sinf", (), lambda kb: None)
    with pytest.raises(ValueError, match="a buffer of 'f16'"):
        Param("x", "f16")
    with pytest.raises(ValueError, match="parameter names repeat"):
        Kernel("k", (Param("x", "f32"), Param("x", "f32")), lambda kb: None)
    big = Kernel("big", (), lambda kb: kb.shared("tile", "f64", 6145))
    with pytest.raises(ValueError, match="kernel 'big': shared array 'tile' takes the block's shared memory "
                                         "past 49152 bytes"):
        build_module([big], CudaTarget())
