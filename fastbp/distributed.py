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

With ``sample_weight`` (each rank passes its rows' weights; each rank's must sum to more than 0),
each rank's local gradient is the weighted sum ``sum w dC`` of its rows, the Allreduce carries one
more number, the update's weight sum over all ranks, and the update is the weighted mean: equal to
single-process weighted training on the same global minibatches. An update whose weights sum to 0
on every rank together makes no step.

Everything said of Network.fit holds: the optimizer state carries over, learning rate schedules and
early stopping work (on metrics reduced over all ranks, so every rank decides the same), L2 applies
to the weights only. Dropout is not supported here.

With ``metrics=[..., "gradient_norms"]``, ``gradient_norm_m`` is the mean over the epoch's updates of
the Frobenius norm of layer m's weight gradient after the Allreduce (the update's mean gradient,
without L2): the same on every rank.

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
import zlib

import numpy as np

from . import backends, checkpoints, training, validation
from . import datasets
from .datasets import DATA_KEYS, row_readers
from .kernels import codes

SNAPSHOT_SAMPLES = 8192  # global samples between copies of the parameters kept to undo a divergence


class DistributedError(ValueError):
    """Some rank could not start (bad input, a missing file, ranks that disagree); raised on every
    rank, with each failing rank's reason."""


# --------------------------------------------------------------------------- communication

class Comm:
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


def agree(comm, what, action):
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
    n_local, shared = Comm(comm).local_size()
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
    arrays = row_readers(spec, keys)
    n = datasets.n_rows(spec, keys)
    a, b = shard_range(n, rank, size)
    return tuple(array.rows(a, b) for array in arrays)


def shard(data, comm, keys=DATA_KEYS):
    """This rank's part of `data`: a path or pair of paths (see load_shard; only this rank's rows are
    read) or a tuple of in-memory arrays with the same number of rows (views of their rows are
    returned). Collective when comm is given: every rank learns whether every rank succeeded."""
    c = Comm(comm)
    if isinstance(data, (str, os.PathLike)) or (
            isinstance(data, (tuple, list)) and data and isinstance(data[0], (str, os.PathLike))):
        return agree(c, "reading the data", lambda: load_shard(data, c.rank, c.size, keys))
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

def evaluate(net, X, y, comm=None, n_threads=None, sample_weight=None):
    """The mean cost and accuracy over every rank's (X, y) together (collective): an Evaluation;
    with sample_weight (this rank's samples' weights), the weighted ones."""
    c = Comm(comm)
    threads = n_threads or net.n_threads or default_threads(comm)  # collective: every rank calls it

    def check():
        if X is None or len(X) == 0:
            return None, None, None
        X_ = validation.features(X, net.layer_sizes[0], net.dtype)
        return (X_, validation.targets(y, X_.shape[0], net.layer_sizes[-1], net.dtype),
                validation.sample_weight(sample_weight, X_.shape[0], positive_sum=False))
    data = agree(c, "evaluate", check)
    with net.exclusive():
        X_, Y_, W_ = data
        sums = np.array(training.forward_sums(net, X_, Y_, threads, W_), np.float64)
    c.allreduce(sums)
    if sums[2] == 0:
        raise ValueError("no rank has samples to evaluate")
    return training.Evaluation(float(sums[0] / sums[2]), float(sums[1] / sums[2]))


def fit(net, X, y, comm=None, **arguments):
    """Train `net` on every rank's (X, y) together: ``net.fit(X, y, comm=comm, ...)``, synchronous
    data-parallel minibatch gradient descent over the mpi4py communicator `comm` (None: this process
    alone, still in global minibatches).

    Collective: every rank of comm calls it with the same network configuration and arguments and its
    own shard (X, y) (see shard / load_shard). ``batch_size`` is the global minibatch, split over the
    ranks; see the module's documentation for which rows form a minibatch. ``validation_data`` is
    this rank's share of the validation set (or None); the metrics are over all ranks' shares.
    Arguments are those of Network.fit, with ``seed`` (the shuffling's; None: drawn by rank 0 from
    the network's generator) and ``allreduce_every`` (minibatches per Allreduce and update).

    At the start, rank 0's parameters and optimizer state are copied to every rank. Only rank 0
    prints (``verbose``, ``progress``); ``callback(epoch, metrics)`` is called on every rank with the
    same metrics, and training stops if it returns True on any rank. Returns the History (every rank
    has the same, timings apart), also kept as ``net.history``; rank 0 alone should write it.

    Raises TrainingDiverged on every rank if the cost or a parameter becomes NaN or infinite (the
    network keeps the parameters of the last finite step), DistributedError on every rank if some
    rank's input is bad or the ranks disagree on the configuration.
    """
    return net.fit(X, y, comm=Comm(comm), **arguments)


def prepare(net, X, y, validation_data, sample_weight, arguments, comm=None):
    """The training loop's start over MPI: every rank's data and settings checked (a failure on one
    rank is raised on all), the ranks' settings compared. Returns (X, Y, weights or None, validation
    triple or None, Settings, a function making the MPIStepper)."""
    c = comm if isinstance(comm, Comm) else Comm(comm)

    def check():
        if X is None or len(X) == 0:
            raise ValueError(f"rank {c.rank} has no training samples (fewer rows than ranks?)")
        X_, Y_, W_, val = training.data(net, X, y, validation_data, sample_weight)
        settings = training.Settings(net, **arguments)
        if np.any(settings.hyper[codes.H_DROPOUT:] != 0):
            raise ValueError("dropout is not supported in distributed training")
        return X_, Y_, W_, val, settings
    X, Y, W, val, settings = agree(c, "distributed fit", check)
    if len(set(c.allgather(W is None))) > 1:
        raise DistributedError("some ranks passed sample_weight and others did not")
    fingerprint = dict(settings.fingerprint(), network=(repr(net), tuple(net.layer_sizes)))
    everyone = c.allgather((X.shape[0], 0 if val is None else val[0].shape[0], fingerprint))
    differ = [r for r, (_, _, s) in enumerate(everyone) if s != everyone[0][2]]
    if differ:
        keys = [k for k in fingerprint if everyone[differ[0]][2][k] != everyone[0][2][k]]
        raise DistributedError(f"ranks {differ} were called with other arguments than rank 0 "
                               f"(they differ in {', '.join(keys)}); every rank must train the same "
                               f"network the same way")
    shard_sizes = [n for n, _, _ in everyone]
    settings.watch(has_validation=sum(v for _, v, _ in everyone) > 0)  # all ranks' validation data
    if settings.shuffle == "global":
        if len(set(shard_sizes)) > 1 or len(set(map(str, c.allgather(
                checkpoints.data_fingerprint(X, Y, W))))) > 1:
            raise DistributedError("shuffle='global' needs the same (X, y) on every rank: each rank "
                                   "reads rows from all of it (in memory, or a memory map of one "
                                   f"file); the ranks hold {shard_sizes} rows, or other rows")
    elif settings.batch_size < c.size:
        raise DistributedError(f"batch_size {settings.batch_size} is smaller than the number of "
                               f"ranks ({c.size}): every rank needs rows in each minibatch")
    elif settings.seed is None:
        settings.seed = c.bcast_obj(int(net.rng.integers(0, 2 ** 62)) if c.rank == 0 else None)
    threads = net.n_threads or default_threads(c.comm)  # collective: every rank calls it
    return X, Y, W, val, settings, lambda *args: MPIStepper(c, shard_sizes, threads, *args)


class MPIStepper(training.Stepper):
    """The training loop's steps over MPI ranks: each update is this rank's gradient of its rows of
    the global minibatch (the backend's ``gradients`` driver), one Allreduce of the flat gradient
    (with a count of ranks whose cost is not finite), and the same optimizer step on every rank."""

    unit = "update"

    def __init__(self, c, shard_sizes, threads, net, X, Y, settings, weights=None):
        super().__init__(net, X, Y, settings, weights)
        self.c, self.threads, self.k = c, threads, settings.allreduce_every
        self.lead = c.rank == 0
        B = settings.batch_size
        self.spread = settings.shuffle == "global"  # every rank holds all rows; batches are split
        if self.spread:
            n = X.shape[0]
            sizes, self.n_batches = local_batch_sizes(B, c.size), -(-n // B)
            global_rows = np.minimum(B, n - B * np.arange(self.n_batches))
            shard_sizes = shard_sizes[:1]
        else:
            sizes, self.n_batches, global_rows = _plan(shard_sizes, B)
        self.b = sizes[c.rank]
        self.n_units = -(-self.n_batches // self.k)
        self.group_rows = np.add.reduceat(global_rows, np.arange(0, self.n_batches, self.k))
        self.n_weights = sum(W.size for W in net.weights)
        capacity = max(1, min(max(sizes), X.shape[0]))
        self.desc, self.work = self.workspace(capacity)
        self.Xb = np.empty((capacity, X.shape[1]), net.dtype)
        self.Yb = np.empty((capacity, Y.shape[1]), net.dtype)
        self.sample_costs = np.empty(capacity)
        n = net.parameters.shape[0]
        # the gradient, (with weights) the update's weight sum, then a count of bad costs
        self.buffer = np.zeros(n + 1 + (weights is not None), net.dtype)
        self.Wb = np.empty(capacity) if weights is not None else None
        self.mean_grads = self.buffer[:n]
        # each layer's gradient norms summed over the epoch's updates; None: not measured
        self.norm_sums = np.zeros(len(net.weights)) if "gradient_norms" in settings.metrics else None
        self.weight_grads = codes.layer_views(self.desc, self.mean_grads)[0]
        self.chunk = max(1, -(-SNAPSHOT_SAMPLES // (settings.batch_size * self.k)))
        self.opening = None
        # Every rank starts from rank 0's network (initialized with another seed, or trained apart).
        for buf in (self.parameters, self.state, self.hyper):
            c.bcast(buf)
        if self.spread:  # the shuffles: rank 0's generator, as one process would draw them
            net.rng.bit_generator.state = c.bcast_obj(net.rng.bit_generator.state)
        self.facts = {"seed": settings.seed, "ranks": c.size, "threads": threads,
                      "shard_sizes": shard_sizes, "local_batch_sizes": sizes}

    def begin(self, history):
        super().begin(history)
        for name, value in self.facts.items():
            setattr(history, name, value)
        history.batch_seconds, history.allreduce_seconds = [], []

    def agree(self, what, action):
        return agree(self.c, what, action)

    def data_fingerprint(self):
        return self.c.allgather(super().data_fingerprint())

    def reduce(self, values):
        self.c.allreduce(values)
        return values

    def any(self, flag):
        return self.c.any(flag)

    def order(self, epoch):
        if self.spread:  # the permutation one process draws from the network's generator
            return self.net.rng.permutation(self.X.shape[0])
        return _epoch_order(self.X.shape[0], self.settings.seed, epoch, self.c.rank,
                            self.settings.shuffle)

    def _rows(self, order, batch):
        """This rank's rows of minibatch `batch`: its block of the global minibatch's rows
        (global shuffle), or its local minibatch of its shard."""
        if not self.spread:
            return order[batch * self.b:(batch + 1) * self.b]
        B, size, rank = self.settings.batch_size, self.c.size, self.c.rank
        rows = order[batch * B:(batch + 1) * B]
        m = rows.shape[0]
        return rows[m * rank // size:m * (rank + 1) // size]

    def sums(self, X, Y, weights=None):
        if self.spread and X is not None:  # every rank holds every row: each measures its block
            block = slice(*shard_range(X.shape[0], self.c.rank, self.c.size))
            X, Y = X[block], Y[block]
            weights = None if weights is None else weights[block]
        return super().sums(X, Y, weights)

    def first_chunk(self):
        return self.chunk  # the same on every rank: chunks end in collective decisions

    def next_chunk(self, chunk, elapsed):
        return chunk

    def start_epoch(self):
        self.cost, self.rows_seen = 0.0, 0
        if self.norm_sums is not None:
            self.norm_sums[:] = 0
        self.batch_seconds = np.zeros(self.n_units)
        self.allreduce_seconds = np.zeros(self.n_units)
        self.history.batch_seconds.append(self.batch_seconds)
        self.history.allreduce_seconds.append(self.allreduce_seconds)

    def run(self, order, first, last):
        for update in range(first, last):
            started = time.perf_counter()
            status = self._step(order, update)
            self.batch_seconds[update] = time.perf_counter() - started
            if status != codes.DONE:
                return status, update
        return codes.DONE, last

    def epoch_cost(self):
        return self.cost, self.rows_seen

    def opening_cost(self):
        return self.opening

    def gradient_norms(self):
        return self.norm_sums / self.n_units

    def extras(self, seconds):
        comm, total = float(self.allreduce_seconds.sum()), float(self.batch_seconds.sum())
        return {"comm_seconds": comm, "comm_share": comm / total if total > 0 else 0.0}

    def end_epoch(self, epoch):
        """Every rank must hold the same parameters (they apply the same updates to the same sums);
        an MPI whose Allreduce gives ranks different sums would break that."""
        if self.c.size > 1 and len(set(self.c.allgather(
                zlib.crc32(self.parameters.view(np.uint8))))) != 1:
            raise RuntimeError(f"after epoch {epoch} the ranks' parameters differ: this MPI "
                               f"library's Allreduce did not give every rank the same sum")

    def finish(self):
        self.grads[:] = self.mean_grads  # the last update's mean gradient, as a local fit leaves it

    def _local_gradient(self, order, batch, rows_total, out):
        """OUT out: the gradient of this rank's rows of minibatch `batch`, summed and divided by
        rows_total (the update's rows on every rank), or 0 without rows; returns their costs' sum.
        With weights: the weighted sum sum w dC (divided after the Allreduce by the update's weight
        sum, which this adds to the buffer), and the weighted costs' sum."""
        rows = self._rows(order, batch)
        m = rows.shape[0]
        if m == 0:
            out[:] = 0
            return 0.0
        np.take(self.X, rows, axis=0, out=self.Xb[:m])
        np.take(self.Y, rows, axis=0, out=self.Yb[:m])
        costs = self.sample_costs[:m]
        if self.weights is not None:
            weights = np.take(self.weights, rows, out=self.Wb[:m])
            self.driver.gradients(self.desc, self.parameters, out, self.Xb[:m], self.Yb[:m],
                                  self.work, costs, self.threads, weights)
            total = float(weights.sum())  # the driver's gradient is the weighted mean
            out *= out.dtype.type(total)
            self.rows_seen += total
            self.buffer[-2] += total
            return float(np.dot(costs, weights))
        self.rows_seen += m
        self.driver.gradients(self.desc, self.parameters, out, self.Xb[:m], self.Yb[:m],
                              self.work, costs, self.threads)
        factor = m / rows_total  # the driver's gradient is the mean over the m rows
        if factor != 1.0:
            out *= out.dtype.type(factor)
        return float(costs.sum())

    def _step(self, order, update):
        """Update `update` of the epoch: gradients, one Allreduce, one optimizer step; the status."""
        first = update * self.k
        last = min(first + self.k, self.n_batches)
        rows_total = int(self.group_rows[update])
        weighted = self.weights is not None
        if weighted:
            self.buffer[-2] = 0.0  # the update's weight sum, added up by _local_gradient
        seen = self.rows_seen
        cost = self._local_gradient(order, first, rows_total, self.mean_grads)
        if self.opening is None:  # the untrained network's cost on this rank's rows, for the loop
            self.opening = (cost, self.rows_seen - seen)
        for batch in range(first + 1, last):
            cost += self._local_gradient(order, batch, rows_total, self.grads)
            self.mean_grads += self.grads
        self.cost += cost
        self.buffer[-1] = 0.0 if math.isfinite(cost) else 1.0  # this rank's cost is NaN or infinite
        started = time.perf_counter()
        self.c.allreduce(self.buffer)
        self.allreduce_seconds[update] = time.perf_counter() - started
        if self.buffer[-1] != 0:  # on some rank
            return codes.COST_NOT_FINITE
        if weighted:  # the update's weighted mean gradient; no weight: no step
            total = self.buffer[-2]
            self.mean_grads *= self.mean_grads.dtype.type(1.0 / total if total > 0 else 0.0)
            if not total > 0:
                return codes.DONE
        if self.norm_sums is not None:  # of the update's mean gradient: the same on every rank
            self.norm_sums += [np.sqrt(np.sum(np.square(W, dtype=np.float64)))
                               for W in self.weight_grads]
        self.hyper[codes.H_KEY] = self.hyper[codes.H_STEP]
        with np.errstate(over="ignore", invalid="ignore"):
            finite = self.driver.update_parameters(self.settings.optimizer.code, self.parameters, self.mean_grads,
                                 self.state, self.hyper, self.n_weights)
        return codes.DONE if finite else codes.PARAMS_NOT_FINITE
