"""Module files are code: a private cache, headers checked against the code, signatures, one mapping per code."""
import gc
import json
import os
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

import gradc
from gradc.cli import main
from gradc.compiler.codegen.cpu.link import linker
from gradc.runtime import artifact, cpu, elf, host, trust
from gradc.runtime.artifact import ArtifactError, SignatureError

SRC = textwrap.dedent("""\
    fn loss(w: f64[D], x: f64[N, D], y: f64[N]) -> f64 {
        return mean((x @ w - y) ** 2)
    }
    let loss_grad = grad(loss, wrt=w)
    fn s(a: f64, b: f64) -> f64 { return sin(a) * b }
    """)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A cache holding the program, and its module file: compiled once for all the tests here."""
    d = tmp_path_factory.mktemp("seed")
    (d / "lin.ad").write_text(SRC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADC_CACHE_DIR", str(d / "cache"))
        host._host.clear()                         # so that the host description is written there
        gradc.compile(d / "lin.ad")
        gradc.build(d / "lin.ad", d / "lin.gcm")
    return d


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch, seeded):
    d = tmp_path / "cache"
    shutil.copytree(seeded / "cache", d)
    monkeypatch.setenv("GRADC_CACHE_DIR", str(d))
    monkeypatch.setattr(host, "_warned", set())
    return d


@pytest.fixture
def source(tmp_path, seeded):
    return shutil.copy(seeded / "lin.ad", tmp_path / "lin.ad")


@pytest.fixture
def built(tmp_path, seeded):
    return shutil.copy(seeded / "lin.gcm", tmp_path / "lin.gcm")


def _args(n=5):
    rng = np.random.default_rng(1)
    return rng.standard_normal(3), rng.standard_normal((n, 3)), rng.standard_normal(n)


def _expect(m):
    """Results against NumPy: the loss, its gradient (by formula) and s."""
    w, x, y = _args()
    r = x @ w - y
    np.testing.assert_allclose(m.loss(w, x, y), np.mean(r ** 2), rtol=1e-12)
    np.testing.assert_allclose(m.loss_grad(w, x, y), 2 * x.T @ r / len(y), rtol=1e-12)
    np.testing.assert_allclose(m.s(0.5, 3.0), np.sin(0.5) * 3.0, rtol=1e-15)


def _release():
    """Drop this process's mappings and remembered facts, as a new process would start."""
    gc.collect()
    host._host.clear()
    trust._good.clear()


# ---- the cache directory

def test_cache_is_created_private(source, cache_dir):
    shutil.rmtree(cache_dir)
    gradc.compile(source)
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    assert (cache_dir / "native").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("why", ["writable by other users", "owned by another user"])
def test_shared_cache_is_refused(source, cache_dir, monkeypatch, why):
    shutil.rmtree(cache_dir)
    cache_dir.mkdir()
    if why.startswith("writable"):
        cache_dir.chmod(0o777)
    else:
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.warns(host.CacheWarning, match=why):
        _expect(gradc.compile(source))             # still compiles and runs, without the cache
    assert list(cache_dir.iterdir()) == []


def test_shared_cache_warning_from_the_command_line(source, cache_dir, capsys):
    shutil.rmtree(cache_dir)
    cache_dir.mkdir()
    cache_dir.chmod(0o777)
    assert main(["run", str(source), "s", "a=0.5", "b=2"]) == 0
    out = capsys.readouterr()
    assert "writable by other users" in out.err and "chmod 700" in out.err
    assert float(out.out.split()[-1]) == pytest.approx(np.sin(0.5) * 2)


def _entries(cache_dir, kind):
    return {"module": list(cache_dir.glob("*.gcm")), "library": list((cache_dir / "native").glob("*.so")),
            "host": list((cache_dir / "native").glob("host-*.json"))}[kind]


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[:len(data) // 3]
    elif how == "garble":
        for i in range(len(data) // 4, len(data) // 2):
            data[i] ^= 0x5A
    elif path.suffix == ".json":                   # poison: valid, and wrong
        data = json.dumps(dict(json.loads(data), cpu="pentium4", features="+sse2")).encode()
    elif path.suffix == ".gcm":                    # poison: an edited header, the seal recomputed
        header, code = artifact.unpack(bytes(data))
        header["functions"][0]["signature"]["params"][0][1] = "f32"
        data = artifact.pack(header, code)
    else:                                          # poison: another library of the right size
        data = bytes(len(data))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "garble", "poison"])
@pytest.mark.parametrize("kind", ["module", "library", "host"])
def test_damaged_cache_entries_are_rebuilt(source, built, cache_dir, kind, how):
    if kind == "library" and linker() is None:
        pytest.skip("no system linker: no shared libraries")
    _release()
    [path] = _entries(cache_dir, kind)
    good = path.read_bytes()
    _damage(path, how)
    assert path.read_bytes() != good
    _expect(gradc.compile(source))
    if kind != "host":
        assert path.read_bytes() == good           # compiled (or written) again over the damage
    else:
        _release()                                 # a new process trusts the description again
        _expect(gradc.load(built))


# ---- headers checked against the code

def _edit(header, what):
    fns = header["functions"]
    by = {f["signature"]["name"]: f for f in fns}
    if what == "dtype":
        by["loss"]["signature"]["params"][1][1] = "f32"
    elif what == "shape":
        by["loss_grad"]["signature"]["outputs"][0][1] = ["N"]
    elif what == "params":
        del by["s"]["signature"]["params"][1]
    elif what == "swap symbols":
        by["loss"]["symbol"], by["loss_grad"]["symbol"] = by["loss_grad"]["symbol"], by["loss"]["symbol"]
    elif what == "rename":
        by["s"]["signature"]["name"] = "t"
    elif what == "dims":
        by["loss"]["dims"] = ["N", "D"]
    elif what == "drop function":
        fns.remove(by["s"])
    elif what == "add function":
        fns.append(dict(by["s"], symbol="gradc_fn_other"))
    elif what == "module fact":
        header["source_name"] = "other.ad"
    elif what == "garbage":
        header["functions"] = [{"signature": 3}]
    elif what == "no list":
        header["functions"] = {"loss": 1}
    return header


@pytest.mark.parametrize("what", ["dtype", "shape", "params", "swap symbols", "rename", "dims",
                                  "drop function", "add function", "module fact", "garbage", "no list"])
@pytest.mark.parametrize("shared", [True, False])
def test_edited_header_is_refused_before_mapping(built, tmp_path, monkeypatch, what, shared):
    header, code = artifact.read(built)
    if not shared:
        code = artifact.Code(code.objects)
    p = tmp_path / "edited.gcm"
    p.write_bytes(artifact.pack(_edit(header, what), code))
    monkeypatch.setattr(cpu, "_map", lambda code: pytest.fail("mapped"))
    with pytest.raises(ArtifactError, match="edited.gcm"):
        gradc.load(p)


def _hostile(tmp_path, built, how):
    """The module's code linked with an object whose constructor writes a marker file."""
    marker = tmp_path / "ran"
    c = tmp_path / "boom.c"
    c.write_text('#include <stdio.h>\n'
                 f'static void boom(void) {{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                 + ('__attribute__((constructor)) static void ctor(void) { boom(); }\n' if how != "dt_init"
                    else 'void gradc_init(void) { boom(); }\n'))
    obj = tmp_path / "boom.o"
    subprocess.run(["cc", "-fPIC", "-c", str(c), "-o", str(obj)], check=True)
    header, code = artifact.read(built)
    objs = []
    for i, o in enumerate(code.objects):
        objs.append(tmp_path / f"f{i}.o")
        objs[-1].write_bytes(o)
    lib = tmp_path / "hostile.so"
    extra = ["-init=gradc_init"] if how == "dt_init" else []
    subprocess.run(["ld", "-shared", "-Bsymbolic", *extra, "-o", str(lib), *map(str, objs), str(obj), "-lc"],
                   check=True)
    if how == "object":
        code = artifact.Code(code.objects + (obj.read_bytes(),))
    else:
        code = artifact.Code(code.objects, lib.read_bytes())
    p = tmp_path / "hostile.gcm"
    p.write_bytes(artifact.pack(header, code))
    return p, marker


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("ld") is None, reason="needs cc and ld")
@pytest.mark.parametrize("how", ["init_array", "dt_init", "object"])
def test_code_that_runs_at_load_is_refused(built, tmp_path, how):
    p, marker = _hostile(tmp_path, built, how)
    with pytest.raises(ArtifactError, match="refused"):
        gradc.load(p)
    assert not marker.exists()


def test_gradc_libraries_have_no_load_time_code(built):
    header, code = artifact.read(built)
    for data in (*code.objects, *([code.shared] if code.shared else [])):
        e = elf.parse(data)
        assert not [s for s in e.sections if "init" in s[0] or "fini" in s[0] or "ctors" in s[0]]
        assert not [t for t, _ in e.dynamic if t in trust._LOAD_TIME_TAGS]
    trust.check_code(header, code)


_IDENT = b"\x7fELF\x02\x01\x01" + bytes(9)


@pytest.mark.parametrize("data", [b"", b"\x7fELF", b"\x7fELF\x01\x01\x01" + bytes(60),
                                  elf._EHDR.pack(_IDENT, 3, 62, 1, 0, 0, 2 ** 40, 0, 64, 56, 0, 64, 3, 0),
                                  elf._EHDR.pack(_IDENT, 3, 62, 1, 0, 2 ** 40, 0, 0, 64, 56, 2, 64, 0, 0)])
def test_elf_reader_refuses_garbage(data):
    with pytest.raises(elf.ElfError):
        elf.parse(data)


# ---- signatures

def test_signed_modules(source, built, tmp_path, monkeypatch):
    key = os.urandom(32)
    keyfile = tmp_path / "key"
    keyfile.write_bytes(key)
    signed = gradc.build(source, tmp_path / "signed.gcm", key=key)
    _expect(gradc.load(signed, key=key))
    _expect(gradc.load(signed, key=keyfile))
    _expect(gradc.load(signed, key=str(keyfile)))
    _expect(gradc.load(signed))                    # without a key: the file loads as any other
    unsigned = built
    tampered = tmp_path / "tampered.gcm"
    data = bytearray(signed.read_bytes())
    header, code = artifact.unpack(bytes(data))
    header["source_name"] = "x.ad"
    tampered.write_bytes(artifact.pack(header, code) + bytes(data[-40:]))   # the old signature kept
    monkeypatch.setattr(artifact, "unpack", lambda *a: pytest.fail("read before the signature check"))
    with pytest.raises(SignatureError, match="not signed"):
        gradc.load(unsigned, key=key)
    with pytest.raises(SignatureError, match="does not match"):
        gradc.load(signed, key=b"another key")
    with pytest.raises(SignatureError, match="does not match"):
        gradc.load(tampered, key=key)
    with pytest.raises(ValueError, match="empty"):
        gradc.load(signed, key=b"")
    with pytest.raises(ValueError, match="cannot read the key file"):
        gradc.load(signed, key=tmp_path / "missing")
    with pytest.raises(TypeError, match="key must be bytes"):
        gradc.load(signed, key=3)


def test_sign_key_on_the_command_line(source, tmp_path, capsys):
    keyfile = tmp_path / "key"
    keyfile.write_bytes(b"a key only I hold")
    out = tmp_path / "cli.gcm"
    assert main(["build", str(source), "-o", str(out), "--sign-key", str(keyfile)]) == 0
    assert "signed" in capsys.readouterr().out
    _expect(gradc.load(out, key=keyfile))
    with pytest.raises(SignatureError):
        gradc.load(out, key=b"a key someone else holds")
    assert main(["build", str(source), "--sign-key", str(tmp_path / "none")]) == 1
    assert "cannot read the key file" in capsys.readouterr().err


# ---- no leaks

def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_loading_again_maps_nothing_new(built, source, tmp_path):
    header, code = artifact.read(built)
    objects = tmp_path / "objects.gcm"
    objects.write_bytes(artifact.pack(header, artifact.Code(code.objects)))
    first = [gradc.load(built), gradc.compile(source), gradc.load(objects)]
    gc.collect()
    maps, rss = _maps(), _rss()
    ways = [lambda: gradc.load(built), lambda: gradc.compile(source), lambda: gradc.load(objects)]
    for i in range(300):
        m = ways[i % 3]()
        assert m.s._code is first[i % 3].s._code
    gc.collect()
    assert _maps() <= maps + 2
    assert _rss() <= rss + 2 * 2 ** 20
    _expect(m)


@pytest.mark.skipif(linker() is None or not os.path.exists("/proc/self/maps"), reason="needs ld and /proc")
def test_unused_library_is_released(built):
    m = gradc.load(built)
    name = os.path.basename(m.s._code.lib._name)
    with open("/proc/self/maps") as f:
        assert name in f.read()
    del m
    gc.collect()
    with open("/proc/self/maps") as f:
        assert name not in f.read()
    _expect(gradc.load(built))                     # and mapped again when wanted
