"""pytest-benchmark: one whole training epoch on each workload, fastbp against its peers.

One ``benchmark.group`` per workload and dtype; ``extra_info`` names the library, the samples per
epoch and the FLOP per sample. The contenders (``CONTENDERS``) are fastbp through ``Network.fit``
with each compiled backend (what users get), and the peers of bench/peers.py (torch, jax, jax-step,
sklearn, numpy), each skipped with the reason when its package is not installed. Each benchmark runs a
warm-up epoch (compilation) and then FASTBP_BENCH_ROUNDS timed epochs (see bench/conftest.py for the
sizes).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/test_epochs.py --benchmark-autosave

``test_peer_semantics`` (not a benchmark) checks that every peer computes what fastbp computes: two
minibatch steps from the same initial parameters give the same parameters as fastbp's numpy backend.
"""
import os

import numpy as np
import pytest

import benchenv
import peers
import workloads

N = int(os.environ.get("FASTBP_BENCH_N", "2000"))
WIDE_N = int(os.environ.get("FASTBP_BENCH_WIDE_N", "512"))
ROUNDS = int(os.environ.get("FASTBP_BENCH_ROUNDS", "5"))
THREADS = int(os.environ.get("FASTBP_BENCH_THREADS", str(benchenv.cpus())))
DTYPES = tuple(os.environ.get("FASTBP_BENCH_DTYPES", "float32").split(","))


def _fastbp(backend):
    def build(workload, X, y, threads, dtype):
        fastbp = pytest.importorskip("fastbp")
        if backend not in fastbp.available_backends():
            reason = fastbp.available_backends(details=True)[backend].get("reason", "")
            pytest.skip(f"fastbp backend {backend} unavailable: {reason}")
        return workloads.fastbp_epoch(workload, X, y, backend, dtype, threads)
    return build


def _peer(name):
    def build(workload, X, y, threads, dtype):
        try:
            return peers.build(name, workload, X, y, threads, dtype)
        except peers.PeerUnavailable as error:
            pytest.skip(str(error))
    return build


CONTENDERS = {  # name -> (library named in extra_info, builder of an epoch callable, dtypes)
    "fastbp-numba": ("fastbp-numba", _fastbp("numba"), DTYPES),
    "fastbp-cython": ("fastbp-cython", _fastbp("cython"), DTYPES),
    **{f"{name}": (peers.PEERS[name].library if name != "jax-step" else "jax (step)", _peer(name),
                   ("float32",)) for name in peers.NAMES},
}

CASES = [pytest.param(w, c, dt, id=f"{w}-{c}-{dt}") for w in workloads.NAMES
         for c, (_, _, dtypes) in CONTENDERS.items() for dt in dtypes]


@pytest.fixture(scope="module")
def datasets():
    cache = {}

    def get(workload, dtype):
        key = (workload, dtype)
        if key not in cache:
            cache[key] = workloads.data(workload, WIDE_N if workload == "wide" else N, dtype)
        return cache[key]

    return get


@pytest.mark.parametrize("workload, contender, dtype", CASES)
def test_epoch(benchmark, datasets, workload, contender, dtype):
    library, build, _ = CONTENDERS[contender]
    X, y = datasets(workload, dtype)
    epoch = build(workload, X, y, THREADS, dtype)
    w = workloads.get(workload)
    benchmark.group = f"epoch {workload} {dtype} n={X.shape[0]}"
    benchmark.extra_info.update(library=library, contender=contender, workload=workload,
                                dtype=dtype, threads=THREADS, samples=X.shape[0],
                                flop_per_sample=w.flop_per_sample)
    benchmark.pedantic(epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable: each case runs once, untimed
        benchmark.extra_info["samples_per_s_best"] = X.shape[0] / benchmark.stats.stats.min


# --------------------------------------------------------------------------- semantics (no timing)

def _small(workload):
    """The workload with a narrower wide network (the same arithmetic, a quicker check)."""
    w = workloads.get(workload)
    if workload == "wide":
        return workloads.Workload("wide-small", (784, 64, 32, 10), w.activation, w.loss, w.output,
                                  w.batch, w.lr, w.l2, w.momentum)
    return w


@pytest.mark.parametrize("peer", peers.NAMES)
@pytest.mark.parametrize("workload", workloads.NAMES)
def test_peer_semantics(workload, peer):
    """Two epochs of one minibatch each (so the order of samples does not matter, and momentum acts
    on the second step) from the same initial parameters, in float32: the peer's parameters match
    fastbp's numpy reference backend."""
    fastbp = pytest.importorskip("fastbp")
    if peer == "sklearn" and workload == "nielsen":
        pytest.skip("sklearn has no mse with a sigmoid output (it trains binary cross-entropy)")
    w = _small(workload)
    X, y = workloads.data(w, w.batch, "float32", seed=3)
    try:
        epoch = peers.build(peer, w, X, y, THREADS, "float32", seed=0)
    except peers.PeerUnavailable as error:
        pytest.skip(str(error))
    epoch()
    epoch()
    net = fastbp.Network(**w.network_kwargs(), dtype="float32", backend="numpy", seed=0)
    net.fit(X, y, epochs=2, batch_size=w.batch, lr=w.lr, l2=w.l2, momentum=w.momentum)
    Ws, bs = epoch.parameters()
    for got, want in zip(Ws + bs, net.weights + net.biases):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))
