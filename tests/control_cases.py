"""Graphs with loops and branches built op by op, for the op tests (test_ops, test_cpu)."""
from gradc.compiler.builder import fresh
from gradc.compiler.control import build, emit_control, new_trip


def recurrence(e, x, w, checkpoint=0, reverse=False):
    """h = tanh(h * w + x[t]) over the rows of x from h = 0.5 * w; returns the last h."""
    t, h, xc, wc = fresh((), "i64"), fresh(w.shape, w.dtype), fresh(x.shape, x.dtype), fresh(w.shape, w.dtype)
    body = build("rec", [t, h, xc, wc], lambda b, t, h, xc, wc: [
        b.tanh(b.add(b.mul(h, wc), b.dyn_slice(xc, t, axis=0, size=1, keep=False)))])
    start = e.const(0, "i64")
    stop = e.numel(x, axes=(0,), dtype="i64")
    h0 = e.mul(w, 0.5)
    res = emit_control(e, "for", [start, stop, h0, x, w], body=body, n_caps=2, trip=new_trip(),
                       reverse=reverse, saves=0, checkpoint=checkpoint)
    return res[0]


def shrink(e, x):
    """x <- 0.8 x + 0.05 sin(x) while sum(x) > 1 (x > 0): a while loop with a float state."""
    s, sc = fresh(x.shape, x.dtype), fresh(x.shape, x.dtype)
    cond = build("cond", [s], lambda b, s: [b.gt(b.sum(s, axes=(0,), keepdims=False), 1.0)])
    body = build("step", [sc], lambda b, s: [b.add(b.mul(s, 0.8), b.mul(b.sin(s), 0.05))])
    res = emit_control(e, "while", [x], cond=cond, body=body, n_caps=0)
    return res[0]


def branch(e, c, x):
    """x * x + c if sum(x) > 0 else sin(x) * c: an if on a value's sign."""
    cc, xc = fresh(c.shape, c.dtype), fresh(x.shape, x.dtype)
    then = build("then", [cc, xc], lambda b, c, x: [b.add(b.mul(x, x), c)])
    orelse = build("else", [fresh(c.shape, c.dtype), fresh(x.shape, x.dtype)],
                   lambda b, c, x: [b.mul(b.sin(x), c)])
    cond = e.gt(e.sum(x, axes=(0,), keepdims=False), 0.0)
    return emit_control(e, "if", [cond, c, x], then=then, orelse=orelse)[0]


def window(e, x):
    """x[1 : 3] and x[:, 2] with run-time starts (dyn_slice), summed into one result."""
    one, two = e.const(1, "i64"), e.const(2, "i64")
    rows = e.dyn_slice(x, one, axis=0, size=2, keep=True)
    col = e.dyn_slice(x, two, axis=1, size=1, keep=False)
    return e.add(e.sum(rows, axes=(0,), keepdims=False), e.sum(e.mul(col, col), axes=(0,), keepdims=False))


def unwindow(e, g):
    """g placed at rows 1..2 of a 4-row array of zeros (dyn_unslice), times itself."""
    one = e.const(1, "i64")
    z = e.dyn_unslice(g, one, axis=0, size=g.shape[0], keep=True, n=4)
    return e.mul(z, z)


def stack_rows(e, x):
    """sin of each row of x in a loop over its rows, the stacked rows read back as x's shape
    (as_shape: the batching fallback's form)."""
    t, xc = fresh((), "i64"), fresh(x.shape, x.dtype)
    body = build("row", [t, xc], lambda b, t, xc: [b.sin(b.dyn_slice(xc, t, axis=0, size=1, keep=False))])
    (rows,) = emit_control(e, "for", [e.const(0, "i64"), e.numel(x, axes=(0,), dtype="i64"), x], body=body,
                           n_caps=1, trip=new_trip(), reverse=False, saves=0, checkpoint=0)
    return e.mul(e.as_shape(rows, shape=x.shape), x)
