"""MLIR output: optimized graphs as upstream MLIR (func, arith, math, tensor, linalg, scf)."""
from .emit import Unsupported, emit_module  # noqa: F401
