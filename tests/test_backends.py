"""The backend table, Options, and what every target shares: module files, the cache, the CLI."""
import subprocess
import sys

import numpy as np
import pytest

import gradc
from gradc import api, cache
from gradc.backends import BACKENDS, Options, TargetUnavailable, backend
from gradc.runtime import artifact

SRC = "fn f(x: f32[N]) -> f32 { return sum(sin(x) * x) }\nlet g = grad(f)\n"


def test_the_table_lists_every_backend_with_its_stages():
    assert list(BACKENDS) == ["reference", "cpu", "cuda", "cuda-sim", "iree"]
    assert BACKENDS["cpu"].stages == ("llvm", "asm")
    assert BACKENDS["iree"].stages == ("mlir",)
    assert BACKENDS["cuda"].stages == ("llvm", "ptx") == BACKENDS["cuda-sim"].stages
    assert not BACKENDS["reference"].native and all(BACKENDS[t].native for t in ("cpu", "cuda", "cuda-sim"))
    host = BACKENDS["cpu"].host_facts(Options())
    assert set(host) == {"triple", "cpu", "features", "python"} and host["triple"].startswith(("x86_64", "aarch64"))
    assert BACKENDS["cuda"].host_facts(Options(gpu_arch="sm_90"))["gpu_arch"] == "sm_90"


def test_iree_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "iree.runtime", None)      # as if iree-base-runtime were absent
    with pytest.raises(TargetUnavailable, match=r"pip install 'gradc\[mlir\]'"):
        gradc.compile(SRC, target="iree", cache=False)
    with pytest.raises(TargetUnavailable, match=r"pip install 'gradc\[mlir\]'"):
        gradc.build(SRC, tmp_path / "m.gcm", target="iree")
    assert "func.func @g(" in gradc.emit_mlir(SRC)             # the text needs no IREE


def test_options_are_frozen_checked_and_make_the_cache_key():
    o = Options()
    with pytest.raises(Exception):
        o.fast_math = True
    with pytest.raises(ValueError, match="sm_70"):
        Options(gpu_arch="sm_70")
    with pytest.raises(ValueError, match="optimization level"):
        Options(opt_level=7)
    assert Options().key() == Options(link=False).key()          # linking changes no code
    assert Options().key() != Options(fast_math=True).key() != Options(opt_level=2).key()
    cpu = BACKENDS["cpu"]
    keys = {cache.key(SRC, "a.ad", ("cpu", cpu.cache_options(Options()))),
            cache.key(SRC, "a.ad", ("cpu", cpu.cache_options(Options(fast_math=True)))),
            cache.key(SRC, "a.ad", ("cuda-sim", BACKENDS["cuda-sim"].cache_options(Options()))),
            cache.key(SRC, "a.ad", ("cuda-sim", BACKENDS["cuda-sim"].cache_options(Options(gpu_arch="sm_90"))))}
    assert len(keys) == 4
    assert cache.key(SRC, "a.ad", ("cpu", cpu.cache_options(Options()))) == \
        cache.key(SRC, "a.ad", ("cpu", cpu.cache_options(Options(gpu_arch="sm_90"))))   # cpu ignores it


def test_unknown_and_unavailable_targets_say_so(tmp_path):
    with pytest.raises(TargetUnavailable, match="unknown target 'tpu'"):
        gradc.compile(SRC, target="tpu")
    p = tmp_path / "a.ad"
    p.write_text(SRC)
    r = subprocess.run([sys.executable, "-m", "gradc", "run", str(p), "f", "x=[1]", "--target", "tpu"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown target 'tpu'" in r.stderr and "Traceback" not in r.stderr
    ok, why = backend("cuda", need_available=False).available()
    if not ok:
        r = subprocess.run([sys.executable, "-m", "gradc", "run", str(p), "f", "x=[1]", "--target", "cuda"],
                           capture_output=True, text=True)
        assert r.returncode == 1 and "cuda-sim" in r.stderr and "Traceback" not in r.stderr


def test_fast_math_marks_the_instructions():
    plain = api.emit_llvm(SRC, optimized=False)
    fast = api.emit_llvm(SRC, optimized=False, fast_math=True)
    assert "fmul fast" in fast and "fmul fast" not in plain and " fmul " in plain


@pytest.mark.parametrize("target", ["cuda-sim", "cuda"])
def test_gpu_module_files(tmp_path, target):
    """A cuda module file builds anywhere (PTX needs no GPU); it loads where its target runs."""
    p = tmp_path / "m.ad"
    p.write_text(SRC)
    out = gradc.build(p, tmp_path / "m.gcm", target=target)
    header, code = artifact.read(out)
    assert header["target"] == target and header["gpu_arch"] == "sm_80"
    assert [f["signature"]["name"] for f in header["functions"]] == ["f", "g"]
    ok, why = backend(target, need_available=False).available()
    if not ok:
        with pytest.raises(TargetUnavailable, match="cuda-sim"):
            gradc.load(out)
        return
    m = gradc.load(out)
    x = np.linspace(-1, 1, 100).astype(np.float32)
    np.testing.assert_allclose(m.g(x), np.sin(x) + x * np.cos(x), rtol=1e-5, atol=1e-6)


def test_a_module_file_is_loaded_for_its_own_target(tmp_path):
    p = tmp_path / "m.ad"
    p.write_text(SRC)
    header, code = artifact.read(gradc.build(p, tmp_path / "m.gcm", target="cuda-sim"))
    with pytest.raises(artifact.ArtifactMismatch, match="built for target 'cuda-sim', not cpu"):
        artifact.check_compatible(header, "cpu", BACKENDS["cpu"].host_facts(Options()), api.VERSION, "m.gcm")
    header["gpu_arch"] = "sm_90"
    bad = tmp_path / "other.gcm"
    bad.write_bytes(artifact.pack(header, code))
    # the header's facts are what the module says of itself: a changed one is a corrupted module
    with pytest.raises(artifact.ArtifactError, match="its code is for sm_80"):
        gradc.load(bad)


def test_code_for_another_cpu(tmp_path):
    """--cpu NAME tunes for NAME on this machine's instruction set less what NAME lacks;
    --cpu-features turns features off (or on); such a module loads where its features exist."""
    cpu = BACKENDS["cpu"]
    avx2 = cpu.host_facts(Options(cpu="znver3"))["features"].split(",")
    assert not any(f.startswith("+avx512") for f in avx2) and avx2[-1].startswith(("-", "+"))
    off = cpu.host_facts(Options(cpu_features="-avx2,-avx"))
    assert off["features"].endswith("-avx2,-avx") and off["cpu_chosen"] and off["cpu"] == cpu.host_facts(Options())["cpu"]
    assert "ymm" not in api.emit(SRC, "asm", cpu_features="-avx2,-avx")
    with pytest.raises(ValueError, match="pentium"):
        Options(cpu="pentium")
    with pytest.raises(ValueError, match="-avx512f"):
        Options(cpu_features="avx")
    p = tmp_path / "c.ad"
    p.write_text(SRC)
    out = gradc.build(p, tmp_path / "c.gcm", cpu="x86-64-v3")
    header, code = artifact.read(out)
    assert header["cpu"] == "x86-64-v3" and header["cpu_chosen"]
    x = np.linspace(-1, 1, 50).astype(np.float32)
    np.testing.assert_allclose(gradc.load(out).g(x), np.sin(x) + x * np.cos(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradc.compile(SRC, cpu="znver3", cache=False).g(x), np.sin(x) + x * np.cos(x),
                               rtol=1e-5, atol=1e-6)
    host = cpu.host_facts(Options())
    needs_more = dict(header, features=header["features"] + ",+gradc-imaginary-feature")
    with pytest.raises(artifact.ArtifactMismatch, match="lacks \\(gradc-imaginary-feature\\)"):
        artifact.check_compatible(needs_more, "cpu", host, api.VERSION, "c.gcm")
    r = subprocess.run([sys.executable, "-m", "gradc", "build", str(p), "--cpu-features", "avx"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "+name or -name" in r.stderr and "Traceback" not in r.stderr


def test_a_cuda_module_loads_without_llvm(tmp_path):
    """The driver compiles PTX: loading a cuda module file touches no LLVM (here, without a
    driver, it stops at the one message; on a GPU it goes on to the driver)."""
    p = tmp_path / "m.ad"
    p.write_text(SRC)
    out = gradc.build(p, tmp_path / "m.gcm", target="cuda")
    code = ("import sys, gradc\n"
            f"try:\n    gradc.load({str(out)!r})\nexcept gradc.TargetUnavailable:\n    pass\n"
            "print('llvmlite.binding' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
