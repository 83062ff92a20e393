"""Lose nothing: atomic saves, checkpoints that survive kill -9 and resume to the same bits, training
that does not depend on the number of MPI ranks (--global-shuffle), a dead rank ending the job, and X
never copied from a memory map."""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from support import problem
from test_distributed import _run, mpiexec  # noqa: F401  (the fixture)

import fastbp
from fastbp import checkpoints, modelfile

SIZES = [6, 12, 3]


def _net(backend="numpy", dtype="float64", seed=1):
    return fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=backend, dtype=dtype, seed=seed)


# ----------------------------------------------------------------------------- atomic saves

def test_a_save_replaces_the_file_and_a_failed_save_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    net = _net()
    net.save(path)
    inode = os.stat(path).st_ino
    X, y = problem(SIZES, 30)
    net.fit(X, y, epochs=1, batch_size=5)
    net.save(path)
    assert os.stat(path).st_ino != inode  # a new file renamed into place, not rewritten
    assert np.array_equal(fastbp.load(path, backend="numpy").parameters, net.parameters)
    saved = net.parameters.copy()

    def broken(f, **arrays):  # a crash in the middle of writing
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken)
    net.fit(X, y, epochs=1, batch_size=5)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    monkeypatch.undo()
    assert np.array_equal(fastbp.load(path, backend="numpy").parameters, saved)
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


# ----------------------------------------------------------------------------- checkpoints

OPTIONS = dict(epochs=6, batch_size=8, lr=0.01, optimizer="adam", schedule="cosine", dropout=0.2,
               early_stopping=True, patience=3, l2=1e-4)


def _interrupt_after(epoch):
    return lambda e, metrics: e == epoch and signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_resumed_fit_ends_with_the_bits_of_an_uninterrupted_one(backend, dtype, tmp_path):
    X, y = problem(SIZES, 90, seed=2)
    val = problem(SIZES, 30, seed=3)
    whole = _net(backend, dtype)
    whole.fit(X, y, validation_data=val, **OPTIONS)
    path = tmp_path / "run.ckpt"
    for stop in (2, 4):  # interrupted twice, each time resumed by a fresh network
        net = _net(backend, dtype)
        with pytest.raises(KeyboardInterrupt):
            net.fit(X, y, validation_data=val, checkpoint=path, callback=_interrupt_after(stop),
                    **OPTIONS)
        assert checkpoints.peek(path)[0] == stop
    net = _net(backend, dtype)
    history = net.fit(X, y, validation_data=val, checkpoint=path, **OPTIONS)
    assert np.array_equal(net.parameters, whole.parameters)
    assert np.array_equal(net.optimizer_state["slots"], whole.optimizer_state["slots"])
    assert history["val_loss"] == whole.history["val_loss"]
    assert history.best_epoch == whole.history.best_epoch


def test_a_checkpoint_of_another_training_is_refused(tmp_path):
    X, y = problem(SIZES, 40, seed=2)
    path = tmp_path / "run.ckpt"
    _net().fit(X, y, epochs=2, batch_size=8, checkpoint=path)
    for change, what in [(dict(lr=0.5), "settings.lr"), (dict(X=X + 1), "data"),
                         (dict(epochs=3), "settings.epochs")]:
        arguments = dict(X=X, y=y, epochs=2, batch_size=8) | change
        with pytest.raises(checkpoints.CheckpointError, match=what):
            _net().fit(checkpoint=path, **arguments)
    other = fastbp.Network([6, 7, 3], "relu", loss="cross_entropy", backend="numpy", seed=1)
    with pytest.raises(checkpoints.CheckpointError, match="network.layer_sizes"):
        other.fit(X, y, epochs=2, batch_size=8, checkpoint=path)
    fresh = _net()
    fresh.fit(X, y, epochs=2, batch_size=8, lr=0.5, checkpoint=path, resume=False)  # overwrites
    assert checkpoints.peek(path)[:2] == (2, 2)


def test_a_damaged_checkpoint_is_refused_and_never_half_used(tmp_path):
    X, y = problem(SIZES, 40, seed=2)
    path = tmp_path / "run.ckpt"
    _net().fit(X, y, epochs=3, batch_size=8, checkpoint=path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    net = _net()
    before = net.parameters.copy(), net.optimizer_state["slots"].copy()
    with pytest.raises(checkpoints.CheckpointError, match="not a readable fastbp checkpoint"):
        net.fit(X, y, epochs=3, batch_size=8, checkpoint=path)
    assert np.array_equal(net.parameters, before[0])
    assert np.array_equal(net.optimizer_state["slots"], before[1])
    assert isinstance(checkpoints.CheckpointError("x"), modelfile.ModelFileError)


def _train(args, cwd, **kwargs):
    command = [sys.executable, "-m", "fastbp", "train"] + args
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_command_line_killed_with_sigkill_resumes_to_the_same_model(dtype, tmp_path):
    pytest.importorskip("sklearn")
    args = ["--epochs", "40", "--optimizer", "adam", "--schedule", "cosine", "--dropout", "0.2",
            "--early-stopping", "--patience", "30", "--dtype", dtype, "--quiet"]
    whole = _train(args + ["--save", "whole.npz"], tmp_path)
    assert whole.wait(120) == 0, whole.stderr.read()
    run = args + ["--save", "resumed.npz", "--checkpoint", "run.ckpt", "--checkpoint-every", "2"]
    victim = _train(run, tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run.ckpt").exists() and victim.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    done = checkpoints.peek(tmp_path / "run.ckpt")
    assert done is not None and done[0] < 40, "the run was not killed mid-training"
    again = _train([a for a in run if a != "--quiet"], tmp_path)  # it says where it resumes
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert f"resuming at epoch {done[0] + 1} of 40" in out
    a, b = (fastbp.load(tmp_path / name) for name in ("whole.npz", "resumed.npz"))
    assert np.array_equal(a.parameters, b.parameters)


def test_the_command_line_says_it_resumes_only_from_a_checkpoint_it_accepts(tmp_path):
    pytest.importorskip("sklearn")
    first = _train(["--epochs", "2", "--checkpoint", "run.ckpt", "--lr", "0.1"], tmp_path)
    assert first.wait(120) == 0, first.stderr.read()
    other = _train(["--epochs", "2", "--checkpoint", "run.ckpt", "--lr", "0.2"], tmp_path)
    out, err = other.communicate(timeout=120)
    assert other.returncode != 0 and "checkpoint of another training" in err
    assert "resum" not in out and "complete" not in out
    same = _train(["--epochs", "2", "--checkpoint", "run.ckpt", "--lr", "0.1"], tmp_path)
    out, err = same.communicate(timeout=120)
    assert same.returncode == 0, err
    assert "run.ckpt: training already complete (2 of 2 epochs); nothing to resume" in out


# ----------------------------------------------------------------------------- MPI

def test_global_shuffle_on_2_and_3_ranks_equals_one_process(mpiexec, tmp_path):  # noqa: F811
    pytest.importorskip("sklearn")
    args = ["--dtype", "float64", "--epochs", "3", "--seed", "5", "--batch-size", "16",
            "--backend", "cython" if "cython" in fastbp.available_backends() else "numba"]
    status, out, err = _run([sys.executable, "-m", "fastbp", "train", "--save", "one.npz"] + args,
                            cwd=tmp_path)
    assert status == 0, err
    one = fastbp.load(tmp_path / "one.npz")
    for ranks in (2, 3):
        status, out, err = _run([mpiexec, "-n", str(ranks), sys.executable, "-m", "fastbp", "train",
                                 "--distributed", "--global-shuffle", "--save", f"{ranks}.npz"]
                                + args, cwd=tmp_path)
        assert status == 0, f"{out}\n{err}"
        many = fastbp.load(tmp_path / f"{ranks}.npz")
        scale = np.abs(one.parameters).max()
        assert np.abs(many.parameters - one.parameters).max() <= 1e-12 * scale


DYING_RANK = """
import os, signal, numpy as np, fastbp
from mpi4py import MPI
comm = MPI.COMM_WORLD
rng = np.random.default_rng(comm.rank)
X, y = rng.random((4000, 20)), rng.integers(0, 3, 4000)
net = fastbp.Network([20, 32, 3], "relu", loss="cross_entropy", backend="numpy", seed=0)

def die(epoch, metrics):
    if comm.rank == 1 and epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
net.fit(X, y, epochs=1000, batch_size=32, comm=comm, callback=die)
"""


def test_a_dead_rank_ends_the_whole_job_at_once(mpiexec, tmp_path):  # noqa: F811
    script = tmp_path / "dying.py"
    script.write_text(DYING_RANK)
    started = time.monotonic()
    status, out, err = _run([mpiexec, "-n", "2", sys.executable, str(script)], timeout=120,
                            cwd=tmp_path)
    assert status != 0
    assert time.monotonic() - started < 60  # not left waiting in a collective


# ----------------------------------------------------------------------------- memory maps

def _anonymous_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_a_memory_mapped_x_is_not_copied(compiled):
    n, width = 60000, 500  # 120 MB of float32
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "X.npy")
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, width))
        for start in range(0, n, 10000):
            X[start:start + 10000] = np.random.default_rng(start).random((10000, width))
        X.flush()
        del X
        X = np.load(path, mmap_mode="c")  # copy-on-write: writeable for the kernels, never written
        y = np.arange(n) % 10
        net = fastbp.Network([width, 16, 10], "relu", loss="cross_entropy", dtype="float32",
                             backend=compiled, seed=0)
        net.fit(X[:64], y[:64], epochs=1)
        before, peak, running = _anonymous_mb(), [0.0], [True]

        def sample():
            while running[0]:
                peak[0] = max(peak[0], _anonymous_mb())
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            net.fit(X, y, epochs=1, batch_size=256)
        finally:
            running[0] = False
            sampler.join()
        grew = max(peak[0], _anonymous_mb()) - before
        assert grew < 40, f"anonymous memory grew by {grew:.0f} MB for an X of {X.nbytes >> 20} MB"
        del X


RESUMING_RANKS = """
import sys, signal, numpy as np, fastbp
from mpi4py import MPI
comm = MPI.COMM_WORLD
rng = np.random.default_rng(comm.rank)
X, y = rng.random((300, 12)), rng.integers(0, 3, 300)
seed = None if sys.argv[4:] == ["unseeded"] else 0
net = fastbp.Network([12, 16, 3], "relu", loss="cross_entropy", backend="numpy", seed=seed)
stop = int(sys.argv[2])
callback = (lambda e, m: e == stop and signal.raise_signal(signal.SIGINT)) if stop else None
try:
    net.fit(X, y, epochs=6, batch_size=16, lr=0.05, momentum=0.9, comm=comm, callback=callback,
            checkpoint=None if sys.argv[1] == "-" else sys.argv[1])
except KeyboardInterrupt:
    pass
np.save(f"{sys.argv[3]}.rank{comm.rank}.npy", net.parameters)
if comm.rank == 0:
    print("epochs", len(net.history["loss"]), "seed", net.history.seed)
"""


def test_distributed_training_resumes_from_rank_0s_checkpoint(mpiexec, tmp_path):  # noqa: F811
    script = tmp_path / "ranks.py"
    script.write_text(RESUMING_RANKS)
    for args in (["-", "0", "whole"], ["run.ckpt", "3", "part"], ["run.ckpt", "0", "resumed"]):
        status, out, err = _run([mpiexec, "-n", "2", sys.executable, str(script)] + args, cwd=tmp_path)
        assert status == 0, f"{out}\n{err}"
    assert checkpoints.peek(tmp_path / "run.ckpt")[:2] == (6, 6)
    whole = np.load(tmp_path / "whole.rank0.npy")
    for rank in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"resumed.rank{rank}.npy"), whole)
    assert not np.array_equal(np.load(tmp_path / "part.rank0.npy"), whole)


def test_distributed_training_without_seeds_resumes_with_the_drawn_shuffling_seed(mpiexec, tmp_path):  # noqa: F811
    """No seed anywhere: the shuffles' seed is drawn, kept in the checkpoint and taken back on resume
    (it used to be drawn anew, and the checkpoint refused as another training's)."""
    script = tmp_path / "ranks.py"
    script.write_text(RESUMING_RANKS)
    said = []
    for args in (["run.ckpt", "3", "part", "unseeded"], ["run.ckpt", "0", "resumed", "unseeded"]):
        status, out, err = _run([mpiexec, "-n", "2", sys.executable, str(script)] + args, cwd=tmp_path)
        assert status == 0, f"{out}\n{err}"
        said.append(out.split()[-4:])
    assert said[0][:2] == ["epochs", "3"] and said[1][:2] == ["epochs", "6"]
    assert said[0][3] == said[1][3]  # the same shuffling seed
    assert np.array_equal(np.load(tmp_path / "resumed.rank0.npy"), np.load(tmp_path / "resumed.rank1.npy"))
