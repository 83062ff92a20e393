"""Training: the exact semantics against an independent per-sample implementation, backends against
each other, thread counts, seeds, dtypes, divergence."""
import numpy as np
import pytest
from support import close, problem

import fastbp
from fastbp.network import TrainingDiverged


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def nielsen_sgd(weights, biases, X, Y, batch_size, lr, l2, momentum, epochs):
    """Nielsen's network.py, one sample at a time, with momentum and L2 on the weights: an
    implementation independent of the project's code. Sigmoid layers, mse cost, no shuffling."""
    Ws = [w.astype(np.float64).copy() for w in weights]
    bs = [b.astype(np.float64).copy() for b in biases]
    vW = [np.zeros_like(w) for w in Ws]
    vb = [np.zeros_like(b) for b in bs]
    for _ in range(epochs):
        for start in range(0, len(X), batch_size):
            batch = range(start, min(start + batch_size, len(X)))
            gW = [np.zeros_like(w) for w in Ws]
            gb = [np.zeros_like(b) for b in bs]
            for s in batch:
                activations, a = [X[s]], X[s]
                for W, b in zip(Ws, bs):
                    a = sigmoid(W @ a + b)
                    activations.append(a)
                delta = (a - Y[s]) * a * (1 - a)
                for l in range(len(Ws) - 1, -1, -1):
                    gW[l] += np.outer(delta, activations[l])
                    gb[l] += delta
                    if l:
                        a_prev = activations[l]
                        delta = (Ws[l].T @ delta) * a_prev * (1 - a_prev)
            m = len(batch)
            for l in range(len(Ws)):
                vW[l] = momentum * vW[l] + gW[l] / m + l2 * Ws[l]
                vb[l] = momentum * vb[l] + gb[l] / m
                Ws[l] -= lr * vW[l]
                bs[l] -= lr * vb[l]
    return Ws, bs


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_training_follows_the_course_exactly(backend, batch_size):
    """shuffle=False: consecutive batches in order, the last partial one included; mean gradient plus
    l2*W on weights only; v = mu*v + g, theta -= lr*v."""
    X, y = problem([6, 5, 4], 23, seed=1, labels=False)
    net = fastbp.Network([6, 5, 4], "sigmoid", loss="mse", backend=backend, seed=0)
    expected = nielsen_sgd(net.weights, net.biases, X, y, batch_size, 0.7, 0.05, 0.8, epochs=2)
    net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.7, l2=0.05, momentum=0.8, shuffle=False)
    for actual, wanted in zip(net.weights + net.biases, expected[0] + expected[1]):
        np.testing.assert_allclose(actual, wanted, rtol=1e-10, atol=1e-13)


CONFIGS = [
    dict(sizes=[12, 9, 5], activation="sigmoid", loss="mse"),
    dict(sizes=[12, 9, 5], activation="sigmoid", output_activation="sigmoid", loss="cross_entropy"),
    dict(sizes=[12, 17, 6, 5], activation="relu", loss="cross_entropy"),
    dict(sizes=[12, 7, 5], activation="tanh", output_activation="identity", loss="mse"),
    dict(sizes=[12, 10, 5], activation="leaky_relu", loss="cross_entropy"),
]


def trained(backend, config, dtype="float64", n_threads=None, seed=3, epochs=1, **fit):
    sizes = config["sizes"]
    X, y = problem(sizes, 97, seed=5, dtype=dtype)
    net = fastbp.Network(sizes, config["activation"], config.get("output_activation"),
                         config["loss"], dtype, backend, n_threads=n_threads, seed=seed)
    options = dict(epochs=epochs, batch_size=8, lr=0.3, l2=1e-3, momentum=0.9)
    options.update(fit)
    history = net.fit(X, y, **options)
    return net, history


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['activation']}-{c['loss']}")
def test_backends_agree_after_an_epoch(compiled, dtype, config):
    reference, ref_history = trained("numpy", config, dtype)
    net, history = trained(compiled, config, dtype)
    close(net.parameters, reference.parameters, dtype, factor=100 if dtype == "float64" else 10)
    close(history["loss"], ref_history["loss"], dtype, factor=100)


def test_compiled_backends_agree_with_each_other():
    names = [name for name in ("numba", "cython") if name in fastbp.available_backends()]
    if len(names) < 2:
        pytest.skip("needs both compiled backends")
    a, _ = trained("numba", CONFIGS[2], epochs=2)
    b, _ = trained("cython", CONFIGS[2], epochs=2)
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS[::2], ids=lambda c: c["activation"])
def test_thread_count_does_not_change_results(compiled, dtype, config):
    one, _ = trained(compiled, config, dtype, n_threads=1, epochs=2)
    two, _ = trained(compiled, config, dtype, n_threads=2, epochs=2)
    three, _ = trained(compiled, config, dtype, n_threads=3, epochs=2)
    assert np.array_equal(one.parameters, two.parameters)
    assert np.array_equal(one.parameters, three.parameters)


def test_same_seed_same_result(backend):
    a, history_a = trained(backend, CONFIGS[0], epochs=2)
    b, history_b = trained(backend, CONFIGS[0], epochs=2)
    c, _ = trained(backend, CONFIGS[0], epochs=2, seed=4)
    assert np.array_equal(a.parameters, b.parameters)
    assert history_a["loss"] == history_b["loss"]
    assert not np.array_equal(a.parameters, c.parameters)


@pytest.mark.parametrize("optimizer,options", [
    ("sgd", dict(momentum=0.9, nesterov=True)), ("adam", dict(lr=0.01)), ("rmsprop", dict(lr=0.01))])
def test_optimizers_agree_with_the_reference(compiled, optimizer, options):
    options = dict(optimizer=optimizer, **options)
    reference, _ = trained("numpy", CONFIGS[2], epochs=2, **options)
    net, _ = trained(compiled, CONFIGS[2], epochs=2, **options)
    np.testing.assert_allclose(net.parameters, reference.parameters, rtol=1e-9, atol=1e-12)


def test_float32_trains_end_to_end(backend):
    X, y = problem([10, 16, 3], 300, seed=2, dtype="float32")
    y = (X[:, :3].sum(axis=1) * 2).astype(int) % 3  # a learnable rule
    net = fastbp.Network([10, 16, 3], "relu", loss="cross_entropy", dtype="float32",
                         backend=backend, seed=0)
    history = net.fit(X, y, epochs=30, batch_size=16, lr=0.1, momentum=0.9)
    assert net.parameters.dtype == np.float32
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert net.forward(X).dtype == np.float32


def test_divergence_stops_with_the_last_finite_parameters(backend):
    X, y = problem([8, 6, 3], 64, seed=3, labels=False)
    X *= 1e3
    net = fastbp.Network([8, 6, 3], "identity", loss="mse", backend=backend, seed=0)
    with pytest.raises(TrainingDiverged, match="epoch 1, minibatch") as error:
        net.fit(X, y, epochs=3, batch_size=4, lr=1e3)
    assert np.isfinite(net.parameters).all()
    assert error.value.epoch == 1 and error.value.history.epochs == 0


def agrees_for_any_thread_count(compiled, dtype, sizes, X, y, **fit):
    """Train a tanh network on (X, y) with the reference and with `compiled` at 1, 2, 3 and 5
    threads: the same bits at every count, and the reference's values."""
    results = []
    for backend, n_threads in (("numpy", 1), (compiled, 1), (compiled, 2), (compiled, 3), (compiled, 5)):
        net = fastbp.Network(sizes, "tanh", loss="cross_entropy", dtype=dtype, backend=backend,
                             n_threads=n_threads, seed=0)
        net.fit(X, y, epochs=2, lr=0.1, **fit)
        results.append(net.parameters.copy())
    assert all(np.array_equal(results[1], other) for other in results[2:])
    close(results[1], results[0], dtype, factor=100)


def test_inputs_longer_than_a_span_agree_for_any_thread_count(compiled, dtype):
    """The forward and gradient tiles take the inputs a span (codes.SPAN_BYTES) at a time: with more
    inputs than a span in either dtype, the reference's results, and the same bits for any thread
    count (53 samples: a partial last batch, of an odd size)."""
    from fastbp.kernels import codes
    sizes = [codes.SPAN_BYTES // 4 + 76, 10, 3]
    X, y = problem(sizes, 53, seed=4, dtype=dtype)
    agrees_for_any_thread_count(compiled, dtype, sizes, X, y, batch_size=10, l2=1e-3)


def test_error_terms_in_column_blocks_agree_for_any_thread_count(compiled, dtype):
    """A hidden layer wider than planner.TILE_COLUMNS has its error terms (and their derivative and
    dropout) in blocks of columns starting past 0: the reference's results, and the same bits for
    any thread count."""
    from fastbp.kernels import planner
    sizes = [6, planner.TILE_COLUMNS + 88, 3]
    X, y = problem(sizes, 53, seed=6, dtype=dtype)
    agrees_for_any_thread_count(compiled, dtype, sizes, X, y, batch_size=8, dropout=0.3)


@pytest.mark.parametrize("batch_size", [40, 130])
@pytest.mark.parametrize("gather", [True, False], ids=["gathered", "large-slot"])
def test_large_layers_take_the_blas_path_and_agree(compiled, dtype, batch_size, gather,
                                                   monkeypatch):
    """Layers of 128 x 128 and more use BLAS tiles for batches of 32 and more (the forward pass from
    128 on), with a gathered copy of the batch; or, with slots over planner.GATHER_MAX_VALUES, BLAS
    above layer 0 and layer 0's tiles reading X in place: the same results as the reference, for
    any thread count."""
    from fastbp.kernels import codes, planner
    sizes = [150, 140, 130, 5]
    if not gather:
        monkeypatch.setattr(planner, "GATHER_MAX_VALUES", 0)
    net = fastbp.Network(sizes, "relu", loss="cross_entropy", dtype=dtype, backend=compiled, seed=0)
    program = planner.program(codes.TRAIN, net._buffers(batch_size)[0], batch_size)
    blas = program[:, codes.P_BLAS] != 0
    assert blas.sum() >= 3 - (not gather) * 2
    assert (program[0, codes.P_OP] == codes.OP_GATHER) == gather
    assert blas[program[:, codes.P_LAYER] == 0].any() == gather
    assert blas[program[:, codes.P_OP] == codes.OP_FORWARD].any() == (batch_size >= 128)
    X, y = problem(sizes, 300, seed=8, dtype=dtype)
    reference = fastbp.Network(sizes, "relu", loss="cross_entropy", dtype=dtype, backend="numpy", seed=0)
    results = []
    for n_threads in (1, 2, 3, 5):  # 300 samples: a partial last batch
        net = fastbp.Network(sizes, "relu", loss="cross_entropy", dtype=dtype, backend=compiled,
                             n_threads=n_threads, seed=0)
        net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.05, l2=1e-3, momentum=0.9, dropout=0.2)
        results.append(net.parameters.copy())
    reference.fit(X, y, epochs=2, batch_size=batch_size, lr=0.05, l2=1e-3, momentum=0.9, dropout=0.2)
    assert all(np.array_equal(results[0], other) for other in results[1:])
    close(results[0], reference.parameters, dtype, factor=1000 if dtype == "float64" else 50)
    close(net.forward(X), reference.forward(X), dtype, factor=1000 if dtype == "float64" else 50)


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_the_workers_shares_hand_out_every_tile_once(n_workers):
    """The shares of a step (nb_train._share_tile; its Cython twin is checked through the training
    tests above) hold every tile of every row once, and a serial step's rows as one tile; every
    share takes a part of each row of several tiles."""
    pytest.importorskip("numba")
    from fastbp.kernels import codes, nb_train
    program = np.zeros((5, codes.P_FIELDS), np.int64)
    program[:, codes.P_TILES] = [3, 1, 2, 8, 1]  # a serial step (rows 0-2), an update step (3-4)
    program[:, codes.P_SERIAL] = [1, 1, 1, 0, 0]
    for p, q, serial in ((0, 3, True), (3, 5, False)):
        expected = [(p, 0)] if serial else [(r, u) for r in range(p, q)
                                            for u in range(program[r, codes.P_TILES])]
        handed = []
        for v in range(n_workers):
            share = []
            while True:
                r, t = nb_train._share_tile(program, p, q, codes.P_TILES, serial, v, n_workers,
                                            len(share))
                if t < 0:
                    break
                share.append((r, t))
            if not serial and n_workers <= 2:  # two workers: each holds half of the 8-tile row
                assert sum(r == 3 for r, _ in share) == 8 // n_workers
            handed += share
        assert sorted(handed) == sorted(expected)


def test_a_worker_gathers_each_batch_into_its_slot_of_that_parity():
    """nb_train._gather (the Cython twin is the same code) copies the rows of batches have+1..batch
    in order, batch i into the worker's slot i % 2 (slots[at:], each `slot` values long), a partial
    last batch included, and returns the batch gathered last; the values around its slots stay."""
    pytest.importorskip("numba")
    from fastbp.kernels import nb_train
    n, n_in, batch_size, slot, at = 23, 32, 10, 10 * 32 + 16, 7
    X = np.random.default_rng(0).random((n, n_in), dtype=np.float32)
    order = np.random.default_rng(1).permutation(n)
    slots = np.full(at + 2 * slot + 5, -1, np.float32)
    assert nb_train._gather(X, order, batch_size, -1, 1, slots, at, slot) == 1
    for batch in (0, 1):
        rows = order[batch * batch_size:(batch + 1) * batch_size]
        start = at + batch % 2 * slot
        assert np.array_equal(slots[start:start + rows.size * n_in].reshape(-1, n_in), X[rows])
    assert nb_train._gather(X, order, batch_size, 1, 2, slots, at, slot) == 2  # 3 rows, into slot 0
    assert np.array_equal(slots[at:at + 3 * n_in].reshape(3, n_in), X[order[20:]])
    assert np.array_equal(slots[at + 3 * n_in:at + 10 * n_in].reshape(7, n_in), X[order[3:10]])
    assert (slots[:at] == -1).all() and (slots[at + 2 * slot:] == -1).all()
    assert nb_train._gather(X, order, batch_size, 2, 2, slots, at, slot) == 2  # nothing left to do


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_a_workers_prefetches_ask_for_every_row_of_the_batch_it_gathers_next(limit):
    """A worker's stream of prefetches (nb_train._prefetch_ahead; the Cython twin is the same code)
    asks for every sample of batch `limit` (the first the worker has not gathered: it gathers them
    all, a partial last batch included), none before the call's last; a stream that fell behind
    (at batch 0, limit 2) skips the batches already gathered."""
    pytest.importorskip("numba")
    from fastbp.kernels import nb_train
    n, batch_size = 23, 10  # batches 1 and 2 (3 samples) to prefetch; the call ends at batch 3
    X = np.zeros((n, 32), np.float32)  # two cache lines a row
    position, seen = (0, 0, 0, 0), set()
    while True:  # a line per call
        moved = nb_train._prefetch_ahead(X, np.arange(n), batch_size, limit, 3, 16, *position)
        if moved == position:
            break
        if moved[3] == 16:  # the first of a row's two lines: (batch, sample) asked for
            seen.add(moved[:2])
        position = moved
    assert seen == {(limit, s) for s in range(min(10, n - 10 * limit))}
