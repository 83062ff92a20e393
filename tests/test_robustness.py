"""Bad input, divergence, interruption, threads, damaged model files, leaks: clear errors, nothing lost."""
import os
import signal
import threading
import time

import numpy as np
import pytest
import scipy.sparse
from support import problem

import fastbp
from fastbp import validation
from fastbp.network import TrainingDiverged

SIZES = [4, 5, 3]


def fresh(backend="numpy", **kwargs):
    return fastbp.Network(SIZES, backend=backend, seed=0, **kwargs)


# ----------------------------------------------------------------------------- bad input

X_OK, Y_OK = problem(SIZES, 12, seed=0)
NAN_X = X_OK.copy()
NAN_X[3, 2] = np.nan
BAD_INPUTS = [
    ("complex X", dict(X=X_OK.astype(complex)), TypeError, "X must hold real numbers, got dtype complex128"),
    ("string X", dict(X=np.full((12, 4), "a")), TypeError, "X must hold real numbers"),
    ("object X", dict(X=np.array([[object()] * 4] * 12)), TypeError, "X must hold real numbers"),
    ("1-D X", dict(X=X_OK[0]), ValueError, "X must be 2-D"),
    ("3-D X", dict(X=X_OK[None]), ValueError, "X must be 2-D"),
    ("wrong width", dict(X=X_OK[:, :3]), ValueError, "X has 3 features per sample; the network's input layer has 4"),
    ("empty X", dict(X=X_OK[:0], y=Y_OK[:0]), ValueError, "X has no samples"),
    ("NaN in X", dict(X=NAN_X), ValueError, r"X must be finite; X\[3, 2\] is nan"),
    ("inf in targets", dict(y=np.full((12, 3), np.inf)), ValueError, r"y must be finite; y\[0, 0\] is inf"),
    ("short y", dict(y=Y_OK[:5]), ValueError, "y has 5 samples but X has 12"),
    ("label out of range", dict(y=np.full(12, 3)), ValueError,
     "labels from 3 to 3, but the network has 3 output units"),
    ("negative label", dict(y=np.full(12, -1)), ValueError, "labels from -1 to -1"),
    ("fractional labels", dict(y=np.full(12, 0.5)), ValueError, "integer class labels"),
    ("wrong target width", dict(y=np.ones((12, 2))), ValueError, "y has 2 columns; the network has 3 outputs"),
    ("3-D y", dict(y=np.ones((12, 3, 1))), ValueError, "y must be 1-D class labels or 2-D targets"),
    ("string labels", dict(y=np.array(["a"] * 12)), TypeError, "y must hold real numbers"),
    ("batch_size 0", dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    ("batch_size float", dict(batch_size=2.5), TypeError, "batch_size must be an integer"),
    ("negative epochs", dict(epochs=-1), ValueError, "epochs must be >= 0"),
    ("lr 0", dict(lr=0.0), ValueError, "lr must be > 0"),
    ("lr nan", dict(lr=float("nan")), ValueError, "lr must be finite"),
    ("lr string", dict(lr="0.1"), TypeError, "lr must be a real number"),
    ("negative l2", dict(l2=-0.1), ValueError, "l2 must be >= 0"),
    ("momentum 1", dict(momentum=1.0), ValueError, "momentum must be < 1"),
    ("negative momentum", dict(momentum=-0.1), ValueError, "momentum must be >= 0"),
    ("unknown optimizer", dict(optimizer="lbfgs"), ValueError,
     "unknown optimizer 'lbfgs'; choose one of sgd, adam, rmsprop"),
    ("nesterov without momentum", dict(nesterov=True), ValueError, "nesterov needs optimizer='sgd' with momentum > 0"),
    ("bad validation_data", dict(validation_data=X_OK), ValueError, "validation_data must be a pair"),
]


@pytest.mark.parametrize("what,changes,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_fit_input_is_refused_and_changes_nothing(backend, what, changes, error, message):
    net = fresh(backend)
    before = net.parameters.copy(), net._state.copy()
    arguments = dict(X=X_OK, y=Y_OK, epochs=1, batch_size=4)
    arguments.update(changes)
    with pytest.raises(error, match=message):
        net.fit(arguments.pop("X"), arguments.pop("y"), **arguments)
    assert np.array_equal(net.parameters, before[0]) and np.array_equal(net._state, before[1])
    assert net.evaluate(X_OK, Y_OK).loss > 0  # still usable


@pytest.mark.parametrize("method", ["forward", "predict", "evaluate", "gradients"])
def test_bad_input_to_the_other_entry_points(method):
    net = fresh()
    call = getattr(net, method)
    args = (NAN_X,) if method in ("forward", "predict") else (NAN_X, Y_OK)
    with pytest.raises(ValueError, match=r"X\[3, 2\] is nan"):
        call(*args)
    args = (X_OK[:, :2],) if method in ("forward", "predict") else (X_OK[:, :2], Y_OK)
    with pytest.raises(ValueError, match="features per sample"):
        call(*args)


SHAPES = [("sigmoid", "mse", "sigmoid"), ("relu", "cross_entropy", "softmax"),
          ("tanh", "cross_entropy", "sigmoid"), ("sigmoid", "mse", "identity")]
OPTIMIZERS = [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(optimizer="adam"),
              dict(optimizer="rmsprop")]


def _everything(net):
    return (net.parameters.copy(), net._state.copy(), net._hyper.copy(), net._optimizer,
            net.rng.bit_generator.state, net.history)


def _same(a, b):
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", SHAPES, ids=["-".join(s) for s in SHAPES])
def test_fit_finds_a_non_finite_x_by_training_and_changes_nothing(backend, dtype, shape, value):
    """fit checks a dense X's values during the first epoch (training.start): whatever the layers,
    optimizer, dropout or the value's place (the first row, the last row of a partial minibatch, a
    saturated sigmoid's input), the first NaN or infinity of X is reported, and the network is left
    as fit found it, trained before or not."""
    hidden, loss, output = shape
    rng = np.random.default_rng(len(hidden) + len(output))
    X, y = rng.random((53, 6)), rng.integers(0, 3, 53)
    for k, options in enumerate(OPTIMIZERS):
        for dropout in (0.0, 0.5):
            net = fastbp.Network([6, 5, 3], activation=hidden, loss=loss, output_activation=output,
                                 backend=backend, dtype=dtype, seed=k)
            if k % 2:  # a network trained before, with another optimizer
                net.fit(X, y, epochs=1, batch_size=8, lr=0.05)
            for at in [(0, 0), (52, 5), tuple(rng.integers(0, (53, 6)))]:
                bad = X.copy()
                bad[at] = value
                bad[at[0], (at[1] + 1) % 6] = 1e6 if value == np.inf else 0.0  # saturates sigmoid
                before = _everything(net)
                with pytest.raises(ValueError, match=rf"X must be finite; X\[{at[0]}, {at[1]}\] is"):
                    net.fit(bad, y, epochs=2, batch_size=4, lr=0.1, dropout=dropout, **options)
                assert _same(_everything(net), before), (options, dropout, at)


@pytest.mark.parametrize("sizes,batch", [([128, 128, 3], 32), ([6, 3], 4)], ids=["blas", "no-hidden"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fit_finds_a_non_finite_x_through_blas_and_without_hidden_layers(backend, sizes, batch, value):
    """Layer 0's gradient by BLAS (a large layer and batch), or with no hidden layer at all."""
    rng = np.random.default_rng(3)
    X, y = rng.random((4 * batch + 3, sizes[0])), rng.integers(0, 3, 4 * batch + 3)
    X[-1, 7 % sizes[0]] = value
    net = fastbp.Network(sizes, activation="relu", loss="cross_entropy", output_activation="softmax",
                         backend=backend, seed=0)
    before = _everything(net)
    with pytest.raises(ValueError, match=rf"X\[{X.shape[0] - 1}, {7 % sizes[0]}\] is"):
        net.fit(X, y, epochs=1, batch_size=batch, momentum=0.9)
    assert _same(_everything(net), before)


def _relu_net(backend):
    return fresh(backend, activation="relu", loss="cross_entropy", output_activation="softmax")


def test_fit_checks_x_up_front_when_it_trains_no_epoch_or_weighs_samples(compiled, monkeypatch):
    """With epochs=0, fit trains nothing that could find a NaN. With sample weights, a minibatch of
    zero weights takes no step, and ReLU maps the NaN's unit to 0 (a finite cost). For a network
    large against its input, or an X smaller than the parameters' snapshot, the pass over X is the
    cheaper. In all these fit checks X before any minibatch."""
    from fastbp import training
    X, y = problem(SIZES, 200, seed=0)
    X[5, 1] = np.nan
    trained = []
    run = training.LocalStepper.run
    monkeypatch.setattr(training.LocalStepper, "run",
                        lambda self, *args: trained.append(args) or run(self, *args))
    net = _relu_net(compiled)
    before = _everything(net)
    with pytest.raises(ValueError, match=r"X\[5, 1\] is nan"):
        net.fit(X, y, epochs=0)
    weights = np.ones(200)
    weights[4:8] = 0  # the NaN's minibatch (in order) weighs nothing
    with pytest.raises(ValueError, match=r"X\[5, 1\] is nan"):
        net.fit(X, y, epochs=1, batch_size=4, shuffle=False, sample_weight=weights)
    with pytest.raises(ValueError, match=r"X\[5, 1\] is nan"):
        net.fit(X[:10], y[:10], epochs=1, batch_size=4)  # 40 values, 3 x 43 in the snapshot
    assert _same(_everything(net), before) and not trained
    wide = fastbp.Network([4, 1100, 3], backend=compiled, seed=0)  # 1,100 weights per input and more
    with pytest.raises(ValueError, match=r"X\[5, 1\] is nan"):
        wide.fit(X, y, epochs=1, batch_size=4)
    assert not trained
    with pytest.raises(ValueError, match=r"X\[5, 1\] is nan"):
        net.fit(X, y, epochs=1, batch_size=4)  # checked by training
    assert trained


def test_a_first_epoch_cut_short_still_reports_a_non_finite_x(tmp_path, monkeypatch):
    """Ctrl-C before the epoch reaches the NaN, or a checkpoint that fit refuses: the NaN is
    reported (as it was when X was checked first) and the network is left as it was."""
    from fastbp import training
    X, y = problem(SIZES, 200, seed=0)
    net = _relu_net("numpy")
    path = tmp_path / "run.ckpt"
    net.fit(X[:100], y[:100], epochs=1, batch_size=4, checkpoint=path)  # another X's checkpoint
    X[199, 2] = np.inf
    before = _everything(net)
    with pytest.raises(ValueError, match=r"X\[199, 2\] is inf"):
        net.fit(X, y, epochs=2, batch_size=4, checkpoint=path)
    assert _same(_everything(net), before)
    monkeypatch.setattr(training.LocalStepper, "first_chunk", lambda self: 2)
    monkeypatch.setattr(training.LocalStepper, "next_chunk", lambda self, chunk, elapsed: 2)
    run = training.LocalStepper.run

    def interrupted(self, order, first, last):
        signal.raise_signal(signal.SIGINT)  # held until the chunk is done
        return run(self, order, first, last)
    monkeypatch.setattr(training.LocalStepper, "run", interrupted)
    with pytest.raises(ValueError, match=r"X\[199, 2\] is inf"):
        net.fit(X, y, epochs=2, batch_size=4, shuffle=False)
    assert _same(_everything(net), before)


def test_a_finite_x_that_diverges_is_still_divergence(compiled):
    """Finite values so large that the first layer's outputs overflow: TrainingDiverged, not a
    complaint about X."""
    X, y = problem(SIZES, 12, seed=0)
    X[3] = np.finfo(np.float32).max
    net = fresh(compiled, dtype="float32", activation="relu", loss="cross_entropy",
                output_activation="softmax")
    with pytest.raises(TrainingDiverged, match="became NaN or infinite at epoch 1"):
        net.fit(X, y, epochs=3, batch_size=4, lr=0.1)
    assert np.isfinite(net.parameters).all()


NON_FINITE = [  # (value, (row, column)) pairs placed in a large X; the first is the one reported
    [(np.nan, (0, 0))],
    [(np.nan, (299, 6))],
    [(-np.inf, (150, 3))],
    [(np.inf, (10, 2)), (-np.inf, (200, 4))],  # they cancel into NaN in a sum
    [(-np.inf, (10, 2)), (np.inf, (10, 3))],
    [(np.nan, (250, 5)), ("max", None)],  # the other values so large that their sum overflows
    [(np.inf, (7, 1)), ("-max", None)],
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", NON_FINITE, ids=range(len(NON_FINITE)))
def test_the_finiteness_check_misses_no_nan_or_inf(dtype, bad):
    """X is checked with a sum first (NaN and inf propagate through it), then exactly: a NaN or inf
    anywhere is reported at its first position, dense or sparse."""
    X = np.random.default_rng(0).standard_normal((300, 7)).astype(dtype)
    for value, at in bad:
        if at is None:
            X[:] = np.finfo(dtype).max * (-1 if value.startswith("-") else 1)
    for value, at in bad:
        if at is not None:
            X[at] = value
    row, column = bad[0][1]
    message = rf"X must be finite; X\[{row}, {column}\] is {X[row, column]}"
    with pytest.raises(ValueError, match=message):
        validation.features(X, 7, np.dtype(dtype))
    with pytest.raises(ValueError, match=message):
        validation.features(scipy.sparse.csr_matrix(X), 7, np.dtype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finite_values_whose_sum_overflows_are_not_refused(dtype):
    """The sum of huge finite values is inf (or NaN: inf - inf); only the exact test decides."""
    huge = np.finfo(dtype).max
    for X in (np.full((300, 7), huge, dtype), np.full((300, 7), -huge, dtype),
              np.where(np.arange(2100).reshape(300, 7) % 3 == 0, huge, -huge).astype(dtype)):
        with np.errstate(all="raise"):  # nor a warning about the sum's overflow
            assert validation.features(X, 7, np.dtype(dtype)) is X
            assert validation.features(scipy.sparse.csr_matrix(X), 7, np.dtype(dtype)).data.size == X.size


def test_odd_layouts_and_dtypes_give_the_same_results(compiled):
    """Fortran order, non-contiguous views, integer and float16 data are converted once."""
    X, y = problem(SIZES, 20, seed=1)
    expected = fresh(compiled)
    expected.fit(X, y, epochs=2, batch_size=4, shuffle=False)
    for variant in (np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2], X.astype(np.float32)):
        net = fresh(compiled)
        net.fit(variant, y, epochs=2, batch_size=4, shuffle=False)
        np.testing.assert_allclose(net.parameters, expected.parameters, rtol=1e-6)
    ints = fresh(compiled)
    ints.fit((X * 10).astype(np.int32), y.astype(np.uint8), epochs=1, batch_size=4)
    assert np.isfinite(ints.parameters).all()
    readonly = X.copy()
    readonly.flags.writeable = False
    assert np.array_equal(fresh(compiled).forward(readonly), fresh(compiled).forward(X))


def test_epochs_zero_and_batch_larger_than_the_data(compiled):
    X, y = problem(SIZES, 7, seed=2)
    net = fresh(compiled)
    before = net.parameters.copy()
    assert net.fit(X, y, epochs=0).epochs == 0
    assert np.array_equal(net.parameters, before)
    net.fit(X, y, epochs=1, batch_size=100, shuffle=False)  # one batch of all 7 samples
    reference = fresh("numpy")
    reference.fit(X, y, epochs=1, batch_size=7, shuffle=False)
    np.testing.assert_allclose(net.parameters, reference.parameters, rtol=1e-12)


@pytest.mark.parametrize("n_threads,error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                             ("2", TypeError)])
def test_bad_thread_counts(n_threads, error):
    with pytest.raises(error, match="n_threads"):
        fresh(n_threads=n_threads)


# ----------------------------------------------------------------------------- divergence

def test_overflowing_parameters_are_rolled_back_to_the_last_finite_step(backend):
    """float32: the first update makes the weights ~1e30 (finite), the second overflows them."""
    X = np.ones((8, 4), np.float32)
    Y = np.zeros((8, 3), np.float32)
    net = fastbp.Network([4, 3], "identity", dtype="float32", backend=backend, seed=0)
    with pytest.raises(TrainingDiverged, match="the parameters became NaN or infinite at epoch 1, "
                                               "minibatch 2 of 2") as error:
        net.fit(X, Y, epochs=1, batch_size=4, lr=1e30, shuffle=False)
    assert error.value.batch == 1 and error.value.epoch == 1
    one_step = fastbp.Network([4, 3], "identity", dtype="float32", backend=backend, seed=0)
    one_step.fit(X[:4], Y[:4], epochs=1, batch_size=4, lr=1e30, shuffle=False)
    assert np.isfinite(net.parameters).all() and np.abs(net.parameters).max() > 1e20
    assert np.array_equal(net.parameters, one_step.parameters)


def test_divergence_keeps_the_history_so_far(compiled):
    X, y = problem(SIZES, 40, seed=3)
    net = fresh(compiled, activation="identity")
    net.fit(X, y, epochs=2, batch_size=4, lr=0.01)
    with pytest.raises(TrainingDiverged) as error:
        net.fit(X * 1e6, y, epochs=5, batch_size=4, lr=10.0)
    assert error.value.history is net.history and np.isfinite(net.parameters).all()


# ----------------------------------------------------------------------------- interruption

def test_ctrl_c_stops_at_a_minibatch_boundary(compiled):
    X, y = problem([20, 64, 3], 40000, seed=4)
    net = fastbp.Network([20, 64, 3], "relu", loss="cross_entropy", backend=compiled, seed=0)
    net.fit(X[:100], y[:100], epochs=1, batch_size=10)  # compile first
    start = net.parameters.copy(), net._state.copy()
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=100, batch_size=10, lr=0.01, momentum=0.9, shuffle=False)
    timer.join()
    epoch, batches = net.history.interrupted
    assert net.history.epochs == (epoch if batches == 4000 else epoch - 1)  # a whole epoch is recorded
    replay = fastbp.Network([20, 64, 3], "relu", loss="cross_entropy", backend=compiled, seed=0)
    replay.parameters[:], replay._state[:] = start
    replay._optimizer = net._optimizer
    _replay(replay, X, y, epoch, batches, 10, lr=0.01, momentum=0.9)
    assert np.array_equal(net.parameters, replay.parameters)
    assert np.isfinite(net.forward(X[:5])).all()  # usable


def _replay(net, X, y, epoch, batches, batch_size, **options):
    """Train `net` (in order) through epoch-1 whole epochs and `batches` minibatches of the next."""
    n_batches = -(-len(X) // batch_size)
    whole = epoch if batches == n_batches else epoch - 1
    if whole:
        net.fit(X, y, epochs=whole, batch_size=batch_size, shuffle=False, **options)
    if 0 < batches < n_batches:
        net.fit(X[:batches * batch_size], y[:batches * batch_size], epochs=1,
                batch_size=batch_size, shuffle=False, **options)


@pytest.mark.parametrize("at", list(range(1, 12)))
def test_an_interrupt_anywhere_leaves_records_that_agree(at, monkeypatch):
    """Ctrl-C after any chunk of minibatches, the last one of an epoch included (and in the
    callback, after an epoch is recorded): the parameters are those of exactly the completed epochs
    plus the minibatches history.interrupted names, and the history holds the completed epochs."""
    from fastbp import training
    X, y = problem(SIZES, 23, seed=9)  # 6 minibatches of 4 (the last partial), chunks of 2: 3 a epoch
    monkeypatch.setattr(training.LocalStepper, "first_chunk", lambda self: 2)
    monkeypatch.setattr(training.LocalStepper, "next_chunk", lambda self, chunk, elapsed: 2)
    run, calls = training.LocalStepper.run, []

    def counting(self, order, first, last):
        calls.append(last)
        if len(calls) == at and at != 7:
            signal.raise_signal(signal.SIGINT)  # held until the chunk is done
        return run(self, order, first, last)
    monkeypatch.setattr(training.LocalStepper, "run", counting)

    def callback(epoch, metrics):  # at == 7: right after epoch 2 is recorded
        if at == 7 and epoch == 2:
            signal.raise_signal(signal.SIGINT)
    net = fresh()
    start = net.parameters.copy()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=5, batch_size=4, lr=0.3, shuffle=False, callback=callback)
    epoch, batches = net.history.interrupted
    expected = (2, 6) if at == 7 else ((at - 1) // 3 + 1, 2 * ((at - 1) % 3 + 1))
    assert (epoch, min(batches, 6)) == (expected[0], min(expected[1], 6))
    assert net.history.epochs == (epoch if batches == 6 else epoch - 1)
    assert len(net.history.get("lr", [])) == net.history.epochs
    replay = fresh()
    replay.parameters[:] = start
    _replay(replay, X, y, epoch, batches, 4, lr=0.3)
    assert np.array_equal(net.parameters, replay.parameters)


# ----------------------------------------------------------------------------- threads

def test_two_networks_in_two_threads_equal_one_after_the_other(compiled):
    X, y = problem([30, 40, 3], 3000, seed=5)

    def train(seed, out):
        net = fastbp.Network([30, 40, 3], "tanh", loss="cross_entropy", backend=compiled, seed=seed)
        net.fit(X, y, epochs=3, batch_size=16, lr=0.05, momentum=0.9)
        out[seed] = net.parameters.copy()

    sequential, parallel = {}, {}
    for seed in (1, 2):
        train(seed, sequential)
    threads = [threading.Thread(target=train, args=(seed, parallel)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in (1, 2):
        assert np.array_equal(sequential[seed], parallel[seed])


def test_one_network_from_two_threads_is_refused(compiled):
    X, y = problem([30, 40, 3], 2000, seed=6)
    net = fastbp.Network([30, 40, 3], backend=compiled, seed=0)
    net.fit(X[:50], y[:50], epochs=1)
    errors = []
    trainer = threading.Thread(target=lambda: net.fit(X, y, epochs=200, batch_size=8,
                                                      callback=lambda epoch, m: bool(errors)))
    trainer.start()
    while not net._lock.locked():  # wait until training holds the network
        time.sleep(0.001)
    try:
        net.predict(X[:5])
    except RuntimeError as error:
        errors.append(str(error))
    trainer.join()
    assert errors and "being used by another thread" in errors[0]
    assert np.isfinite(net.parameters).all()


# ----------------------------------------------------------------------------- model files

def saved(tmp_path):
    net = fresh()
    path = tmp_path / "model.npz"
    net.save(path)
    return net, path


def test_corrupted_model_files(tmp_path):
    net, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fastbp model"):
        fastbp.load(tmp_path / "flipped.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable fastbp model"):
        fastbp.load(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("layer_sizes = [4, 5, 3]")
    with pytest.raises(ValueError, match=r"not an \.npz archive"):
        fastbp.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "missing.npz")


def test_tampered_model_files(tmp_path):
    import json
    net, path = saved(tmp_path)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    config = json.loads(str(arrays["config"]))
    for change, message in [({"layer_sizes": [4, 6, 3]}, "parameters has shape"),
                            ({"activation": "swish"}, "unknown activation"),
                            ({"version": 99}, "format version 99"),
                            ({"format": "other"}, "not a fastbp model"),
                            ({"layer_sizes": "4,5,3"}, "invalid model configuration")]:
        bad = dict(arrays, config=np.array(json.dumps(dict(config, **change))))
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(ValueError, match=message):
            fastbp.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", **dict(arrays, parameters=np.full_like(arrays["parameters"], np.nan)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fastbp.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "pickle.npz", **dict(arrays, parameters=np.array([object()], dtype=object)))
    with pytest.raises(ValueError, match="not a readable fastbp model"):  # never unpickled
        fastbp.load(tmp_path / "pickle.npz")


# ----------------------------------------------------------------------------- leaks

def resident_kib():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_stays_flat_over_many_fits_and_predictions(compiled):
    X, y = problem([50, 64, 10], 2000, seed=7)
    for _ in range(5):  # warm up: compile, caches, pools
        net = fastbp.Network([50, 64, 10], backend=compiled, seed=0)
        net.fit(X, y, epochs=1, batch_size=32)
        net.predict(X)
    before = resident_kib()
    for _ in range(60):
        net = fastbp.Network([50, 64, 10], backend=compiled, seed=0)
        net.fit(X, y, epochs=1, batch_size=32, validation_data=(X[:100], y[:100]))
        net.predict(X)
        net.evaluate(X, y)
    grown = resident_kib() - before
    assert grown < 8 * 1024, f"resident memory grew by {grown} KiB over 60 fits"


def test_a_non_finite_cost_stops_before_any_update(backend):
    """Small layers run the output error and the top layer's update in one serial step: a NaN cost
    must still stop before that update (and be reported as the cost)."""
    X, y = problem(SIZES, 40, seed=8, labels=False)
    net = fastbp.Network(SIZES, "identity", dtype="float32", backend=backend, seed=0)
    with pytest.raises(TrainingDiverged, match="the cost became NaN or infinite") as error:
        net.fit(X * 100, y, epochs=5, batch_size=8, lr=30.0, momentum=0.9, shuffle=False)
    epochs, batches = error.value.epoch - 1, error.value.batch  # completed before the failing one
    replay = fastbp.Network(SIZES, "identity", dtype="float32", backend=backend, seed=0)
    if epochs:
        replay.fit(X * 100, y, epochs=epochs, batch_size=8, lr=30.0, momentum=0.9, shuffle=False)
    if batches:
        replay.fit(X[:batches * 8] * 100, y[:batches * 8], epochs=1, batch_size=8, lr=30.0,
                   momentum=0.9, shuffle=False)
    assert np.array_equal(net.parameters, replay.parameters)
