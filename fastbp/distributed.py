"""Data-parallel training over MPI (mpi4py): many processes, on one machine or many, train one network.

Every process (an MPI *rank*) holds the whole network and a *shard* of the data (by default a block of
consecutive rows of the data file, which it alone reads: :func:`load_shard`). Each update of the
synchronous minibatch descent is: every rank's gradient of its rows of the *global* minibatch (the
backend's ``gradients`` driver); one ``Allreduce`` of the flat gradient buffer, which also counts the
ranks whose cost is not finite (so divergence stops every rank at once); the same optimizer step on
every rank. The ranks' parameters stay identical, and equal single-process training on the same
global minibatches (:func:`global_batches`) to about 1e-12 in float64 (sums in another order).

What a global minibatch is. With ``size`` ranks and a global ``batch_size`` B, rank r gives
``b_r = B(r+1)//size - Br//size`` rows to each. With per-shard shuffling (the default), rank r visits
its shard in a permutation drawn from ``(seed, epoch, r)`` (or in file order); its local minibatch i is
positions ``i*b_r .. (i+1)*b_r - 1`` of that order, the global one the local ones of ranks 0, 1, ...
in turn; an epoch has ``max_r ceil(n_r / b_r)`` of them (a rank whose shard is used up gives no rows
to the last). Rows mix within a shard, never across: shuffle a sorted file once before writing it.
``seed`` defaults to a number rank 0 draws from the network's generator (``history.seed``; on resume,
the checkpoint's). With ``shuffle="global"`` every rank holds all of (X, y) and the minibatches are
one process's (from the network's generator), each split among the ranks in blocks of b_r rows:
results that do not depend on the number of ranks, for reading every row on every rank.

``allreduce_every=k``: one Allreduce and update per k global minibatches (the mean gradient of their
rows). ``sample_weight`` (each rank its rows'): each rank sends ``sum w dC``, the Allreduce carries
the update's weight sum, the update is the weighted mean (none when the weights sum to 0).

Everything said of Network.fit holds (optimizer state, schedules, early stopping on metrics reduced
over all ranks, L2 on the weights, checkpoints written by rank 0), but dropout. Per epoch the history
gets ``comm_seconds`` and ``comm_share`` (the share of the updates' time in Allreduce, waiting for
the slowest rank included); ``history.batch_seconds[e]`` and ``allreduce_seconds[e]`` time each
update; ``gradient_norm_m`` is of each update's Allreduced gradient. With ``n_threads=None`` a rank
uses its CPUs divided by the ranks sharing them (2 ranks on 2 cores: one thread each).
"""
import math
import time
import zlib

import numpy as np

from . import backends, checkpoints, datasets, training, validation
from .datasets import DATA_KEYS
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

    def allreduce(self, buf):  # buf = the sum of every rank's buf, in place (no pickling)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def bcast(self, buf):  # rank 0's buf into every rank's
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
            cpus = local.allgather(sorted(backends.cpus()))
        finally:
            local.Free()
        return len(cpus), all(c == cpus[0] for c in cpus)


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


def default_threads(comm=None, wanted=None):
    """Threads per rank: `wanted`, else the CPUs this rank may use, divided by the ranks on its
    machine when they share the same CPUs (collective: every rank calls it, whatever it wants)."""
    n_local, shared = Comm(comm).local_size()
    cpus = backends.default_threads()
    return wanted or (max(1, cpus // n_local) if shared else cpus)


# --------------------------------------------------------------------------- data shards

def shard_range(n, rank, size):
    """Rows [start, stop) of rank `rank` of `size` for n rows: consecutive blocks, sizes within one."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in 0..{size - 1}")
    return n * rank // size, n * (rank + 1) // size


def shard_sizes(n, size):  # the rows of each of `size` ranks' shards of n rows
    return [stop - start for start, stop in (shard_range(n, r, size) for r in range(size))]


def load_shard(spec, rank, size, keys=DATA_KEYS):
    """Rank `rank`'s rows (X, y) of the data `spec` (an .npz archive, a directory of .npy files or a
    pair of .npy paths), the block ``shard_range(n, rank, size)``, read alone (datasets.read_rows)."""
    return datasets.read_rows(spec, *shard_range(datasets.n_rows(spec, keys), rank, size), keys)


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
    """The rows of each update of epoch `epoch` (from 1) of per-shard distributed training, as indices
    into the shards concatenated in rank order (the file's rows, for shards from load_shard): one
    process visiting these batches trains the same. ``seed``: the training's (``history.seed``)."""
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
    c, threads = Comm(comm), default_threads(comm, n_threads or net.n_threads)

    def check():
        validation.dense_only(X, "distributed evaluation")
        if X is None or len(X) == 0:
            return None, None, None
        X_ = validation.features(X, net.layer_sizes[0], net.dtype)
        return (X_, validation.targets(y, X_.shape[0], net.layer_sizes[-1], net.dtype),
                validation.sample_weight(sample_weight, X_.shape[0], positive_sum=False))
    data = agree(c, "evaluate", check)
    with net.exclusive():
        sums = np.array(training.forward_sums(net, *data[:2], threads, data[2]), np.float64)
    c.allreduce(sums)
    if sums[2] == 0:
        raise ValueError("no rank has samples to evaluate")
    return training.Evaluation(float(sums[0] / sums[2]), float(sums[1] / sums[2]))


def fit(net, X, y, comm=None, **arguments):
    """``net.fit(X, y, comm=comm, ...)`` (None: this process alone, still in global minibatches).

    Collective: every rank calls it with the same network and arguments and its own shard (X, y)
    (``validation_data``: its share of the validation set). Rank 0's parameters and optimizer state
    start every rank; rank 0 alone prints; ``callback`` runs on every rank with the same metrics and
    stops training if it returns True on any. Every rank gets the same History (timings apart).
    TrainingDiverged and DistributedError (bad input or disagreeing ranks) are raised on every rank.
    """
    return net.fit(X, y, comm=Comm(comm), **arguments)


def prepare(net, X, y, validation_data, sample_weight, arguments, comm=None):
    """The training loop's start over MPI: every rank's data and settings checked (a failure on one
    rank is raised on all), the ranks' settings compared. Returns (X, Y, weights or None, validation
    triple or None, Settings, a function making the MPIStepper, True: X's values were checked)."""
    c = comm if isinstance(comm, Comm) else Comm(comm)

    def check():
        validation.dense_only(X, "distributed training")
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
        if settings.seed is not None:  # the shuffles come from the network's seed, as in one process
            raise DistributedError("seed is for per-shard shuffling, not for shuffle='global'")
        if len(set(shard_sizes)) > 1 or len(set(map(str, c.allgather(
                checkpoints.data_fingerprint(X, Y, W))))) > 1:
            raise DistributedError("shuffle='global' needs the same (X, y) on every rank: each rank "
                                   "reads rows from all of it (in memory, or a memory map of one "
                                   f"file); the ranks hold {shard_sizes} rows, or other rows")
    elif settings.batch_size < c.size:
        raise DistributedError(f"batch_size {settings.batch_size} is smaller than the number of "
                               f"ranks ({c.size}): every rank needs rows in each minibatch")
    elif settings.seed is None:
        settings.seed_drawn, settings.seed = True, c.bcast_obj(
            int(net.rng.integers(0, 2 ** 62)) if c.rank == 0 else None)
    threads = default_threads(c.comm, net.n_threads)
    return X, Y, W, val, settings, lambda *args: MPIStepper(c, shard_sizes, threads, *args), True


class MPIStepper(training.Stepper):
    """The training loop's steps over MPI ranks: each update is this rank's gradient of its rows of
    the global minibatch (the backend's ``gradients`` driver), one Allreduce of the flat gradient
    (with a count of ranks whose cost is not finite), and the same optimizer step on every rank."""

    unit = "update"

    def __init__(self, c, shard_sizes, threads, net, X, Y, settings, weights=None):
        super().__init__(net, X, Y, settings, weights)
        self.c, self.threads, self.k, self.lead = c, threads, settings.allreduce_every, c.rank == 0
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
        # fixed, the same on every rank: chunks end in collective decisions
        self.chunk = max(1, -(-SNAPSHOT_SAMPLES // (settings.batch_size * self.k)))
        self.opening = None
        # Every rank starts from rank 0's network (initialized with another seed, or trained apart).
        for buf in (self.parameters, self.state, self.hyper):
            c.bcast(buf)
        if self.spread:  # the shuffles: rank 0's generator, as one process would draw them
            net.rng.bit_generator.state = c.bcast_obj(net.rng.bit_generator.state)
        self.facts = dict(seed=settings.seed, ranks=c.size, threads=threads, shard_sizes=shard_sizes,
                          local_batch_sizes=sizes, batch_seconds=[], allreduce_seconds=[])

    def begin(self, history):
        super().begin(history)
        vars(history).update(self.facts)

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
        weights = None if self.weights is None else np.take(self.weights, rows, out=self.Wb[:m])
        self.driver.gradients(self.desc, self.parameters, out, self.Xb[:m], self.Yb[:m],
                              self.work, costs, self.threads, weights)
        if weights is None:  # the driver's gradient is the mean over the m rows
            self.rows_seen += m
            factor, cost = m / rows_total, float(costs.sum())
        else:  # the weighted mean: times the rows' weight sum, divided by the update's later
            factor = float(weights.sum())
            self.rows_seen += factor
            self.buffer[-2] += factor
            cost = float(np.dot(costs, weights))
        if factor != 1.0:
            out *= out.dtype.type(factor)
        return cost

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
            finite = self.driver.update_parameters(self.settings.optimizer.code, self.parameters,
                                                   self.mean_grads, self.state, self.hyper,
                                                   self.n_weights)
        return codes.DONE if finite else codes.PARAMS_NOT_FINITE
