"""The same workloads written for the peers: NumPy by hand, PyTorch, torch.compile, JAX, PyTensor."""
from __future__ import annotations

import numpy as np


# ---- NumPy with hand-written gradients

def numpy_w1(x, y):
    return x * y + y * y, y, x + 2 * y


def numpy_w2(x):
    x2 = x * x
    e = np.exp(-np.sin(x2))
    return e.sum(), e * (-np.cos(x2)) * (2 * x)


def numpy_w3(w, b, X, y):
    z = X @ w + b
    loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    g = (1 / (1 + np.exp(-z)) - y) / z.shape[0]
    return loss, X.T @ g, g.sum()


def numpy_w4(W1, b1, W2, b2, X, Y):
    h = np.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1, keepdims=True)) + m
    n = X.shape[0]
    loss = -np.sum(Y * (z - lse)) / n
    dz = (np.exp(z - lse) * Y.sum(axis=1, keepdims=True) - Y) / n
    dh = (dz @ W2.T) * (1 - h * h)
    return loss, X.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)


def numpy_w5(x, t):
    a, b = x[:-1], x[1:]
    ta, tb = t[:-1], t[1:]
    hv = np.zeros_like(x)
    hv[:-1] = (1200 * a * a - 400 * b + 2) * ta - 400 * a * tb
    hv[1:] += -400 * a * ta + 200 * tb
    return hv


# ---- PyTorch

def torch_fns(torch):
    F = torch.nn.functional

    def w1(x, y):
        return x * y + y ** 2

    def w2(x):
        return torch.sum(1 / torch.exp(torch.sin(x ** 2)))

    def w3(w, b, X, y):
        return F.binary_cross_entropy_with_logits(X @ w + b, y)

    def w4(W1, b1, W2, b2, X, Y):
        h = torch.tanh(X @ W1 + b1)
        return F.cross_entropy(h @ W2 + b2, Y)

    def w5(x):
        return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    return {"W1": (w1, 2), "W2": (w2, 1), "W3": (w3, 2), "W4": (w4, 4), "W5": (w5, 1)}


def torch_eager(torch, name, args):
    """value and gradients of the first k arguments, as a user of autograd writes it."""
    f, k = torch_fns(torch)[name]
    if name == "W5":
        x, t = args

        def hvp():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(f(xx), xx, create_graph=True)
            (hv,) = torch.autograd.grad(g, xx, t)
            return hv
        return hvp

    def call():
        leaves = [a.detach().requires_grad_(True) for a in args[:k]]
        loss = f(*leaves, *args[k:])
        return (loss.detach(),) + torch.autograd.grad(loss, leaves)
    return call


def torch_compiled(torch, name, args):
    f, k = torch_fns(torch)[name]
    from torch.func import grad, grad_and_value, jvp
    if name == "W5":
        cf = torch.compile(lambda x, t: jvp(grad(f), (x,), (t,))[1])
        return lambda: cf(*args)
    cf = torch.compile(grad_and_value(f, argnums=tuple(range(k))))
    return lambda: cf(*args)


# ---- JAX

def jax_fn(jax, name, args):
    jnp = jax.numpy

    def w3(w, b, X, y):
        z = X @ w + b
        return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))

    def w4(W1, b1, W2, b2, X, Y):
        h = jnp.tanh(X @ W1 + b1)
        return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(h @ W2 + b2, axis=-1), axis=-1))

    def rosen(x):
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    fns = {"W1": (lambda x, y: x * y + y ** 2, 2), "W2": (lambda x: jnp.sum(1 / jnp.exp(jnp.sin(x ** 2))), 1),
           "W3": (w3, 2), "W4": (w4, 4)}
    if name == "W5":
        f = jax.jit(lambda x, t: jax.jvp(jax.grad(rosen), (x,), (t,))[1])
    else:
        fn, k = fns[name]
        f = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(k))))
    return lambda: jax.block_until_ready(f(*args))


# ---- PyTensor

def pytensor_fn(name, args):
    import pytensor
    import pytensor.tensor as pt
    syms = [pt.tensor(dtype=str(np.asarray(a).dtype), shape=(None,) * np.ndim(a)) for a in args]
    if name == "W1":
        x, y = syms
        loss, k = x * y + y ** 2, 2
    elif name == "W2":
        (x,) = syms
        loss, k = pt.sum(1 / pt.exp(pt.sin(x ** 2))), 1
    elif name == "W3":
        w, b, X, y = syms
        z = X @ w + b
        loss, k = pt.mean(pt.maximum(z, 0) - z * y + pt.log1p(pt.exp(-abs(z)))), 2
    elif name == "W4":
        W1, b1, W2, b2, X, Y = syms
        h = pt.tanh(X @ W1 + b1)
        z = h @ W2 + b2
        loss, k = -pt.mean(pt.sum(Y * pt.special.log_softmax(z, axis=-1), axis=-1)), 4
    else:
        x, t = syms
        f = pt.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        g = pytensor.grad(f, x)
        hv = pytensor.grad(pt.sum(g * t), x)
        fn = pytensor.function(syms, [hv])
        return lambda: fn(*args)
    fn = pytensor.function(syms, [loss] + pytensor.grad(loss, syms[:k]))
    return lambda: fn(*args)
