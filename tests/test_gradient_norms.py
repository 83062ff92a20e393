"""Per-layer gradient norms (fit(metrics=["gradient_norms"])): history["gradient_norm_m"] is the mean
over the epoch's minibatches of ||dC/dW^m||_F, computed inside the drivers, the same bits for any
thread count and any cut of the epoch into calls; over MPI, of each update's Allreduced gradient."""
import copy
import json
import signal
import sys

import numpy as np
import pytest
from support import close, problem
from test_distributed import WORKER, _run, mpiexec  # noqa: F401  (the fixture)

import fastbp
from fastbp import backends, distributed, reference
from fastbp.cli import main
from fastbp.kernels import codes

SIZES = [40, 64, 48, 5]      # several gradient tiles per layer in the compiled drivers
BLAS = [130, 130, 40, 5]     # batches of 64: the first two layers' gradients by BLAS tiles
THREADS = (1, 2, 3)


def _net(backend, dtype="float64", sizes=SIZES, threads=None, activation="sigmoid", seed=0):
    return fastbp.Network(sizes, activation, loss="cross_entropy", dtype=dtype, backend=backend,
                          n_threads=threads, seed=seed)


def _norms(history, layers=3):
    """history's gradient norms: one row per epoch, a column per layer."""
    return np.array([history[f"gradient_norm_{m}"] for m in range(1, layers + 1)]).T


def _frobenius(net, X, y):
    """||dC/dW^m||_F of the mean gradient over (X, y), for each layer m."""
    return np.array([np.linalg.norm(dW.astype(np.float64)) for dW in net.gradients(X, y)[0]])


# --------------------------------------------------------------------------- one process

def test_a_full_batch_epoch_records_the_norms_of_the_gradient(backend, dtype):
    """One minibatch of all samples: the norms of the initial parameters' gradient, the same bits on
    1, 2 and 3 threads."""
    X, y = problem(SIZES, 50, seed=1, dtype=dtype)
    seen = []
    for threads in THREADS:
        net = _net(backend, dtype, threads=threads)
        expected = _frobenius(net, X, y)
        history = net.fit(X, y, epochs=1, batch_size=50, lr=1e-3, metrics=["gradient_norms"])
        assert sorted(k for k in history if k.startswith("gradient_norm")) == [
            "gradient_norm_1", "gradient_norm_2", "gradient_norm_3"]
        close(_norms(history)[0], expected, dtype)
        seen.append(_norms(history))
    for other in seen[1:]:
        assert np.array_equal(other, seen[0])


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_mean_over_minibatches_equals_a_replay(backend, dtype, shuffle):
    """Several minibatches (the last partial), momentum and L2 (not in the norms), two epochs: the
    mean of the norms net.gradients gives on a copy stepped through the same minibatches."""
    X, y = problem(SIZES, 50, seed=2, dtype=dtype)
    net = _net(backend, dtype)
    replay = net.copy()
    rng = copy.deepcopy(net._rng)  # to draw what fit draws: the dropout seed, then the orders
    options = dict(lr=0.2, momentum=0.9, l2=1e-2)
    history = net.fit(X, y, epochs=2, batch_size=8, shuffle=shuffle, metrics=["gradient_norms"],
                      **options)
    rng.integers(0, 2 ** 53)
    expected = []
    for _ in range(2):
        order = rng.permutation(50) if shuffle else np.arange(50)
        norms = []
        for start in range(0, 50, 8):
            rows = order[start:start + 8]
            norms.append(_frobenius(replay, X[rows], y[rows]))
            replay.fit(X[rows], y[rows], epochs=1, batch_size=len(rows), shuffle=False, **options)
        expected.append(np.mean(norms, axis=0))
    close(_norms(history), expected, dtype, factor=10)
    close(net.parameters, replay.parameters, dtype, factor=10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_same_bits_for_any_thread_count_and_any_cut_into_calls(compiled, dtype):
    """The driver itself, with BLAS tiles: 1, 2, 3 threads and the epoch in one call or three give the
    same norms and parameters, bit for bit; the numpy reference the same numbers to rounding."""
    X, y = problem(BLAS, 200, seed=3, dtype=dtype)
    net = _net(compiled, dtype, sizes=BLAS, activation="relu")
    Y = net._Y(y, 200)
    order = np.random.default_rng(4).permutation(200)
    hyper = codes.hyperparameters(3)
    hyper[[codes.H_LR, codes.H_MOMENTUM, codes.H_L2]] = 0.05, 0.9, 1e-3

    def train(driver, threads, cuts):
        params, h = net.parameters.copy(), hyper.copy()
        state = np.zeros((2, params.shape[0]), params.dtype)
        desc, work = net._buffers(64, codes.SGD)
        grads, costs, norms = np.zeros_like(params), np.zeros(200), np.zeros(3)
        for first, last in zip(cuts[:-1], cuts[1:]):
            done, status, _ = driver.train_batches(desc, params, grads, state, X, Y, order, 64,
                                                   first, last, h, work, costs, threads, norms)
            assert (done, status) == (last - first, codes.DONE)
        return norms, params

    driver = backends.get(compiled)
    norms, params = train(driver, 1, [0, 4])
    for threads in THREADS:
        for cuts in ([0, 4], [0, 1, 3, 4]):
            again, again_params = train(driver, threads, cuts)
            assert np.array_equal(again, norms), (threads, cuts)
            assert np.array_equal(again_params, params)
    expected, _ = train(reference, 1, [0, 4])
    close(norms, expected, dtype, factor=10)


def test_with_dropout_the_reference_and_the_compiled_backends_agree(compiled, dtype):
    X, y = problem(SIZES, 60, seed=5, dtype=dtype)
    found = {}
    for backend in ("numpy", compiled):
        net = _net(backend, dtype, activation="relu")
        found[backend] = _norms(net.fit(X, y, epochs=2, batch_size=10, lr=0.1, dropout=0.3,
                                        metrics=["gradient_norms"]))
    close(found[compiled], found["numpy"], dtype, factor=10)
    assert (found["numpy"] > 0).all()


def test_the_metric_off_trains_the_same_bits(backend):
    X, y = problem(SIZES, 50, seed=6)
    nets = [_net(backend, threads=2) for _ in range(3)]
    options = dict(epochs=2, batch_size=8, lr=0.1, momentum=0.9)
    nets[0].fit(X, y, **options)
    nets[1].fit(X, y, metrics=["gradient_norms"], **options)
    nets[2].fit(X, y, metrics=["train_loss"], **options)
    for net in nets[1:]:
        assert np.array_equal(net.parameters, nets[0].parameters)
        assert net.history["loss"] == nets[0].history["loss"]
    assert not any(k.startswith("gradient_norm") for k in nets[0].history)


def test_the_drivers_check_the_norms_buffer(backend):
    X, y = problem(SIZES, 10, seed=7)
    net = _net(backend)
    desc, work = net._buffers(8, codes.SGD)
    args = (desc, net.parameters, net._grads, net._state, X, net._Y(y, 10), np.arange(10), 8, 0, 2,
            codes.hyperparameters(3), work, np.zeros(10), 1)
    driver = backends.get(backend)
    norms = np.zeros(3)
    driver.train_batches(*args, norms)
    assert (norms > 0).all()
    driver.train_batches(*args, np.zeros(0))  # empty: off
    driver.train_batches(*args)
    if backend != "numpy":  # the reference checks no buffer
        with pytest.raises(ValueError, match="norms has shape"):
            driver.train_batches(*args, np.zeros(2))
        with pytest.raises(ValueError, match="norms must be a C-contiguous float64"):
            driver.train_batches(*args, np.zeros(3, np.float32))


def test_gradient_norms_is_a_metric_not_a_monitor():
    X, y = problem(SIZES, 20, seed=8)
    net = _net("numpy")
    with pytest.raises(ValueError, match="unknown monitor 'gradient_norms'"):
        net.fit(X, y, epochs=1, metrics=["gradient_norms"], monitor="gradient_norms",
                early_stopping=True)
    history = net.fit(X, y, epochs=3, batch_size=5, metrics=["gradient_norms"], early_stopping=True,
                      patience=1, validation_data=(X, y))
    assert len(history["gradient_norm_2"]) == len(history["val_loss"]) == history.epochs


def test_a_resumed_fit_records_the_same_norms(backend, tmp_path):
    """The checkpoint keeps the history, norms included; the resumed run's are the same bits."""
    X, y = problem(SIZES, 40, seed=9)
    options = dict(epochs=4, batch_size=8, lr=0.1, metrics=["gradient_norms"])
    whole = _net(backend).fit(X, y, **options)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _net(backend).fit(X, y, checkpoint=path, callback=lambda e, m: e == 2 and signal.raise_signal(
            signal.SIGINT), **options)
    resumed = _net(backend).fit(X, y, checkpoint=path, **options)
    assert np.array_equal(_norms(resumed), _norms(whole)) and _norms(whole).shape == (4, 3)


# --------------------------------------------------------------------------- MPI

def test_one_process_through_the_mpi_stepper(compiled):
    """comm=None: the norms of each update's gradient, as a local fit over the same minibatches."""
    X, y = problem(SIZES, 48, seed=10)
    a, b = _net(compiled), _net(compiled)
    history = distributed.fit(a, X, y, None, epochs=2, batch_size=8, lr=0.1, seed=4,
                              metrics=["gradient_norms"])
    local = []
    for epoch in (1, 2):
        order = np.concatenate(distributed.global_batches([48], 8, epoch, 4))
        local.append(_norms(b.fit(X[order], y[order], epochs=1, batch_size=8, lr=0.1,
                                  shuffle=False, metrics=["gradient_norms"]))[0])
    close(_norms(history), local, "float64")


MPI_CASES = [  # name, backend, dtype, fit
    ("norms_numba", "numba", "float64", dict(epochs=2, batch_size=16, lr=0.1, momentum=0.9, seed=7,
                                             l2=1e-3, metrics=["gradient_norms"])),
    ("norms_cython_every_2", "cython", "float32",
     dict(epochs=2, batch_size=8, lr=0.05, seed=3, allreduce_every=2, metrics=["gradient_norms"])),
]


@pytest.mark.parametrize("case", MPI_CASES, ids=[case[0] for case in MPI_CASES])
def test_two_ranks_record_the_norms_of_the_global_minibatches(mpiexec, tmp_path, case):  # noqa: F811
    """The same norms on both ranks, bit for bit, and those of single-process training over the same
    global minibatches (one per update)."""
    name, backend, dtype, fit = case
    n = 64
    X, y = problem(SIZES, n, seed=11, dtype=dtype)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    spec = dict(name=name, data=str(tmp_path / "data.npz"), layers=SIZES, activation="sigmoid",
                loss="cross_entropy", dtype=dtype, backend=backend, init_seed=0, fit=fit)
    (tmp_path / "cases.json").write_text(json.dumps([spec]))
    status, out, err = _run([mpiexec, "-n", "2", sys.executable, str(WORKER),
                             str(tmp_path / "cases.json"), str(tmp_path)])
    assert status == 0, f"{out}\n{err}"
    ranks = [np.load(tmp_path / f"{name}.rank{r}.norms.npy") for r in range(2)]
    assert np.array_equal(ranks[0], ranks[1]) and ranks[0].shape == (3, 2)
    seed = int(np.load(tmp_path / f"{name}.rank0.npz")["seed"])
    net = fastbp.Network(SIZES, "sigmoid", loss="cross_entropy", dtype=dtype, backend=backend, seed=0)
    options = {k: v for k, v in fit.items() if k in ("lr", "momentum", "l2")}
    expected = []
    for epoch in range(1, fit["epochs"] + 1):
        updates = distributed.global_batches(distributed.shard_sizes(n, 2), fit["batch_size"], epoch,
                                             seed, True, fit.get("allreduce_every", 1))
        norms = []
        for rows in updates:
            norms.append(_frobenius(net, X[rows], y[rows]))
            net.fit(X[rows], y[rows], epochs=1, batch_size=len(rows), shuffle=False, **options)
        expected.append(np.mean(norms, axis=0))
    close(ranks[0].T, expected, dtype, factor=10)


# --------------------------------------------------------------------------- the command line, the picture

def test_the_command_line_prints_and_writes_the_norms(tmp_path, capsys, compiled):
    pytest.importorskip("sklearn")
    record = tmp_path / "history.json"
    status = main(["train", "--layers", "64,16,16,10", "--activation", "sigmoid", "--epochs", "2",
                   "--backend", compiled, "--gradient-norms", "--json", str(record)])
    out = capsys.readouterr().out
    assert status == 0
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2
    for line in lines:
        values = line.split("|dW| ")[1].split()
        assert len(values) == 3 and all(float(v) > 0 for v in values)
    history = json.loads(record.read_text())["history"]
    assert [len(history[f"gradient_norm_{m}"]) for m in (1, 2, 3)] == [2, 2, 2]
    assert float(lines[0].split("|dW| ")[1].split()[0]) == pytest.approx(
        history["gradient_norm_1"][0], rel=0.06)


def test_the_learning_curves_draw_the_recorded_norms(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastbp import plotting
    X, y = problem(SIZES, 40, seed=12)
    history = _net("numpy").fit(X, y, epochs=3, batch_size=8, lr=0.1,
                                metrics=["gradient_norms", "train_loss"])
    figure = plotting.plot_learning_curves(history, tmp_path / "curves.png")
    norms = figure.axes[2]
    assert norms.get_yscale() == "log"
    assert [line.get_label() for line in norms.lines] == ["layer 1", "layer 2", "layer 3"]
    np.testing.assert_array_equal(norms.lines[2].get_ydata(), history["gradient_norm_3"])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    plt.close("all")
