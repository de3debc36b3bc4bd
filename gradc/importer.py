"""The import hook: `import model` finds model.ad on sys.path and compiles it (or takes it from the cache)."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import types


class AdFinder(importlib.abc.MetaPathFinder):
    """Looked up after the normal finders, so a .py module of the same name still wins.

    target: what an imported .ad file is compiled for (install_import_hook(target=...), else
    $GRADC_TARGET, else the default, cpu)."""

    target = None

    def find_spec(self, fullname, path=None, target=None):
        leaf = fullname.rpartition(".")[2]
        for entry in (path if path is not None else sys.path):
            candidate = os.path.join(entry or ".", leaf + ".ad")
            if os.path.isfile(candidate):
                return importlib.util.spec_from_file_location(
                    fullname, candidate, loader=AdLoader(candidate, self.target or os.environ.get("GRADC_TARGET")))
        return None


class AdLoader(importlib.abc.Loader):
    def __init__(self, path, target=None):
        self.path, self.target = path, target

    def create_module(self, spec):
        return None

    def exec_module(self, module: types.ModuleType):
        from .api import compile
        compiled = compile(self.path, target=self.target) if self.target else compile(self.path)
        module.__dict__.update(compiled.records)        # the named tuple types of its structs
        module.__dict__.update(compiled.functions)
        module.gradc_module = compiled
        module.__doc__ = repr(compiled)


_finder = AdFinder()


def install_import_hook(target: str | None = None):
    """Let `import NAME` load NAME.ad, compiled for target (None: $GRADC_TARGET, else cpu); idempotent.
    Each call sets the target anew: a call without one goes back to the default."""
    _finder.target = target
    if _finder not in sys.meta_path:
        sys.meta_path.append(_finder)


def uninstall_import_hook():
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
