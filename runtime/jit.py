"""Map object files into this process with llvmlite's MCJIT: the loader where no shared library is."""
from __future__ import annotations

import threading

import llvmlite.binding as llvm

from .libs import _init, _state

_lock = threading.Lock()
_ready = []


def init_llvm():
    _init()
    with _lock:
        if not _ready:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            # MCJIT resolves libm's and libmvec's symbols through LLVM's own library list
            for lib in _state["math"]:
                llvm.load_library_permanently(lib)
            _ready.append(True)


def llvm_host() -> dict:
    """This machine as LLVM describes it: what an artifact's header must match."""
    init_llvm()
    return {"triple": llvm.get_process_triple(), "cpu": llvm.get_host_cpu_name(),
            "features": llvm.get_host_cpu_features().flatten()}


class JitCode:
    """Object files linked in memory; keeps its engine alive while functions use it."""

    kind = "mcjit"

    def __init__(self, objects):
        init_llvm()
        # an engine per object: RuntimeDyld resolved one object's GOT-relative references
        # against another's GOT when they shared one (every object stands alone: cpu.py)
        self.engines = []
        for obj in objects:
            # each engine owns its target machine, so every one gets a fresh one
            tm = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
                cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                reloc="pic", codemodel="jitdefault")
            engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            engine.finalize_object()
            self.engines.append(engine)
        self.n_objects = len(self.engines)

    def global_address(self, name: str) -> int:
        return self._first("get_global_value_address", name)

    def function_address(self, name: str) -> int:
        return self._first("get_function_address", name)

    def _first(self, lookup: str, name: str) -> int:
        """The address in the first engine that defines name, 0 if none does."""
        for engine in self.engines:
            addr = getattr(engine, lookup)(name)
            if addr:
                return addr
        return 0

    def address(self, symbol: str) -> int:
        addr = self.function_address(symbol)
        if not addr:
            raise LookupError(f"symbol {symbol} is missing from the compiled module")
        return addr
