"""Vector variants of the libm functions LLVM's libmvec table leaves out (tanh, log1p, expm1).

LLVM maps sin, cos, exp, log, tan and pow to glibc's libmvec by itself (--vector-library);
for these three it needs the vector-function ABI attribute on the scalar declaration, which
names the variants glibc 2.35+ ships (within 4 ulp, like the rest of libmvec).
"""
from __future__ import annotations

import re

FUNCTIONS = ("sin", "cos", "exp", "log", "tan", "tanh", "log1p", "expm1")
# ISA letter of the x86 vector ABI -> (the CPU feature it needs, lanes for f32, lanes for f64)
ISAS = (("b", None, 4, 2), ("d", "+avx2", 8, 4), ("e", "+avx512f", 16, 8))
_DECL = re.compile(r'^declare (float|double) @"?(\w+)"?\((?:float|double)[^)]*\)(.*)$', re.M)


def add_vector_variants(text: str, features: str) -> str:
    """The module text with vector variants attached to its tanh/log1p/expm1 declarations."""
    extra, groups = [], []

    def attach(m):
        ty, name, rest = m.groups()
        base = name[:-1] if ty == "float" and name.endswith("f") else name
        if base not in FUNCTIONS or name != base + ("f" if ty == "float" else ""):
            return m.group(0)
        variants = []
        for isa, feature, n32, n64 in ISAS:
            if feature is not None and feature not in features.split(","):
                continue
            lanes = n32 if ty == "float" else n64
            vname = f"_ZGV{isa}N{lanes}v_{name}"
            variants.append(f"_ZGV_LLVM_N{lanes}v_{name}({vname})")
            extra.append(f"declare <{lanes} x {ty}> @{vname}(<{lanes} x {ty}>)")
        gid = 9000 + len(groups)
        # memory(none): the loop may reorder and vectorize the calls (errno is never read)
        groups.append(f'attributes #{gid} = {{ nounwind willreturn memory(none) '
                      f'"vector-function-abi-variant"="{",".join(variants)}" }}')
        return f"declare {ty} @{name}({ty}) #{gid}"

    text = _DECL.sub(attach, text)
    if not groups:
        return text
    # kept alive until the vectorizer has looked for them, as LLVM's InjectTLIMappings does
    names = [d.split("@")[1].split("(")[0] for d in extra]
    used = (f'@llvm.compiler.used = appending global [{len(names)} x ptr] '
            f'[{", ".join("ptr @" + n for n in names)}], section "llvm.metadata"')
    return text + "\n" + "\n".join(extra + [used] + groups) + "\n"
