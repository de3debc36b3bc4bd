"""Code generation: optimized graphs to LLVM IR and host object code (cpu.py)."""
from .cpu import Compiled, compile_graphs, emit_asm, emit_llvm, host_cpu

__all__ = ["Compiled", "compile_graphs", "emit_asm", "emit_llvm", "host_cpu"]
