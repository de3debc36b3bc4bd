"""Every bad program gets a diagnostic with a position, never a Python exception: mutated samples,
deep and long programs, constant arithmetic, encodings, inlined calls, internal errors."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from gradc.compiler.pipeline import lower, optimize
from gradc.compiler.verify import verify
from gradc.frontend.diagnostics import CompileError
from gradc.frontend.source import decode

SAMPLES = sorted((Path(__file__).parent.parent / "samples").glob("*.ad"))
_TOKEN = re.compile(rb"[A-Za-z_][A-Za-z_0-9]*|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\*\*|->|[<>=!]=|\s+|.",
                    re.S)


def mutate(source: bytes, rng: random.Random) -> bytes:
    """One to three edits of a program's tokens: delete, duplicate, swap, replace, random bytes."""
    toks = _TOKEN.findall(source)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(toks))
        kind = rng.choice(("delete", "duplicate", "swap", "replace", "bytes"))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        elif kind == "swap":
            j = min(i + 1, len(toks) - 1)
            toks[i], toks[j] = toks[j], toks[i]
        elif kind == "replace":
            toks[i] = rng.choice(toks)
        else:
            toks.insert(i, bytes(rng.randrange(256) for _ in range(rng.randint(1, 3))))
    return b"".join(toks)


def compile_front(data: bytes, file="m.ad"):
    """Decoding, lowering and the optimization passes (no native code): the module's graphs."""
    mod = lower(decode(data, file), file)
    return [verify(optimize(g)) for g in mod.graphs.values()]


def outcome(data: bytes) -> str:
    try:
        compile_front(data)
    except CompileError as ex:
        return "error" if ex.loc is not None else "error without a position"
    return "ok"


def test_mutated_samples_get_diagnostics():
    rng = random.Random(6)
    sources = [p.read_bytes() for p in SAMPLES]
    seen = {"ok": 0, "error": 0}
    for k in range(300):
        mutant = mutate(sources[k % len(sources)], rng)
        try:
            result = outcome(mutant)
        except Exception as ex:          # what the test is for: the mutant is in the message
            raise AssertionError(f"mutant {k} raised {type(ex).__name__}: {ex}\n{mutant.decode(errors='replace')}")
        assert result in seen, f"mutant {k}: {result}\n{mutant.decode(errors='replace')}"
        seen[result] += 1
    assert seen["ok"] and seen["error"]     # the mutator makes both kinds


# ---- deep and long programs


def test_nesting_beyond_the_limit_is_one_diagnostic():
    src = "fn f(x: f64) -> f64 {\n    return " + "sin(" * 150 + "x" + ")" * 150 + "\n}\n"
    with pytest.raises(CompileError, match="nested too deeply") as info:
        compile_front(src.encode())
    assert (info.value.loc.line, info.value.loc.col) == (2, 12 + 4 * 100)


def test_nesting_within_the_limit_compiles():
    import numpy as np
    import gradc
    src = "fn f(x: f64) -> f64 {\n    return " + "sin(" * 90 + "x" + ")" * 90 + "\n}\n"
    want = 0.5
    for _ in range(90):
        want = np.sin(want)
    assert gradc.compile(src, target="reference").f(0.5) == pytest.approx(want, rel=1e-12)


def test_deep_parentheses_and_long_chains_compile():
    import gradc
    n = 2000
    parens = "fn f(x: f64) -> f64 { return " + "(" * n + "x + 1.0" + ")" * n + " }"
    chain = "fn g(a: f64) -> f64 { return a" + " + a" * (n - 1) + " }\nlet dg = grad(g)\n"
    lets = "fn h(x: f64) -> f64 {\n" + "".join(f"    let a{i} = {'x' if i == 0 else f'a{i - 1}'} + 1.0\n"
                                                for i in range(n)) + f"    return a{n - 1}\n}}\n"
    m = gradc.compile(parens + "\n" + chain + lets, cache=False)
    assert m.f(2.0) == 3.0
    assert m.g(0.5) == pytest.approx(n * 0.5, rel=1e-12)
    assert m.dg(0.5) == pytest.approx(n, rel=1e-12)
    assert m.h(0.5) == pytest.approx(n + 0.5, rel=1e-12)


@pytest.mark.parametrize("target", ["cpu", "reference", "cuda-sim"])
def test_chain_of_200_lets_and_its_gradient(target):
    # the CPU code generator inlines the whole fused chain into one loop body
    import numpy as np
    import gradc
    n = 200
    body = "".join(f"    let a{i} = sin(a{i - 1}) * 1.0001\n" for i in range(1, n + 1))
    src = f"fn f(x: f64) -> f64 {{\n    let a0 = x\n{body}    return a{n}\n}}\nlet g = value_and_grad(f)\n"
    value, grad = gradc.compile(src, target=target, cache=False).g(0.7)
    a, d = 0.7, 1.0                   # the chain rule by hand, in float64
    for _ in range(n):
        a, d = np.sin(a) * 1.0001, d * np.cos(a) * 1.0001
    assert value == pytest.approx(a, rel=1e-12) and grad == pytest.approx(d, rel=1e-10)


def test_concat_of_many_arrays():
    # the code generator tests the pieces one after another, not by recursion
    import numpy as np
    import gradc
    n = 400
    src = f"fn f(x: f64[2]) -> f64[{2 * n}] {{ return concat({', '.join(['x * ' + str(i) + '.0' for i in range(n)])}) }}"
    x = np.array([1.0, -2.0])
    want = np.concatenate([x * i for i in range(n)])
    np.testing.assert_array_equal(gradc.compile(src, cache=False).f(x), want)


def test_calls_inside_calls_beyond_the_limit():
    n = 80
    src = "fn g0(x: f64) -> f64 { return x + 1.0 }\n" + "".join(
        f"fn g{i}(x: f64) -> f64 {{ return g{i - 1}(x) * 2.0 }}\n" for i in range(1, n))
    with pytest.raises(CompileError, match="nested too deeply") as info:
        compile_front(src.encode())
    calls = [n for n in info.value.notes if isinstance(n, tuple)]
    assert calls and all(text.startswith("in the call of g") for text, _ in calls)
    text = info.value.render({"m.ad": src})
    assert text.count("note: in the call of") == 10 and f"({len(calls) - 10} more calls in between)" in text


def test_emit_ast_of_a_long_chain():
    from gradc.frontend.ast import dump
    from gradc.frontend.parse import parse
    text = dump(parse("fn f(a: f64) -> f64 { return a" + " + a" * 3000 + " }"))
    assert text.count("BinOp op='+'") == 3000


# ---- empty programs


@pytest.mark.parametrize("source", ["", "# only a comment\n", "\n\n;\n"])
@pytest.mark.parametrize("target", ["cpu", "reference", "cuda-sim"])
def test_empty_program_is_an_empty_module(source, target):
    import gradc
    assert gradc.compile(source, target=target, cache=False).functions == {}


def test_empty_file_builds_and_loads(tmp_path):
    import gradc
    src = tmp_path / "empty.ad"
    src.write_text("# nothing yet\n")
    assert gradc.load(gradc.build(src)).functions == {}


# ---- constant arithmetic


@pytest.mark.parametrize("expr, want", [("0 ** -1", float("inf")), ("0.0 ** -1", float("inf")),
                                        ("2.0 ** 100000", float("inf")), ("1 / 0", float("inf")),
                                        ("-1 / 0", float("-inf")), ("2 ** -1", 0.5),
                                        ("9" * 100000 + ".0", float("inf")), ("2 ** 62 + (2 ** 62 - 1)", 2.0 ** 63 - 1)])
def test_constant_arithmetic_gives_the_ieee_result(expr, want):
    import gradc
    m = gradc.compile(f"fn f(x: f64) -> f64 {{ return x * ({expr}) }}", target="reference")
    assert m.f(1.0) == want


@pytest.mark.parametrize("expr, col, says", [
    ("2 ** 100000", 35, "2 ** 100000 overflows i64"),
    ("10 ** 10 ** 10", 35, "overflows i64"),
    ("2 ** 62 * 2", 43, "overflows i64"),
    ("9" * 100000, 35, "integer literal of 100000 digits is out of the range"),
    ("[1, 2 ** 63]", 39, "overflows i64"),
])
def test_constant_arithmetic_that_fails_is_a_diagnostic(expr, col, says):
    with pytest.raises(CompileError, match=re.escape(says)) as info:
        compile_front(f"fn f(x: f64) -> f64 {{ return x * ({expr}) }}".encode())
    assert (info.value.loc.line, info.value.loc.col) == (1, col)


def test_folding_division_by_zero_is_quiet_and_ieee():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # no RuntimeWarning from NumPy while folding
        (g,) = compile_front(b"fn f(x: f64) -> f64 { return x + cast(1, f64) / cast(0, f64) }")
    consts = [n.attr("value") for n in g.nodes if n.op == "const"]
    assert float("inf") in consts


# ---- encodings


def test_file_that_is_not_utf8(tmp_path):
    import gradc
    path = tmp_path / "latin1.ad"
    path.write_bytes("fn f(x: f64) -> f64 {\n    return x  # café\n}\n".encode("latin-1"))
    with pytest.raises(CompileError) as info:
        gradc.compile(path)
    assert (info.value.loc.line, info.value.loc.col) == (2, 20)
    assert "not UTF-8" in str(info.value) and "return x  # caf\ufffd" in str(info.value)


def test_byte_order_mark_is_accepted(tmp_path):
    import gradc
    path = tmp_path / "bom.ad"
    path.write_bytes(b"\xef\xbb\xbffn f(x: f64) -> f64 { return x * 2.0 }\n")
    assert gradc.compile(path, target="reference").f(1.5) == 3.0


# ---- inlined calls


def test_error_in_the_prelude_names_the_call_site():
    from gradc.frontend.diagnostics import PRELUDE
    src = b"fn model(z: f32[4, 3], y: f32[4]) -> f32 {\n    return cross_entropy(z, y)\n}\n"
    with pytest.raises(CompileError) as info:
        compile_front(src)
    err = info.value
    assert err.loc.file == PRELUDE
    (note,) = [n for n in err.notes if isinstance(n, tuple)]
    assert note[0] == "in the call of cross_entropy here" and (note[1].line, note[1].col) == (2, 12)
    text = err.render({"m.ad": src.decode()})
    assert "log_softmax(z, axis=-1)" in text and "    return cross_entropy(z, y)" in text


# ---- gradc's own failures


def _boom(*args, **kwargs):
    raise KeyError("deliberate")


def test_internal_error_from_the_api(monkeypatch):
    import gradc
    from gradc import api
    monkeypatch.setattr(api, "optimize", _boom)
    with pytest.raises(gradc.InternalError, match="internal compiler error: KeyError") as info:
        gradc.compile("fn f(x: f64) -> f64 { return x }", target="reference")
    assert api.VERSION in str(info.value) and not isinstance(info.value, CompileError)


def test_internal_error_from_the_command_line(monkeypatch, tmp_path, capsys):
    from gradc import cli
    from gradc.compiler import pipeline
    monkeypatch.setattr(pipeline, "optimize", _boom)
    (tmp_path / "ok.ad").write_text("fn f(x: f64) -> f64 { return x }\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["build", "ok.ad", "--emit", "opt-ir"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradc: internal compiler error: KeyError")
    assert "`gradc build ok.ad --emit opt-ir`" in err and "the file ok.ad" in err and "Traceback" not in err


def test_usage_error_exits_with_1(capsys):
    from gradc import cli
    with pytest.raises(SystemExit) as info:
        cli.main(["build"])
    assert info.value.code == 1


@pytest.mark.parametrize("expr, says", [
    ("x @ y", "cannot multiply f32[3] by f32[4]"),
    ("x @ m", "cannot multiply f32[3] by f32[4, 2]"),
    ("m @ x", "cannot multiply f32[4, 2] by f32[3]"),
    ("transpose(x, (1, 0))", "axes (1, 0) do not fit f32[3]"),
])
def test_shapes_in_messages_as_written(expr, says):
    src = f"fn f(x: f32[3], y: f32[4], m: f32[4, 2]) -> f32 {{ return sum({expr}) }}"
    with pytest.raises(CompileError, match=re.escape(says)):
        compile_front(src.encode())


def test_positional_argument_after_a_keyword_argument():
    with pytest.raises(CompileError, match="positional argument after a keyword argument") as info:
        compile_front(b"fn f(x: f64[2, 3]) -> f64[3] {\n    return sum(axis=0, x)\n}\n")
    assert (info.value.loc.line, info.value.loc.col) == (2, 24)
