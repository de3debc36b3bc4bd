"""Compiled-module files, the disk cache and the import hook."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc import cache
from gradc.runtime import artifact
from gradc.runtime.artifact import ArtifactError, ArtifactMismatch

SRC = textwrap.dedent("""\
    fn loss(w: f64[D], x: f64[N, D], y: f64[N]) -> f64 {
        return mean((x @ w - y) ** 2)
    }
    let loss_grad = grad(loss, wrt=w)
    """)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GRADC_CACHE_DIR", str(d))
    return d


@pytest.fixture
def source(tmp_path):
    p = tmp_path / "lin.ad"
    p.write_text(SRC)
    return p


def _args(n=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal(3), rng.standard_normal((n, 3)), rng.standard_normal(n)


def _same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_build_and_load(source, tmp_path):
    out = gradc.build(source, tmp_path / "lin.gcm")
    m = gradc.load(out)
    ref = gradc.compile(source, target="reference")
    for n in (1, 6, 50):
        args = _args(n)
        _same(m.loss(*args), ref.loss(*args))
        _same(m.loss_grad(*args), ref.loss_grad(*args))
    assert str(m.loss_grad.sig) == "loss_grad(w: f64[D], x: f64[N, D], y: f64[N]) -> f64[D]"
    header, obj = artifact.read(out)
    assert header["source_name"] == "lin.ad" and header["gradc_version"] == gradc.__version__
    assert header["cpu"] and header["triple"] and len(header["source_hash"]) == 64 and obj


def test_build_default_path(source):
    assert gradc.build(source) == source.with_suffix(".gcm")
    assert gradc.load(source.with_suffix(".gcm")).loss(*_args()) >= 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "append", "empty", "header"])
def test_damaged_files_are_refused(source, tmp_path, damage):
    data = bytearray(artifact.pack(*artifact.read(gradc.build(source, tmp_path / "a.gcm"))))
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "append":
        data += b"x"
    elif damage == "empty":
        data = b""
    elif damage == "header":
        data = data[:30]
    p = tmp_path / "bad.gcm"
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="bad.gcm"):
        gradc.load(p)


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x01" + bytes(100), b"fn f(x: f64) -> f64 { return x }\n"])
def test_foreign_files_are_refused(tmp_path, content):
    p = tmp_path / "foreign.gcm"
    p.write_bytes(content)
    with pytest.raises(ArtifactError, match="not a gradc compiled module"):
        gradc.load(p)


@pytest.mark.parametrize("field,value,words", [("gradc_version", "0.0.1", "gradc 0.0.1"),
                                               ("cpu", "pentium4", "CPU pentium4"),
                                               ("features", "+sse2", "CPU features"),
                                               ("triple", "aarch64-unknown-linux-gnu", "platform")])
def test_mismatch_says_how_to_rebuild(source, tmp_path, field, value, words):
    header, obj = artifact.read(gradc.build(source, tmp_path / "a.gcm"))
    header[field] = value
    p = tmp_path / "other.gcm"
    p.write_bytes(artifact.pack(header, obj))
    with pytest.raises(ArtifactMismatch, match=words) as info:
        gradc.load(p)
    assert "gradc build lin.ad -o other.gcm" in str(info.value)


def test_load_does_not_compile(source, tmp_path, monkeypatch):
    out = gradc.build(source, tmp_path / "a.gcm")
    import gradc.compiler.codegen.cpu as backend
    monkeypatch.setattr(backend, "compile_graphs", lambda *a, **k: pytest.fail("recompiled"))
    assert gradc.load(out).loss(*_args()) >= 0


def test_cache_hit_and_repair(source, cache_dir, monkeypatch):
    m = gradc.compile(source)
    files = list(cache_dir.glob("*.gcm"))
    assert len(files) == 1
    import gradc.compiler.codegen as backend
    calls = []
    real = backend.compile_graphs
    monkeypatch.setattr(backend, "compile_graphs", lambda *a, **k: calls.append(1) or real(*a, **k))
    _same(gradc.compile(source).loss(*_args()), m.loss(*_args()))
    assert calls == []                              # taken from the cache
    files[0].write_bytes(files[0].read_bytes()[:100])
    _same(gradc.compile(source).loss(*_args()), m.loss(*_args()))
    assert calls == [1]                             # a damaged entry is rebuilt
    assert artifact.read(files[0])
    gradc.compile(SRC + "\n# changed\n")
    assert len(list(cache_dir.glob("*.gcm"))) == 2


def test_cache_replays_warnings(tmp_path):
    p = tmp_path / "warn.ad"
    p.write_text("fn f(x: f64, y: f64) -> f64 { return x * 2 }\nlet g = grad(f, wrt=(x, y))\n")
    for _ in range(2):
        with pytest.warns(gradc.GradcWarning, match="does not depend on 'y'"):
            gradc.compile(p)


def test_two_processes_compile_at_once(source, cache_dir):
    code = ("import gradc, numpy as np, sys; m = gradc.compile(sys.argv[1]); "
            "print(m.loss(np.ones(3), np.ones((2, 3)), np.ones(2)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(source)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {float(o) for o, _ in outs} == {4.0}
    assert len(list(cache_dir.glob("*.gcm"))) == 1
    assert not [p for p in cache_dir.iterdir() if p.suffix != ".gcm"]      # no stray temp files
    artifact.read(next(cache_dir.glob("*.gcm")))


def test_cache_key_changes_with_source_and_name():
    assert cache.key(SRC, "a.ad") != cache.key(SRC + " ", "a.ad")
    assert cache.key(SRC, "a.ad") != cache.key(SRC, "b.ad")
    assert cache.key(SRC, "a.ad") == cache.key(SRC, "a.ad")


def test_unwritable_cache_still_compiles(source, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GRADC_CACHE_DIR", str(blocker / "sub"))
    assert gradc.compile(source).loss(*_args()) >= 0


def test_import_hook(tmp_path, monkeypatch):
    (tmp_path / "gradc_hooked_model.ad").write_text(SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    gradc.install_import_hook()
    try:
        import gradc_hooked_model as m
        ref = gradc.compile(SRC, target="reference")
        _same(m.loss_grad(*_args()), ref.loss_grad(*_args()))
        assert m.gradc_module.target == "cpu"
    finally:
        sys.modules.pop("gradc_hooked_model", None)


def test_import_hook_misses_cleanly(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        import gradc_no_such_model  # noqa: F401


def test_reference_target_still_available(source):
    assert "reference" in gradc.api.TARGETS and gradc.api.DEFAULT_TARGET == "cpu"
    _same(gradc.compile(source, target="reference").loss(*_args()), gradc.compile(source).loss(*_args()))
    with pytest.raises(ValueError, match="unknown target"):
        gradc.compile(source, target="tpu")
