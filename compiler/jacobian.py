"""jacobian and hessian: vmap over a basis of jvp (forward mode) or vjp (reverse mode), one batched pass.

The basis of a shape S is the identity of shape S + S: a batch of one cotangent (or tangent)
per element of S, mapped with one vmap per axis of S, so no dimension is ever a product of
two (the IR names sizes N, N-1, 3, never 3N). Its rows are built at run time where a size is
symbolic: eye(N) compares 0..N-1 with itself, and 0..N-1 is a `for` loop's stacked index.
"""
from __future__ import annotations

import numpy as np

from . import autodiff
from .autodiff import AutodiffError
from .batching import batch_graph
from .builder import Emitter
from .control import emit_control, new_trip
from .ir import FLOATS, Graph
from .ops import numel_of


def _params(g: Graph, wrt_names, what):
    """The parameters wrt names (a let binding is not one: a basis needs a parameter)."""
    params = dict(zip(g.param_names, g.params))
    for name in wrt_names:
        if name not in params and name in dict(g.names):
            raise AutodiffError(f"{what} takes derivatives with respect to parameters, but '{name}' is a "
                                f"let binding of {g.name}", ["use vjp or jvp at an intermediate value"])
    return autodiff.resolve_wrt(g, wrt_names)


def _size(e: Emitter, d, have):
    """Dimension d as an i64 scalar at run time, read from one of the values in have."""
    if isinstance(d, int):
        return e.const(d, "i64")
    for v in have:
        for k, vd in enumerate(v.shape):
            if vd == d:
                return e.numel(v, axes=(k,), dtype="i64")
    raise AutodiffError(f"internal: no value has the dimension {d}")


def _iota(e: Emitter, d, have):
    """0, 1, ..., d - 1 as i64: a literal for a fixed d, a loop's stacked index for a symbolic one."""
    if isinstance(d, int):
        return e.array(np.arange(d, dtype=np.int64), "i64")
    from .builder import fresh
    t = fresh((), "i64")
    body = Graph("iota", (t,), (), (t,), ("i",))
    (rows,) = emit_control(e, "for", [e.const(0, "i64"), _size(e, d, have)], body=body, n_caps=0,
                           trip=new_trip(), reverse=False, saves=0, checkpoint=0)
    return e.as_shape(rows, shape=(d,))


def identity(e: Emitter, shape, dtype, have):
    """The identity of shape + shape: element (i, j) is 1 where i == j (i, j multi-indices)."""
    k = len(shape)
    if k == 0:
        return e.const(1, dtype)
    out = None
    for a, d in enumerate(shape):
        i = _iota(e, d, have)
        eye = e.cast(e.eq(e.reshape(i, shape=(d, 1)), e.reshape(i, shape=(1, d))), dtype=dtype)   # (d, d)
        place = tuple(d if b in (a, k + a) else 1 for b in range(2 * k))
        eye = e.reshape(eye, shape=place) if place != (d, d) else eye
        out = eye if out is None else e.mul(out, eye)
    return e.broadcast_to(out, shape=tuple(shape) * 2) if out.shape != tuple(shape) * 2 else out


def _mapped_over(g: Graph, index, shape):
    """g mapped over param index with one vmap per axis of shape, innermost the last axis."""
    mapped = [i == index for i in range(len(g.params))]
    for d in reversed(shape):
        g, _ = batch_graph(g, mapped, d, force=[True] * len(g.outputs))
    return g


def _move_front(e, v, lead: int, rank: int):
    """v of shape A + B (len(A) == lead) as B + A."""
    if lead == 0 or lead == rank:
        return v
    return e.transpose(v, perm=tuple(range(lead, rank)) + tuple(range(lead)))


def _prefer_forward(ins, out) -> bool:
    """Forward mode when f has more outputs than inputs (compared where the sizes allow)."""
    (ki, si), (ko, so) = ins, out
    if si == so:
        return ko > ki
    return set(si) < set(so)


def jacobian(g: Graph, wrt_names, name, mode="", warn=print) -> Graph:
    """The Jacobian of g's one output wrt params: f's output shape, then each param's."""
    wrt = _params(g, wrt_names, "jacobian")
    outs = [o for o in g.outputs]
    if len(outs) != 1 or outs[0].dtype not in FLOATS:
        got = ", ".join(o.type for o in outs)
        raise AutodiffError(f"jacobian needs a function of one floating-point output, but {g.name} returns {got}",
                            ["take the jacobian of a function returning one of them"])
    y = outs[0]
    if not mode:
        size_in = numel_of(tuple(d for w in wrt for d in w.shape))
        mode = "forward" if _prefer_forward(size_in, numel_of(y.shape)) else "reverse"
    e = Emitter(g.nodes)
    have = list(g.params) + [y]
    if mode == "reverse":
        v = autodiff.vjp(g, wrt_names, name, warn)
        vb = _mapped_over(v, len(g.params), y.shape)
        basis = identity(e, y.shape, y.dtype, have)
        jac = list(e.call(vb, *g.params, basis))                # each y.shape + w.shape
    else:
        jac = []
        t = autodiff.jvp(g, wrt_names, name, warn)
        for j, w in enumerate(wrt):
            # the tangent of w ranges over its basis; the other tangents are zero
            tb = _mapped_over(t, len(g.params) + j, w.shape)
            tans = [identity(e, w.shape, w.dtype, have) if i == j else e.zeros_like(x)
                    for i, x in enumerate(wrt)]
            (_, ty) = e.call(tb, *g.params, *tans)              # w.shape + y.shape
            jac.append(_move_front(e, ty, len(w.shape), len(ty.shape)))
    return Graph(name, g.params, tuple(e.nodes), tuple(jac), g.param_names, g.names, len(wrt) > 1)


def hessian(g: Graph, wrt_names, name, mode="", warn=print) -> Graph:
    """The Hessian of g's scalar output wrt params, forward over reverse: block (a, b) has the
    shape of a then that of b; several wrt give the blocks row by row."""
    wrt = _params(g, wrt_names, "hessian")
    if len(g.outputs) != 1 or g.outputs[0].shape != () or g.outputs[0].dtype not in FLOATS:
        got = ", ".join(o.type for o in g.outputs)
        raise AutodiffError(f"hessian needs a scalar floating-point output, but {g.name} returns {got}",
                            ["reduce the output with sum or mean, or take jacobian(jacobian(f))"])
    gr = autodiff.grad(g, wrt_names, name, False, warn)
    e = Emitter(g.nodes)
    have = list(g.params)
    blocks = [[None] * len(wrt) for _ in wrt]
    for j, w in enumerate(wrt):
        try:
            t = autodiff.jvp(gr, (wrt_names[j],), name, warn=lambda m: None)
        except AutodiffError:          # the gradient does not depend on w: its blocks are zero
            for i, x in enumerate(wrt):
                blocks[i][j] = e.const(0, x.dtype, x.shape + w.shape)
            continue
        tb = _mapped_over(t, len(g.params), w.shape)
        res = e.call(tb, *g.params, identity(e, w.shape, w.dtype, have))
        for i, ti in enumerate(res[len(gr.outputs):]):          # w.shape + wrt[i].shape
            blocks[i][j] = _move_front(e, ti, len(w.shape), len(ti.shape))
    flat = [b for row in blocks for b in row]
    return Graph(name, g.params, tuple(e.nodes), tuple(flat), g.param_names, g.names, len(flat) > 1)
