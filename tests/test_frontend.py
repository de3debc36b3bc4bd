"""The parser and the robustness of the whole frontend on malformed programs."""
import random
from pathlib import Path

import pytest

from gradc.compiler.pipeline import lower, optimize
from gradc.frontend import ast as A
from gradc.frontend.diagnostics import CompileError
from gradc.frontend.parse import parse

SAMPLES = sorted((Path(__file__).parent.parent / "samples").glob("*.ad"))


def test_statements_end_at_newline_or_semicolon_and_brackets_join_lines():
    p = parse("fn f(x: f32) -> (f32, f32) {\n  let a = (x +\n     1); let b = [1,\n 2]\n  return a, sum(b)\n}\n")
    f = p.items[0]
    assert [type(s).__name__ for s in f.body] == ["Let", "Let", "Return"]
    assert f.ret_tuple and len(f.ret) == 2


def test_precedence():
    e = parse("let y = -a ** 2 * b + c @ d < 3 and not e or f").items[0].value
    assert isinstance(e, A.BinOp) and e.op == "or"
    cmp = e.left.left
    assert cmp.op == "<" and cmp.left.op == "+"
    neg = cmp.left.left.left
    assert isinstance(neg, A.UnOp) and neg.operand.op == "**"


def test_positions_are_one_based_line_and_column():
    e = parse("\n\nlet y = foo(bar)").items[0].value
    assert (e.loc.line, e.loc.col) == (3, 9)
    assert (e.args[0].loc.line, e.args[0].loc.col) == (3, 13)


def test_slices_and_keyword_arguments():
    e = parse("let y = x[1:, :-1, ::2, 0]").items[0].value
    assert [type(s).__name__ for s in e.subs] == ["Slice", "Slice", "Slice", "Num"]
    c = parse("let g = grad(f, wrt=(a, b))").items[0].value
    assert c.kwargs[0][0] == "wrt" and isinstance(c.kwargs[0][1], A.Tuple)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_samples_never_crash(seed):
    """Random edits of the samples either compile or give a CompileError with a position."""
    rnd = random.Random(seed)
    sources = [p.read_text() for p in SAMPLES]
    pieces = ["(", ")", "[", "]", ",", "+", "*", "@", "**", "x", "0", "-1", "\n", ";", "let", "return",
              "sum(", "grad(", "wrt=", "axis=", "f32[N]", "{", "}", ":", "=", "detach(", "x[1:]", "true"]
    for _ in range(150):
        s = rnd.choice(sources)
        for _ in range(rnd.randint(1, 3)):
            k = rnd.randrange(len(s) + 1)
            s = s[:k] + rnd.choice(pieces) + s[k:] if rnd.random() < 0.5 else s[:k] + s[k + rnd.randint(1, 6):]
        try:
            for g in lower(s, "m.ad").graphs.values():
                optimize(g)
        except CompileError as ex:
            assert ex.loc is None or ex.loc.line >= 1
