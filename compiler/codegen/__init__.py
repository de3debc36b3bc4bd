"""Code generation, one folder per backend: cpu/ (LLVM machine code for the host) and cuda/ (PTX and
the grid simulator). What both share sits here: the fusion plan (plan.py), the index maps of the
layout ops (layout.py), the typed scalar helpers the ops' lowering rules use (scalar.py) and the
element-level lowering (element.py)."""
from .cpu import Compiled, compile_graphs, emit_asm, emit_llvm, host_cpu

__all__ = ["Compiled", "compile_graphs", "emit_asm", "emit_llvm", "host_cpu"]
