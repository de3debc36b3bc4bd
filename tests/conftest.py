"""Shared helpers for the tests."""
import numpy as np
import pytest


def fd_grad(f, args, i, step=1e-6):
    """Central finite differences of a scalar f(*args) with respect to args[i], in float64."""
    x = np.array(args[i], dtype=np.float64)
    out = np.zeros_like(x)
    for k in np.ndindex(x.shape) if x.shape else [()]:
        vals = []
        for s in (1, -1):
            xx = x.copy()
            xx[k] += s * step
            vals.append(float(f(*args[:i], xx, *args[i + 1:])))
        out[k] = (vals[0] - vals[1]) / (2 * step)
    return out


def with_iree(targets):
    """targets and, where the extra `mlir` is installed, iree (its tests skip cleanly without it)."""
    from gradc.api import target_available
    return tuple(targets) + (("iree",) if target_available("iree")[0] else ())


def compile_error(src):
    """The CompileError that compiling src (for the reference target) raises."""
    from gradc.frontend.diagnostics import CompileError
    import gradc
    with pytest.raises(CompileError) as info:
        gradc.compile(src, target="reference", cache=False)
    return info.value


@pytest.fixture
def rng():
    return np.random.default_rng(7)
