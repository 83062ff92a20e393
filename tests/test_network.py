"""The public API: construction, views, prediction, evaluation, files, backends, bad arguments."""
import numpy as np
import pytest
from support import problem

import fastbp
from fastbp import backends, modelfile
from fastbp.kernels import codes


def test_weights_are_views_of_the_parameters(backend):
    net = fastbp.Network([4, 3, 2], backend=backend, seed=0)
    assert [w.shape for w in net.weights] == [(3, 4), (2, 3)]
    assert [b.shape for b in net.biases] == [(3,), (2,)]
    X = np.random.default_rng(0).random((5, 4))
    before = net.forward(X)
    net.weights[1][:] = 0
    net.biases[1][:] = 0
    assert np.allclose(net.forward(X), 0.5)  # sigmoid(0)
    assert not np.allclose(before, 0.5)
    W = net.weights[0]
    net.fit(X, np.eye(2)[[0, 1, 0, 1, 0]], epochs=1, batch_size=2, lr=1.0)
    assert net.weights[0] is W and np.shares_memory(W, net.parameters)


def test_default_output_activation():
    assert fastbp.Network([2, 2], "tanh", loss="mse", backend="numpy").output_activation == "tanh"
    assert fastbp.Network([2, 2], "tanh", loss="cross_entropy",
                          backend="numpy").output_activation == "softmax"


def test_labels_and_one_hot_targets_are_the_same(backend):
    X, y = problem([5, 4, 3], 20, seed=1)
    a = fastbp.Network([5, 4, 3], backend=backend, seed=2)
    b = fastbp.Network([5, 4, 3], backend=backend, seed=2)
    a.fit(X, y, epochs=2, batch_size=5, lr=0.5)
    b.fit(X, np.eye(3)[y], epochs=2, batch_size=5, lr=0.5)
    assert np.array_equal(a.parameters, b.parameters)


def test_predict_and_evaluate(backend):
    X, y = problem([5, 6, 3], 40, seed=4)
    net = fastbp.Network([5, 6, 3], "relu", loss="cross_entropy", backend=backend, seed=0)
    outputs = net.forward(X)
    assert outputs.shape == (40, 3) and np.allclose(outputs.sum(axis=1), 1)
    assert np.array_equal(net.predict(X), outputs.argmax(axis=1))
    result = net.evaluate(X, y)
    assert result.accuracy == np.mean(net.predict(X) == y)
    assert result.loss == pytest.approx(-np.mean(np.log(outputs[np.arange(40), y])), rel=1e-10)


def test_single_output_predicts_by_threshold(backend):
    X = np.random.default_rng(0).random((9, 3))
    net = fastbp.Network([3, 1], backend=backend, seed=0)
    assert np.array_equal(net.predict(X), (net.forward(X)[:, 0] > 0.5).astype(int))


def test_history(backend):
    X, y = problem([5, 4, 3], 30, seed=1)
    net = fastbp.Network([5, 4, 3], backend=backend, seed=0)
    history = net.fit(X, y, epochs=3, batch_size=4, lr=1.0, validation_data=(X[:10], y[:10]),
                      metrics=("train_loss", "train_accuracy", "val_loss", "val_accuracy"))
    assert history.epochs == 3 and net.history is history
    assert set(history) == {"loss", "lr", "val_loss", "val_accuracy", "train_loss",
                            "train_accuracy", "seconds"}
    assert history["val_loss"][-1] == pytest.approx(net.evaluate(X[:10], y[:10]).loss)
    assert history["train_accuracy"][-1] == net.evaluate(X, y).accuracy


def test_callback_can_stop_training(backend):
    X, y = problem([5, 4, 3], 30, seed=1)
    net = fastbp.Network([5, 4, 3], backend=backend, seed=0)
    seen = []
    history = net.fit(X, y, epochs=10, batch_size=4, callback=lambda e, m: seen.append(e) or e == 2)
    assert seen == [1, 2] and history.epochs == 2


def test_save_and_load(tmp_path, backend, dtype):
    X, y = problem([5, 4, 3], 30, seed=1)
    net = fastbp.Network([5, 4, 3], "tanh", "softmax", "cross_entropy", dtype, backend, seed=0)
    net.fit(X, y, epochs=2, batch_size=4, lr=0.1, momentum=0.5)
    path = tmp_path / "model.npz"
    net.save(path)
    copy = fastbp.load(path, backend=backend)
    assert copy.layer_sizes == net.layer_sizes and copy.dtype == net.dtype
    assert (copy.activation, copy.output_activation, copy.loss) == ("tanh", "softmax", "cross_entropy")
    assert np.array_equal(copy.parameters, net.parameters)
    assert np.array_equal(copy.forward(X), net.forward(X))
    # the optimizer state came along: continuing gives the same result on both
    net.fit(X, y, epochs=1, batch_size=4, lr=0.1, momentum=0.5, shuffle=False)
    copy.fit(X, y, epochs=1, batch_size=4, lr=0.1, momentum=0.5, shuffle=False)
    assert np.array_equal(copy.parameters, net.parameters)


def test_damaged_model_files_are_refused(tmp_path):
    net = fastbp.Network([3, 2], backend="numpy", seed=0)
    path = tmp_path / "model.npz"
    net.save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fastbp model"):
        fastbp.load(tmp_path / "truncated.npz")
    np.savez(tmp_path / "other.npz", parameters=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        fastbp.load(tmp_path / "other.npz")


def test_available_backends():
    names = fastbp.available_backends()
    assert "numpy" in names and set(names) <= {"numpy", "numba", "cython"}
    details = fastbp.available_backends(details=True)
    assert set(details) == {"numpy", "numba", "cython"}


def test_auto_backend_is_the_fastest_built(monkeypatch):
    expected = "cython" if "cython" in fastbp.available_backends() else "numba"
    assert fastbp.Network([3, 2], backend="auto").backend == expected

    def unbuilt(name):
        raise fastbp.backends.BackendUnavailable("not built")
    monkeypatch.setattr(fastbp.backends, "get", unbuilt)
    assert fastbp.backends.resolve("auto") == "numba"


@pytest.mark.parametrize("kwargs,message", [
    (dict(activation="softmax"), "unknown activation 'softmax'; choose one of sigmoid, tanh"),
    (dict(activation="swish"), "unknown activation"),
    (dict(loss="hinge"), "unknown loss 'hinge'; choose one of mse, cross_entropy"),
    (dict(output_activation="tanh", loss="cross_entropy"), "cross_entropy needs a sigmoid or softmax"),
    (dict(dtype="float16"), "dtype must be one of float32, float64"),
    (dict(backend="tensorflow"), "unknown backend 'tensorflow'; choose one of numpy, numba, cython or auto"),
    (dict(n_threads=0), "n_threads must be >= 1"),
    (dict(init="zeros"), "unknown init"),
])
def test_bad_construction_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fastbp.Network([3, 4, 2], **kwargs)


@pytest.mark.parametrize("sizes", [[3], [3, 0, 2], [3, -1], "3,2", [3, 2.5]])
def test_bad_layer_sizes(sizes):
    with pytest.raises((ValueError, TypeError), match="layer_sizes"):
        fastbp.Network(sizes, backend="numpy")


def test_bad_fit_arguments_leave_the_network_unchanged():
    X, y = problem([3, 4, 2], 10, seed=0)
    net = fastbp.Network([3, 4, 2], backend="numpy", seed=0)
    before = net.parameters.copy()
    for kwargs, message in [(dict(lr=0), "lr must be > 0"), (dict(batch_size=0), "batch_size"),
                            (dict(momentum=1.0), "momentum must be < 1"), (dict(l2=-1), "l2"),
                            (dict(epochs=-1), "epochs"), (dict(optimizer="lbfgs"), "optimizer")]:
        with pytest.raises(ValueError, match=message):
            net.fit(X, y, **kwargs)
    with pytest.raises(ValueError, match="validation X has 2 features per sample; the network's "
                                         "input layer has 3"):
        net.fit(X, y, validation_data=(X[:, :2], y))
    with pytest.raises(ValueError, match="labels from 0 to 5"):
        net.fit(X, np.arange(10) % 6)
    assert np.array_equal(net.parameters, before)


def test_a_cython_build_from_other_codes_is_refused(monkeypatch):
    """Kernels compiled from another kernels/codes.py would misread every code: refused, clearly."""
    if "cython" not in fastbp.available_backends():
        pytest.skip("cython unavailable")
    from fastbp import backends
    monkeypatch.setattr(codes, "source_hash", lambda: "something else")
    with pytest.raises(backends.BackendUnavailable, match="built from another version"):
        fastbp.Network([2, 2], backend="cython")
    assert "cython" not in fastbp.available_backends()


def test_networks_pickle(backend):
    import pickle
    X, y = problem([5, 4, 3], 20, seed=1)
    net = fastbp.Network([5, 4, 3], backend=backend, seed=0)
    net.fit(X, y, epochs=1, batch_size=4, momentum=0.5)
    copy = pickle.loads(pickle.dumps(net))
    assert np.array_equal(copy.forward(X), net.forward(X))
    copy.weights[0][:] = 0  # its views are its own
    assert not np.array_equal(copy.forward(X), net.forward(X))
    net.reset_optimizer()
    assert not net._state.any()


def test_the_thread_tuner_follows_the_faster_count():
    from fastbp.training import _ThreadTuner
    tuner = _ThreadTuner(4, fixed=False)
    assert tuner.options == [4, 2, 1]
    speed = {4: 100.0, 2: 300.0, 1: 150.0}  # a busy machine: fewer threads are faster
    picks = []
    for _ in range(60):
        n = tuner.pick()
        picks.append(n)
        tuner.record(n, speed[n])
    assert picks[-10:].count(2) >= 9 and {1, 4} <= set(picks[20:])  # best, still exploring
    assert _ThreadTuner(4, fixed=True).options == [4]


def test_the_thread_tuner_is_not_fooled_by_one_slow_chunk():
    """A first epoch's cold chunk at 2 threads must not keep a fit on 1 thread (it once did: a
    smoothed mean of 28 k and later 76 k batches/s stayed below 1 thread's 49 k for a whole fit)."""
    from fastbp.training import _ThreadTuner
    tuner = _ThreadTuner(2, fixed=False)
    speed = {2: 300.0, 1: 150.0}
    picks = []
    for chunk in range(1, 12):
        n = tuner.pick()
        picks.append(n)
        tuner.record(n, speed[n] / 4 if chunk == 2 else speed[n])  # chunk 2: cold caches
    assert picks[:5] == [2, 2, 1, 2, 1]  # each count measured twice, in turn (chunk 1 not timed)
    assert picks[5:] == [2] * 6  # then the faster, until the next try of another count


def test_a_chunk_that_tries_another_thread_count_is_short(monkeypatch):
    """The tuner's tries run a quarter of a chunk, and chunking changes no result."""
    from fastbp import training
    X, y = problem([20, 16, 3], 400)
    net = fastbp.Network([20, 16, 3], seed=0, n_threads=None)
    if net.threads < 2:
        pytest.skip("one CPU: nothing to try")
    monkeypatch.setattr(training._ThreadTuner, "EXPLORE", 3)
    calls = []
    real_run = training.LocalStepper.run

    def run(self, order, first, last):
        trying = self.tuner.explores(self.tuner.chunks + 1)  # what pick() is about to decide
        calls.append((last - first, trying))
        return real_run(self, order, first, last)

    monkeypatch.setattr(training.LocalStepper, "run", run)
    net.fit(X, y, batch_size=1, epochs=12, lr=0.1)
    tries = [size for size, trying in calls if trying]
    assert tries and max(tries) <= 400 // training.EXPLORE_SHARE
    fixed = fastbp.Network([20, 16, 3], seed=0, n_threads=2)
    fixed.fit(X, y, batch_size=1, epochs=12, lr=0.1)
    assert np.array_equal(net.parameters, fixed.parameters)


def test_load_defaults_to_auto_and_blames_a_bad_backend_not_the_file(tmp_path):
    path = tmp_path / "model.npz"
    fastbp.Network([3, 4, 2], seed=0).save(path)
    assert fastbp.load(path).backend == backends.resolve("auto")
    with pytest.raises(ValueError, match="unknown backend 'numbaa'") as error:
        fastbp.load(path, backend="numbaa")
    assert not isinstance(error.value, modelfile.ModelFileError)
