"""Data-parallel training over MPI (mpi4py): many processes, on one machine or many, train one network.

Every process (an MPI *rank*) holds the whole network and a *shard* of the training data: a block of
consecutive rows of the data file, which it alone reads (:func:`load_shard`). Training is synchronous
minibatch gradient descent, with the same update on every rank:

1. each rank computes, with its backend's compiled kernels (the ``gradients`` driver), the gradient
   of its local rows of the minibatch, weighted by its share of the minibatch's rows;
2. one ``Allreduce`` (sum, in place) over the flat gradient buffer gives every rank the mean gradient
   of the whole *global* minibatch (the buffer carries one extra element, which counts the ranks
   whose cost is NaN or infinite, so that divergence is noticed on every rank at once);
3. every rank applies the same optimizer step (``update_parameters`` on the flat buffers).

So the ranks' parameters stay identical, and the result is that of single-process training on the
same global minibatches (see :func:`global_batches`): equal to about 1e-12 in float64 (the gradient is
summed in another order), whatever the number of threads per rank.

What a global minibatch is
--------------------------
With ``size`` ranks and a global ``batch_size`` of B, rank r contributes ``b_r = B(r+1)//size -
Br//size`` rows to each minibatch (so the b_r add up to B). Each epoch, rank r visits its shard in its
own order: a permutation drawn from ``(seed, epoch, r)`` (``shuffle=True``) or the file order. Its
local minibatch i is positions ``i*b_r .. (i+1)*b_r - 1`` of that order, and the global minibatch i is
the local minibatches i of ranks 0, 1, ... one after the other. An epoch has as many minibatches as
the rank that needs the most (``max_r ceil(n_r / b_r)``); a rank whose shard is used up contributes
no rows to the last ones. When the shard sizes are in proportion to the b_r (for instance: the number
of rows and the batch size both multiples of ``size``), every minibatch has B rows but the last.
Otherwise the last few are smaller; each gradient is always the mean over the rows the minibatch has.

Shuffling mixes rows within a shard, never across shards: each minibatch takes rows from every shard
in fixed proportions. If the data file is sorted (by class, by time), shuffle it once before writing
it. ``seed`` defaults to a number drawn by rank 0 from the network's random generator and sent to all
(``history.seed`` tells it); the same seed, data and ranks give the same training.

``allreduce_every=k`` accumulates the gradients of k consecutive global minibatches, each computed
in pieces of at most b_r rows per rank, and reduces them in one Allreduce: one update per k
minibatches, with the mean gradient of their k·B rows (the same as ``batch_size=k*B`` with a work
buffer of b_r rows; k times fewer bytes communicated per sample).

Everything said of Network.fit holds: the optimizer state carries over, learning rate schedules and
early stopping work (on metrics reduced over all ranks, so every rank decides the same), L2 applies
to the weights only. Dropout is not supported here.

Measured per update, on each rank: ``history.batch_seconds[e]`` (the wall time of each update of epoch
e: gradients, Allreduce, step) and ``history.allreduce_seconds[e]`` (the part in Allreduce, which
includes waiting for the slowest rank); per epoch, ``comm_seconds`` and ``comm_share`` (their sums'
ratio) enter the history.

Threads: with ``n_threads=None`` a rank uses the CPUs it may run on divided by the ranks on its
machine (when the ranks share the same CPUs), so that 2 ranks on 2 cores run one thread each.
"""
import math
import os
import time
import zipfile

import numpy as np

from . import backends, schedules, validation
from .kernels import codes
from .network import (FORWARD_BLOCK, Evaluation, History, TrainingDiverged, _EarlyStopping,
                      _epoch_done)

SNAPSHOT_SAMPLES = 8192  # global samples between copies of the parameters kept to undo a divergence
DATA_KEYS = ("X", "y")
TEST_KEYS = ("X_test", "y_test")


class DistributedError(ValueError):
    """Some rank could not start (bad input, a missing file, ranks that disagree); raised on every
    rank, with each failing rank's reason."""


# --------------------------------------------------------------------------- communication

class _Comm:
    """The few collectives training needs, on an mpi4py communicator or (comm=None) one process."""

    def __init__(self, comm):
        self.comm = comm
        if comm is None:
            self.MPI, self.rank, self.size = None, 0, 1
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ImportError("distributed training needs mpi4py and an MPI library: "
                                  "pip install 'fastbp[mpi]'") from None
            self.MPI, self.rank, self.size = MPI, comm.Get_rank(), comm.Get_size()

    def allreduce(self, buf):
        """buf = the element-wise sum of every rank's buf, in place (no pickling)."""
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def bcast(self, buf):
        """Rank 0's buf into every rank's buf."""
        if self.size > 1:
            self.comm.Bcast(buf, root=0)

    def allgather(self, obj):
        return [obj] if self.size == 1 else self.comm.allgather(obj)

    def bcast_obj(self, obj):
        return obj if self.size == 1 else self.comm.bcast(obj, root=0)

    def any(self, flag):
        return any(self.allgather(bool(flag)))

    def local_size(self):
        """How many ranks run on this machine, and whether they may all use the same CPUs."""
        if self.size == 1:
            return 1, True
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            cpus = local.allgather(sorted(_cpus()))
        finally:
            local.Free()
        return len(cpus), all(c == cpus[0] for c in cpus)


def _cpus():
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def _agree(comm, what, action):
    """Run action() on every rank; if it raised anywhere, raise everywhere (so that no rank is left
    waiting in a collective): the exception itself in a single process, else DistributedError with
    each failing rank's reason. Returns this rank's result (only the outcome is communicated)."""
    try:
        result, error = action(), None
    except Exception as exc:  # noqa: BLE001 -- every failure must be known to every rank
        if comm.size == 1:
            raise
        result, error = None, f"{type(exc).__name__}: {exc}"
    failed = [(r, e) for r, e in enumerate(comm.allgather(error)) if e is not None]
    if failed:
        raise DistributedError(f"{what} failed on {len(failed)} of {comm.size} ranks: " + "; ".join(
            f"rank {r}: {e}" for r, e in failed))
    return result


def default_threads(comm=None):
    """Threads per rank: the CPUs this rank may use, divided by the ranks on its machine when they
    share the same CPUs (collective: call it on every rank)."""
    n_local, shared = _Comm(comm).local_size()
    cpus = backends.default_threads()
    return max(1, cpus // n_local) if shared else cpus


# --------------------------------------------------------------------------- data shards

def shard_range(n, rank, size):
    """The rows [start, stop) of rank `rank` among `size` ranks for n rows: consecutive blocks whose
    sizes differ by at most one."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in 0..{size - 1}")
    return n * rank // size, n * (rank + 1) // size


def shard_sizes(n, size):
    """The rows of each of `size` ranks' shards of n rows."""
    return [stop - start for start, stop in (shard_range(n, r, size) for r in range(size))]


def _npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream f, left at the start of the array data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _read_exactly(f, out):
    """Fill array `out` (C-contiguous) from the stream f."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ValueError("the file ends before the array does (truncated)")
        got += n
    return out


def _member_data_start(path, info):
    """Where the bytes of an uncompressed zip member begin in the archive file."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: damaged zip archive (member {info.filename})")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_length + extra_length


class _Array:
    """A 2-D or 1-D array in a .npy file or a .npz member, read by rows."""

    def __init__(self, path, member=None):
        self.path, self.member = os.fspath(path), member
        self.where = self.path if member is None else f"{self.path}[{member}]"
        self.start = None  # byte offset of the data in the file, when rows can be read in place
        if member is None:
            with open(self.path, "rb") as f:
                self.shape, self.fortran, self.dtype = _npy_header(f)
                self.start = f.tell()
        else:
            with zipfile.ZipFile(self.path) as archive:
                try:
                    info = archive.getinfo(member + ".npy")
                except KeyError:
                    raise KeyError(f"{self.path} has no array {member!r} (it has "
                                   f"{', '.join(n[:-4] for n in archive.namelist()) or 'none'})"
                                   ) from None
                with archive.open(info) as f:
                    self.shape, self.fortran, self.dtype = _npy_header(f)
                    header = f.tell()
                if info.compress_type == zipfile.ZIP_STORED:
                    self.start = _member_data_start(self.path, info) + header
        if self.dtype.hasobject:
            raise ValueError(f"{self.where} holds Python objects; save plain numbers")
        if len(self.shape) not in (1, 2):
            raise ValueError(f"{self.where} has shape {self.shape}; a 1-D or 2-D array is needed")

    def rows(self, a, b):
        """Rows a..b-1, read from the file and nothing else when the array is stored plainly (a .npy
        file or an uncompressed .npz member, in C order); a compressed member is decompressed up to
        row b (only rows a..b-1 are kept)."""
        row_shape = tuple(self.shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        out = np.empty((b - a,) + row_shape, self.dtype)
        if self.fortran and len(self.shape) == 2:  # columns are contiguous: rows are not
            if self.member is None:
                return np.ascontiguousarray(np.load(self.path, mmap_mode="r")[a:b])
            with np.load(self.path) as archive:
                return np.ascontiguousarray(archive[self.member][a:b])
        if self.start is not None:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self.start + a * row_bytes)
                return _read_exactly(f, out)
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member + ".npy") as f:
            _npy_header(f)
            skip = a * row_bytes
            while skip:
                skip -= len(f.read(min(skip, 1 << 22)))
            return _read_exactly(f, out)


def _arrays(spec, keys):
    """The on-disk arrays named by keys in spec: an .npz archive, a directory of KEY.npy files, or a
    sequence of .npy paths (one per key)."""
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if os.path.isdir(path):
            return [_Array(os.path.join(path, f"{key}.npy")) for key in keys]
        if path.endswith(".npy"):
            raise ValueError(f"{path}: one .npy file holds one array; pass (X_path, y_path), a "
                             f"directory of {keys[0]}.npy and {keys[1]}.npy, or an .npz archive")
        return [_Array(path, key) for key in keys]
    paths = list(spec)
    if len(paths) != len(keys):
        raise ValueError(f"expected {len(keys)} .npy paths ({', '.join(keys)}), got {len(paths)}")
    return [_Array(path) for path in paths]


def has_arrays(spec, keys=TEST_KEYS):
    """Whether the data `spec` (an .npz archive or a directory) holds the arrays named by keys."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    path = os.fspath(spec)
    if os.path.isdir(path):
        return all(os.path.exists(os.path.join(path, f"{key}.npy")) for key in keys)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{key}.npy" in names for key in keys)


def n_rows(spec, keys=DATA_KEYS):
    """The number of rows of the data `spec` (read from the headers only)."""
    arrays = _arrays(spec, keys)
    counts = {array.where: array.shape[0] for array in arrays}
    if len(set(counts.values())) != 1:
        raise ValueError("the arrays have different numbers of rows: " + ", ".join(
            f"{where} {n}" for where, n in counts.items()))
    return arrays[0].shape[0]


def load_shard(spec, rank, size, keys=DATA_KEYS):
    """Rank `rank`'s rows of the data `spec`, reading those rows only: a tuple of arrays (X, y).

    ``spec`` is an .npz archive holding arrays named by ``keys`` (``np.savez(path, X=X, y=y)``), a
    directory holding ``X.npy`` and ``y.npy``, or a pair of .npy paths. The rank's rows are the block
    ``shard_range(n, rank, size)``; they are read with one seek and one read per array, straight into
    memory: nothing else of the file is read (the .npy header apart). That needs the arrays stored
    plainly, as ``np.save`` and ``np.savez`` write them; a compressed archive (``np.savez_compressed``)
    is decompressed up to the end of the rank's rows, of which only the rank's rows are kept.
    (``np.load(..., mmap_mode='r')`` maps a .npy file but reads an .npz member whole, so it is not used.)
    """
    arrays = _arrays(spec, keys)
    n = n_rows(spec, keys)
    a, b = shard_range(n, rank, size)
    return tuple(array.rows(a, b) for array in arrays)


def shard(data, comm, keys=DATA_KEYS):
    """This rank's part of `data`: a path or pair of paths (see load_shard; only this rank's rows are
    read) or a tuple of in-memory arrays with the same number of rows (views of their rows are
    returned). Collective when comm is given: every rank learns whether every rank succeeded."""
    c = _Comm(comm)
    if isinstance(data, (str, os.PathLike)) or (
            isinstance(data, (tuple, list)) and data and isinstance(data[0], (str, os.PathLike))):
        return _agree(c, "reading the data", lambda: load_shard(data, c.rank, c.size, keys))
    n = len(data[0])
    if any(len(array) != n for array in data):
        raise ValueError("the arrays have different numbers of rows")
    a, b = shard_range(n, c.rank, c.size)
    return tuple(array[a:b] for array in data)


# --------------------------------------------------------------------------- the schedule of minibatches

def local_batch_sizes(batch_size, size):
    """Rows each rank contributes to a global minibatch of batch_size rows."""
    return [batch_size * (r + 1) // size - batch_size * r // size for r in range(size)]


def _epoch_order(n, seed, epoch, rank, shuffle):
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, rank]).permutation(n)


def _plan(shard_sizes, batch_size):
    """(local batch sizes, minibatches per epoch, global rows of each minibatch)."""
    sizes = local_batch_sizes(batch_size, len(shard_sizes))
    n_batches = max(-(-n // b) for n, b in zip(shard_sizes, sizes))
    starts = np.arange(n_batches)[:, None] * np.array(sizes)[None, :]
    rows = np.clip(np.array(shard_sizes)[None, :] - starts, 0, np.array(sizes)[None, :])
    return sizes, n_batches, rows.sum(axis=1)


def global_batches(shard_sizes, batch_size, epoch, seed, shuffle=True, allreduce_every=1):
    """The rows of each update of epoch `epoch` (from 1) of distributed training, as indices into the
    concatenation of the shards in rank order (for shards from load_shard: the rows of the file).

    Single-process training that visits exactly these batches (each with one update) gives the same
    parameters; ``seed`` is the one training used (``history.seed``)."""
    sizes, n_batches, _ = _plan(shard_sizes, batch_size)
    offsets = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]])
    orders = [offset + _epoch_order(n, seed, epoch, r, shuffle)
              for r, (n, offset) in enumerate(zip(shard_sizes, offsets))]
    batches = [np.concatenate([order[i * b:(i + 1) * b] for order, b in zip(orders, sizes)])
               for i in range(n_batches)]
    return [np.concatenate(batches[i:i + allreduce_every])
            for i in range(0, n_batches, allreduce_every)]


# --------------------------------------------------------------------------- training

def _correct(outputs, Y):
    if outputs.shape[1] == 1:
        return float(np.sum((outputs[:, 0] > 0.5) == (Y[:, 0] > 0.5)))
    return float(np.sum(outputs.argmax(axis=1) == Y.argmax(axis=1)))


def _forward_sums(net, driver, X, Y, threads):
    """(sum of costs, correct predictions) over the rows of X, with `threads` threads."""
    if X is None or X.shape[0] == 0:
        return 0.0, 0.0
    n = X.shape[0]
    desc, work = net._buffers(min(n, FORWARD_BLOCK))
    out = np.empty((n, net.layer_sizes[-1]), net.dtype)
    costs = np.empty(n)
    driver.forward(desc, net.parameters, X, Y, out, costs, work, threads)
    return float(costs.sum()), _correct(out, Y)


def evaluate(net, X, y, comm=None, n_threads=None):
    """The mean cost and accuracy over every rank's (X, y) together (collective): an Evaluation."""
    c = _Comm(comm)
    threads = default_threads(comm)  # collective: every rank calls it
    threads = n_threads or net.n_threads or threads

    def check():
        if X is None or len(X) == 0:
            return None
        X_ = net._X(X)
        return X_, net._Y(y, X_.shape[0])
    data = _agree(c, "evaluate", check)
    with net._exclusive():
        sums = np.array([*_forward_sums(net, net._driver, *(data or (None, None)), threads),
                         0 if data is None else data[0].shape[0]], np.float64)
    c.allreduce(sums)
    if sums[2] == 0:
        raise ValueError("no rank has samples to evaluate")
    return Evaluation(float(sums[0] / sums[2]), float(sums[1] / sums[2]))


class _Trainer:
    """The buffers and the step of one distributed fit."""

    def __init__(self, net, c, X, Y, sizes, n_batches, global_rows, opt, threads, allreduce_every):
        self.net, self.c, self.X, self.Y = net, c, X, Y
        self.opt, self.threads, self.k = opt, threads, allreduce_every
        self.b = sizes[c.rank]
        self.global_rows = global_rows
        self.n_batches = n_batches
        self.n_updates = -(-n_batches // allreduce_every)
        self.group_rows = np.add.reduceat(global_rows, np.arange(0, n_batches, allreduce_every))
        self.driver = net._driver
        self.n_weights = int(net._desc[codes.D_NWEIGHTS])
        if net.backend == "numpy":
            from . import reference
            self.update = reference.step
        else:
            self.update = backends.kernels(net.backend).update_parameters
        capacity = max(1, min(self.b, X.shape[0]))
        self.desc, self.work = net._buffers(capacity, opt)
        self.Xb = np.empty((capacity, X.shape[1]), net.dtype)
        self.Yb = np.empty((capacity, Y.shape[1]), net.dtype)
        self.costs = np.empty(capacity)
        n = net.parameters.shape[0]
        self.buffer = np.zeros(n + 1, net.dtype)  # the gradient, then a count of bad costs
        self.grads = self.buffer[:n]

    def _local_gradient(self, order, batch, rows_total, out):
        """OUT out: the gradient of this rank's rows of minibatch `batch`, summed and divided by
        rows_total (the update's rows on every rank), or 0 without rows; returns their costs' sum."""
        rows = order[batch * self.b:(batch + 1) * self.b]
        m = rows.shape[0]
        if m == 0:
            out[:] = 0
            return 0.0
        np.take(self.X, rows, axis=0, out=self.Xb[:m])
        np.take(self.Y, rows, axis=0, out=self.Yb[:m])
        costs = self.costs[:m]
        self.driver.gradients(self.desc, self.net.parameters, out, self.Xb[:m], self.Yb[:m],
                              self.work, costs, self.threads)
        factor = m / rows_total  # the driver's gradient is the mean over the m rows
        if factor != 1.0:
            out *= out.dtype.type(factor)
        return float(costs.sum())

    def step(self, order, update):
        """Update `update` of the epoch visiting this shard in `order`: gradients, one Allreduce, one
        optimizer step. Returns (local cost sum, seconds in Allreduce, status)."""
        net = self.net
        first = update * self.k
        last = min(first + self.k, self.n_batches)
        rows_total = int(self.group_rows[update])
        cost = self._local_gradient(order, first, rows_total, self.grads)
        for batch in range(first + 1, last):
            cost += self._local_gradient(order, batch, rows_total, net._grads)
            self.grads += net._grads
        self.buffer[-1] = 0.0 if math.isfinite(cost) else 1.0  # this rank's cost is NaN or infinite
        started = time.perf_counter()
        self.c.allreduce(self.buffer)
        seconds = time.perf_counter() - started
        if self.buffer[-1] != 0:  # on some rank
            return cost, seconds, codes.COST_NOT_FINITE
        hyper = net._hyper
        if hasattr(codes, "H_KEY"):
            hyper[codes.H_KEY] = hyper[codes.H_STEP]
        with np.errstate(over="ignore", invalid="ignore"):
            finite = self.update(self.opt, net.parameters, self.grads, net._state, hyper,
                                 self.n_weights)
        if finite is None:  # the numpy reference's step returns nothing
            finite = np.isfinite(net.parameters).all()
        return cost, seconds, codes.DONE if finite else codes.PARAMS_NOT_FINITE


def fit(net, X, y, comm=None, epochs=10, batch_size=32, lr=0.1, l2=0.0, momentum=0.0, shuffle=True,
        validation_data=None, verbose=False, optimizer="sgd", nesterov=False, beta1=0.9,
        beta2=0.999, eps=1e-8, rho=0.99, schedule=None, dropout=0.0, early_stopping=False,
        monitor=None, patience=10, min_delta=0.0, metrics=None, l2_in_cost=False, callback=None,
        progress=False, seed=None, allreduce_every=1):
    """Train `net` on every rank's (X, y) together: synchronous data-parallel minibatch gradient
    descent over the communicator `comm` (an mpi4py communicator; None: this process alone).

    Collective: every rank of comm calls it with the same network configuration and arguments and its
    own shard (X, y) (see shard / load_shard). ``batch_size`` is the global minibatch, split over the
    ranks; see the module's documentation for which rows form a minibatch. ``validation_data`` is
    this rank's share of the validation set (or None); the metrics are over all ranks' shares.
    Arguments are those of Network.fit, plus ``seed`` (the shuffling's; None: drawn by rank 0 from the
    network's generator) and ``allreduce_every`` (minibatches per Allreduce and update).

    At the start, rank 0's parameters and optimizer state are copied to every rank. Only rank 0
    prints (``verbose``, ``progress``); ``callback(epoch, metrics)`` is called on every rank with the
    same metrics, and training stops if it returns True on any rank. Returns the History (every rank
    has the same, timings apart), also kept as ``net.history``; rank 0 alone should write it.

    Raises TrainingDiverged on every rank if the cost or a parameter becomes NaN or infinite (the
    network keeps the parameters of the last finite step), DistributedError on every rank if some
    rank's input is bad or the ranks disagree on the configuration.
    """
    c = _Comm(comm)

    def check():
        if X is None or len(X) == 0:
            raise ValueError(f"rank {c.rank} has no training samples (fewer rows than ranks?)")
        X_ = net._X(X)
        Y_ = net._Y(y, X_.shape[0])
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            if validation_data[0] is not None and len(validation_data[0]) > 0:
                X_val = net._X(validation_data[0], "validation X")
                val = (X_val, net._Y(validation_data[1], X_val.shape[0], "validation y"))
        settings = dict(
            epochs=validation.integer("epochs", epochs, 0),
            batch_size=validation.integer("batch_size", batch_size, 1),
            allreduce_every=validation.integer("allreduce_every", allreduce_every, 1),
            lr=validation.real("lr", lr, low=0, low_open=True), l2=validation.real("l2", l2, low=0),
            momentum=validation.real("momentum", momentum, 0, 1, high_open=True),
            beta1=validation.real("beta1", beta1, 0, 1, high_open=True),
            beta2=validation.real("beta2", beta2, 0, 1, high_open=True),
            eps=validation.real("eps", eps, low=0, low_open=True),
            rho=validation.real("rho", rho, 0, 1, high_open=True),
            optimizer=optimizer, nesterov=bool(nesterov), shuffle=bool(shuffle),
            opt=validation.choice("optimizer", optimizer, codes.OPTIMIZERS),
            seed=None if seed is None else validation.integer("seed", seed, 0),
            early_stopping=bool(early_stopping), monitor=monitor,
            patience=validation.integer("patience", patience, 0),
            min_delta=validation.real("min_delta", min_delta, low=0),
            metrics=None if metrics is None else tuple(sorted(set(metrics))),
            l2_in_cost=bool(l2_in_cost), schedule=repr(schedule),
            network=(repr(net), net.dtype.name, tuple(net.layer_sizes)))
        if nesterov and (settings["opt"] != codes.SGD or momentum == 0):
            raise ValueError("nesterov needs optimizer='sgd' with momentum > 0")
        if np.any(np.asarray(dropout, dtype=float) != 0):
            raise ValueError("dropout is not supported in distributed training")
        tqdm = None
        if progress and c.rank == 0:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress bars need tqdm: pip install tqdm") from None
        return X_, Y_, val, settings, schedules.get(schedule), tqdm

    X, Y, val, settings, lr_schedule, tqdm = _agree(c, "distributed fit", check)
    everyone = c.allgather((X.shape[0], 0 if val is None else val[0].shape[0], settings))
    shard_sizes = [n for n, _, _ in everyone]
    n_val = sum(v for _, v, _ in everyone)
    differ = [r for r, (_, _, s) in enumerate(everyone) if s != everyone[0][2]]
    if differ:
        keys = [k for k in settings if everyone[differ[0]][2][k] != everyone[0][2][k]]
        raise DistributedError(f"ranks {differ} were called with other arguments than rank 0 "
                               f"(they differ in {', '.join(keys)}); every rank must train the same "
                               f"network the same way")
    epochs, batch_size, k = settings["epochs"], settings["batch_size"], settings["allreduce_every"]
    opt = settings["opt"]
    if batch_size < c.size:
        raise DistributedError(f"batch_size {batch_size} is smaller than the number of ranks "
                               f"({c.size}): every rank needs rows in each minibatch")

    # The metrics, as Network.fit has them.
    metrics, monitor = validation.monitoring(
        metrics, monitor, bool(n_val),
        watched=early_stopping or isinstance(lr_schedule, schedules.ReduceOnPlateau))
    stopper = _EarlyStopping(monitor, settings["patience"], settings["min_delta"]) if early_stopping else None

    if seed is None:
        seed = c.bcast_obj(int(net._rng.integers(0, 2 ** 62)) if c.rank == 0 else None)
    threads = default_threads(comm)  # collective: every rank calls it
    threads = net.n_threads or threads
    sizes, n_batches, global_rows = _plan(shard_sizes, batch_size)
    n_total = sum(shard_sizes)
    history = History(loss=[])
    history.seed, history.ranks, history.threads = seed, c.size, threads
    history.shard_sizes, history.local_batch_sizes = shard_sizes, sizes
    history.batch_seconds, history.allreduce_seconds = [], []
    history.best_epoch = history.stopped_epoch = None
    bar = None
    if tqdm is not None:
        bar = tqdm(total=epochs * -(-n_batches // k), unit="update", leave=False, dynamic_ncols=True)

    with net._exclusive():
        if net._optimizer != (optimizer, bool(nesterov)):  # new optimizer: fresh state
            net.reset_optimizer()
            net._optimizer = (optimizer, bool(nesterov))
        hyper = codes.hyperparameters(len(net.layer_sizes) - 1)
        hyper[codes.H_L2] = settings["l2"]
        hyper[codes.H_MOMENTUM] = settings["momentum"]
        hyper[codes.H_NESTEROV] = bool(nesterov)
        hyper[codes.H_BETA1], hyper[codes.H_BETA2] = settings["beta1"], settings["beta2"]
        hyper[codes.H_EPS], hyper[codes.H_RHO] = settings["eps"], settings["rho"]
        hyper[codes.H_STEP] = net._hyper[codes.H_STEP]
        net._hyper = hyper
        # Every rank starts from rank 0's network (initialized with another seed, or trained apart).
        c.bcast(net.parameters)
        c.bcast(net._state)
        c.bcast(net._hyper)
        net.history = history
        trainer = _Trainer(net, c, X, Y, sizes, n_batches, global_rows, opt, threads, k)
        snapshot_every = max(1, -(-SNAPSHOT_SAMPLES // (batch_size * k)))
        lr_schedule.reset(epochs)
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                hyper[codes.H_LR] = lr_schedule.lr(epoch - 1, settings["lr"])
                order = _epoch_order(X.shape[0], seed, epoch, c.rank, settings["shuffle"])
                cost, total, comm_time = _train_epoch(trainer, order, epoch, snapshot_every, bar,
                                                      history)
                penalty = 0.5 * hyper[codes.H_L2] * net._squared_weights() if l2_in_cost else 0.0
                sums = np.zeros(5)
                sums[0] = cost
                if metrics & {"train_loss", "train_accuracy"}:
                    sums[1:3] = _forward_sums(net, net._driver, X, Y, threads)
                if metrics & {"val_loss", "val_accuracy"} and val is not None:
                    sums[3:5] = _forward_sums(net, net._driver, *val, threads)
                c.allreduce(sums)
                values = {"loss": sums[0] / n_total + penalty, "lr": hyper[codes.H_LR]}
                if metrics & {"train_loss", "train_accuracy"}:
                    values.update(train_loss=sums[1] / n_total + penalty,
                                  train_accuracy=sums[2] / n_total)
                if metrics & {"val_loss", "val_accuracy"}:
                    values.update(val_loss=sums[3] / n_val + penalty, val_accuracy=sums[4] / n_val)
                values = {name: value for name, value in values.items()
                          if name in ("loss", "lr") or name in metrics}
                values["seconds"] = time.perf_counter() - started
                values["comm_seconds"] = comm_time
                values["comm_share"] = comm_time / total if total > 0 else 0.0
                history.add(**values)
                _check_identical(c, net, epoch)
                stop = _epoch_done(net, epoch, epochs, values, monitor, lr_schedule, stopper, callback,
                                   verbose and c.rank == 0)
                if c.any(stop):
                    history.stopped_epoch = epoch
                    break
        finally:
            net._grads[:] = trainer.grads  # the last update's mean gradient, as Network.fit leaves it
            if bar is not None:
                bar.close()
            if stopper is not None:
                stopper.finish(net, history)
    return history


def _train_epoch(trainer, order, epoch, snapshot_every, bar, history):
    """One epoch's updates. Returns (this rank's sum of costs, seconds of the updates, seconds in
    Allreduce). On divergence, every rank restores the last snapshot, replays the updates up to the
    last finite one, and raises TrainingDiverged."""
    net = trainer.net
    n = trainer.n_updates
    batch_seconds = np.zeros(n)
    allreduce_seconds = np.zeros(n)
    history.batch_seconds.append(batch_seconds)
    history.allreduce_seconds.append(allreduce_seconds)
    cost = 0.0
    saved = None
    for update in range(n):
        if update % snapshot_every == 0:
            saved = (update, net.parameters.copy(), net._state.copy(), net._hyper.copy())
        started = time.perf_counter()
        step_cost, comm_time, status = trainer.step(order, update)
        batch_seconds[update] = time.perf_counter() - started
        allreduce_seconds[update] = comm_time
        if status != codes.DONE:
            if status == codes.PARAMS_NOT_FINITE:  # back to the last finite step, on every rank
                first, parameters, state, hyper = saved
                net.parameters[:], net._state[:], net._hyper[:] = parameters, state, hyper
                for again in range(first, update):
                    trainer.step(order, again)
            what = "cost" if status == codes.COST_NOT_FINITE else "parameters"
            raise TrainingDiverged(
                f"training diverged: the {what} became NaN or infinite at epoch {epoch}, update "
                f"{update + 1} of {n}; the network keeps the parameters of the last finite step "
                f"(try a smaller learning rate)", epoch, update, history)
        cost += step_cost
        if bar is not None:
            bar.update(1)
    return cost, float(batch_seconds.sum()), float(allreduce_seconds.sum())


def _check_identical(c, net, epoch):
    """Every rank must hold the same parameters (they apply the same updates to the same sums); an
    MPI whose Allreduce gives ranks different sums would break that, so it is checked each epoch."""
    if c.size == 1:
        return
    import zlib
    sums = c.allgather(zlib.crc32(net.parameters.view(np.uint8)))
    if len(set(sums)) != 1:
        raise RuntimeError(f"after epoch {epoch} the ranks' parameters differ: this MPI library's "
                           f"Allreduce did not give every rank the same sum")


# --------------------------------------------------------------------------- the command line

def train_cli(args, comm=None):
    """``fastbp train --distributed``: train on every rank of comm (default MPI.COMM_WORLD), each on
    its shard of the data; rank 0 alone prints, saves the model and writes the history.

    args is cli.parser()'s namespace; read here beyond the single-process options: ``data`` (an .npz
    archive, or a directory of .npy files, with X and y, and optionally X_test and y_test; default:
    the bundled digits, split as the single-process command splits them) and ``allreduce_every``.
    Returns the exit status (the same on every rank).
    """
    import sys

    from . import __version__, datasets
    from .network import Network

    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError:
            print("fastbp: error: --distributed needs mpi4py and an MPI library: pip install "
                  "'fastbp[mpi]'", file=sys.stderr)
            return 2
        comm = MPI.COMM_WORLD
    c = _Comm(comm)
    lead = c.rank == 0
    quiet = getattr(args, "quiet", False)

    def say(text):
        if lead and not quiet:
            print(text, flush=True)

    def get(name, default=None):
        value = getattr(args, name, default)
        return default if value is None else value

    data_path = getattr(args, "data", None)
    seed = get("seed", 0)
    started = time.perf_counter()
    try:
        def read():
            if data_path:
                X, y = load_shard(data_path, c.rank, c.size)
                if has_arrays(data_path, TEST_KEYS):
                    X_test, y_test = load_shard(data_path, c.rank, c.size, TEST_KEYS)
                    source = f"{data_path} (with its test set)"
                else:  # hold out a seeded share of each shard
                    fraction = get("test_fraction", 0.2)
                    if not 0 < fraction < 1:
                        raise ValueError(f"test_fraction must be between 0 and 1, got {fraction}")
                    order = np.random.default_rng([seed, c.rank]).permutation(len(X))
                    n_test = int(round(len(X) * fraction))
                    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
                    X, y, X_test, y_test = X[train], y[train], X[test], y[test]
                    source = f"{data_path} ({fraction:g} of each shard held out)"
            else:
                X_all, y_all = datasets.load_digits()
                X_tr, X_te, y_tr, y_te = datasets.train_test_split(
                    X_all, y_all, get("test_fraction", 0.2), seed)
                (X, y), (X_test, y_test) = (
                    tuple(a[slice(*shard_range(len(X_tr), c.rank, c.size))] for a in (X_tr, y_tr)),
                    tuple(a[slice(*shard_range(len(X_te), c.rank, c.size))] for a in (X_te, y_te)))
                source = "digits"
            return X, y, X_test, y_test, source

        X, y, X_test, y_test, source = _agree(c, "reading the data", read)
        classes = int(np.max(y)) + 1 if np.ndim(y) == 1 and len(y) else int(np.shape(y)[-1])
        facts = c.allgather((classes, X.shape[1], len(X), len(X_test)))
        n_classes = max(f[0] for f in facts)
        n_features = facts[0][1]
        n_train, n_test = sum(f[2] for f in facts), sum(f[3] for f in facts)
        layers = get("layers") or [n_features, 64, n_classes]
        backend = get("backend", "numba")
        if backend == "auto":
            backend = "cython" if "cython" in backends.available_backends() else "numba"
        optimizer = get("optimizer", "sgd")
        lr = get("lr", 0.05 if optimizer == "sgd" else 0.001)
        momentum = get("momentum", 0.9) if optimizer == "sgd" else 0.0

        def build():
            return Network(layers, get("activation", "relu"), getattr(args, "output_activation", None),
                           get("loss", "cross_entropy"), get("dtype", "float32"), backend,
                           getattr(args, "threads", None), seed, get("init", "auto"))
        net = _agree(c, "building the network", build)
        threads = default_threads(comm)  # collective: every rank calls it
        threads = net.n_threads or threads
        batch_size = get("batch_size", 16)
        epochs = get("epochs", 30)
        every = get("allreduce_every", 1)
        say(f"fastbp {__version__}: {net}")
        say(f"{source}: {n_train} training and {n_test} test samples of {n_features} features on "
            f"{c.size} ranks ({threads} thread{'s' if threads > 1 else ''} each); {epochs} epochs, global minibatches of "
            f"{batch_size} ({'+'.join(map(str, local_batch_sizes(batch_size, c.size)))} rows per "
            f"rank), {optimizer} lr {lr}, l2 {get('l2', 1e-4)}"
            + (f", momentum {momentum}" if optimizer == "sgd" else "")
            + (f", one Allreduce and update per {every} minibatches" if every > 1 else ""))

        def progress(epoch, m):
            say(f"epoch {epoch:3d}/{epochs}  train loss {m['train_loss']:.4f} acc "
                f"{m['train_accuracy']:.4f}  test loss {m['val_loss']:.4f} acc "
                f"{m['val_accuracy']:.4f}  {m['seconds']:.2f}s  allreduce "
                f"{100 * m['comm_share']:.1f}%")

        status, note = 0, ""
        try:
            fit(net, X, y, comm, epochs, batch_size, lr, get("l2", 1e-4), momentum,
                validation_data=(X_test, y_test), optimizer=optimizer,
                nesterov=bool(getattr(args, "nesterov", False)),
                schedule=getattr(args, "schedule", None),
                dropout=get("dropout", 0.0), early_stopping=bool(getattr(args, "early_stopping",
                                                                         False)),
                patience=get("patience", 10),
                metrics=("train_loss", "train_accuracy", "val_loss", "val_accuracy"),
                callback=progress, allreduce_every=every,
                progress=lead and not quiet and sys.stderr.isatty() and _has_tqdm())
        except TrainingDiverged as error:
            if lead:
                print(f"fastbp: {error}", file=sys.stderr)
            status, note = 1, " (diverged)"
        history = net.history
        if history.best_epoch is not None:
            say(f"best epoch {history.best_epoch}" + (
                f" (stopped after epoch {history.stopped_epoch})" if history.stopped_epoch else "")
                + "; its parameters are kept")
        result = evaluate(net, X_test, y_test, comm, threads)
        shares = [s for s in history.get("comm_share", [])]
        if lead:
            print(f"test accuracy {result.accuracy:.4f}  test loss {result.loss:.4f}  "
                  f"({time.perf_counter() - started:.2f}s on {c.size} ranks"
                  + (f", {100 * np.mean(shares):.1f}% in allreduce" if shares else "") + f"){note}",
                  flush=True)
        for line in _agree(c, "writing the results", lambda: _write_results(
                args, net, history, result, c) if lead else ()):
            print(line, flush=True)
        return status
    except DistributedError as error:
        if lead:
            print(f"fastbp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException:
        # An error on one rank alone would leave the others waiting in a collective: stop them all.
        if c.size > 1:
            import traceback
            traceback.print_exc()
            print(f"fastbp: rank {c.rank} failed; stopping every rank", file=sys.stderr, flush=True)
            comm.Abort(1)
        raise


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
        return True
    except ImportError:
        return False


def history_record(history, result=None):
    """A JSON-ready dict of a distributed History (per-epoch metrics and the distributed facts)."""
    record = {"epochs": history.epochs, "best_epoch": getattr(history, "best_epoch", None),
              "stopped_epoch": getattr(history, "stopped_epoch", None), "history": dict(history),
              "ranks": history.ranks, "threads_per_rank": history.threads, "seed": history.seed,
              "shard_sizes": history.shard_sizes, "local_batch_sizes": history.local_batch_sizes,
              "update_seconds": [a.tolist() for a in history.batch_seconds],
              "allreduce_seconds": [a.tolist() for a in history.allreduce_seconds]}
    if result is not None:
        record.update(test_accuracy=result.accuracy, test_loss=result.loss)
    return record


def _write_results(args, net, history, result, c):
    """Rank 0's files: the model (--save), the history as JSON (--json), the curves (--plot)."""
    import json
    lines = []
    if getattr(args, "save", None):
        net.save(args.save)
        lines.append(f"model saved to {args.save}")
    if getattr(args, "plot", None):
        from .plotting import plot_learning_curves
        plot_learning_curves(history, args.plot, title=f"{net} on {c.size} ranks")
        lines.append(f"learning curves drawn to {args.plot}")
    path = getattr(args, "json", None)
    if path:
        text = json.dumps(history_record(history, result), indent=1)
        if path == "-":
            lines.append(text)
        else:
            with open(path, "w") as f:
                f.write(text + "\n")
    return lines
