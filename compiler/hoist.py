"""Products out of loops: per-row products become one product over all the rows.

A `for` loop that reads row t of a captured array X (`xs[t]`) and multiplies it by a
loop-invariant matrix runs T small products of B rows each. When the loop visits every row of X
in order, the product of all the rows, one gemm of T*B rows before the loop, has the same rows:
the body then reads row t of it (the forward pass of a recurrent network: `xs[t] @ U`).

A reverse loop accumulates the gradient of such a matrix, `dU = dU + xs[t]^T @ g_t`, one small
product per step with a pass over dU each time. When dU is read nowhere else in the body, the loop
instead stacks the rows g_t as one more stacked result, and the sum over the steps is one product
after the loop that contracts the steps and the rows together (`xs^T @ G` over T*B rows).
Likewise a carried array that gets one row added a step (the cotangent of `xs`: row t of it,
added into an array of xs's shape, a pass over that array each step) becomes the stack of the rows.

A row is "aligned" when iteration t reads row t - start of an array with exactly stop - start
rows: an index t of a loop from 0 to that array's leading dimension, or t - start of a stack that
a loop with the same bounds produced. Only aligned rows are hoisted, so no row is computed that
the loop would not read and the stacked rows pair with the array's rows one to one.
"""
from __future__ import annotations

from dataclasses import replace

from .builder import Emitter, fresh
from .control import result_types
from .ir import Graph, Node, use_counts
from .ops_nn import PLAIN, mkn_of


def hoist_products(g: Graph) -> Graph:
    """g with the aligned per-row products of its loops run before or after them."""
    if not any(n.op == "for" for n in g.nodes):
        return g
    made = {n.out: n for n in g.nodes}
    out = Emitter()
    env = {}
    for n in g.nodes:
        if n.out in env:            # an item of a loop rewritten above
            continue
        ins = tuple(env.get(i, i) for i in n.ins)
        if n.op == "for" and not n.attr("checkpoint"):
            done = _hoist(out, replace(n, ins=ins), made, g)
            if done is not None:
                env.update(done)
                continue
        out.nodes.append(replace(n, ins=ins))
    return replace(g, nodes=tuple(out.nodes), outputs=tuple(env.get(o, o) for o in g.outputs))


def _rows_of_loop(start, stop, made) -> set:
    """The leading dims of the arrays whose row t a loop from start to stop reads for every t in
    order: a loop from 0 to the leading dim of some array (or to a constant)."""
    s = made.get(start)
    from_zero = s is not None and s.op == "const" and s.attr("value") == 0 and not s.attr("shape")
    p = made.get(stop)
    dims = set()
    if from_zero and p is not None and p.op == "numel" and tuple(p.attr("axes")) == (0,):
        dims.add(p.ins[0].shape[0])
    if from_zero and p is not None and p.op == "const" and not p.attr("shape"):
        dims.add(int(p.attr("value")))
    return dims


def _hoist(out: Emitter, n: Node, made: dict, g: Graph):
    kw = n.kw
    body, n_caps = kw["body"], kw["n_caps"]
    start, stop = n.ins[:2]
    nc = len(n.ins) - 2 - n_caps
    t = body.params[0]
    caps = dict(zip(body.params[1 + nc:], n.ins[2 + nc:]))
    dims = _rows_of_loop(start, stop, made)
    stacks = {m.attr("trip") for m in g.nodes if m.op == "for" and m.ins[:2] == (start, stop)}
    inner = {m.out: m for m in body.nodes}

    def aligned(idx, rows) -> bool:
        """Whether index idx is t - start at every iteration of a loop of `rows` steps."""
        m = inner.get(idx)
        while m is not None and m.op == "check_range":
            idx, m = m.ins[0], inner.get(m.ins[0])
        if idx is t:
            return rows in dims
        return m is not None and m.op == "sub" and m.ins[0] is t and caps.get(m.ins[1]) is start \
            and rows in stacks

    def aligned_row(v):
        """(the captured array, the slice) where v is an aligned row of a captured array, else None."""
        m = inner.get(v)
        if m is None or m.op != "dyn_slice" or m.attr("axis") != 0 or m.attr("keep"):
            return None
        x = caps.get(m.ins[0])
        return (x, m) if x is not None and aligned(m.ins[1], x.shape[0]) else None

    uses = use_counts(body)

    new_caps, repl = [], {}
    # products of an aligned row by a captured matrix: one product before the loop
    for m in body.nodes:
        if m.op != "matmul":
            continue
        r = aligned_row(m.ins[0])
        w = caps.get(m.ins[1])
        nm, nk, nn = mkn_of(m)
        if r is None or w is None or len(m.ins[0].shape) != nm + nk or len(w.shape) != nk + nn:
            continue
        x, sl = r
        out.loc = m.loc
        whole = out.matmul(x, w, mkn=(nm + 1, nk, nn))
        p = fresh(whole.shape, whole.dtype)
        new_caps.append((p, whole))
        repl[m.out] = Node("dyn_slice", (p, sl.ins[1]), m.out, sl.attrs, m.loc)
    # accumulated products of two aligned rows, or of one and a value of the step: after the loop
    acc = []
    for k in range(0 if kw["saves"] else nc):     # stacked states come last: leave those loops be
        a, o = body.params[1 + k], body.outputs[k]
        add = inner.get(o)
        if add is None or add.op != "add" or uses.get(a) != 1 or a not in add.ins or o in body.outputs[nc:]:
            continue
        c = add.ins[1] if add.ins[0] is a else add.ins[0]
        pm = inner.get(c)
        if pm is None or pm.op != "matmul" or mkn_of(pm) != PLAIN or c.shape != a.shape or \
                any(len(v.shape) != 2 for v in pm.ins):
            continue
        tr = inner.get(pm.ins[0])
        if tr is None or tr.op != "transpose" or tuple(tr.attr("perm")) != (1, 0):
            continue
        left, right = aligned_row(tr.ins[0]), aligned_row(pm.ins[1])
        if left is None and right is None:
            continue
        acc.append((k, tr.ins[0], left, pm.ins[1], right))
    # rows added into a carried array, one row a step (the cotangent of xs[t]): stacked instead
    rows_acc = []
    for k in range(0 if kw["saves"] else nc):
        a, o = body.params[1 + k], body.outputs[k]
        add = inner.get(o)
        if add is None or add.op != "add" or uses.get(a) != 1 or a not in add.ins or o in body.outputs[nc:]:
            continue
        u = inner.get(add.ins[1] if add.ins[0] is a else add.ins[0])
        if u is None or u.op != "dyn_unslice" or u.attr("axis") != 0 or u.attr("keep") or \
                u.out.shape != a.shape or not aligned(u.ins[1], a.shape[0]):
            continue
        rows_acc.append((k, u.ins[0]))
    if not new_caps and not acc and not rows_acc:
        return None

    # the new body: replaced products, the accumulators carried unchanged, the stacked rows
    stacked = []                    # body values stacked as new results, in order
    for _, lv, left, rv, right in acc:
        for v, row in ((lv, left), (rv, right)):
            if row is None and v not in stacked:
                stacked.append(v)
    for _, v in rows_acc:
        if v not in stacked:
            stacked.append(v)
    nodes = tuple(repl.get(m.out, m) for m in body.nodes)
    outputs = list(body.outputs)
    for k in [a[0] for a in acc] + [r[0] for r in rows_acc]:
        outputs[k] = body.params[1 + k]
    ny = len(body.outputs) - nc
    outputs += stacked
    params = body.params + tuple(p for p, _ in new_caps)
    names = body.param_names + tuple(f"hoisted{i}" for i in range(len(new_caps))) if body.param_names else ()
    from .passes.dce import dce
    nb = dce(replace(body, params=params, nodes=nodes, outputs=tuple(outputs), param_names=names))
    attrs = dict(kw, body=nb, n_caps=n_caps + len(new_caps))
    loop = Node("for", n.ins + tuple(w for _, w in new_caps), fresh((), "tuple"),
                tuple(sorted(attrs.items(), key=lambda kv: kv[0])), n.loc)
    out.nodes.append(loop)
    types = result_types(loop)
    parts = []
    for i, (shape, dtype) in enumerate(types):
        parts.append(out.emit("item", loop.out, index=i, shape=tuple(shape), dtype=dtype))
    # the old items: each part of the old loop is the same part of the new one
    env = {}
    old_items = [m for m in made.values() if m.op == "item" and m.ins[0] is n.out]
    for m in old_items:
        env[m.out] = parts[m.attr("index")]
    # the accumulated sums: init + the contraction over (steps, rows) of both operands
    stack_of = {v: parts[nc + ny + j] for j, v in enumerate(stacked)}
    for k, lv, left, rv, right in acc:
        opnds = []
        for v, row in ((lv, left), (rv, right)):
            if row is not None:
                opnds.append(row[0])
            else:
                like = left[0] if left is not None else right[0]
                s = stack_of[v]
                opnds.append(out.as_shape(s, like, shape=(like.shape[0],) + s.shape[1:]))
        out.loc = n.loc
        if opnds[1].shape[0] != opnds[0].shape[0]:
            opnds[1] = out.as_shape(opnds[1], opnds[0], shape=opnds[0].shape[:1] + opnds[1].shape[1:])
        lhs = out.transpose(opnds[0], perm=(2, 0, 1))
        total = out.add(n.ins[2 + k], out.matmul(lhs, opnds[1], mkn=(1, 2, 1)))
        for m in old_items:
            if m.attr("index") == k:
                env[m.out] = total
    for k, v in rows_acc:
        init = n.ins[2 + k]
        total = out.add(init, out.as_shape(stack_of[v], init, shape=init.shape))
        for m in old_items:
            if m.attr("index") == k:
                env[m.out] = total
    out.loc = None
    return env
