"""Vector math for the loop vectorizer: f32 sin, cos and exp inline (mathf32.py), libmvec for the rest.

LLVM maps sin, cos, exp, log, tan and pow to glibc's libmvec by itself (--vector-library);
for tanh, log1p and expm1 it needs the vector-function ABI attribute on the scalar declaration,
which names the variants glibc 2.35+ ships (within 4 ulp, like the rest of libmvec).
"""
from __future__ import annotations

import re

import llvmlite.binding as llvm

from . import mathf32

FUNCTIONS = ("sin", "cos", "exp", "log", "tan", "tanh", "log1p", "expm1")
# ISA letter of the x86 vector ABI -> (the CPU feature it needs, lanes for f32, lanes for f64)
ISAS = (("b", None, 4, 2), ("d", "+avx2", 8, 4), ("e", "+avx512f", 16, 8))
_DECL = re.compile(r'^declare (float|double) @"?(\w+)"?\((?:float|double)[^)]*\)(.*)$', re.M)


def add_vector_variants(text: str, features: str) -> str:
    """The module text with libmvec's vector variants attached to its libm declarations."""
    extra, groups = [], []
    inline = set(re.findall(r"^define internal float @gradc\.(\w+)\(float", text, re.M))

    def attach(m):
        ty, name, rest = m.groups()
        base = name[:-1] if ty == "float" and name.endswith("f") else name
        if ty == "float" and name in mathf32.FUNCTIONS and name in inline:
            return m.group(0)               # the libm call inside gradc.NAME (use_inline_math)
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


_F32_DECL = re.compile(r'^declare float @"?(' + "|".join(mathf32.FUNCTIONS) + r')"?\(float[^)]*\).*\n?', re.M)
_F32_CALL = re.compile(r'@"?(' + "|".join(mathf32.FUNCTIONS) + r')"?\(')
_INTRINSIC = re.compile(r"^declare .*@(llvm\.[\w.]+)\(", re.M)


def use_inline_math(text: str) -> str:
    """The module text with its f32 sin/cos/exp calls going to gradc.NAME, whose vector variants
    are mathf32's code (libmvec's sinf is 4 ulp, and a call: these inline, and share work)."""
    names = set(m.group(1) for m in _F32_DECL.finditer(text))
    if not names:
        return text
    text = _F32_CALL.sub(lambda m: f"@gradc.{m.group(1)}(", _F32_DECL.sub("", text))
    defs, _ = mathf32.definitions(names)
    have = set(_INTRINSIC.findall(text))
    defs = "\n".join(line for line in defs.split("\n") if not (line.startswith("declare ") and
                                                              _INTRINSIC.match(line).group(1) in have))
    return text + "\n" + defs + "\n" + "\n".join(f"declare float @{n}(float)" for n in sorted(names)) + "\n"


def inline_vector_math(mod, pb):
    """After -O3: the vector functions of mathf32 the vectorized loops call, inlined there
    (their sin and cos share one reduction then), and dropped. Until now they were external,
    so that nothing removed them before the vectorizer had called them."""
    found = [f for f in mod.functions if f.name.startswith("gradc.") and f.name.rsplit(".", 1)[-1][:1] == "v"
             and not f.is_declaration]
    if not found:
        return mod
    for f in found:
        f.linkage = "internal"
    pm = llvm.create_new_module_pass_manager()
    pm.add_always_inliner_pass()
    pm.add_instruction_combine_pass()
    pm.add_new_gvn_pass()
    pm.add_simplify_cfg_pass()
    pm.add_global_dead_code_eliminate_pass()
    pm.run(mod, pb)
    return mod
