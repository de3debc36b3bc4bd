"""The MLIR output and the iree target against the NumPy reference: every op forward and every
derivative rule (the cpu tests' cases), transforms to third order, and every module verifies."""
from pathlib import Path

import numpy as np
import pytest

import gradc
from gradc.api import signature
from gradc.compiler.pipeline import optimize

pytest.importorskip("iree.compiler", reason="the iree target needs the extra: pip install 'gradc[mlir]'")
pytest.importorskip("iree.runtime", reason="the iree target needs the extra: pip install 'gradc[mlir]'")

from gradc.compiler.codegen.mlir import compile_vmfb, emit_module, verify  # noqa: E402
from gradc.runtime import iree  # noqa: E402

import test_cpu as tc  # noqa: E402


def _modules(dtype, cases):
    graphs, doms = {}, {}
    for name, params, body in cases:
        for k, g in tc._graphs(name, params, body, dtype).items():
            graphs[k] = g
            doms[k] = [dom for _, _, dom in params]
    opt = {k: optimize(g) for k, g in graphs.items()}
    text, meta = emit_module(opt, f"ops_{dtype}", iree=True)
    verify(text)
    verify(emit_module(opt, f"ops_{dtype}")[0])
    sigs = {k: signature(g) for k, g in graphs.items()}
    return opt, doms, iree.load(compile_vmfb(text), meta, sigs, f"ops_{dtype}")


class Functions:
    def __init__(self, fns):
        self.__dict__.update(fns)


@pytest.fixture(scope="module", params=["f32", "f64"])
def ops_module(request):
    opt, doms, fns = _modules(request.param, tc.CASES)
    return request.param, (opt, doms, Functions(fns))


@pytest.mark.parametrize("name", [n for n, _, _ in tc.CASES])
def test_op(ops_module, name):
    dtype, (opt, doms, module) = ops_module
    for k in (name, f"{name}_vjp", f"{name}_jvp"):
        if k in opt:
            tc._check(opt, doms, module, dtype, k)


THIRD = """
fn f(x: f64[N], w: f64[N]) -> f64 {
    return sum(tanh(x * w) * sin(x) + exp(-x * x) * w)
}
let g1 = grad(f)
fn g1s(x: f64[N], w: f64[N]) -> f64 { return sum(g1(x, w) * w) }
let g2 = grad(g1s)
fn g2s(x: f64[N], w: f64[N]) -> f64 { return sum(g2(x, w) * x) }
let g3 = grad(g2s, wrt=(x, w))
let hvp = jvp(g1, wrt=x)
"""


@pytest.fixture(scope="module")
def third():
    return gradc.compile(THIRD, target="iree", cache=False), gradc.compile(THIRD, target="reference")


@pytest.mark.parametrize("fn", ["f", "g1", "g2", "g3", "hvp"])
def test_transforms_to_third_order(third, fn):
    m, ref = third
    rng = np.random.default_rng(5)
    args = [rng.uniform(-1, 1, 5), rng.uniform(-1, 1, 5)]
    if fn == "hvp":
        args.append(rng.uniform(-1, 1, 5))
    got, want = getattr(m, fn)(*args), getattr(ref, fn)(*args)
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_emit_mlir_is_upstream_with_dynamic_dims_and_locations():
    text = gradc.emit_mlir("fn f(x: f32[N, 4]) -> f32 { return sum(exp(x) * 2.0) }\nlet g = grad(f)\n")
    verify(text)
    assert "func.func @f(%arg1: tensor<?x4xf32>)" in text and "func.func @g(" in text
    assert "linalg.generic" in text and '"reduction"' in text
    assert 'loc("<source>":1:' in text
    dialects = {ln.split("=", 1)[-1].split()[0].split(".")[0] for ln in text.splitlines()
                if "." in ln.split("=", 1)[-1].strip().split(" ")[0]}
    assert dialects <= {"func", "arith", "math", "tensor", "linalg", "scf", "affine_map<(d0"}, dialects


def test_fused_chain_is_one_generic():
    text = gradc.emit_mlir("fn f(x: f64[N]) -> f64[N] { return tanh(sin(x) * x + 1.0) }\n")
    assert text.count("linalg.generic") == 1


def test_control_flow_becomes_scf():
    src = "samples/rnn_bptt.ad"
    text = gradc.emit_mlir(src)
    verify(text)
    assert "scf.for" in text


SAMPLES = sorted(p for p in Path(__file__).parent.parent.joinpath("samples").glob("*.ad")
                 if "# ERROR" not in p.read_text())


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_every_sample_emits_verified_mlir(path):
    verify(gradc.emit_mlir(str(path)))


def test_checks_raise_as_on_every_target():
    src = "fn f(x: f64[N], i: i64) -> f64 { return x[i] }\n"
    m = gradc.compile(src, target="iree", cache=False)
    assert m.f(np.arange(3.0), 2) == 2.0
    with pytest.raises(IndexError, match="f: "):
        m.f(np.arange(3.0), 3)


def test_module_files_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "m.ad"
    src.write_text("fn f(x: f32[N]) -> f32[N] { return x * x }\nlet g = vjp(f)\n")
    out = gradc.build(src, tmp_path / "m.gcm", target="iree")
    m = gradc.load(out)
    np.testing.assert_allclose(m.f(np.arange(3, dtype=np.float32)), [0, 1, 4])
    with pytest.raises(TypeError, match="parameter 'x'"):
        m.f(np.arange(3.0))
    a = gradc.compile(src, target="iree")
    b = gradc.compile(src, target="iree")         # from the disk cache
    np.testing.assert_allclose(b.g(np.ones(2, np.float32), np.ones(2, np.float32)), [2, 2])
    assert a.f.sig.name == "f"
    header, _ = gradc.runtime.artifact.read(out)
    assert header["target"] == "iree" and header["iree_version"] == "3.13.0" and header["cpu"]


def test_loading_leaves_no_temporary_files(tmp_path):
    """IREE's loader writes a module's code to a temporary file and leaves it behind; gradc points
    it at a folder of its own, removed when the process exits: nothing stays in TMPDIR."""
    import os
    import subprocess
    import sys
    code = ("import gradc, numpy as np\n"
            "m = gradc.compile('fn f(x: f64[N]) -> f64 { return sum(tanh(x)) }', target='iree', cache=False)\n"
            "assert abs(m.f(np.ones(3)) - 3 * np.tanh(1.0)) < 1e-12\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    left = [p.name for p in tmp_path.iterdir() if "iree" in p.name]      # (Lark keeps its cache there)
    assert left == []
