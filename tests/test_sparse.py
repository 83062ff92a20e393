"""Sparse input (scipy.sparse): layer 0 over the nonzeros in every backend, equal to the dense
results; CSC/COO converted; sample weights, checkpoints, thread independence; never densified."""
import numpy as np
import pytest
import scipy.sparse as sp
from support import close

from fastbp import Network, validation
from fastbp.kernels import codes

SIZES = [40, 9, 6, 3]


def _data(n=37, density=0.1, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    X = sp.random(n, SIZES[0], density=density, format="csr", random_state=seed, dtype=dtype)
    X.data = (X.data * 2 - 1).astype(dtype)
    X.data[X.indptr[3]:X.indptr[4]] = 0  # a sample with no nonzero
    X.eliminate_zeros()
    return X, rng.integers(0, SIZES[-1], n)


def _net(backend, dtype, threads=1, **kwargs):
    return Network(SIZES, "tanh", loss="cross_entropy", backend=backend, dtype=dtype,
                   n_threads=threads, seed=1, **kwargs)


def test_forward_and_gradients_equal_dense(backend, dtype):
    X, y = _data(dtype=dtype)
    net = _net(backend, dtype, threads=2)
    close(net.forward(X), net.forward(X.toarray()), dtype)
    for a, b in zip(sum(net.gradients(X, y), []), sum(net.gradients(X.toarray(), y), [])):
        close(a, b, dtype)
    e, f = net.evaluate(X, y), net.evaluate(X.toarray(), y)
    close([e.loss, e.accuracy], [f.loss, f.accuracy], dtype)


def test_forward_and_gradients_equal_the_reference(compiled, dtype):
    X, y = _data(dtype=dtype)
    net, reference = _net(compiled, dtype, threads=3), _net("numpy", dtype)
    close(net.forward(X), reference.forward(X), dtype)
    w = np.random.default_rng(5).random(X.shape[0])
    for a, b in zip(sum(net.gradients(X, y, sample_weight=w), []),
                    sum(reference.gradients(X, y, sample_weight=w), [])):
        close(a, b, dtype)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_equals_dense(backend, dtype, optimizer):
    """A few epochs of minibatch training (partial last batch, L2, momentum or Adam, shuffling,
    validation data, gradient norms) on sparse X give the parameters and history of dense X."""
    X, y = _data(dtype=dtype)
    Xv, yv = _data(11, seed=4, dtype=dtype)
    net = _net(backend, dtype, threads=2)
    twin = net.copy()
    arguments = dict(epochs=3, batch_size=8, lr=0.05, l2=1e-3, momentum=0.9, optimizer=optimizer,
                     metrics=["train_loss", "val_loss", "gradient_norms"])
    ours = net.fit(X, y, validation_data=(Xv, yv), **arguments)
    theirs = twin.fit(X.toarray(), y, validation_data=(Xv.toarray(), yv), **arguments)
    close(net.parameters, twin.parameters, dtype, factor=100)
    for name in ("loss", "train_loss", "val_loss", "gradient_norm_1"):
        close(ours[name], theirs[name], dtype, factor=100)


def test_large_batch_would_use_blas_when_dense():
    """Batches and layers big enough for BLAS (and the gather of layer 0's rows when dense): the
    sparse program reads the nonzeros instead, and the results agree."""
    rng = np.random.default_rng(2)
    X = sp.random(300, 200, density=0.05, format="csr", random_state=3)
    y = rng.integers(0, 4, 300)
    net = Network([200, 130, 4], "relu", loss="cross_entropy", backend="numba", n_threads=2, seed=0)
    desc = net._buffers(256, X=validation.features(X, 200, net.dtype))[0]
    from fastbp.kernels import planner
    assert not planner.program(codes.TRAIN, desc, 256, 300, sparse=True)[:, codes.P_GATHERED].any()
    assert planner.program(codes.TRAIN, net._buffers(256)[0], 256, 300)[:, codes.P_GATHERED].any()
    twin = net.copy()
    net.fit(X, y, epochs=2, batch_size=256, lr=0.05)
    twin.fit(X.toarray(), y, epochs=2, batch_size=256, lr=0.05)
    close(net.parameters, twin.parameters, "float64", factor=100)


def test_threads_give_the_same_bits(compiled, dtype):
    X, y = _data(53, dtype=dtype)
    w = np.random.default_rng(3).random(X.shape[0])
    results = []
    for threads in (1, 2, 3):
        net = _net(compiled, dtype, threads)
        history = net.fit(X, y, epochs=2, batch_size=10, lr=0.05, optimizer="adam",
                          sample_weight=w, metrics=["gradient_norms"])
        results.append((net.parameters.copy(), net.forward(X), history["gradient_norm_1"],
                        np.concatenate([g.ravel() for g in sum(net.gradients(X, y), [])])))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", ["csc", "coo", "lil", "dok", "bsr"])
def test_other_formats_and_dtypes_are_converted(form):
    X, y = _data()
    net = _net("numba", "float32")
    expected = net.forward(X.astype(np.float32))
    other = X.asformat(form)
    close(net.forward(other), expected, "float32")
    close(net.forward(other.astype(np.float64)), expected, "float32")
    if form == "csc":  # int64 indices, sorted or not, an int32 matrix
        close(net.forward(sp.csr_array(X)), expected, "float32")
        rounded = sp.csr_matrix(X.multiply(10).astype(np.int32))
        close(net.forward(rounded), net.forward(rounded.toarray()), "float32")


def test_duplicate_and_unsorted_indices_add_up(backend):
    """A CSR with a column twice in a row (scipy's convention: the values add) and columns out of
    order, as the input of every backend."""
    indptr = np.array([0, 3, 5])
    indices = np.array([4, 1, 4, 0, 2])
    data = np.array([1.0, 2.0, 3.0, 0.5, -1.0])
    X = sp.csr_matrix((data, indices, indptr), shape=(2, SIZES[0]))
    net = _net(backend, "float64")
    close(net.forward(X), net.forward(X.toarray()), "float64")
    for a, b in zip(sum(net.gradients(X, [0, 2]), []), sum(net.gradients(X.toarray(), [0, 2]), [])):
        close(a, b, "float64")


def test_checks():
    net = _net("numba", "float64")
    X, _ = _data()
    with pytest.raises(ValueError, match="has 39 features per sample; the network's input layer"):
        net.forward(X[:, :39])
    with pytest.raises(ValueError, match="no samples"):
        net.forward(X[:0])
    bad = X.copy()
    bad.data[2] = np.nan
    with pytest.raises(ValueError, match=r"X must be finite; X\[\d+, \d+\] is nan"):
        net.forward(bad)
    canonical = validation.features(X, SIZES[0], net.dtype)
    canonical.indices[0] = SIZES[0]  # out of bounds: the drivers refuse it before reading
    desc, work = net._buffers(64, X=canonical)
    with pytest.raises(ValueError, match="column indices must be in"):
        net._driver.forward(desc, net.parameters, canonical, np.zeros((0, 3)), np.zeros((37, 3)),
                            np.zeros(0), work, 1)
    with pytest.raises(TypeError, match="trace takes a dense x, not a sparse matrix"):
        net.trace(X[:1], [0])
    from fastbp import distributed
    with pytest.raises(TypeError, match="distributed training takes a dense X"):
        distributed.prepare(net, X, np.zeros(37, int), None, None, {})


def test_checkpoint_fingerprint_tells_sparse_data_apart(tmp_path):
    X, y = _data()
    net = _net("numba", "float64")
    path = tmp_path / "run.ckpt"
    twin = net.copy()
    net.fit(X, y, epochs=2, batch_size=8, checkpoint=path)
    twin.fit(X.tocsc(), y, epochs=2, batch_size=8, checkpoint=path)  # the same data: it resumes
    np.testing.assert_array_equal(net.parameters, twin.parameters)
    other = X.copy()
    other.data[0] += 1
    from fastbp.checkpoints import CheckpointError, data_fingerprint
    canonical = validation.features(X, SIZES[0], net.dtype)
    assert data_fingerprint(canonical, np.zeros((37, 3))) != data_fingerprint(
        validation.features(other, SIZES[0], net.dtype), np.zeros((37, 3)))
    with pytest.raises(CheckpointError):
        net.copy().fit(other, y, epochs=3, batch_size=8, checkpoint=path)


def test_lbfgs_equals_dense():
    X, y = _data()
    net = _net("cython", "float64")
    twin = net.copy()
    net.fit_lbfgs(X, y, max_iter=5, l2=1e-3)
    twin.fit_lbfgs(X.toarray(), y, max_iter=5, l2=1e-3)
    close(net.parameters, twin.parameters, "float64", factor=1e3)


def test_never_densified():
    """A (1000, 2,000,000) CSR, ~10 nonzeros a row (16 GB as a dense float64 array): training,
    forward and gradients finish, and the Python allocations' peak stays far below the dense size
    (the parameters themselves are 2,000,000 x 2 weights: 32 MB, and a few copies of them)."""
    import tracemalloc
    n, width = 1000, 2_000_000
    rng = np.random.default_rng(0)
    indptr = np.arange(0, 10 * n + 1, 10)
    indices = rng.integers(0, width, 10 * n)
    X = sp.csr_matrix((rng.random(10 * n), indices, indptr), shape=(n, width))
    y = rng.integers(0, 2, n)
    net = Network([width, 2, 2], "relu", loss="cross_entropy", backend="auto", seed=0, n_threads=2)
    tracemalloc.start()
    try:
        net.fit(X, y, epochs=1, batch_size=250, lr=0.1)
        out = net.forward(X)
        grads = net.gradients(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (n, 2) and np.isfinite(out).all() and np.isfinite(grads[0][0]).all()
    assert peak < 400e6, f"peak {peak / 1e6:.0f} MB"  # dense X: 16,000 MB; its gather buffer 4,000


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimators_take_sparse_input():
    pytest.importorskip("sklearn")
    from fastbp import MLPClassifier, MLPRegressor
    X, y = _data(60)
    for solver in ("sgd", "adam", "lbfgs"):
        kwargs = dict(hidden_layer_sizes=(5,), solver=solver, max_iter=5, random_state=0,
                      n_threads=1)
        ours = MLPClassifier(**kwargs).fit(X.tocsc(), y)
        dense = MLPClassifier(**kwargs).fit(X.toarray(), y)
        close(ours.predict_proba(X.tocoo()), dense.predict_proba(X.toarray()), "float64", 1e3)
        assert ours.score(X, y) == dense.score(X.toarray(), y)
    targets = np.random.default_rng(0).random((60, 2))
    ours = MLPRegressor((4,), max_iter=5, random_state=0, early_stopping=True).fit(X, targets)
    dense = MLPRegressor((4,), max_iter=5, random_state=0, early_stopping=True).fit(X.toarray(),
                                                                                   targets)
    close(ours.predict(X), dense.predict(X.toarray()), "float64", 1e3)
    assert ours.coefs_[0].dtype == np.float64
    assert MLPClassifier((3,), max_iter=2).fit(X.astype(np.float32), y).coefs_[0].dtype == \
        np.float32
