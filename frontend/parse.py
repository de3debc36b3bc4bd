"""Parse .ad source with Lark (LALR) into the located AST."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..vocab import Loc, dim_add
from . import ast as A
from .diagnostics import CompileError

_TOKEN_TEXT = {
    "LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}",
    "COMMA": ",", "COLON": ":", "SEMICOLON": ";", "EQUAL": "=", "MINUS": "-", "PLUS": "+",
    "STAR": "*", "SLASH": "/", "_NL": "newline", "RETURN": "return", "LET": "let", "FN": "fn",
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "MUL_OP": "*, /, //, % or @",
    "ADD_OP": "+ or -", "COMP_OP": "a comparison", "__ANON_0": "->", "DOUBLESTAR": "**",
    "$END": "end of file", "VAR": "var", "FOR": "for", "IN": "in", "WHILE": "while", "IF": "if",
    "ELSE": "else", "CHECKPOINT": "checkpoint", "AUG_OP": "+=, -=, *= or /=", "__ANON_1": "..", "TRUE": "true", "FALSE": "false", "NOT": "not", "AND": "and", "OR": "or",
}


# Python's int() refuses longer digit strings (4,300: sys.get_int_max_str_digits); i64 needs 19
MAX_INT_DIGITS = 4000


class _Brackets:
    """Drops newlines inside ( ) and [ ], so expressions may span lines there."""
    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(depth - 1, 0)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@lru_cache(maxsize=None)
def _parser() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    # cache=True keeps the LALR tables in a temporary file: 50 ms less for every cold start
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                postlex=_Brackets(), cache=True)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):          # deep trees: Python's stack ends near 1,000 frames
    def __init__(self, file):
        super().__init__()
        self.file = file

    def loc(self, meta) -> Loc:
        return Loc(self.file, getattr(meta, "line", 1), getattr(meta, "column", 1))

    def tloc(self, tok: Token) -> Loc:
        return Loc(self.file, tok.line, tok.column)

    def __default__(self, data, children, meta):
        raise CompileError(f"internal: unhandled grammar rule '{data}'", self.loc(meta))

    def start(self, meta, items):
        return A.Program(self.loc(meta), [i for i in items if i is not None])

    def fn_def(self, meta, ch):
        name, *params, ret, body = ch
        params = [p for p in params if p is not None]
        rtypes, rtuple = ret if ret is not None else (None, False)
        return A.FnDef(self.loc(meta), str(name), params, rtypes, rtuple, body)

    def param(self, meta, ch):
        return A.Param(self.loc(meta), str(ch[0]), ch[1])

    def rtype(self, meta, ch):
        return ch, len(ch) > 1

    def type(self, meta, ch):
        name, *dims = ch
        return A.TypeSpec(self.loc(meta), str(name), tuple(d for d in dims if d is not None))

    def dim_int(self, meta, ch):
        return self.dim_size(meta, ch[0])

    def dim_size(self, meta, tok) -> int:
        """A dimension written as a number: an array of more than 2**62 elements exists nowhere."""
        text = str(tok).lstrip("0")
        if len(text) > 18:
            raise CompileError(f"the dimension {str(tok)[:20]}... ({len(str(tok))} digits) is too large",
                               self.loc(meta), ["a dimension is at most 10**18"])
        return int(tok)

    def dim_name(self, meta, ch):
        return str(ch[0])

    def dim_offset(self, meta, ch):          # N-1: a result's dimension derived from a parameter's
        name, op, k = ch
        k = self.dim_size(meta, k)
        return dim_add(str(name), k if str(op) == "+" else -k)

    def block(self, meta, ch):
        return [c for c in ch if c is not None]

    def let_stmt(self, meta, ch):
        names, where = ch[0]
        return A.Let(self.loc(meta), names, ch[1], where)

    let_top = let_stmt

    def target(self, meta, ch):
        return [t if isinstance(t, list) else str(t) for t in ch], self.loc(meta)

    def nested(self, meta, ch):              # (a, (b, c)): a pattern inside a pattern
        return [t if isinstance(t, list) else str(t) for t in ch]

    def var_stmt(self, meta, ch):
        return A.Var(self.loc(meta), str(ch[0]), ch[1])

    def assign_stmt(self, meta, ch):
        return A.Assign(self.loc(meta), str(ch[0]), ch[1])

    def aug_assign(self, meta, ch):
        name, op, value = ch
        return A.Assign(self.loc(meta), str(name), value, str(op)[0])

    def for_stmt(self, meta, ch):
        var, start, stop, ckpt, body = ch
        return A.For(self.loc(meta), str(var), start, stop, body, ckpt)

    def checkpoint(self, meta, ch):
        return ch[0] if ch and ch[0] is not None else True

    def while_stmt(self, meta, ch):
        return A.While(self.loc(meta), ch[0], ch[1])

    def if_stmt(self, meta, ch):
        cond, then, orelse = ch
        if isinstance(orelse, A.If):
            orelse = [orelse]
        return A.If(self.loc(meta), cond, then, orelse or [])

    def return_stmt(self, meta, ch):
        return A.Return(self.loc(meta), list(ch))

    def or_chain(self, meta, ch):
        return self._chain("or", ch)

    def and_chain(self, meta, ch):
        return self._chain("and", ch)

    def _chain(self, op, ch):
        out = ch[0]
        for c in ch[1:]:
            out = A.BinOp(c.loc, op, out, c)
        return out

    def not_(self, meta, ch):
        return A.UnOp(self.loc(meta), "not", ch[0])

    def comparison(self, meta, ch):
        left, op, right = ch
        return A.BinOp(self.tloc(op), str(op), left, right)

    def binop(self, meta, ch):
        left, op, right = ch
        return A.BinOp(self.tloc(op), str(op), left, right)

    def neg(self, meta, ch):
        return A.UnOp(self.loc(meta), "-", ch[0])

    def factor(self, meta, ch):      # unary plus
        return ch[0]

    def pow(self, meta, ch):
        return A.BinOp(self.loc(meta), "**", ch[0], ch[1])

    def call(self, meta, ch):
        func, *args = ch
        args = [a for a in args if a is not None]
        for before, a in zip(args, args[1:]):
            if isinstance(before, tuple) and not isinstance(a, tuple):
                raise CompileError("positional argument after a keyword argument", a.loc)
        pos = [a for a in args if a is not None and not isinstance(a, tuple)]
        kws = [a for a in args if isinstance(a, tuple)]
        return A.Call(func.loc, func, pos, kws)

    def arg(self, meta, ch):
        return ch[0]

    def kwarg(self, meta, ch):
        return (str(ch[0]), ch[1], self.tloc(ch[0]))

    def checkpoint_kwarg(self, meta, ch):     # checkpoint is a keyword (for ... checkpoint)
        return ("checkpoint", ch[0], self.loc(meta))

    def index(self, meta, ch):
        return A.Index(self.loc(meta), ch[0], list(ch[1:]))

    def sub_index(self, meta, ch):
        return ch[0]

    def sub_slice(self, meta, ch):
        start, stop, step = (list(ch) + [None, None, None])[:3]
        return A.Slice(self.loc(meta), start, stop, step)

    def number(self, meta, ch):
        text = str(ch[0])
        if not text.isdigit():
            return A.Num(self.loc(meta), float(text))       # inf beyond the largest f64
        if len(text.lstrip("0")) > MAX_INT_DIGITS:
            raise CompileError(f"integer literal of {len(text)} digits is out of the range of every "
                               "integer type", self.loc(meta))
        return A.Num(self.loc(meta), int(text))

    def name(self, meta, ch):
        return A.Name(self.loc(meta), str(ch[0]))

    def string(self, meta, ch):
        return A.Str(self.loc(meta), str(ch[0])[1:-1])

    def true(self, meta, ch):
        return A.Bool(self.loc(meta), True)

    def false(self, meta, ch):
        return A.Bool(self.loc(meta), False)

    def tuple(self, meta, ch):
        return A.Tuple(self.loc(meta), [c for c in ch if c is not None])

    def list(self, meta, ch):
        return A.List(self.loc(meta), [c for c in ch if c is not None])


def _expected(ex: UnexpectedInput) -> str:
    tokens = set(getattr(ex, "expected", ()))
    if len(tokens) > 1:
        tokens.discard("_NL")         # a newline is accepted almost anywhere; naming it helps nobody
    names = {_TOKEN_TEXT.get(t, t.lower().strip("_")) for t in tokens
             if not t.startswith("__ANON") or t in _TOKEN_TEXT}
    quoted = sorted(n if n.startswith(("a ", "an ")) or " " in n else f"`{n}`" for n in names)
    return ", ".join(quoted)


def parse(text: str, file: str = "<source>") -> A.Program:
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
        return _ToAst(file).transform(tree)
    except VisitError as ex:
        if isinstance(ex.orig_exc, CompileError):
            raise ex.orig_exc from None
        raise
    except UnexpectedCharacters as ex:
        ch = text[ex.pos_in_stream] if ex.pos_in_stream < len(text) else "end of file"
        raise CompileError(f"unexpected character {ch!r}", Loc(file, ex.line, ex.column)) from None
    except UnexpectedToken as ex:
        tok = ex.token
        what = "end of file" if tok.type == "$END" else (
            "end of line" if tok.type == "_NL" else f"`{tok}`")
        line, col = (tok.line, tok.column) if tok.line is not None else (ex.line, ex.column)
        raise CompileError(f"unexpected {what}; expected one of: {_expected(ex)}",
                           Loc(file, line, col)) from None
    except UnexpectedEOF as ex:
        lines = text.splitlines() or [""]
        raise CompileError(f"unexpected end of file; expected one of: {_expected(ex)}",
                           Loc(file, len(lines), len(lines[-1]) + 1)) from None
