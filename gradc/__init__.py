"""gradc: compile .ad programs and their derivatives, and call them on NumPy arrays."""
from .api import VERSION as __version__
from .api import GradcWarning, build, compile, emit, emit_mlir, get_num_threads, load, memory_report, set_num_threads
from .backends import Options, TargetUnavailable
from .frontend.diagnostics import CompileError, InternalError
from .importer import install_import_hook, uninstall_import_hook

install_import_hook()

__all__ = ["compile", "build", "load", "emit", "emit_mlir", "memory_report", "Options", "TargetUnavailable", "install_import_hook", "uninstall_import_hook", "CompileError", "InternalError",
           "GradcWarning", "set_num_threads", "get_num_threads", "__version__"]
