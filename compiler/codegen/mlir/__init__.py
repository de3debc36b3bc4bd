"""MLIR output: optimized graphs as upstream MLIR (func, arith, math, tensor, linalg, scf), and
IREE's compiler run on it for the iree target."""
from .emit import Unsupported, emit_module  # noqa: F401

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
    """An IREE module (vmfb) for the host CPU from MLIR text."""
    from iree.compiler import tools
    return tools.compile_str(text, extra_args=list(IREE_FLAGS))
