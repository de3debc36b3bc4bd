"""MLIR output: optimized graphs as upstream MLIR (func, arith, math, tensor, linalg, scf), and
IREE's compiler run on it for the iree target."""
from .emit import emit_module  # noqa: F401
from .text import Unsupported

IREE_FLAGS = ("--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
              "--iree-llvmcpu-target-cpu=host",
              # f64 stays f64 (IREE demotes it by default), and executables link as system
              # libraries: f64 math (tanh, erf, ...) calls the C library, as NumPy's does
              "--iree-input-demote-f64-to-f32=false", "--iree-llvmcpu-link-embedded=false")


def verify(text: str) -> None:
    """Parse and verify MLIR text with IREE's MLIR bindings; ValueError with the diagnostics."""
    from iree.compiler import ir
    with ir.Context():
        try:
            module = ir.Module.parse(text)
        except Exception as ex:         # MLIRError: the parser's and verifier's diagnostics
            raise ValueError(str(ex)) from None
        if not module.operation.verify():
            raise ValueError("the module does not verify")


def compile_vmfb(text: str) -> bytes:
    """An IREE module (vmfb) for the host CPU from MLIR text; Unsupported, at the source position
    IREE names, for what IREE cannot compile yet (any other failure is gradc's own)."""
    from iree.compiler import tools
    try:
        return tools.compile_str(text, extra_args=list(IREE_FLAGS))
    except tools.CompilerToolError as ex:
        refused = refusal(str(ex))
        if refused is None:
            raise
        raise refused from None


# what IREE cannot compile yet: (a phrase of its diagnostic, what gradc says)
LIMITS = [
    ("dynamic dimensions must have been resolved",
     "the iree target cannot yet run this loop: IREE {version} loses the sizes of the "
     "values of symbolic size it carries"),
]


def refusal(diagnostics: str):
    """The Unsupported error for IREE diagnostics that show a known limit, else None."""
    import re
    from importlib.metadata import version
    from ....vocab import Loc
    for phrase, message in LIMITS:
        if phrase in diagnostics:
            at = re.search(r'^(?:\s*)([^\s<>:][^:\n]*\.ad):(\d+):(\d+): error', diagnostics, re.M)
            loc = Loc(at.group(1), int(at.group(2)), int(at.group(3))) if at else None
            return Unsupported(message.format(version=version("iree-base-compiler")), loc,
                               ["target cpu runs it; docs/mlir.md lists what iree cannot run yet"])
    return None
