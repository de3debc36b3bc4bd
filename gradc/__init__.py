"""gradc: compile .ad programs and their derivatives, and call them on NumPy arrays."""
from .api import GradcWarning, compile
from .frontend.diagnostics import CompileError

__version__ = "0.1.0"
__all__ = ["compile", "CompileError", "GradcWarning", "__version__"]
