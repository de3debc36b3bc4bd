"""The CUDA target's kernel toolchain: kernels built once over a target hook, PTX for NVIDIA GPUs, and a grid simulator.

A Kernel's body generator emits its body through a KernelBuilder; CudaTarget makes it NVPTX IR
(ptx.py turns that into PTX with libdevice), SimTarget a host coroutine that SimModule runs over
a whole grid. docs/cuda.md describes it all.
"""
from .kernel import Buf, Kernel, KernelBuilder, KernelInfo, Param, build_module
from .nvptx import CudaTarget
from .ptx import ARCHS, PTX_VERSION, KernelError, compile_ptx, emit_llvm, emit_ptx, nvptx_ir
from .simtarget import SimTarget
from .simulator import BarrierError, LaunchStats, OutOfBoundsError, SimModule, SimulatorError
from .toolkit import Assembled, PtxasError, ToolkitError, libdevice_path, ptxas, ptxas_path

__all__ = ["ARCHS", "PTX_VERSION", "Assembled", "BarrierError", "Buf", "CudaTarget", "Kernel", "KernelBuilder",
           "KernelError", "KernelInfo", "LaunchStats", "OutOfBoundsError", "Param", "PtxasError", "SimModule",
           "SimTarget", "SimulatorError", "ToolkitError", "build_module", "compile_ptx", "emit_llvm", "emit_ptx",
           "libdevice_path", "nvptx_ir", "ptxas", "ptxas_path"]
