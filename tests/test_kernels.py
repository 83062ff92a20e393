"""Every primitive kernel of each compiled backend against the numpy reference, in both dtypes.

Shapes are chosen to hit the kernels' register tiles and every remainder: row counts that are not
multiples of 4, odd sample counts, a single sample, a single unit.
"""
import ast
import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from support import close, problem

import fastbp
from fastbp import backends, reference, validation
from fastbp.kernels import codes, planner

# (samples, n_in, n_out); the last has more inputs than a span (codes.SPAN_BYTES) in either dtype
SHAPES = [(1, 3, 1), (2, 5, 4), (7, 9, 6), (10, 33, 13), (16, 64, 30), (9, 1100, 10)]
ELEMENTWISE = list(codes.HIDDEN_ACTIVATIONS)


def kernels(backend):
    return backends.kernels(backend)


def test_backends_export_the_same_kernels():
    """Twins: the same kernel names, with the same arguments, in both compiled backends."""
    modules = {}
    for name in ("numba", "cython"):
        try:
            modules[name] = backends.kernels(name)
        except backends.BackendUnavailable:
            pytest.skip(f"{name} unavailable")
    for kernel in codes.KERNELS:
        signatures = set()
        for name, module in modules.items():
            assert hasattr(module, kernel), f"{name} lacks kernel {kernel}"
            function = getattr(module, kernel)
            signatures.add(tuple(inspect.signature(getattr(function, "py_func", function)).parameters))
        assert len(signatures) == 1, f"{kernel} takes different arguments: {signatures}"


def test_backends_export_the_same_drivers():
    for name in backends.BACKENDS:
        try:
            module = backends.get(name)
        except backends.BackendUnavailable:
            continue
        for driver in codes.DRIVERS:
            parameters = tuple(inspect.signature(getattr(module, driver)).parameters)
            expected = tuple(inspect.signature(getattr(reference, driver)).parameters)
            assert parameters == expected, f"{name}.{driver}{parameters}"


@pytest.fixture(params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def shape(request):
    return request.param


def arrays(shape, dtype, seed=0):
    m, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    n = m + 5
    return dict(
        W=rng.standard_normal((n_out, n_in)).astype(dtype),
        b=rng.standard_normal(n_out).astype(dtype),
        A=rng.standard_normal((n, n_in)).astype(dtype),
        rows=rng.permutation(n)[:m].astype(np.int64),
        D=rng.standard_normal((m, n_out)).astype(dtype),
        A_prev=rng.standard_normal((m, n_in)).astype(dtype),
    )


@pytest.mark.parametrize("act", ELEMENTWISE + ["softmax"])
def test_dense_forward(compiled, dtype, shape, act):
    a = arrays(shape, dtype)
    Z = np.empty((shape[0], shape[2]), dtype)
    code = codes.ACTIVATIONS[act]
    kernels(compiled).dense_forward(a["W"], a["b"], a["A"], a["rows"], code, Z)
    expected = reference.ACTIVATE[code](a["A"][a["rows"]].astype(np.float64) @ a["W"].T + a["b"])
    close(Z, expected, dtype, factor=10)


def test_the_float32_sigmoid_of_the_forward_tiles_is_within_4_ulp(compiled):
    """The forward tiles' vectorized float32 sigmoid (_exp32's polynomial), against float64's: within
    4 units in the last place from -80 to 80, 0 and 1 beyond, and NaN stays NaN."""
    z = np.concatenate([np.linspace(-80, 80, 20001), [-200, 200, np.nan]]).astype(np.float32)
    Z = np.empty((1, z.size), np.float32)
    kernels(compiled).dense_forward(np.ones((z.size, 1), np.float32), z, np.zeros((1, 1), np.float32),
                                    np.zeros(1, np.int64), codes.SIGMOID, Z)
    exact = 1 / (1 + np.exp(-z[:-3].astype(np.float64)))
    assert (np.abs(Z[0, :-3] - exact) / np.spacing(exact.astype(np.float32))).max() <= 4
    assert Z[0, -3] < 1e-37 and Z[0, -2] == 1 and np.isnan(Z[0, -1])


@pytest.mark.parametrize("act", ELEMENTWISE + ["softmax"])
def test_activation_forward(compiled, dtype, act):
    Z = np.random.default_rng(1).standard_normal((5, 7)).astype(dtype)
    code = codes.ACTIVATIONS[act]
    expected = reference.ACTIVATE[code](Z.astype(np.float64))
    kernels(compiled).activation_forward(code, Z)
    close(Z, expected, dtype)


@pytest.mark.parametrize("act", ELEMENTWISE + ["softmax"])
def test_activation_backward(compiled, dtype, act):
    rng = np.random.default_rng(2)
    code = codes.ACTIVATIONS[act]
    A = reference.ACTIVATE[code](rng.standard_normal((5, 7))).astype(dtype)
    D = rng.standard_normal((5, 7)).astype(dtype)
    A64, D64 = A.astype(np.float64), D.astype(np.float64)
    if act == "softmax":
        expected = A64 * (D64 - (A64 * D64).sum(axis=1, keepdims=True))
    else:
        expected = reference.DERIVATIVE[code](A64) * D64
    kernels(compiled).activation_backward(code, A, D)
    close(D, expected, dtype)


PAIRS = [(act, "mse") for act in ELEMENTWISE + ["softmax"]] + [("sigmoid", "cross_entropy"),
                                                              ("softmax", "cross_entropy")]


@pytest.mark.parametrize("act,loss", PAIRS)
def test_output_error(compiled, dtype, act, loss):
    rng = np.random.default_rng(3)
    m, k, n = 6, 5, 9
    Z = (3 * rng.standard_normal((m, k))).astype(dtype)
    Y = rng.random((n, k)).astype(dtype)
    rows = rng.permutation(n)[:m]
    a_code, l_code = codes.ACTIVATIONS[act], codes.LOSSES[loss]
    A, delta, cost = reference.output_error(a_code, l_code, Z.astype(np.float64), Y[rows].astype(np.float64))
    D, C = np.empty((m, k), dtype), np.empty(m)
    kernels(compiled).output_error(a_code, l_code, Z, Y, rows, D, C)
    close(Z, A, dtype)
    close(D, delta, dtype, factor=10)
    close(C, cost, dtype, factor=10)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_output_error_activates_as_activation_forward(compiled, dtype, loss):
    """Training's output activations (output_error) are, bit for bit, predict's (activation_forward)."""
    rng = np.random.default_rng(4)
    Z = (8 * rng.standard_normal((7, 10))).astype(dtype)
    Y = rng.random((7, 10)).astype(dtype)
    A, D, C = Z.copy(), np.empty_like(Z), np.empty(7)
    kernels(compiled).activation_forward(codes.SIGMOID, A)
    kernels(compiled).output_error(codes.SIGMOID, codes.LOSSES[loss], Z, Y, np.arange(7), D, C)
    assert np.array_equal(Z, A)


def test_output_error_saturated_units_give_finite_costs(compiled, dtype):
    """ln a is taken from z, so a sigmoid at z = +-100 costs a finite 100, not inf."""
    Z = np.array([[100.0, -100.0]], dtype)
    Y = np.array([[0.0, 1.0]], dtype)
    C = np.empty(1)
    kernels(compiled).output_error(codes.SIGMOID, codes.CROSS_ENTROPY, Z, Y, np.array([0]),
                                   np.empty((1, 2), dtype), C)
    assert C[0] == pytest.approx(200.0, rel=1e-6)


def test_output_error_float32_cross_entropy_costs_are_within_2_ulp(compiled):
    """float32's sigmoid cross-entropy takes log1p(e^-|z|) from _exp32 and _log1p32 (no library
    call, so the loop vectorizes): the cost of each unit stays within 2.4e-7 (2 ulp) of float64's,
    down to the smallest costs of saturated units, and NaN stays NaN."""
    z = np.linspace(-80, 80, 40001).astype(np.float32)
    for y in (0.0, 1.0, 0.3):
        Z, Y = z[:, None].copy(), np.full((z.size, 1), y, np.float32)
        C = np.empty(z.size)
        kernels(compiled).output_error(codes.SIGMOID, codes.CROSS_ENTROPY, Z, Y, np.arange(z.size),
                                       np.empty_like(Z), C)
        z64 = z.astype(np.float64)
        expected = np.log1p(np.exp(-np.abs(z64))) + np.where(z64 > 0, (1 - y) * z64, -y * z64)
        assert np.all(np.abs(C - expected) <= 2.4e-7 * expected)
    C = np.empty(1)  # NaN stays NaN, for the training's check of finite costs
    kernels(compiled).output_error(codes.SIGMOID, codes.CROSS_ENTROPY, np.full((1, 1), np.nan, np.float32),
                                   np.zeros((1, 1), np.float32), np.arange(1), np.empty((1, 1), np.float32), C)
    assert np.isnan(C[0])


@pytest.mark.parametrize("act", ELEMENTWISE)
def test_backward_error(compiled, dtype, shape, act):
    a = arrays(shape, dtype)
    code = codes.ACTIVATIONS[act]
    A = reference.ACTIVATE[code](a["A_prev"]).astype(dtype)
    E = np.empty_like(A)
    kernels(compiled).backward_error(a["W"], a["D"], A, code, E)
    expected = (a["D"].astype(np.float64) @ a["W"]) * reference.DERIVATIVE[code](A.astype(np.float64))
    close(E, expected, dtype, factor=10)


def test_weight_gradient(compiled, dtype, shape):
    a = arrays(shape, dtype)
    m, n_in, n_out = shape
    G, gb = np.empty((n_out, n_in), dtype), np.empty(n_out, dtype)
    kernels(compiled).weight_gradient(a["D"], a["A"], a["rows"], 1.0 / m, G, gb)
    D64 = a["D"].astype(np.float64)
    close(G, D64.T @ a["A"][a["rows"]] / m, dtype, factor=10)
    close(gb, D64.mean(axis=0), dtype, factor=10)


OPTIMIZERS = [("sgd", 0.0, 0), ("sgd", 0.9, 0), ("sgd", 0.9, 1), ("adam", 0.0, 0), ("rmsprop", 0.0, 0)]


@pytest.mark.parametrize("n,n_weights", [(11, 7), (1003, 517)])  # the vector loops and remainders
@pytest.mark.parametrize("opt,momentum,nesterov", OPTIMIZERS)
def test_update_parameters(compiled, dtype, opt, momentum, nesterov, n, n_weights):
    rng = np.random.default_rng(4)
    P = rng.standard_normal(n).astype(dtype)
    S = np.zeros((2, n), dtype)
    hyper = np.zeros(codes.H_SIZE)
    hyper[[codes.H_LR, codes.H_L2, codes.H_MOMENTUM, codes.H_NESTEROV, codes.H_BETA1, codes.H_BETA2,
           codes.H_EPS, codes.H_RHO]] = (0.01, 0.1, momentum, nesterov, 0.9, 0.999, 1e-8, 0.99)
    P_ref, S_ref, hyper_ref = P.astype(np.float64), S.astype(np.float64), hyper.copy()
    code = codes.OPTIMIZERS[opt]
    for _ in range(3):
        G = rng.standard_normal(n).astype(dtype)
        assert kernels(compiled).update_parameters(code, P, G, S, hyper, n_weights)
        reference.update_parameters(code, P_ref, G.astype(np.float64), S_ref, hyper_ref, n_weights)
    assert hyper[codes.H_STEP] == 3
    close(P, P_ref, dtype, factor=10)
    close(S, S_ref, dtype, factor=10)


def test_update_parameters_reports_non_finite(compiled):
    P = np.ones(4)
    hyper = np.zeros(codes.H_SIZE)
    hyper[codes.H_LR] = 1.0
    assert not kernels(compiled).update_parameters(codes.SGD, P, np.array([0, np.inf, 0, 0.0]),
                                                   np.zeros((2, 4)), hyper, 4)


@pytest.mark.parametrize("opt", ["adam", "rmsprop"])
def test_update_parameters_divides_as_ieee(compiled, opt):
    """A zero divisor (eps 1e-50 is 0 in float32, and the gradient is 0) makes NaN, reported as
    non-finite by both twins, as C's division does: no ZeroDivisionError from Numba."""
    P, S = np.ones(20, np.float32), np.zeros((2, 20), np.float32)
    hyper = np.zeros(codes.H_SIZE)
    hyper[[codes.H_LR, codes.H_BETA1, codes.H_BETA2, codes.H_EPS, codes.H_RHO]] = (0.01, 0.9, 0.999, 1e-50,
                                                                                   0.99)
    assert not kernels(compiled).update_parameters(codes.OPTIMIZERS[opt], P, np.zeros(20, np.float32), S,
                                                   hyper, 20)
    assert np.isnan(P).all()


def test_drivers_refuse_buffers_that_do_not_fit(compiled):
    """The kernels do not check bounds: the drivers check every buffer against the descriptor."""
    net = fastbp.Network([4, 5, 3], backend=compiled, seed=0)
    desc, work = net._buffers(8)
    driver = backends.get(compiled)
    X, Y = np.zeros((10, 4)), np.zeros((10, 3))
    args = dict(desc=desc, params=net.parameters, grads=net._grads, state=net._state, X=X, Y=Y,
                order=np.arange(10), batch_size=8, first=0, last=2,
                hyper=codes.hyperparameters(2), work=work, costs=np.zeros(10), n_threads=1)
    driver.train_batches(**args)
    for name, bad, message in [("hyper", np.zeros(codes.H_SIZE), "hyper has shape"),
                               ("work", work[:-1], "work has shape"),
                               ("X", np.zeros((10, 5)), "X has shape"),
                               ("order", np.arange(10) + 1, "order must index the rows of X"),
                               ("state", np.zeros((1, net.parameters.size)), "state has shape"),
                               ("costs", np.zeros(3), "costs has shape"),
                               ("costs", np.zeros(0), "costs has shape"),  # training writes costs
                               ("Y", np.zeros((10, 3), np.float32), "Y must be a C-contiguous float64|dtype mismatch")]:
        with pytest.raises((ValueError, TypeError), match=message):
            driver.train_batches(**dict(args, **{name: bad}))
    with pytest.raises(ValueError, match="out has shape"):
        driver.forward(desc, net.parameters, X, Y[:0], np.zeros((9, 3)), np.zeros(0), work, 1)
    for first, last, order in [(0, 3, np.arange(10)), (2, 1, np.arange(10)), (0, 1, np.arange(0))]:
        with pytest.raises(ValueError, match="batches"):  # 2 batches of 8 in 10 rows; 0 in none
            driver.train_batches(**dict(args, first=first, last=last, order=order,
                                        costs=np.zeros(order.shape[0])))
    with pytest.raises(ValueError, match="batches"):
        driver.train_batches(**dict(args, batch_size=0))
    with pytest.raises(ValueError, match="costs has shape"):
        driver.gradients(desc, net.parameters, net._grads, X, Y, work, np.zeros(0), 1)
    with pytest.raises(ValueError, match="Y has shape"):
        driver.gradients(desc, net.parameters, net._grads, X, Y[:0], work, np.zeros(10), 1)


def test_the_planner_counts_the_tiles_of_a_partial_last_batch():
    """The workers count tiles only through the program: P_TILES for a full batch, P_LAST_TILES for
    the call's last batch (3 samples of 103 in batches of 10; a full one when the size divides).
    The gather row has none: each worker gathers for itself."""
    desc, _ = codes.describe([150, 140, 130, 5], codes.RELU, codes.SOFTMAX, codes.CROSS_ENTROPY,
                             codes.SGD, 40)
    for kind in (codes.TRAIN, codes.GRADIENTS, codes.FORWARD):
        for batch, n, last in [(10, 103, 3), (40, 300, 20), (40, 280, 40), (40, 25, 25)]:
            program = planner.program(kind, desc, batch, n)
            for row in program:
                n_in, n_out = codes.layer(desc, row[codes.P_LAYER])[:2]
                tiled = row[codes.P_OP] != codes.OP_GATHER
                assert row[codes.P_TILES] == planner.part_tiles(row, n_in, n_out, batch) >= tiled
                assert row[codes.P_LAST_TILES] == planner.part_tiles(row, n_in, n_out, last) >= tiled
            assert np.array_equal(program, planner.program(kind, desc, batch, n + batch))
    assert np.array_equal(planner.program(codes.TRAIN, desc, 40),
                          planner.program(codes.TRAIN, desc, 40, 400))


def test_a_partial_last_batch_gives_the_same_results_for_any_thread_count(compiled, dtype):
    X, y = problem([7, 12, 9, 4], 103, seed=5, dtype=dtype)
    results = []
    for n_threads in (1, 2, 3, 5):
        net = fastbp.Network([7, 12, 9, 4], "tanh", loss="cross_entropy", dtype=dtype,
                             backend=compiled, n_threads=n_threads, seed=0)
        net.fit(X, y, epochs=2, batch_size=10, lr=0.1, momentum=0.9, dropout=0.2)
        results.append(net.parameters)
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_a_call_runs_one_worker_for_each_share_of_work_it_has(compiled, monkeypatch):
    """By default a driver call runs one more worker for each planner.MIN_WORKER_WORK multiply-adds
    it has (784-30-10: 23,520 weights; training costs three multiply-adds per weight and sample), at
    most n_threads, at least one; the results do not change."""
    monkeypatch.setattr(planner, "MIN_WORKER_WORK", 1 << 22)
    desc = codes.describe([784, 30, 10], codes.SIGMOID, codes.SIGMOID, codes.MSE, codes.SGD, 10)[0]
    assert planner.workers(codes.FORWARD, desc, 1, 4) == 1  # a one-sample forward pass
    assert planner.workers(codes.TRAIN, desc, 10, 2) == 1  # one minibatch: 0.7 M
    assert planner.workers(codes.TRAIN, desc, 200, 2) == 2  # 14.1 M
    assert planner.workers(codes.TRAIN, desc, 200, 5) == 3
    assert planner.workers(codes.FORWARD, desc, 20_000, 5) == 5
    X, y = problem([784, 30, 10], 400, seed=1, dtype="float32")
    nets = [fastbp.Network([784, 30, 10], dtype="float32", backend=compiled, n_threads=n, seed=0)
            for n in (1, 3)]
    for net in nets:  # 30 minibatches, one call each: one worker; the forward pass over 400 (9.5 M):
        for start in range(0, 300, 10):  # two of the three
            net.fit(X[start:start + 10], y[start:start + 10], epochs=1, batch_size=10, lr=0.5,
                    shuffle=False)
    assert np.array_equal(nets[0].parameters, nets[1].parameters)
    assert np.array_equal(nets[0].forward(X), nets[1].forward(X))
    monkeypatch.setattr(planner, "MIN_WORKER_WORK", 0)
    assert planner.workers(codes.FORWARD, desc, 1, 4) == 4


def aligned_and_misaligned(X):
    """Copies of X whose rows start at cache lines, and 16 bytes past them (as numpy often puts a
    large array's)."""
    aligned = codes.zeros(X.shape, X.dtype)
    aligned[:] = X
    offset = 16 // X.itemsize
    misaligned = codes.zeros(X.size + offset, X.dtype)[offset:].reshape(X.shape)
    misaligned[:] = X
    return aligned, misaligned


def test_rows_of_x_off_cache_lines_are_gathered_with_the_same_results(compiled, dtype):
    """X's rows 16 bytes past a cache line (where numpy often puts them) are read through the
    gathered, aligned copy of each batch: the same bits as an aligned X, for any thread count (53
    samples: a partial last batch)."""
    X, y = problem([16, 12, 4], 53, seed=3, dtype=dtype)
    aligned, misaligned = aligned_and_misaligned(X)
    assert misaligned.ctypes.data % codes.ALIGNMENT == 16
    assert codes.misaligned(misaligned) and not codes.misaligned(aligned)
    desc, _ = codes.describe([16, 12, 4], codes.TANH, codes.SOFTMAX, codes.CROSS_ENTROPY, codes.SGD, 10)
    for misaligned_rows in (False, True):
        program = planner.program(codes.TRAIN, desc, 10, 53, misaligned=misaligned_rows)
        assert (program[0, codes.P_OP] == codes.OP_GATHER) == misaligned_rows
        assert (program[:, codes.P_GATHERED] != 0).all() == misaligned_rows
    results = []
    for data, n_threads in [(aligned, 1), (misaligned, 1), (misaligned, 2), (misaligned, 3),
                            (misaligned, 5)]:
        net = fastbp.Network([16, 12, 4], "tanh", loss="cross_entropy", dtype=dtype,
                             backend=compiled, n_threads=n_threads, seed=0)
        assert net.parameters.ctypes.data % codes.ALIGNMENT == 0
        net.fit(data, y, epochs=2, batch_size=10, lr=0.1, momentum=0.9)
        results.append(net.parameters)
    assert all(np.array_equal(results[0], other) for other in results[1:])
    assert np.array_equal(net.forward(misaligned), net.forward(aligned))  # predicting gathers too
    copy = pickle.loads(pickle.dumps(net))
    assert all(a.ctypes.data % codes.ALIGNMENT == 0 for a in (copy.parameters, copy._grads, copy._state))


def test_each_worker_gathers_the_rows_into_slots_of_its_own():
    """A gathering program starts with an OP_GATHER row without tiles, a step of its own (which the
    workers skip), naming the first serial step (P_AHEAD), where a worker without a tile gathers the
    next batch ahead, even for a batch of one sample. The slots are not in the work buffer: each call
    has two per worker, each at a cache line (planner.gather_slots)."""
    desc, _ = codes.describe([416, 30, 10], codes.SIGMOID, codes.SIGMOID, codes.MSE, codes.SGD, 10)
    sparse, _ = codes.describe([416, 30, 10], codes.SIGMOID, codes.SIGMOID, codes.MSE, codes.SGD, 10,
                               gather=False)
    slot = desc[codes.D_SLOT]
    assert slot >= 10 * 416 and slot * 4 % codes.ALIGNMENT == 0 and sparse[codes.D_SLOT] == 0
    assert desc[codes.D_WORK] == sparse[codes.D_WORK]
    for batch in (10, 1):
        program = planner.program(codes.TRAIN, desc, batch, 53, misaligned=True)
        gather, host = program[0], program[program[:, codes.P_SERIAL] != 0][0]
        assert gather[codes.P_OP] == codes.OP_GATHER and gather[codes.P_AHEAD] == host[codes.P_STEP] >= 1
        assert gather[codes.P_TILES] == gather[codes.P_LAST_TILES] == 0
        assert (program[:, codes.P_STEP] == gather[codes.P_STEP]).sum() == 1
        for workers in (1, 3):  # what a driver call gets (planner.launch), every worker running
            slots = planner.launch(codes.TRAIN, desc, batch, 53, False, True, 0, 6, workers,
                                   np.float32)[5]
            assert slots.shape == (2 * workers * slot,) and slots.ctypes.data % codes.ALIGNMENT == 0
    aligned = planner.program(codes.TRAIN, desc, 10, 53)
    assert (aligned[:, codes.P_AHEAD] == 0).all() and (aligned[:, codes.P_OP] != codes.OP_GATHER).all()
    assert planner.launch(codes.TRAIN, desc, 10, 53, False, False, 0, 6, 2,
                          np.float64)[5].shape == (0,)


def test_large_slots_are_not_gathered(monkeypatch):
    """Misaligned rows are gathered only while a slot holds at most GATHER_UNALIGNED values (a
    bigger copy leaves L2), and nothing is gathered, so layer 0 takes no BLAS, above
    GATHER_MAX_VALUES (each worker would hold two copies of the batch)."""
    desc, _ = codes.describe([150, 140, 130, 5], codes.RELU, codes.SOFTMAX, codes.CROSS_ENTROPY,
                             codes.SGD, 40)
    slot = int(desc[codes.D_SLOT])

    def plan(misaligned):
        program = planner.program(codes.TRAIN, desc, 40, misaligned=misaligned)
        layer0 = program[program[:, codes.P_LAYER] == 0]
        return program[0, codes.P_OP] == codes.OP_GATHER, bool(layer0[:, codes.P_BLAS].any())

    assert plan(False) == (True, True)  # BLAS on layer 0 reads the gathered batch
    monkeypatch.setattr(planner, "GATHER_MAX_VALUES", slot - 1)
    assert plan(False) == plan(True) == (False, False)
    monkeypatch.setattr(planner, "GATHER_MAX_VALUES", slot)
    small, _ = codes.describe([150, 20, 5], codes.RELU, codes.SOFTMAX, codes.CROSS_ENTROPY, codes.SGD,
                              40)
    for limit, gathered in ((int(small[codes.D_SLOT]), True), (int(small[codes.D_SLOT]) - 1, False)):
        monkeypatch.setattr(planner, "GATHER_UNALIGNED", limit)
        program = planner.program(codes.TRAIN, small, 40, misaligned=True)
        assert (program[0, codes.P_OP] == codes.OP_GATHER) == gathered


def test_the_gathered_rows_give_the_same_bits_for_any_thread_count_and_cut(compiled, dtype):
    """Rows gathered by each worker into its own slots, as its tiles need them or ahead in the serial
    step (misaligned X): 1, 2, 3 and 5 threads, the epoch in one driver call or three (each call
    gathers its first batch), and a last batch of one sample give the same parameters, bit for bit,
    as X read in place (aligned)."""
    X, y = problem([416, 30, 10], 51, seed=2, dtype=dtype)
    aligned, misaligned = aligned_and_misaligned(X)
    net = fastbp.Network([416, 30, 10], "sigmoid", dtype=dtype, backend=compiled, seed=0)
    Y = net._Y(y, 51)
    order = np.random.default_rng(4).permutation(51)
    hyper = codes.hyperparameters(2)
    hyper[[codes.H_LR, codes.H_MOMENTUM]] = 0.5, 0.9
    driver = backends.get(compiled)

    def train(threads, cuts, data=misaligned):
        params, h = net.parameters.copy(), hyper.copy()
        state = np.zeros((2, params.shape[0]), params.dtype)
        desc, work = net._buffers(10, codes.SGD)
        grads, costs = np.zeros_like(params), np.zeros(51)
        for first, last in zip(cuts[:-1], cuts[1:]):
            done, status, _ = driver.train_batches(desc, params, grads, state, data, Y, order, 10,
                                                   first, last, h, work, costs, threads)
            assert (done, status) == (last - first, codes.DONE)
        return params, costs

    params, costs = train(1, [0, 6], aligned)
    for threads in (1, 2, 3, 5):
        for cuts in ([0, 6], [0, 2, 5, 6]):
            again, again_costs = train(threads, cuts)
            assert np.array_equal(again, params) and np.array_equal(again_costs, costs), (threads, cuts)


def test_the_planner_keeps_each_program_and_hands_out_copies(monkeypatch):
    """program() plans once per kind, shapes, last batch's size and planner constants: the planned
    table every time, a copy its caller may write (also for another number of samples with the same
    last batch, or another last batch), and after a change of a constant (bench/ab_codes.py changes
    them at run time) the program planned anew."""
    desc = fastbp.Network([30, 512, 64, 3], backend="numpy")._buffers(10)[0]
    first = planner.program(codes.TRAIN, desc, 10, 95)
    assert np.array_equal(first, planner._plan(codes.TRAIN, desc, 10, 5))
    first[:] = -1
    assert np.array_equal(planner.program(codes.TRAIN, desc, 10, 95),
                          planner._plan(codes.TRAIN, desc, 10, 5))
    assert np.array_equal(planner.program(codes.TRAIN, desc, 10, 195),
                          planner._plan(codes.TRAIN, desc, 10, 5))
    one = planner._plan(codes.TRAIN, desc, 10, 1)  # a last batch of 1: fewer error-term tiles
    assert not np.array_equal(one, planner._plan(codes.TRAIN, desc, 10, 5))
    assert np.array_equal(planner.program(codes.TRAIN, desc, 10, 91), one)
    # every constant the planner defines is in the key
    defined = {target.id for node in ast.parse(inspect.getsource(planner)).body
               if isinstance(node, ast.Assign) for target in node.targets
               if isinstance(target, ast.Name) and target.id.isupper() and target.id[0] != "_"}
    assert set(planner.TUNING) == defined - {"TUNING"}
    kept = planner.program(codes.TRAIN, desc, 10, 95)
    monkeypatch.setattr(planner, "MIN_TILE_WORK", 1)  # tiles of TILE_ROWS rows
    again = planner.program(codes.TRAIN, desc, 10, 95)
    assert not np.array_equal(again, kept)
    assert np.array_equal(again, planner._plan(codes.TRAIN, desc, 10, 5))


def test_the_drivers_check_the_rows_of_order_their_minibatches_read(compiled):
    """A driver call checks the part of order its minibatches read, the partial last one included,
    and no more: a row index out of range there is refused, one elsewhere is never read."""
    net = fastbp.Network([4, 5, 3], backend=compiled, seed=0)
    desc, work = net._buffers(4)
    driver = backends.get(compiled)
    X, Y = np.zeros((10, 4)), np.zeros((10, 3))

    def train(order, first, last):
        return driver.train_batches(desc, net.parameters.copy(), net._grads, net._state.copy(), X,
                                    Y, order, 4, first, last, codes.hyperparameters(2), work,
                                    np.zeros(10), 1)

    for bad in (0, 3, 8, 9):  # batches 0..2 of 4, 4 and 2 rows
        order = np.arange(10)
        order[bad] = 10
        for first, last in ((0, 1), (1, 2), (2, 3), (0, 3)):
            if first * 4 <= bad < last * 4:
                with pytest.raises(ValueError, match="order must index the rows of X"):
                    train(order, first, last)
            else:
                assert train(order, first, last)[:2] == (last - first, codes.DONE)


def test_the_planner_fuses_the_next_forward_pass_into_layer_0s_update_tiles(monkeypatch):
    """When training, layer 0's update row names layer 0's forward row (P_FORWARD_NEXT), whose tiles
    divide its own, when both are parallel (the forward pass a step of its own); never when
    computing gradients or predicting, nor when either is one serial tile or the tiles do not
    divide, nor with FUSE_FORWARD 0."""
    for sizes, batch in (([784, 30, 10], 10), ([784, 256, 128, 10], 64), ([784, 10], 10),
                         ([784, 1024, 10], 256)):
        desc, _ = codes.describe(sizes, codes.RELU, codes.SOFTMAX, codes.CROSS_ENTROPY, codes.SGD,
                                 batch)
        for misaligned in (False, True):
            program = planner.program(codes.TRAIN, desc, batch, misaligned=misaligned)
            forward = np.flatnonzero((program[:, codes.P_OP] == codes.OP_FORWARD)
                                     & (program[:, codes.P_LAYER] == 0))[0]
            update = np.flatnonzero((program[:, codes.P_OP] == codes.OP_UPDATE)
                                    & (program[:, codes.P_LAYER] == 0))[0]
            assert program[update, codes.P_FORWARD_NEXT] == forward + 1
            assert (program[:, codes.P_FORWARD_NEXT] != 0).sum() == 1
            assert (program[:, codes.P_STEP] == program[forward, codes.P_STEP]).sum() == 1
            assert program[update, codes.P_ROWS] % program[forward, codes.P_ROWS] == 0
        for kind in (codes.GRADIENTS, codes.FORWARD):
            assert not planner.program(kind, desc, batch)[:, codes.P_FORWARD_NEXT].any()
    def fused(sizes, batch):
        desc, _ = codes.describe(sizes, codes.TANH, codes.SOFTMAX, codes.CROSS_ENTROPY, codes.SGD,
                                 batch)
        return planner.program(codes.TRAIN, desc, batch)[:, codes.P_FORWARD_NEXT].any()
    assert not fused([16, 12, 4], 10)  # the forward pass is one serial tile
    assert not fused([100, 164, 10], 32)  # update tiles of 84 rows, forward tiles of 8
    assert fused([150, 140, 130, 5], 40)
    monkeypatch.setattr(planner, "BLAS_TILES", 1)  # the update of layer 0: one tile, in the serial step
    assert not fused([150, 140, 130, 5], 40)
    monkeypatch.setattr(planner, "BLAS_TILES", 2)
    monkeypatch.setattr(planner, "FUSE_FORWARD", 0)
    assert not fused([784, 30, 10], 10)


@pytest.mark.parametrize("sizes, batch, n, sparse", [
    ([416, 30, 4], 10, 51, False), ([416, 12], 10, 51, False), ([150, 140, 130, 5], 40, 121, False),
    ([416, 30, 4], 10, 51, True)], ids=["hidden", "output", "blas", "sparse"])
def test_the_fused_forward_pass_gives_the_same_bits_as_its_own_step(compiled, dtype, sizes, batch,
                                                                    n, sparse, monkeypatch):
    """Layer 0's forward pass run by the batch before's update tiles (P_FORWARD_NEXT), into the
    activations of the batch's parity (D_ODD_A0), gives the same bits as its own step, for 1, 2, 3
    and 5 threads, the epoch in one driver call or three (each call's first batch runs the step),
    a partial last batch of one sample, dropout, sample weights with a batch whose weights are all
    0 (no step), X's rows gathered (misaligned) or read in place or sparse, update tiles of BLAS
    over several forward tiles, and the layer fused being the output layer."""
    X, y = problem(sizes, n, seed=7, dtype=dtype)
    net = fastbp.Network(sizes, "tanh", loss="cross_entropy", dtype=dtype, backend=compiled, seed=0)
    Y, weights = net._Y(y, n), np.random.default_rng(8).random(n)
    order = np.random.default_rng(9).permutation(n)
    weights[order[batch:2 * batch]] = 0  # the second batch makes no step
    hyper = codes.hyperparameters(len(sizes) - 1)
    hyper[[codes.H_LR, codes.H_MOMENTUM, codes.H_SEED]] = 0.3, 0.9, 11
    hyper[codes.H_DROPOUT] = 0.2 if len(sizes) > 2 else 0
    driver = backends.get(compiled)
    batches = -(-n // batch)
    if sparse:
        X[X < 0.5] = 0
        inputs = [validation.features(scipy.sparse.csr_matrix(X), sizes[0], net.dtype)]
    else:
        inputs = list(aligned_and_misaligned(X))

    def train(threads, cuts, data):
        params, h = net.parameters.copy(), hyper.copy()
        state = np.zeros((2, params.shape[0]), params.dtype)
        desc, work = net._buffers(batch, codes.SGD, X=data)
        grads, costs = np.zeros_like(params), np.zeros(n)
        program = planner.program(codes.TRAIN, desc, batch, n, sparse,
                                  not sparse and codes.misaligned(data))
        assert program[:, codes.P_FORWARD_NEXT].any() == bool(planner.FUSE_FORWARD)
        for first, last in zip(cuts[:-1], cuts[1:]):
            done, status, _ = driver.train_batches(desc, params, grads, state, data, Y, order, batch,
                                                   first, last, h, work, costs, threads, None,
                                                   weights)
            assert (done, status) == (last - first, codes.DONE)
        return params, costs

    monkeypatch.setattr(planner, "FUSE_FORWARD", 0)
    params, costs = train(1, [0, batches], inputs[0])
    monkeypatch.setattr(planner, "FUSE_FORWARD", 1)
    for data in inputs:
        for threads in (1, 2, 3, 5):
            for cuts in ([0, batches], [0, 1, batches - 2, batches]):
                again, again_costs = train(threads, cuts, data)
                assert np.array_equal(again, params) and np.array_equal(again_costs, costs), \
                    (threads, cuts)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_an_order_of_some_rows_trains_as_a_copy_of_them(compiled, dtype, sparse):
    """train_batches' order may list some of X's rows (the estimators' epochs visit their own order
    of X without copying it): the same bits as those rows copied out, with costs and sample weights
    indexed as the driver says (costs like order, weights like X's rows), for 1 and 3 threads."""
    X, y = problem([40, 12, 4], 60, seed=3, dtype=dtype)
    net = fastbp.Network([40, 12, 4], "tanh", loss="cross_entropy", dtype=dtype, backend=compiled,
                         seed=0)
    Y, weights = net._Y(y, 60), np.random.default_rng(5).random(60)
    rows = np.random.default_rng(6).permutation(60)[:27]  # 27 rows: a partial last batch of 7
    hyper = codes.hyperparameters(2)
    hyper[[codes.H_LR, codes.H_MOMENTUM]] = 0.3, 0.9
    driver = backends.get(compiled)

    def train(data, targets, w, order, threads):
        params, h = net.parameters.copy(), hyper.copy()
        state = np.zeros((2, params.shape[0]), params.dtype)
        desc, work = net._buffers(10, codes.SGD, X=data)
        costs = np.zeros(order.shape[0])
        outcome = driver.train_batches(desc, params, np.zeros_like(params), state, data, targets,
                                       order, 10, 0, 3, h, work, costs, threads, None, w)
        assert outcome[:2] == (3, codes.DONE)
        return params, costs

    def features(A):
        return validation.features(scipy.sparse.csr_matrix(A) if sparse else A, 40, net.dtype)
    copied = train(features(X[rows]), Y[rows], weights[rows], np.arange(27), 1)
    for threads in (1, 3):
        some = train(features(X), Y, weights, rows, threads)
        assert all(np.array_equal(a, b) for a, b in zip(some, copied)), threads
    with pytest.raises(ValueError, match="costs has shape"):
        driver.train_batches(*net._buffers(10, codes.SGD)[:1], net.parameters.copy(),
                             np.zeros_like(net.parameters), np.zeros((2, net.parameters.size),
                                                                     net.dtype), X, Y, rows, 10, 0,
                             3, hyper.copy(), net._buffers(10, codes.SGD)[1], np.zeros(60), 1)


def test_the_build_fingerprint_covers_only_what_is_compiled_in(monkeypatch):
    """A docstring or the planner never invalidates a Cython build; a code's value does."""
    before = codes.source_hash()
    if "cython" in fastbp.available_backends():
        assert backends.get("cython").CODES == before
    monkeypatch.setattr(codes, "__doc__", "another docstring")
    monkeypatch.setattr(planner, "TILE_ROWS", planner.TILE_ROWS * 2)
    assert codes.source_hash() == before
    monkeypatch.setattr(codes, "P_TILES", codes.P_TILES + 100)
    assert codes.source_hash() != before
    pxi = codes.cython_declarations()
    assert f"#define FBP_GOLDEN {codes.GOLDEN:#x}ULL" in pxi and 'const uint64_t MIX_1 "FBP_MIX_1"' in pxi
    assert "TILE_ROWS" not in pxi and "SPINS" not in pxi


def test_the_kernels_package_imports_nothing_from_the_api():
    """fastbp.kernels knows only the contract: no import of fastbp outside fastbp.kernels."""
    from fastbp import kernels
    folder = Path(kernels.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from above fastbp.kernels"
                names = [node.module or ""] if node.level == 0 else []
            for name in names:
                assert name.split(".")[0] != "fastbp" or name.startswith("fastbp.kernels"), \
                    f"{path.name} imports {name}"
