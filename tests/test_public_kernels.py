"""fastbp.kernels, the checked public kernels: results, errors, and a whole training loop written
with them that reproduces Network.fit."""
import numpy as np
import pytest
from support import close, problem

import fastbp
from fastbp import kernels as K
from fastbp import reference
from fastbp.kernels import codes


def test_layer_by_layer_backpropagation_matches_the_reference(compiled, dtype):
    rng = np.random.default_rng(0)
    W1, b1 = rng.standard_normal((5, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)
    W2, b2 = rng.standard_normal((3, 5)).astype(dtype), rng.standard_normal(3).astype(dtype)
    X, y = rng.random((9, 4)).astype(dtype), rng.integers(0, 3, 9)
    Y = np.eye(3, dtype=dtype)[y]
    A1 = K.dense_forward(W1, b1, X, activation="tanh", backend=compiled)
    Z2 = K.dense_forward(W2, b2, A1, backend=compiled)
    D2, cost = K.output_error(Z2, Y, "softmax", "cross_entropy", backend=compiled)
    D1 = K.backward_error(W2, D2, A1, "tanh", backend=compiled)
    G1, g1 = K.weight_gradient(D1, X, backend=compiled)
    G2, g2 = K.weight_gradient(D2, A1, backend=compiled)
    net = fastbp.Network([4, 5, 3], "tanh", loss="cross_entropy", dtype=dtype, backend="numpy")
    net.weights[0][:], net.biases[0][:], net.weights[1][:], net.biases[1][:] = W1, b1, W2, b2
    dW, db = net.gradients(X, y)
    for actual, expected in zip([G1, g1, G2, g2], [dW[0], db[0], dW[1], db[1]]):
        close(actual, expected, dtype, factor=100)
    close(cost.mean(), net.evaluate(X, y).loss, dtype, factor=10)


def test_a_training_loop_written_with_the_kernels_reproduces_fit(compiled):
    """The README's embedding example: SGD with momentum, minibatches read through rows."""
    X, y = problem([6, 8, 4], 50, seed=1)
    Y = np.eye(4)[y]
    net = fastbp.Network([6, 8, 4], "sigmoid", loss="cross_entropy", backend=compiled, seed=3)
    params = net.parameters.copy()
    (W1, W2), (b1, b2) = codes.layer_views(net._desc, params)
    grads = np.zeros_like(params)
    (G1, G2), (g1, g2) = codes.layer_views(net._desc, grads)
    state = np.zeros((2, params.size))
    hyper = K.hyperparameters(lr=0.5, l2=1e-3, momentum=0.9)
    n_weights = W1.size + W2.size
    for _epoch in range(2):
        for start in range(0, 50, 8):
            rows = np.arange(start, min(start + 8, 50))
            A1 = K.dense_forward(W1, b1, X, rows, "sigmoid", backend=compiled)
            Z2 = K.dense_forward(W2, b2, A1, backend=compiled)
            D2, _ = K.output_error(Z2, Y, "softmax", "cross_entropy", rows, backend=compiled)
            D1 = K.backward_error(W2, D2, A1, "sigmoid", backend=compiled)
            K.weight_gradient(D2, A1, out=G2, bias_out=g2, backend=compiled)
            K.weight_gradient(D1, X, rows, out=G1, bias_out=g1, backend=compiled)
            assert K.update_parameters(params, grads, state, hyper, "sgd", n_weights, backend=compiled)
    net.fit(X, y, epochs=2, batch_size=8, lr=0.5, l2=1e-3, momentum=0.9, shuffle=False)
    np.testing.assert_allclose(params, net.parameters, rtol=1e-12, atol=1e-14)


def test_outputs_can_be_passed_in(compiled):
    rng = np.random.default_rng(2)
    W, b, A = rng.random((3, 4)), rng.random(3), rng.random((5, 4))
    out = np.empty((5, 3))
    assert K.dense_forward(W, b, A, out=out, backend=compiled) is out
    np.testing.assert_allclose(out, A @ W.T + b, rtol=1e-12)
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float64 array of shape"):
        K.dense_forward(W, b, A, out=np.empty((3, 5)), backend=compiled)


@pytest.mark.parametrize("call,error,message", [
    (lambda: K.dense_forward(np.ones((3, 4)), np.ones(3), np.ones((5, 2))), ValueError,
     "A has 2 columns, expected 4"),
    (lambda: K.dense_forward(np.ones((3, 4)), np.ones(2), np.ones((5, 4))), ValueError,
     r"b must have shape \(3,\)"),
    (lambda: K.dense_forward(np.ones((3, 4)), np.ones(3), np.ones((5, 4)), rows=[0, 7]), ValueError,
     "rows must index samples 0..4"),
    (lambda: K.dense_forward(np.ones((3, 4)), np.ones(3), np.ones((5, 4)), activation="swish"),
     ValueError, "unknown activation 'swish'"),
    (lambda: K.dense_forward(np.ones((3, 4)), np.ones(3), np.ones((5, 4)), backend="numpy"),
     ValueError, "has no compiled kernels"),
    (lambda: K.dense_forward(np.ones((3, 4), complex), np.ones(3), np.ones((5, 4))), TypeError,
     "W must hold real numbers"),
    (lambda: K.dense_forward(np.ones((3, 4), np.float16), np.ones(3), np.ones((5, 4))), ValueError,
     "dtype must be one of float32, float64"),
    (lambda: K.output_error(np.ones((2, 3)), np.ones((2, 3)), "tanh", "cross_entropy"), ValueError,
     "cross_entropy needs a sigmoid or softmax"),
    (lambda: K.backward_error(np.ones((3, 4)), np.ones((5, 3)), np.ones((6, 4)), "relu"), ValueError,
     "A has 6 samples but D has 5"),
    (lambda: K.update_parameters(np.ones(3), np.ones(3), np.zeros((2, 4)), K.hyperparameters(0.1)),
     ValueError, r"state must have shape \(2, 3\)"),
])
def test_bad_arguments_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_float32_stays_float32(compiled):
    rng = np.random.default_rng(3)
    W, b, A = (rng.random((3, 4), np.float32), rng.random(3, np.float32), rng.random((5, 4), np.float32))
    Z = K.dense_forward(W, b, A, activation="relu", backend=compiled)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z, reference.ACTIVATE[codes.RELU](A @ W.T + b), rtol=1e-5)


def test_the_default_backend_is_auto():
    """Without backend=, the kernels run on the backend Network(backend="auto") would use."""
    import inspect
    from fastbp.kernels import loader
    for name in K.__all__:
        parameters = inspect.signature(getattr(K, name)).parameters
        assert "backend" not in parameters or parameters["backend"].default == "auto", name
    assert loader.resolve("auto") == fastbp.backends.resolve("auto") \
        == fastbp.Network([2, 2], backend="auto").backend
    rng = np.random.default_rng(4)
    W, b, A = rng.random((3, 4)), rng.random(3), rng.random((5, 4))
    assert np.array_equal(K.dense_forward(W, b, A, activation="tanh"),
                          K.dense_forward(W, b, A, activation="tanh", backend=loader.resolve("auto")))


def test_mismatched_dtypes_are_refused_not_converted_at_every_call():
    rng = np.random.default_rng(0)
    W, b = rng.random((4, 3)).astype(np.float32), np.zeros(4, np.float32)
    X = rng.random((5, 3))  # float64
    with pytest.raises(TypeError, match=r"A is float64 but W is float32: .*A.astype\(np.float32\)"):
        K.dense_forward(W, b, X)
    Z = K.dense_forward(W, b, X.astype(np.float32))
    with pytest.raises(TypeError, match="Y is float64 but the other arrays are float32"):
        K.output_error(Z, np.eye(4)[[0, 1, 2, 3, 0]], "softmax", "cross_entropy")
    assert K.dense_forward(W, b, (X * 10).astype(np.int64)).dtype == np.float32  # integers convert


def test_a_fresh_hyperparameter_array_at_every_adam_step_is_refused():
    """The trap of making K.hyperparameters() inside the loop: Adam's step counter would restart at
    every step (after 3 steps a parameter was -0.391 where it should be -0.300)."""
    params, grads = np.ones(3), np.full(3, 0.5)
    state = np.zeros((2, 3))
    hyper = K.hyperparameters(lr=0.1)
    for _ in range(3):
        K.update_parameters(params, grads, state, hyper, "adam")
    assert hyper[codes.H_STEP] == 3
    np.testing.assert_allclose(params, 1 - 3 * 0.1, rtol=1e-6)  # Adam's first steps: lr each
    with pytest.raises(ValueError, match="make the hyperparameters once, before the loop"):
        K.update_parameters(params, grads, state, K.hyperparameters(lr=0.1), "adam")
