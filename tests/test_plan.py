"""The fusion plan and the CPU schedule on long programs: nests shared by roots, code that grows
linearly with the program, results against the reference and finite differences."""
import re

import numpy as np
import pytest

import gradc
from gradc.compiler.codegen import emit_llvm
from gradc.compiler.codegen.cpu.schedule import make_schedule
from gradc.compiler.codegen.plan import make_plan
from gradc.compiler.pipeline import lower, optimize


def chain(n, dtype="f64"):
    """n elementwise steps, each a transcendental call: value_and_grad of their sum."""
    body = "\n".join(f"    let a{i} = sin(a{i - 1}) * 1.0001" for i in range(1, n + 1))
    return (f"fn f(x: {dtype}[N]) -> {dtype} {{\n    let a0 = x\n{body}\n    return sum(a{n})\n}}\n"
            "let vg = value_and_grad(f)\n")


def perceptron(layers, d=5, h=7):
    ps = ", ".join(f"W{i}: f64[{d if i == 0 else h}, {h}], b{i}: f64[{h}]" for i in range(layers))
    body = "\n".join(f"    let h{i + 1} = tanh(h{i} @ W{i} + b{i})" for i in range(layers))
    wrt = ", ".join(f"W{i}, b{i}" for i in range(layers))
    return (f"fn f({ps}, x: f64[B, {d}]) -> f64 {{\n    let h0 = x\n{body}\n    return mean(h{layers} * h{layers})\n}}\n"
            f"let vg = value_and_grad(f, wrt=({wrt}))\n")


def graph(src, name="vg"):
    return optimize(lower(src).graphs[name])


def test_chain_gradient_is_one_nest():
    # forward values needed by the adjoint are computed once in the nest that needs them, not
    # stored: the roots are the outputs, whatever the length
    for n in (5, 40):
        g = graph(chain(n))
        plan = make_plan(g, chunk=True, nests=True)
        sched = make_schedule(g, plan)
        kept = {v for t in plan.tiles.values() for v in t.values}
        assert len([r for r in plan.roots if r.out not in kept]) <= 3, [r.op for r in plan.roots]
        assert len(sched.phases) <= 3
        # without shared nests every step of the chain is stored
        assert len(make_plan(g, chunk=True).roots) > n


def test_long_nest_in_segments():
    # the body is cut into segments; what the adjoint needs of the forward steps is kept for
    # one tile only, never stored whole
    g = graph(chain(200))
    plan = make_plan(g, chunk=True, nests=True)
    segments = {k[3] for k in plan.keys.values() if len(k) > 3}
    assert len(segments) > 10
    kept = {v for t in plan.tiles.values() for v in t.values}
    assert len(kept) >= 150
    sched = make_schedule(g, plan)
    whole = [k for k in sched.slot_of if not isinstance(k, tuple)]
    assert not set(whole) & kept
    text = emit_llvm({"vg": g}, optimized=False)
    assert text.count(".segment") >= len(segments)


def _count(text):
    return len(re.findall(r"^define", text, re.M)), text.count("\n  ")


def test_generated_code_linear_in_program_length():
    funcs, lines = {}, {}
    for n in (20, 40, 80):
        funcs[n], lines[n] = _count(emit_llvm({"vg": graph(chain(n))}, optimized=False))
    # functions (a segment each) and instructions per step do not grow with the length
    assert funcs[80] - funcs[40] <= 2 * (funcs[40] - funcs[20]) + 2
    assert (lines[80] - lines[40]) / 40 <= 1.2 * (lines[40] - lines[20]) / 20
    f20, l20 = _count(emit_llvm({"vg": graph(perceptron(10))}, optimized=False))
    f40, l40 = _count(emit_llvm({"vg": graph(perceptron(20))}, optimized=False))
    assert f40 <= 2.2 * f20 and l40 <= 2.2 * l20


def _phase_args(src):
    text = emit_llvm({"vg": graph(src)}, optimized=False)
    return max(len(re.findall(r"ptr noalias", line)) for line in text.splitlines()
               if line.startswith("define") and ".phase" in line)


def test_phase_takes_the_buffers_it_uses():
    # not every buffer of the graph: as many for 24 layers as for 6
    assert _phase_args(perceptron(24)) == _phase_args(perceptron(6)) < 16


@pytest.mark.parametrize("n", [3, 30, 120])
def test_chain_matches_reference_and_finite_differences(n):
    src = chain(n)
    m, ref = gradc.compile(src, cache=False), gradc.compile(src, target="reference")
    x = np.random.default_rng(n).uniform(-2, 2, 1000)
    value, grad = m.vg(x)
    rv, rg = ref.vg(x)
    np.testing.assert_allclose(value, rv, rtol=1e-12)
    np.testing.assert_allclose(grad, rg, rtol=1e-12, atol=1e-14)
    eps, k = 1e-6, [0, 17, 999]
    for i in k:
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        assert abs((m.f(xp) - m.f(xm)) / (2 * eps) - grad[i]) < 1e-6


def test_chain_threads_agree():
    m = gradc.compile(chain(60), cache=False)
    x = np.random.default_rng(0).uniform(-2, 2, 300_001)
    before = gradc.get_num_threads()
    try:
        gradc.set_num_threads(1)
        one = m.vg(x)
        gradc.set_num_threads(2)
        two = m.vg(x)
    finally:
        gradc.set_num_threads(before)
    np.testing.assert_allclose(one[0], two[0], rtol=1e-12)
    np.testing.assert_array_equal(one[1], two[1])


def test_perceptron_matches_reference_and_finite_differences():
    src = perceptron(4)
    m, ref = gradc.compile(src, cache=False), gradc.compile(src, target="reference")
    rng = np.random.default_rng(1)
    args = []
    for i in range(4):
        args += [0.5 * rng.standard_normal((5 if i == 0 else 7, 7)), 0.1 * rng.standard_normal(7)]
    args.append(rng.standard_normal((6, 5)))
    got, want = m.vg(*args), ref.vg(*args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    eps = 1e-6
    for p in (0, 3, 6):
        xp = [a.copy() for a in args]
        xm = [a.copy() for a in args]
        xp[p].flat[2] += eps
        xm[p].flat[2] -= eps
        fd = (m.f(*xp) - m.f(*xm)) / (2 * eps)
        assert abs(fd - got[1 + p].flat[2]) < 1e-7


def test_reshaped_output_written_in_place():
    # a layer's bias gradient, sum(g, axis=0) reshaped: the sum writes the output, no copy step
    g = graph(perceptron(3))
    plan = make_plan(g, chunk=True, nests=True)
    assert len(plan.aliases) == 3
    sched = make_schedule(g, plan)
    copies = [s for ph in sched.phases for steps, _ in ph for s in steps if s.node is None]
    reshapes = [s for ph in sched.phases for steps, _ in ph for s in steps if s.node is not None and s.node.op == "reshape"]
    assert not copies and not reshapes


def test_chains_of_calls_interleaved():
    # a segment's loop, and a whole nest's, whose calls form a chain get an interleave count
    # (LLVM gives a long body none); independent calls and short bodies keep LLVM's choice
    text = emit_llvm({"vg": graph(chain(200))}, optimized=False)
    ids = re.findall(r"^(!\d+) = distinct !\{(!\d+), ", text, re.M)
    assert ids and all(a == b for a, b in ids)
    assert 'llvm.loop.interleave.count", i32 4' in text
    assert "llvm.loop.vectorize.predicate.enable" in text
    # two float32 functions in a chain: written out (AVX-512), a long chain of FMAs of their own,
    # interleaved; as libmvec's calls (AVX2 alone) LLVM's choice stays
    w2 = "fn f(x: f32[N]) -> f32 { return sum(1 / exp(sin(x ** 2))) }\nlet vg = value_and_grad(f)\n"
    assert "llvm.loop" not in emit_llvm({"vg": graph(w2)}, optimized=False, features="+avx2,+fma")
    text = emit_llvm({"vg": graph(w2)}, optimized=False, features="+avx2,+fma,+avx512f")
    assert 'llvm.loop.interleave.count", i32 4' in text
    one = "fn f(x: f32[N]) -> f32 { return sum(exp(x) * 2.0) }\nlet vg = value_and_grad(f)\n"
    assert "llvm.loop" not in emit_llvm({"vg": graph(one)}, optimized=False, features="+avx2,+fma,+avx512f")
    emit_llvm({"vg": graph(chain(12))})         # the hints parse and optimize


def test_llvm_runs_without_the_steps_that_only_cost_compile_time():
    # cpu.COMPILE_TIME_OPTIONS: the vectorized loop gets no vectorized epilogue (LLVM's default
    # gave this one 4 blocks of it), and the loop whose body holds a loop-invariant condition
    # (the gradient's zero guard on the scalar s) is not copied (LLVM's default: body.1.us...)
    src = "fn f(x: f32[N], s: f32) -> f32 { return sum(sin(x) * s) }\nlet g = grad(f, wrt=(x, s))\n"
    text = emit_llvm({"g": graph(src, "g")})
    assert len(re.findall(r"^vector\.body[.\w]*:", text, re.M)) == 1
    assert not re.findall(r"^vec\.epilog[.\w]*:", text, re.M)
    assert not re.findall(r"^[\w.]*\.us[\w.]*:", text, re.M)
