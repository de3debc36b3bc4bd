"""Token-level and byte-level mutations of .ad sources (the samples, the lit tests, generated programs)."""
from __future__ import annotations

import random
from pathlib import Path

from .shrink import TOKEN

ROOT = Path(__file__).resolve().parents[2]

# what a token may become: the language's keywords, operators, builtins, and edge values
VOCAB = ("fn let return and or not true false ( ) [ ] { } , ; : = -> + - * / ** @ < <= > >= == != "
         "f32 f64 i32 i64 bool N M _ x y grad value_and_grad vjp jvp wrt detach hook sum mean max min "
         "logsumexp softmax log_softmax reshape transpose broadcast_to concat cast one_hot zeros ones "
         "where clamp minimum maximum exp log sqrt sin tanh sigmoid softplus relu abs sign axis keepdims "
         "dtype mse cross_entropy bce_with_logits binary_cross_entropy 0 1 -1 2 0.5 1e308 1e-320 "
         "2147483648 9223372036854775808 99999999999999999999 0.0 1e400 . :: ... \n # \\").split(" ")
VOCAB = tuple(v if v else " " for v in VOCAB) + ("\n",)


# inputs that stress a compiler's limits rather than its grammar: deep nesting, long programs,
# constant folding that overflows or divides by zero, huge literals, odd files
HOSTILE = ("(" * 3000 + "x" + ")" * 3000, "-" * 3000 + "x", "x" + " + x" * 20000,
           "0 ** -1", "2 ** 100000", "1" * 5000, "0.0 ** -1.5", "1e999 - 1e999", "[" * 2000 + "]" * 2000,
           "\n" + "let a = 1\n" * 5000, "", "# only a comment\n", "return x\nlet q = 1",
           "sum(x, axis=0, axis=1)", "\t\x0c\r\n", "x[2147483648]", "x[-9223372036854775809]",
           "grad(" * 500 + "f" + ")" * 500)


def corpus() -> list[str]:
    """The sources mutations start from: every sample and every lit test (as text; a lit test
    of a file that is not UTF-8 keeps its bad bytes as U+FFFD: byte mutations add their own)."""
    files = sorted((ROOT / "samples").glob("*.ad")) + sorted((ROOT / "tests" / "lit").glob("*.ad"))
    return [f.read_bytes().decode("utf-8", "replace") for f in files]


def mutate_tokens(src: str, rng: random.Random, n: int) -> str:
    toks = TOKEN.findall(src)
    for _ in range(n):
        if not toks:
            toks = [rng.choice(VOCAB)]
        i = rng.randrange(len(toks))
        r = rng.randrange(8)
        if r == 0:
            del toks[i]
        elif r == 1:
            toks.insert(i, rng.choice(VOCAB))
        elif r == 2:
            toks[i] = rng.choice(VOCAB)
        elif r == 3:
            toks[i] = rng.choice(toks)                 # a token from the same file
        elif r == 4 and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif r == 5:                                   # duplicate a span
            j = min(len(toks), i + rng.randint(1, 12))
            toks[i:i] = toks[i:j]
        elif r == 6:                                   # delete a span
            del toks[i:i + rng.randint(1, 12)]
        else:                                          # wrap a span in brackets, maybe deeply
            j = min(len(toks), i + rng.randint(1, 6))
            k = rng.choice([1, 1, 2, 5, 50])
            o, c = rng.choice([("(", ")"), ("[", "]"), ("{", "}"), ("grad(", ")")])
            toks[i:j] = [o] * k + toks[i:j] + [c] * k
    return "".join(toks)


def mutate_bytes(data: bytes, rng: random.Random, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        if not b:
            b = bytearray(b"\n")
        i = rng.randrange(len(b))
        r = rng.randrange(6)
        if r == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif r == 1:
            b.insert(i, rng.randrange(256))
        elif r == 2:
            del b[i:i + rng.randint(1, 8)]
        elif r == 3:
            j = min(len(b), i + rng.randint(1, 16))
            b[i:i] = b[i:j]
        elif r == 4:
            b[i:i] = rng.choice([b"\xff", b"\xc3", b"\x00", b"\r", b"\t", "é".encode(), b"\xe2\x80\xa8"])
        else:
            b[i] = rng.choice(b"(){}[],;:=+-*/@<>#\n 0123456789.eE_")
    return bytes(b)


def mutate(src: str, rng: random.Random, mode: str):
    """A mutant of src: mode "tokens" gives text, "bytes" gives bytes (maybe not UTF-8),
    "hostile" gives text with one of HOSTILE spliced in (or alone)."""
    n = rng.choice([1, 1, 1, 2, 2, 3, 4, 8])
    if mode == "hostile":
        h = rng.choice(HOSTILE)
        if rng.random() < 0.2:
            return h
        toks = TOKEN.findall(src)
        atoms = [i for i, t in enumerate(toks) if t[:1].isalnum() and t not in VOCAB[:8]]
        if atoms and rng.random() < 0.6:            # in place of a name or a number: it parses
            i = rng.choice(atoms)
            return "".join(toks[:i]) + "(" + h + ")" + "".join(toks[i + 1:])
        i = rng.randrange(len(toks) + 1)
        return "".join(toks[:i]) + h + "".join(toks[i + rng.choice([0, 1]):])
    if mode == "tokens":
        return mutate_tokens(src, rng, n)
    return mutate_bytes(src.encode(), rng, n)
