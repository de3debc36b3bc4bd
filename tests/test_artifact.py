"""Compiled-module files, the disk cache and the import hook."""
import gc
import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc import cache
from gradc.compiler.codegen.cpu import link
from gradc.compiler.codegen.cpu.link import linker
from gradc.runtime import artifact
from gradc.runtime.cpu import load_native
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
    header, code = artifact.read(out)
    assert header["source_name"] == "lin.ad" and header["gradc_version"] == gradc.__version__
    assert header["cpu"] and header["triple"] and len(header["source_hash"]) == 64 and code
    assert len(code.objects) == 2                   # one object file per exported function


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
    # no stray temp files; native/ holds the host description and the shared library
    assert not [p for p in cache_dir.iterdir() if p.suffix != ".gcm" and p.name != "native"]
    assert not [p for p in (cache_dir / "native").iterdir() if p.suffix not in (".so", ".json")]
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


def test_import_hook_takes_a_target(tmp_path, monkeypatch):
    (tmp_path / "gradc_hooked_sim.ad").write_text(SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GRADC_TARGET", "cuda-sim")
    try:
        import gradc_hooked_sim as m
        assert m.gradc_module.target == "cuda-sim"
        _same(m.loss_grad(*_args()), gradc.compile(SRC, target="reference").loss_grad(*_args()))
    finally:
        sys.modules.pop("gradc_hooked_sim", None)


def test_import_hook_misses_cleanly(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        import gradc_no_such_model  # noqa: F401


def test_reference_target_still_available(source):
    assert "reference" in gradc.api.TARGETS and gradc.api.DEFAULT_TARGET == "cpu"
    _same(gradc.compile(source, target="reference").loss(*_args()), gradc.compile(source).loss(*_args()))
    with pytest.raises(ValueError, match="unknown target"):
        gradc.compile(source, target="tpu")


def _kind(m):
    return m.loss._code.kind


@pytest.mark.skipif(linker() is None, reason="no system linker: modules hold object files only")
def test_shared_library_and_mcjit_agree(source, tmp_path):
    header, code = artifact.read(gradc.build(source, tmp_path / "a.gcm"))
    assert code.shared and header["shared"] == len(code.shared)
    shared = gradc.load(tmp_path / "a.gcm")
    assert _kind(shared) == "shared"
    p = tmp_path / "objects.gcm"
    p.write_bytes(artifact.pack(header, artifact.Code(code.objects)))
    jit = gradc.load(p)
    assert _kind(jit) == "mcjit"
    for n in (1, 6, 50):
        args = _args(n)
        assert shared.loss(*args) == jit.loss(*args)
        np.testing.assert_array_equal(shared.loss_grad(*args), jit.loss_grad(*args))
    again = gradc.load(tmp_path / "a.gcm")           # the same code again: the one mapping
    assert again.loss._code is shared.loss._code
    _same(again.loss(*_args()), jit.loss(*_args()))


def test_no_linker_falls_back_to_mcjit(source, tmp_path, monkeypatch):
    monkeypatch.setattr(link, "linker", lambda: None)
    header, code = artifact.read(gradc.build(source, tmp_path / "a.gcm"))
    assert code.shared is None and header["shared"] == 0
    m = gradc.load(tmp_path / "a.gcm")
    assert _kind(m) == "mcjit"
    _same(m.loss_grad(*_args()), gradc.compile(source, target="reference").loss_grad(*_args()))


@pytest.mark.skipif(linker() is None, reason="no system linker: modules hold object files only")
def test_unloadable_library_falls_back_to_mcjit(source, tmp_path, monkeypatch):
    out = gradc.build(source, tmp_path / "a.gcm")
    gc.collect()                        # no mapping of the same code left from an earlier test
    from gradc.runtime import shared

    def refuse(data):
        raise OSError("cannot map")
    monkeypatch.setattr(shared, "_dlopen", refuse)
    m = gradc.load(out)
    assert _kind(m) == "mcjit"
    assert m.loss(*_args()) >= 0


@pytest.mark.skipif(linker() is None, reason="no system linker: modules hold object files only")
def test_load_needs_no_llvm(source, tmp_path, cache_dir):
    out = gradc.build(source, tmp_path / "a.gcm")
    code = ("import sys, gradc, numpy as np; m = gradc.load(sys.argv[1]); "
            "print(m.loss(np.ones(3), np.ones((2, 3)), np.ones(2)), m.loss._code.kind, "
            "'llvmlite.binding' in sys.modules)")
    for _ in range(2):                  # the first run asks LLVM about the CPU, once
        res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                             timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["4.0", "shared", "False"]


def test_host_description_is_remembered(cache_dir):
    from gradc.runtime import host as host_mod
    from gradc.runtime.jit import llvm_host
    assert host_mod.host() == llvm_host()
    files = list((cache_dir / "native").glob("host-*.json")) if (cache_dir / "native").exists() else []
    if files:                           # where /proc/cpuinfo exists
        files[0].write_text("{not json")
        assert host_mod._read(files[0]) is None


def test_every_object_has_its_globals_patched(tmp_path):
    src = SRC + "let loss_vg = value_and_grad(loss, wrt=w)\n"
    header, code = artifact.read(gradc.build(src, tmp_path / "three.gcm"))
    assert len(code.objects) == 3
    jit = load_native("three", artifact.Code(code.objects), header["functions"])
    assert jit.loss._code.kind == "mcjit"
    ref = gradc.compile(src, target="reference")
    for n in (1, 200):
        args = _args(n)
        _same(jit.loss_vg(*args)[1], ref.loss_grad(*args))
        _same(jit.loss_grad(*args), ref.loss_grad(*args))


@pytest.mark.parametrize("sizes", [[], [0, 1], "x", [10 ** 9]])
def test_bad_object_table_is_refused(source, tmp_path, sizes):
    header, code = artifact.read(gradc.build(source, tmp_path / "a.gcm"))
    blob = b"".join(code.objects) + (code.shared or b"")
    head = json.dumps(dict(header, objects=sizes)).encode()
    body = artifact._HEAD.pack(artifact.MAGIC, artifact.FORMAT, len(head), len(blob)) + head + blob
    p = tmp_path / "table.gcm"
    p.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(ArtifactError, match="object sizes"):
        gradc.load(p)
