"""pytest-benchmark: fastbp's primitive kernels, one call at a time, Numba against Cython against numpy.

Every kernel of ``fastbp.kernels.codes.KERNELS`` x contender x dtype x shape, where the shapes are
layers of the four workloads with their batch sizes (bench/workloads.py). The contenders (``KERNELS``
below) expose the same functions with the same arguments: ``fastbp-numba`` and ``fastbp-cython``
(``fastbp.backends.kernels(name)``: single-threaded, on the calling thread) and ``numpy`` (the same
operations as numpy expressions; its BLAS limited to one thread, like the primitives). One
``benchmark.group`` per kernel, shape and dtype, so the table compares contenders side by side;
``extra_info`` names the library and holds the FLOP of a call.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/test_kernels.py --benchmark-autosave

A compiled backend that is not built here is skipped with the reason.
"""
import numpy as np
import pytest

import workloads

fastbp_backends = pytest.importorskip("fastbp.backends")
codes = pytest.importorskip("fastbp.kernels.codes")

DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------- the numpy contender

def _apply(act, Z):
    if act == codes.SIGMOID:
        np.negative(Z, out=Z)
        np.exp(Z, out=Z)
        Z += 1
        np.reciprocal(Z, out=Z)
    elif act == codes.RELU:
        np.maximum(Z, 0, out=Z)
    elif act == codes.TANH:
        np.tanh(Z, out=Z)
    elif act == codes.SOFTMAX:
        Z -= Z.max(axis=1, keepdims=True)
        np.exp(Z, out=Z)
        Z /= Z.sum(axis=1, keepdims=True)
    elif act != codes.IDENTITY:
        raise NotImplementedError(act)


def _derivative(act, A):
    if act == codes.SIGMOID:
        return A * (1 - A)
    if act == codes.RELU:
        return A > 0
    if act == codes.TANH:
        return 1 - A * A
    return 1


class NumpyKernels:
    """The primitive kernels as numpy expressions (the same arguments and outputs as fastbp's)."""

    @staticmethod
    def dense_forward(W, b, A, rows, act, Z):
        np.matmul(A[rows], W.T, out=Z)
        Z += b
        _apply(act, Z)

    @staticmethod
    def activation_forward(act, Z):
        _apply(act, Z)

    @staticmethod
    def activation_backward(act, A, D):
        D *= _derivative(act, A)

    @staticmethod
    def output_error(act, loss, Z, Y, rows, D, cost):
        T = Y[rows]
        if act == codes.SOFTMAX and loss == codes.CROSS_ENTROPY:
            lse = Z.max(axis=1, keepdims=True)
            lse += np.log(np.exp(Z - lse).sum(axis=1, keepdims=True))
            cost[:] = (T * (lse - Z)).sum(axis=1)
            np.exp(Z - lse, out=Z)
            np.subtract(Z, T, out=D)
        elif loss == codes.CROSS_ENTROPY:  # sigmoid output: costs from z (softplus)
            cost[:] = (T * np.logaddexp(0, -Z) + (1 - T) * np.logaddexp(0, Z)).sum(axis=1)
            _apply(act, Z)
            np.subtract(Z, T, out=D)
        else:
            _apply(act, Z)
            np.subtract(Z, T, out=D)
            cost[:] = 0.5 * (D * D).sum(axis=1)
            D *= _derivative(act, Z)

    @staticmethod
    def backward_error(W, D, A, act, E):
        np.matmul(D, W, out=E)
        E *= _derivative(act, A)

    @staticmethod
    def weight_gradient(D, A, rows, scale, G, gb):
        np.matmul(D.T, A[rows], out=G)
        G *= scale
        np.sum(D, axis=0, out=gb)
        gb *= scale

    @staticmethod
    def update_parameters(opt, P, G, S, hyper, n_weights):  # SGD with momentum only
        if opt != codes.SGD:
            raise NotImplementedError("the numpy contender does SGD only")
        lr, l2, mu = hyper[codes.H_LR], hyper[codes.H_L2], hyper[codes.H_MOMENTUM]
        g = G.copy()
        g[:n_weights] += l2 * P[:n_weights]
        if mu:
            S[0] *= mu
            S[0] += g
            g = S[0]
        P -= lr * g
        return True


# --------------------------------------------------------------------------- contenders

def _fastbp(name):
    def load():
        try:
            return fastbp_backends.kernels(name)
        except fastbp_backends.BackendUnavailable as error:
            pytest.skip(f"fastbp-{name} unavailable: {error}")
    return load


KERNELS = {  # contender -> (library named in extra_info, loader of the kernel namespace)
    "fastbp-numba": ("fastbp-numba", _fastbp("numba")),
    "fastbp-cython": ("fastbp-cython", _fastbp("cython")),
    "numpy": ("numpy", lambda: NumpyKernels),
}


# --------------------------------------------------------------------------- cases

def _layer_case(workload, layer):
    w = workloads.get(workload)
    n_in, n_out = w.shapes[layer]
    return pytest.param((w, n_in, n_out), id=f"{workload}-L{layer + 1}-{n_in}x{n_out}-b{w.batch}")


# A layer of each workload (a hidden layer fed by the input for the small ones, the widest
# hidden-to-hidden layer for the others); the activation is the workload's hidden activation.
LAYERS = [_layer_case("nielsen", 0), _layer_case("nielsen2", 0), _layer_case("mid", 1),
          _layer_case("wide", 1)]
MODELS = [pytest.param(workloads.get(name), id=name) for name in workloads.NAMES]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The primitives run on one thread; so does numpy's BLAS here."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(params=list(KERNELS))
def contender(request):
    library, load = KERNELS[request.param]
    return request.param, library, load()


@pytest.fixture(params=DTYPES)
def dtype(request):
    return np.dtype(request.param)


def _label(benchmark, kernel, case, dtype, contender, flop):
    name, library, _ = contender
    benchmark.group = f"{kernel} {case} {dtype.name}"
    benchmark.extra_info.update(library=library, contender=name, kernel=kernel, case=case,
                                dtype=dtype.name, flop=flop)


def _act(w):
    return codes.ACTIVATIONS[w.activation]


def _layer(case, dtype, seed=0):
    """Random W, b, A (the batch's inputs, n rows), rows (a shuffled batch) for one layer."""
    w, n_in, n_out = case
    rng = np.random.default_rng(seed)
    m = w.batch
    n = 4 * m
    W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    A = rng.random((n, n_in)).astype(dtype)
    rows = rng.permutation(n)[:m].astype(np.int64)
    return w, m, W, b, A, rows, rng


@pytest.mark.parametrize("case", LAYERS)
def test_dense_forward(benchmark, contender, dtype, case):
    w, m, W, b, A, rows, _ = _layer(case, dtype)
    Z = np.empty((m, W.shape[0]), dtype)
    k = contender[2]
    _label(benchmark, "dense_forward", _case_id(case), dtype, contender, 2 * W.size * m)
    benchmark(k.dense_forward, W, b, A, rows, _act(w), Z)


@pytest.mark.parametrize("case", LAYERS)
def test_backward_error(benchmark, contender, dtype, case):
    w, m, W, b, A, rows, rng = _layer(case, dtype)
    D = (rng.standard_normal((m, W.shape[0])) * 0.1).astype(dtype)
    A_below = A[rows]  # the lower layer's activations of the batch, (m, n_in)
    E = np.empty((m, W.shape[1]), dtype)
    k = contender[2]
    _label(benchmark, "backward_error", _case_id(case), dtype, contender, 2 * W.size * m)
    benchmark(k.backward_error, W, D, A_below, _act(w), E)


@pytest.mark.parametrize("case", LAYERS)
def test_weight_gradient(benchmark, contender, dtype, case):
    w, m, W, b, A, rows, rng = _layer(case, dtype)
    D = (rng.standard_normal((m, W.shape[0])) * 0.1).astype(dtype)
    G = np.empty_like(W)
    gb = np.empty_like(b)
    k = contender[2]
    _label(benchmark, "weight_gradient", _case_id(case), dtype, contender, 2 * W.size * m)
    benchmark(k.weight_gradient, D, A, rows, 1.0 / m, G, gb)


@pytest.mark.parametrize("case", LAYERS)
def test_activation_forward(benchmark, contender, dtype, case):
    w, m, W, b, A, rows, rng = _layer(case, dtype)
    Z = rng.standard_normal((m, W.shape[0])).astype(dtype)  # in place: sigmoid converges, ReLU is idempotent
    k = contender[2]
    _label(benchmark, "activation_forward", _case_id(case), dtype, contender, 0)
    benchmark(k.activation_forward, _act(w), Z)


@pytest.mark.parametrize("case", LAYERS)
def test_activation_backward(benchmark, contender, dtype, case):
    w, m, W, b, A, rows, rng = _layer(case, dtype)
    A_out = rng.random((m, W.shape[0])).astype(dtype)
    D0 = rng.standard_normal((m, W.shape[0])).astype(dtype)
    D = D0.copy()
    k = contender[2]
    _label(benchmark, "activation_backward", _case_id(case), dtype, contender, 0)

    def fresh():  # D shrinks in place with each call (sigmoid' <= 1/4): restore it, untimed
        D[:] = D0
        return (_act(w), A_out, D), {}

    benchmark.pedantic(k.activation_backward, setup=fresh, rounds=_ROUNDS, warmup_rounds=2)


@pytest.mark.parametrize("model", MODELS)
def test_output_error(benchmark, contender, dtype, model):
    w = model
    rng = np.random.default_rng(0)
    m, k_out = w.batch, w.layers[-1]
    n = 4 * m
    Z0 = rng.standard_normal((m, k_out)).astype(dtype)
    Y = np.eye(k_out, dtype=dtype)[rng.integers(0, k_out, n)]
    rows = rng.permutation(n)[:m].astype(np.int64)
    Z = Z0.copy()
    D = np.empty_like(Z)
    cost = np.empty(m)
    k = contender[2]
    _label(benchmark, "output_error", f"{w.name}-{w.loss}-{w.output}-b{m}x{k_out}", dtype,
           contender, 0)

    def fresh():  # Z holds pre-activations in, activations out: restore it, untimed
        Z[:] = Z0
        return (codes.ACTIVATIONS[w.output], codes.LOSSES[w.loss], Z, Y, rows, D, cost), {}

    benchmark.pedantic(k.output_error, setup=fresh, rounds=_ROUNDS, warmup_rounds=2)


@pytest.mark.parametrize("model", MODELS)
def test_update_parameters(benchmark, contender, dtype, model):
    w = model
    rng = np.random.default_rng(0)
    n_weights = w.weights
    n_params = n_weights + sum(w.layers[1:])
    P = rng.standard_normal(n_params).astype(dtype)
    G = (rng.standard_normal(n_params) * 1e-3).astype(dtype)
    S = np.zeros((2, n_params), dtype)
    hyper = np.zeros(codes.H_SIZE)
    hyper[codes.H_LR], hyper[codes.H_L2], hyper[codes.H_MOMENTUM] = w.lr * 1e-3, w.l2, w.momentum
    k = contender[2]
    _label(benchmark, "update_parameters", f"{w.name}-sgd-mu{w.momentum:g}-{n_params}", dtype,
           contender, 0)
    benchmark(k.update_parameters, codes.SGD, P, G, S, hyper, n_weights)


def _case_id(case):
    w, n_in, n_out = case
    return f"{w.name}-{n_in}x{n_out}-b{w.batch}"


_ROUNDS = 50
