"""Calls of functions with derivative rules of their own built op by op, for the op tests."""
from gradc.compiler.builder import fresh
from gradc.compiler.control import build, items


def ruled(e, x, y, rules="both"):
    """sin(x) * y with exact rules written out (rules: "both", or "jvp" alone, which reverse mode
    transposes); the function's body is a different but equal formula, so a rule that is not
    used would show."""
    px, py = fresh(x.shape, x.dtype), fresh(y.shape, y.dtype)
    fn = build("f", [px, py], lambda b, x, y: [b.mul(b.sub(b.mul(b.sin(x), 2.0), b.sin(x)), y)])
    out = fn.outputs[0]
    vx, vy, g = fresh(x.shape, x.dtype), fresh(y.shape, y.dtype), fresh(out.shape, out.dtype)
    vjp = build("f.vjp", [vx, vy, g], lambda b, x, y, g: [
        b.sum_to(b.mul(b.mul(g, b.cos(x)), y), x.shape), b.sum_to(b.mul(g, b.sin(x)), y.shape)])
    jx, jy, tx, ty = fresh(x.shape, x.dtype), fresh(y.shape, y.dtype), fresh(x.shape, x.dtype), fresh(y.shape, y.dtype)
    jvp = build("f.jvp", [jx, jy, tx, ty], lambda b, x, y, tx, ty: [
        b.add(b.mul(b.mul(tx, b.cos(x)), y), b.mul(b.sin(x), ty))])
    tup = e.emit("custom", x, y, fn=fn, vjp=vjp if rules == "both" else None, jvp=jvp)
    return items(e, tup, [(out.shape, out.dtype)])[0]


def ruled_jvp(e, x, y):
    return ruled(e, x, y, rules="jvp")
