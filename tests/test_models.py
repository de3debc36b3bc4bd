"""Models built from the vocabulary: a small CNN trained from Python (the loss goes down), its
gradient against central differences in float64, on every target."""
import numpy as np
import pytest

import gradc

CNN = """
fn cnn(x: f64[B, 1, 8, 8], y: f64[B, 2], w1: f64[4, 1, 3, 3], b1: f64[4],
       w2: f64[8, 4, 3, 3], b2: f64[8], W3: f64[32, 2], b3: f64[2]) -> f64 {
    let h1 = max_pool2d(relu(conv2d(x, w1, padding=1) + reshape(b1, (4, 1, 1))), kernel=2)
    let h2 = max_pool2d(relu(conv2d(h1, w2, padding=1) + reshape(b2, (8, 1, 1))), kernel=2)
    return cross_entropy(reshape(h2, (B, 32)) @ W3 + b3, y)
}
let step = value_and_grad(cnn, wrt=(w1, b1, w2, b2, W3, b3))
"""


def data(rng, b=8):
    """Images whose class is which half is brighter."""
    labels = rng.integers(0, 2, b)
    x = rng.normal(scale=0.3, size=(b, 1, 8, 8))
    x[labels == 0, :, :, :4] += 1.0
    x[labels == 1, :, :, 4:] += 1.0
    return x, np.eye(2)[labels]


def weights(rng):
    return [rng.normal(scale=0.4, size=(4, 1, 3, 3)), np.zeros(4), rng.normal(scale=0.2, size=(8, 4, 3, 3)),
            np.zeros(8), rng.normal(scale=0.2, size=(32, 2)), np.zeros(2)]


@pytest.fixture(scope="module", params=["cpu", "reference", "cuda-sim"])
def model(request):
    return gradc.compile(CNN, target=request.param)


def test_training_lowers_the_loss(model):
    rng = np.random.default_rng(5)
    x, y = data(rng)
    ws = weights(rng)
    losses = []
    for _ in range(15):
        loss, *grads = model.step(x, y, *ws)
        losses.append(float(loss))
        ws = [w - 0.5 * g for w, g in zip(ws, grads)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_matches_central_differences(model):
    rng = np.random.default_rng(6)
    x, y = data(rng, 3)
    ws = weights(rng)
    _, *grads = model.step(x, y, *ws)
    h = 1e-6
    for k in range(len(ws)):
        flat = ws[k].reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            up = [w.copy() for w in ws]
            dn = [w.copy() for w in ws]
            up[k].reshape(-1)[i] += h
            dn[k].reshape(-1)[i] -= h
            fd = (model.cnn(x, y, *up) - model.cnn(x, y, *dn)) / (2 * h)
            assert abs(grads[k].reshape(-1)[i] - fd) <= 1e-6 + 1e-5 * abs(fd), (k, i)
