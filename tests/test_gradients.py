"""Backpropagation against central finite differences of the mean cost, in float64, for every
activation/loss pair, on every backend."""
import itertools

import numpy as np
import pytest

import fastbp
from fastbp.kernels import codes

HIDDEN = list(codes.HIDDEN_ACTIVATIONS)
OUTPUT = HIDDEN + ["softmax"]
PAIRS = [(out, "mse") for out in OUTPUT] + [("sigmoid", "cross_entropy"), ("softmax", "cross_entropy")]
CASES = [(hidden, out, loss) for hidden, (out, loss) in itertools.product(HIDDEN, PAIRS)]


def targets(rng, out, loss, n, k):
    if out == "softmax" and loss == "cross_entropy":
        Y = rng.random((n, k))
        return Y / Y.sum(axis=1, keepdims=True)  # probability rows
    return rng.random((n, k))


def numerical_gradient(net, X, Y, eps=1e-6):
    """Central differences of the mean cost with respect to every parameter."""
    grad = np.empty_like(net.parameters)
    for i in range(net.parameters.size):
        keep = net.parameters[i]
        net.parameters[i] = keep + eps
        up = net.evaluate(X, Y).loss
        net.parameters[i] = keep - eps
        down = net.evaluate(X, Y).loss
        net.parameters[i] = keep
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("hidden,out,loss", CASES)
def test_backpropagation_matches_finite_differences(backend, hidden, out, loss):
    rng = np.random.default_rng(7)
    net = fastbp.Network([4, 5, 3], hidden, out, loss, "float64", backend, seed=1)
    X = rng.standard_normal((6, 4))
    Y = targets(rng, out, loss, 6, 3)
    dW, db = net.gradients(X, Y)
    analytic = np.concatenate([w.ravel() for w in dW] + [b.ravel() for b in db])
    numeric = numerical_gradient(net, X, Y)
    error = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert error < 1e-6, f"relative error {error:.3g}"


def test_gradients_of_a_deeper_network(backend):
    rng = np.random.default_rng(8)
    net = fastbp.Network([6, 9, 7, 4], "tanh", "softmax", "cross_entropy", "float64", backend, seed=2)
    X, y = rng.standard_normal((11, 6)), rng.integers(0, 4, 11)
    dW, db = net.gradients(X, y)
    analytic = np.concatenate([w.ravel() for w in dW] + [b.ravel() for b in db])
    numeric = numerical_gradient(net, X, y)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) < 1e-6


def test_gradients_in_blocks_equal_gradients_at_once(compiled):
    """More samples than a work block (256): the blocks' shares add up to the mean gradient."""
    rng = np.random.default_rng(9)
    net = fastbp.Network([5, 8, 3], "sigmoid", backend=compiled, seed=3)
    ref = fastbp.Network([5, 8, 3], "sigmoid", backend="numpy", seed=3)
    X, y = rng.standard_normal((700, 5)), rng.integers(0, 3, 700)
    for a, b in zip(net.gradients(X, y)[0] + net.gradients(X, y)[1],
                    ref.gradients(X, y)[0] + ref.gradients(X, y)[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
