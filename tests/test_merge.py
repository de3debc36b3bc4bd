"""Identical internal functions merged before LLVM (compiler/codegen/cpu/merge.py): what merges,
what must not, and that merged programs compute what the reference computes."""
import re

import llvmlite.binding as llvm
import numpy as np
import pytest

import gradc
from gradc.compiler.codegen.cpu import init_llvm
from gradc.compiler.codegen.cpu.merge import merge_identical

LOOP = """
define internal void @"m.phase{i}"(ptr %".1", i64 %".2") noinline
{{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%j, %loop]
  %p = getelementptr double, ptr %".1", i64 %i
  store double 1.0, ptr %p
  %j = add i64 %i, 1
  %c = icmp slt i64 %j, %".2"
  br i1 %c, label %loop, label %done, !llvm.loop !{md}
done:
  ret void
}}
"""

# phase0 and phase1: the same loop with other metadata nodes that say the same (interleave 4);
# phase2: the same loop with interleave 2; phase3: another body
MODULE = "".join(LOOP.format(i=i, md=md) for i, md in ((0, 1), (1, 3), (2, 5))) + """
define internal void @"m.phase3"(ptr %".1", i64 %".2") noinline
{
entry:
  store double 2.0, ptr %".1"
  ret void
}

define void @"m"(ptr %".1", i64 %".2")
{
entry:
  call void @"m.phase0"(ptr %".1", i64 %".2")
  call void @"m.phase1"(ptr %".1", i64 %".2")
  call void @"m.phase2"(ptr %".1", i64 %".2")
  call void @"m.phase3"(ptr %".1", i64 %".2")
  ret void
}

!1 = distinct !{!1, !2}
!2 = !{!"llvm.loop.interleave.count", i32 4}
!3 = distinct !{!3, !4}
!4 = !{!"llvm.loop.interleave.count", i32 4}
!5 = distinct !{!5, !6}
!6 = !{!"llvm.loop.interleave.count", i32 2}
"""


def test_equal_bodies_merge_and_loop_hints_keep_them_apart():
    out = merge_identical(MODULE)
    defined = re.findall(r'^define [^\n]*@"([^"]+)"', out, re.M)
    # phase1 is phase0 with other metadata nodes that say the same; phase2's loop hint differs
    assert defined == ["m.phase0", "m.phase2", "m.phase3", "m"]
    assert out.count('call void @"m.phase0"') == 2 and 'call void @"m.phase2"' in out
    init_llvm()
    llvm.parse_assembly(out).verify()
    assert merge_identical(out) == out


def test_exported_functions_never_merge():
    text = MODULE.replace('define void @"m"', 'define void @"n"').replace(
        'define internal void @"m.phase3"', 'define void @"m.phase3"')
    out = merge_identical(text)
    assert 'define void @"m.phase3"' in out and 'define void @"n"' in out


def perceptron(layers):
    ps = ", ".join(f"W{i}: f64[{4 if i == 0 else 8}, 8], b{i}: f64[8]" for i in range(layers))
    body = "\n".join(f"    let h{i + 1} = tanh(h{i} @ W{i} + b{i})" for i in range(layers))
    wrt = ", ".join(f"W{i}, b{i}" for i in range(layers))
    return (f"fn f({ps}, x: f64[B, 4]) -> f64 {{\n    let h0 = x\n{body}\n    return mean(h{layers})\n}}\n"
            f"let vg = value_and_grad(f, wrt=({wrt}))\n")


def test_a_deep_network_compiles_each_layer_once_and_agrees_with_reference():
    src = perceptron(6)
    text = gradc.api.emit(src, "llvm", "cpu", optimized=False)
    phases = len(re.findall(r'^define internal [^\n]*@"gradc_fn_vg\.phase\d+"', text, re.M))
    calls = len(re.findall(r'call [^\n]*@"(gradc_fn_vg\.phase\d+)"', text))
    assert phases < calls / 2, (phases, calls)       # the middle layers share their phases
    m, r = gradc.compile(src, cache=False), gradc.compile(src, target="reference")
    rng = np.random.default_rng(0)
    args = []
    for i in range(6):
        args += [rng.normal(size=(4 if i == 0 else 8, 8)) / 2, rng.normal(size=8)]
    args.append(rng.normal(size=(5, 4)))
    want, got = r.vg(*args), m.vg(*args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("n", [40, 300])
def test_a_long_chain_shares_its_segments_and_agrees_with_reference(n):
    body = "\n".join(f"    let a{i} = sin(a{i - 1}) * 1.0001" for i in range(1, n + 1))
    src = f"fn f(x: f64[N]) -> f64 {{\n    let a0 = x\n{body}\n    return sum(a{n})\n}}\nlet vg = value_and_grad(f)\n"
    m, r = gradc.compile(src, cache=False), gradc.compile(src, target="reference")
    x = np.random.default_rng(n).uniform(-2, 2, 1001)
    (v, g), (rv, rg) = m.vg(x), r.vg(x)
    np.testing.assert_allclose(v, rv, rtol=1e-12)
    np.testing.assert_allclose(g, rg, rtol=1e-11, atol=1e-300)
