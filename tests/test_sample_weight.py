"""Sample weights: in the drivers (every backend), Network.fit / evaluate / gradients, lbfgs, the
checkpoint fingerprint and the scikit-learn estimators."""
import numpy as np
import pytest
from support import close, problem

import fastbp
from fastbp import Network, checkpoints
from fastbp.kernels import codes

SIZES = [5, 7, 3]


def _net(backend, dtype, threads=1, **kwargs):
    return Network(SIZES, "tanh", output_activation="softmax", loss="cross_entropy",
                   backend=backend, dtype=dtype, n_threads=threads, seed=3, **kwargs)


def _weighted(n=13, seed=0, dtype="float64"):
    X, y = problem(SIZES, n, seed, dtype)
    w = np.random.default_rng(seed + 1).integers(0, 4, n).astype(float)
    w[0] = 2.0
    counts = w.astype(int)
    return X, y, w, np.repeat(X, counts, 0), np.repeat(y, counts)


@pytest.mark.parametrize("threads", [1, 2])
def test_integer_weights_are_repeated_rows(backend, dtype, threads):
    """The gradient, a full-batch fit and evaluate with integer weights equal those of the rows
    repeated that many times."""
    X, y, w, Xr, yr = _weighted(dtype=dtype)
    net = _net(backend, dtype, threads)
    for a, b in zip(sum(net.gradients(X, y, sample_weight=w), []), sum(net.gradients(Xr, yr), [])):
        close(a, b, dtype)
    twin = net.copy()
    arguments = dict(epochs=3, batch_size=64, shuffle=False, momentum=0.9, l2=0.01,
                     metrics=["train_loss", "train_accuracy"])
    ours = net.fit(X, y, sample_weight=w, **arguments)
    theirs = twin.fit(Xr, yr, **arguments)
    close(net.parameters, twin.parameters, dtype)
    for name in ("loss", "train_loss", "train_accuracy"):
        close(ours[name], theirs[name], dtype)
    e, f = net.evaluate(X, y, sample_weight=w), net.evaluate(Xr, yr)
    close([e.loss, e.accuracy], [f.loss, f.accuracy], dtype)


def test_weighted_minibatches_match_the_reference(compiled, dtype):
    """Minibatch training with fractional weights (a batch of zero weights among them): the compiled
    drivers as the numpy reference, and the same bits on 1, 2 and 3 threads."""
    X, y = problem(SIZES, 23, 1, dtype)
    w = np.random.default_rng(2).random(23) * 3
    w[4:8] = 0.0  # batch 1 (batch_size 4) weighs nothing: no step
    arguments = dict(epochs=2, batch_size=4, shuffle=False, optimizer="adam", lr=0.01, l2=1e-3,
                     sample_weight=w, metrics=["gradient_norms"])
    reference = _net("numpy", dtype)
    reference.fit(X, y, **arguments)
    results = []
    for threads in (1, 2, 3):
        net = _net(compiled, dtype, threads)
        history = net.fit(X, y, **arguments)
        results.append(net.parameters.copy())
        close(net.parameters, reference.parameters, dtype)
        close(history["loss"], reference.history["loss"], dtype)
        close(history["gradient_norm_1"], reference.history["gradient_norm_1"], dtype)
        assert net.optimizer_state["step"] == 2 * (6 - 1)  # one batch skipped
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_equal_weights_are_unweighted(backend, dtype):
    X, y = problem(SIZES, 17, 4, dtype)
    net = _net(backend, dtype)
    twin = net.copy()
    net.fit(X, y, epochs=2, batch_size=5, sample_weight=np.full(17, 2.5))
    twin.fit(X, y, epochs=2, batch_size=5)
    close(net.parameters, twin.parameters, dtype)
    close(net.history["loss"], twin.history["loss"], dtype)


def test_no_weights_and_empty_weights_are_the_same_bits(compiled):
    X, y = problem(SIZES, 17, 5)
    Y = np.eye(3)[y]
    results = []
    for extra in ((), (np.zeros(0),)):
        net = _net(compiled, "float64", 2)
        desc, work = net._buffers(5)
        net._hyper[codes.H_LR] = 0.1
        net._driver.train_batches(desc, net.parameters, net._grads, net._state, X, Y,
                                  np.arange(17), 5, 0, 4, net._hyper, work, np.zeros(17), 2,
                                  np.zeros(0), *extra)
        results.append(net.parameters.copy())
    assert np.array_equal(*results)


def test_a_minibatch_without_weight_makes_no_update(backend):
    X, y = problem(SIZES, 4, 6)
    net = _net(backend, "float64")
    twin = net.copy()
    net.fit(X, y, epochs=1, batch_size=2, shuffle=False, momentum=0.9,
            sample_weight=[0.0, 0.0, 1.0, 1.0])
    twin.fit(X[2:], y[2:], epochs=1, batch_size=2, momentum=0.9)
    close(net.parameters, twin.parameters, "float64")
    assert net.optimizer_state["step"] == 1


@pytest.mark.parametrize("bad, message", [
    ([1.0, -1.0, 1.0, 1.0], ">= 0"), ([1.0, np.nan, 1.0, 1.0], "finite"),
    ([1.0, np.inf, 1.0, 1.0], "finite"), ([1.0, 1.0, 1.0], r"\(4,\)"), ([0.0] * 4, "sums to 0"),
    ([[1.0] * 4], r"\(4,\)")])
def test_bad_weights_are_refused_before_anything_changes(bad, message):
    X, y = problem(SIZES, 4, 7)
    net = _net("numba", "float64")
    before = net.parameters.copy()
    for call in (lambda: net.fit(X, y, sample_weight=bad), lambda: net.evaluate(X, y, bad),
                 lambda: net.gradients(X, y, bad), lambda: net.fit_lbfgs(X, y, sample_weight=bad)):
        with pytest.raises(ValueError, match=message):
            call()
    assert np.array_equal(net.parameters, before)
    with pytest.raises(ValueError, match="weights"):
        codes.check_buffers(*net._buffers(4)[:1], net.parameters, X, weights=np.ones(3))


def test_validation_triple_and_weighted_metrics():
    X, y = problem(SIZES, 30, 8)
    w = np.random.default_rng(9).random(30)
    net = _net("cython", "float64")
    history = net.fit(X[:20], y[:20], epochs=1, sample_weight=w[:20],
                      validation_data=(X[20:], y[20:], w[20:]),
                      metrics=["train_loss", "train_accuracy", "val_loss", "val_accuracy"])
    val, train = net.evaluate(X[20:], y[20:], sample_weight=w[20:]), net.evaluate(
        X[:20], y[:20], sample_weight=w[:20])
    assert history["val_loss"][0] == pytest.approx(val.loss, rel=1e-12)
    assert history["val_accuracy"][0] == pytest.approx(val.accuracy, rel=1e-12)
    assert history["train_loss"][0] == pytest.approx(train.loss, rel=1e-12)
    out = net.forward(X[20:])
    costs = -np.log(out[np.arange(10), y[20:]])
    assert val.loss == pytest.approx(np.dot(costs, w[20:]) / w[20:].sum(), rel=1e-9)
    right = out.argmax(1) == y[20:]
    assert val.accuracy == pytest.approx(np.dot(right, w[20:]) / w[20:].sum(), rel=1e-12)


def test_lbfgs_with_integer_weights_is_repeated_rows(compiled):
    X, y, w, Xr, yr = _weighted(n=20, seed=3)
    net = _net(compiled, "float64")
    twin = net.copy()
    net.fit_lbfgs(X, y, max_iter=5, l2=0.01, sample_weight=w)
    twin.fit_lbfgs(Xr, yr, max_iter=5, l2=0.01)
    close(net.parameters, twin.parameters, "float64", factor=1e3)  # through 5 iterations


def test_the_data_fingerprint_includes_the_weights():
    X, y = problem(SIZES, 10, 0)
    Y = np.eye(3)[y]
    plain = checkpoints.data_fingerprint(X, Y)
    one = checkpoints.data_fingerprint(X, Y, np.ones(10))
    other = checkpoints.data_fingerprint(X, Y, np.r_[np.ones(9), 2.0])
    assert "weights" not in plain and one != other and checkpoints.differences(plain, one)


def test_a_checkpoint_of_unweighted_training_is_not_resumed_with_weights(tmp_path):
    X, y = problem(SIZES, 10, 0)
    path = tmp_path / "run.ckpt.npz"
    _net("numba", "float64").fit(X, y, epochs=1, checkpoint=path)
    with pytest.raises(fastbp.checkpoints.CheckpointError, match="data"):
        _net("numba", "float64").fit(X, y, epochs=2, checkpoint=path, sample_weight=np.ones(10))
