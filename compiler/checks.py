"""What a function's arguments must satisfy beyond their types: the size requirements of its ops."""
from __future__ import annotations

from .ir import Graph, dim_parts
from .ops import OPS


def requirements(g: Graph) -> list:
    """The run-time size checks of g, as the Signature stores them (runtime/module.py, `needs`).

    Collected from the lowered graph before optimization, so that no pass can drop one and every
    target checks the same. Each is a dict: error ("IndexError" | "ValueError"), dim (a symbolic
    dim such as "N" or "N-1"), min (the least size it may have) and message (with "{size}" where
    the actual size goes). Also, a value's dimension "N-k" must not come out negative. In
    program order, so the first that fails is the one a call reports; one that an earlier one
    implies is left out.
    """
    params = dict(zip(g.params, g.param_names))
    out, strongest = [], {}         # symbol -> the least size an earlier requirement asks of it

    def add(error, dim, least, message):
        sym, off = dim_parts(dim)
        if sym is not None and sym.startswith("#"):
            return                  # a loop's own trip count: its loop makes it, not the caller
        # N + k >= least always holds for N <= 0, and one implied by an earlier one adds nothing
        if least - off > strongest.get(sym, 0):
            strongest[sym] = least - off
            out.append({"error": error, "dim": dim, "min": least, "message": message})

    for n in _all_nodes(g):
        rule = OPS[n.op].needs
        at = f" at {n.loc}" if n.loc is not None else ""
        for need in (rule(*n.ins, **n.kw) if rule is not None else ()):
            v = need.value
            owner = f"parameter '{params[v]}'" if v in params else "the value"
            if need.message is not None:
                message = need.message.replace("{owner}", owner).replace("{at}", at)
            elif need.error == "IndexError":
                message = (f"{need.what} is out of range for axis {need.axis} of {owner}{at}, "
                           "which has size {size}")
            else:
                message = (f"{need.what} over axis {need.axis} of {owner}{at} needs at least "
                           f"{need.min} element, but the axis has size {{size}} (max, min, "
                           "logsumexp and softmax have no identity on an empty axis)")
            add(need.error, v.shape[need.axis], need.min, message)
        for d in n.out.shape:
            sym, off = dim_parts(d)
            if sym is not None and off < 0:
                add("ValueError", sym, -off, f"a value{at} would have dimension {d} < 0, "
                                             f"as {sym} is {{size}}")
    return out


def _all_nodes(g: Graph):
    """g's nodes and, where a node is a loop or branch, its bodies' nodes after it (a body's
    shapes are written in the same dimensions as the function's)."""
    for n in g.nodes:
        yield n
        for _, v in n.attrs:
            if isinstance(v, Graph):
                yield from _all_nodes(v)
