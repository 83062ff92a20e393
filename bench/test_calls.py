"""pytest-benchmark: small calls, where what a call costs on top of its arithmetic shows.

For nielsen and mid, each compiled backend, one thread and FASTBP_BENCH_THREADS (default: every CPU):

* ``forward-1``: ``Network.forward`` of one sample (serving one request at a time), and at one
  thread the same with PyTorch for scale (``library`` torch; skipped when it is not installed);
* ``step-1``: the backend's ``train_batches`` driver over one minibatch (a training loop of the
  caller's own that steps the driver once per minibatch), the minibatches of an epoch in turn;
* ``step-all``: the same minibatches in one call (``extra_info["per_minibatch_s"]``: the call's time
  per minibatch, to set beside step-1's).

Groups are ``"<case> <workload> threads=<n>"``; ``extra_info`` has ``library``, ``backend``,
``threads`` and ``workload``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/test_calls.py --benchmark-autosave
"""
import os

import numpy as np
import pytest

import benchenv
import peers
import workloads

fastbp = pytest.importorskip("fastbp")
codes = pytest.importorskip("fastbp.kernels.codes")

THREADS = int(os.environ.get("FASTBP_BENCH_THREADS", str(benchenv.cpus())))
MINIBATCHES = 64  # an epoch of this many minibatches
CASES = [pytest.param(w, b, t, id=f"{w}-{b}-t{t}") for w in ("nielsen", "mid")
         for b in ("numba", "cython") for t in sorted({1, THREADS})]


def _network(workload, backend, threads):
    if backend not in fastbp.available_backends():
        reason = fastbp.available_backends(details=True)[backend].get("reason", "")
        pytest.skip(f"fastbp backend {backend} unavailable: {reason}")
    return workloads.network(workload, backend, "float32", threads)


def _label(benchmark, case, workload, backend, threads):
    benchmark.group = f"{case} {workload} threads={threads}"
    benchmark.extra_info.update(library=f"fastbp-{backend}", backend=backend, threads=threads,
                                workload=workload)


@pytest.mark.parametrize("workload, backend, threads", CASES)
def test_forward_one_sample(benchmark, workload, backend, threads):
    net = _network(workload, backend, threads)
    x = workloads.data(workload, 1, "float32")[0]
    _label(benchmark, "forward-1", workload, backend, threads)
    benchmark(net.forward, x)


@pytest.mark.parametrize("workload", ("nielsen", "mid"))
def test_forward_one_sample_torch(benchmark, workload):
    """The same forward pass of one sample with PyTorch, for scale (one thread, inference mode,
    numpy in and out, the output activation applied), in the group of fastbp's at one thread."""
    reason = peers.unavailable("torch")
    if reason:
        pytest.skip(reason)
    X, y = workloads.data(workload, 2, "float32")
    predict = peers.build("torch", workload, X, y, threads=1).predict
    assert predict(X[:1]).shape == (1, workloads.get(workload).layers[-1])
    benchmark.group = f"forward-1 {workload} threads=1"
    benchmark.extra_info.update(library="torch", threads=1, workload=workload)
    benchmark(predict, X[:1])


@pytest.mark.parametrize("per_call", [1, MINIBATCHES], ids=["step-1", "step-all"])
@pytest.mark.parametrize("workload, backend, threads", CASES)
def test_train_batches(benchmark, workload, backend, threads, per_call):
    net = _network(workload, backend, threads)
    w = workloads.get(workload)
    n = MINIBATCHES * w.batch
    X, y = workloads.data(workload, n, "float32")
    driver = fastbp.backends.get(backend)
    desc, work = net._buffers(w.batch, codes.SGD)
    params, grads, state = net.parameters.copy(), np.zeros_like(net.parameters), net._state.copy()
    Y, costs, order = net._Y(y, n), np.zeros(n), np.arange(n)
    hyper = codes.hyperparameters(len(w.layers) - 1)
    hyper[codes.H_LR] = 1e-3  # small steps: the parameters stay finite however many rounds run
    at = [0]

    def call():
        first = at[0]
        at[0] = (first + per_call) % MINIBATCHES
        driver.train_batches(desc, params, grads, state, X, Y, order, w.batch, first,
                             first + per_call, hyper, work, costs, threads)

    _label(benchmark, "step-1" if per_call == 1 else "step-all", workload, backend, threads)
    benchmark(call)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["per_minibatch_s"] = benchmark.stats.stats.median / per_call
