"""The one training loop: every fit of a Network, in one process or over MPI ranks, runs :func:`fit`.

- :class:`Settings`: fit's arguments, checked once, with the hyperparameter array they give.
- A *stepper* runs a chunk of an epoch's minibatches: :class:`LocalStepper` calls the backend's
  ``train_batches`` driver (with the thread tuner); ``fastbp.distributed.MPIStepper`` computes
  gradients, sums them with one Allreduce and updates. Both keep the same parameters in the same
  buffers, so the loop above them is the same.
- :func:`fit` owns the epochs: the schedule's learning rate, the metrics and the History, early
  stopping, the callback, the progress bar and the per-epoch line, Ctrl-C (answered between chunks)
  and the roll back to the last finite step when training diverges.
"""
import functools
import os
import signal
import threading
import time
import warnings
from collections import namedtuple

import numpy as np

from . import checkpoints, modelfile, schedules, validation
from .kernels import codes, optimizers

FORWARD_BLOCK = 256   # samples per block when predicting or evaluating
CHUNK_SECONDS = 0.2   # wall time aimed at per call into the backend while training
EXPLORE_SHARE = 4     # the thread tuner's tries of another count get this fraction of a chunk
SMALL_NETWORK = 1024  # weights per input, at most, for fit to check X as it trains (see start)

Evaluation = namedtuple("Evaluation", "loss accuracy")


class TrainingDiverged(FloatingPointError):
    """The cost or the parameters became NaN or infinite. The network keeps the parameters of the last
    finite step; ``history`` holds the epochs completed before."""

    def __init__(self, message, epoch, batch, history):
        super().__init__(message)
        self.epoch, self.batch, self.history = epoch, batch, history


class History(dict):
    """What fit measured, one list per metric with an entry per epoch: ``loss`` (the mean cost of the
    epoch's samples, each computed before its minibatch's update; with sample weights, the weighted
    mean sum w C / sum w, as are the train and validation metrics), ``lr``, ``seconds``, and the
    metrics asked for (``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``; with
    ``gradient_norms``, ``gradient_norm_1`` .. ``gradient_norm_L``: for each layer m, the mean over
    the epoch's minibatches of ``||dC/dW^m||_F``, the Frobenius norm of the minibatch's mean gradient
    of layer m's weights without the L2 term; over MPI, of each update's Allreduced gradient).
    ``best_epoch`` (1-based) is set by early stopping, ``stopped_epoch`` when training stopped early,
    ``interrupted`` when Ctrl-C did.
    """

    best_epoch = None
    stopped_epoch = None
    interrupted = None  # (epoch, minibatches of it completed) when Ctrl-C stopped training

    @property
    def epochs(self):
        return len(self["loss"])

    def add(self, **metrics):
        for name, value in metrics.items():
            self.setdefault(name, []).append(float(value))


def correct(outputs, Y, weights=None):
    """How many samples' predicted class is the target's (argmax; > 0.5 with one output); with
    weights, the sum of the weights of those samples."""
    if outputs.shape[1] == 1:
        right = (outputs[:, 0] > 0.5) == (Y[:, 0] > 0.5)
    else:
        right = outputs.argmax(axis=1) == Y.argmax(axis=1)
    if weights is None:
        return int(np.sum(right))
    return float(np.dot(right, weights))


def weighted_mean(costs, weights=None):
    """The mean of the samples' costs, or their weighted mean sum w C / sum w."""
    if weights is None:
        return float(costs.mean())
    return float(np.dot(costs, weights) / weights.sum())


# --------------------------------------------------------------------------- settings

class Settings:
    """fit's arguments, checked: what every rank must agree on, and the hyperparameter array."""

    def __init__(self, net, epochs, batch_size, lr, l2, momentum, shuffle, optimizer, nesterov,
                 beta1, beta2, eps, rho, schedule, dropout, early_stopping, monitor, patience,
                 min_delta, metrics, l2_in_cost, seed, allreduce_every):
        self.epochs = validation.integer("epochs", epochs, 0)
        self.batch_size = validation.integer("batch_size", batch_size, 1)
        self.lr = validation.real("lr", lr, low=0, low_open=True)
        self.optimizer = optimizers.get(optimizer, momentum=momentum, nesterov=nesterov,
                                        beta1=beta1, beta2=beta2, eps=eps, rho=rho)
        self.hyper = self.optimizer.fill(codes.hyperparameters(len(net.weights)))
        self.hyper[codes.H_L2] = validation.real("l2", l2, low=0)
        self.hyper[codes.H_DROPOUT:codes.H_DROPOUT + len(net.weights) - 1] = _dropout(net, dropout)
        if shuffle != "global":
            shuffle = bool(shuffle)
        self.shuffle = shuffle
        self.schedule = schedules.get(schedule)
        self.early_stopping = bool(early_stopping)
        self.asked = (None if metrics is None else tuple(sorted(set(metrics))), monitor)
        self.patience = validation.integer("patience", patience, 0)
        self.min_delta = validation.real("min_delta", min_delta, low=0)
        self.l2_in_cost = bool(l2_in_cost)
        self.seed = None if seed is None else validation.integer("seed", seed, 0)
        self.seed_drawn = False  # set where a missing seed is drawn (MPI): a checkpoint restores it
        self.allreduce_every = validation.integer("allreduce_every", allreduce_every, 1)

    def watch(self, has_validation):
        """Settle the metrics to measure and the one to monitor (validation.monitoring), knowing
        whether there is validation data."""
        self.metrics, self.monitor = validation.monitoring(
            *self.asked, has_validation,
            watched=self.early_stopping or isinstance(self.schedule, schedules.ReduceOnPlateau))

    @property
    def l2(self):
        return self.hyper[codes.H_L2]

    def fingerprint(self):
        """What must be the same on every rank, comparable with == (a drawn seed left out: it is
        drawn anew by each run, and a resumed one takes the checkpoint's)."""
        return {name: repr(value) if name in ("schedule", "optimizer") else
                (value.tolist() if isinstance(value, np.ndarray) else value)
                for name, value in vars(self).items() if not (name == "seed" and self.seed_drawn)}


def _dropout(net, dropout):
    """Per-hidden-layer dropout rates from one rate or a sequence of them."""
    n_hidden = len(net.weights) - 1
    rates = [dropout] * n_hidden if np.ndim(dropout) == 0 else list(dropout)
    if len(rates) != n_hidden:
        raise ValueError(f"dropout needs one rate per hidden layer ({n_hidden}), got {len(rates)}")
    return [validation.real("dropout", rate, 0, 1, high_open=True) for rate in rates]


def data(net, X, y, validation_data, sample_weight=None, check_x=True):
    """(X, Y, weights or None, validation triple (X_val, Y_val, weights or None) or None) in the
    network's dtype (the weights float64), checked (X's values only with check_x)."""
    X = validation.features(X, net.layer_sizes[0], net.dtype, check_finite=check_x)
    Y = validation.targets(y, X.shape[0], net.layer_sizes[-1], net.dtype)
    weights = validation.sample_weight(sample_weight, X.shape[0])
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a pair (X_val, y_val) or a triple "
                             "(X_val, y_val, sample_weight_val)")
        if validation_data[0] is not None and validation.n_samples(validation_data[0]) > 0:
            X_val = validation.features(validation_data[0], net.layer_sizes[0], net.dtype,
                                        "validation X")
            val = (X_val, validation.targets(validation_data[1], X_val.shape[0],
                                             net.layer_sizes[-1], net.dtype, "validation y"),
                   validation.sample_weight(validation_data[2] if len(validation_data) == 3
                                            else None, X_val.shape[0], "validation sample_weight"))
    return X, Y, weights, val


# --------------------------------------------------------------------------- steppers

def forward_sums(net, X, Y, threads, weights=None):
    """(sum of the samples' costs, correctly classified samples, samples) over (X, Y); with
    weights, each sample counts its weight: (sum w C, sum of the correct ones' w, sum w)."""
    if X is None or X.shape[0] == 0:
        return 0.0, 0, 0
    out, costs = net._forward(X, Y, threads)
    if weights is None:
        return float(costs.sum()), correct(out, Y), X.shape[0]
    return float(np.dot(costs, weights)), correct(out, Y, weights), float(weights.sum())


class FullBatch:
    """The mean cost and the mean gradient (without L2) of all of (X, Y) at the network's current
    parameters, by the backend's ``gradients`` driver (blocks of samples on threads, no Python per
    sample), on the thread count that has been fastest so far: full-batch methods (L-BFGS) call it
    once per evaluation. X and Y are validated arrays of the network's dtype; with weights (validated
    float64, or None), the weighted mean cost and its gradient."""

    def __init__(self, net, X, Y, weights=None):
        self.net, self.X, self.Y, self.weights = net, X, Y, weights
        self.desc, self.work = net._buffers(min(X.shape[0], FORWARD_BLOCK), X=X)
        self.grads = codes.zeros(net.parameters.shape, net.dtype)
        self.costs = np.empty(X.shape[0])
        self.tuner = _ThreadTuner(net.threads, fixed=net.n_threads is not None)

    def __call__(self):
        """(mean cost, gradient): the gradient is a flat array laid out like the parameters, reused
        by the next call."""
        threads = self.tuner.pick()
        started = time.perf_counter()
        if self.weights is None:
            self.net._driver.gradients(self.desc, self.net.parameters, self.grads, self.X, self.Y,
                                       self.work, self.costs, threads)
        else:
            self.net._driver.gradients(self.desc, self.net.parameters, self.grads, self.X, self.Y,
                                       self.work, self.costs, threads, self.weights)
        self.tuner.record(threads, 1.0 / max(time.perf_counter() - started, 1e-9))
        return weighted_mean(self.costs, self.weights), self.grads


class Stepper:
    """What the loop needs of the way an epoch runs, here in one process; subclasses add ranks.

    The buffers are the network's own: ``parameters``, ``grads``, ``state`` (optimizer slots) and
    ``hyper``, which the loop may snapshot and restore. ``n_units`` steps (minibatches here) make an
    epoch; ``run`` takes a range of them. ``weights``: the samples' weights (float64) or None."""

    unit = "minibatch"
    lead = True  # this process prints

    def __init__(self, net, X, Y, settings, weights=None):
        self.net, self.X, self.Y, self.settings = net, X, Y, settings
        self.weights = weights
        self.parameters, self.grads = net.parameters, net._grads
        self.state, self.hyper = net._state, net._hyper
        self.driver = net._driver
        self.threads = net.threads

    def workspace(self, capacity):
        """The descriptor and work buffer for batches of up to `capacity` samples."""
        return self.net._buffers(capacity, self.settings.optimizer.code, X=self.X)

    def begin(self, history):
        """When the loop starts, with the History it fills."""
        self.history = history

    def start_epoch(self):
        """Before an epoch's first chunk."""

    def agree(self, what, action):
        """action(), run on every rank; a failure on one is raised on all."""
        return action()

    def first_chunk(self):
        """Steps in the epoch's first chunk (here fixed: self.chunk)."""
        return self.chunk

    def next_chunk(self, chunk, elapsed):
        """Steps in the next chunk, after one of `chunk` steps took `elapsed` seconds."""
        return chunk

    def trying(self):
        """Whether the next chunk tries a thread count other than the fastest (it is then cut to
        1 / EXPLORE_SHARE: the try is likely slower)."""
        return False

    def data_fingerprint(self):
        return checkpoints.data_fingerprint(self.X, self.Y, self.weights)

    def reduce(self, values):
        """The sums of `values` (a float64 array) over every rank, in place."""
        return values

    def any(self, flag):
        return bool(flag)

    def sums(self, X, Y, weights=None):
        """(cost sum, correct, samples) of the current parameters over every rank's (X, Y), each
        sample counting its weight when weights are given."""
        return tuple(self.reduce(np.array(forward_sums(self.net, X, Y, self.threads, weights),
                                          np.float64)))

    def extras(self, seconds):
        """Per-epoch values the stepper adds to the History."""
        return {}

    def gradient_norms(self):
        """The epoch's mean, over its steps, of each layer's ||dC/dW^m||_F (when measured)."""
        raise NotImplementedError

    def end_epoch(self, epoch):
        """After an epoch's metrics were recorded."""

    def finish(self):
        """When training ends, whichever way."""


class LocalStepper(Stepper):
    """One process: the driver's ``train_batches`` over a range of minibatches, on the thread count
    the tuner picks (results never depend on it)."""

    def __init__(self, net, X, Y, settings, weights=None, rows=None):
        super().__init__(net, X, Y, settings, weights)
        self.rows = rows  # the rows of X an epoch visits, in this order (None: all, shuffled or not)
        n = X.shape[0] if rows is None else rows.shape[0]
        self.n_units = -(-n // settings.batch_size)
        self.desc, self.work = self.workspace(min(settings.batch_size, n))
        self.costs = np.zeros(n)
        # each layer's gradient norms summed over the epoch's minibatches, by the driver; empty: off
        self.norms = np.zeros(len(net.weights) if "gradient_norms" in settings.metrics else 0)
        if net._tuner is None or net._tuner.most != self.threads:
            net._tuner = _ThreadTuner(self.threads, fixed=net.n_threads is not None)
        self.tuner = net._tuner

    def order(self, epoch):
        if self.rows is not None:
            return self.rows
        n = self.X.shape[0]
        return self.net.rng.permutation(n) if self.settings.shuffle else np.arange(n)

    def first_chunk(self):
        return max(1, 4096 // self.settings.batch_size)

    def next_chunk(self, chunk, elapsed):
        return int(np.clip(chunk * CHUNK_SECONDS / max(elapsed, 1e-6), 1, 1 << 20))

    def trying(self):
        return self.tuner.explores(self.tuner.chunks + 1)

    def start_epoch(self):
        self.costs[:] = 0
        self.norms[:] = 0

    def run(self, order, first, last):
        """Minibatches first..last-1 of the epoch visiting X in `order`: (status, batch)."""
        self.visited = order
        threads = self.tuner.pick()
        started = time.perf_counter()
        _, status, batch = self.driver.train_batches(
            self.desc, self.parameters, self.grads, self.state, self.X, self.Y, order,
            self.settings.batch_size, first, last, self.hyper, self.work, self.costs, threads,
            self.norms, *(() if self.weights is None else (self.weights,)))
        if status == codes.DONE:
            self.tuner.record(threads, (last - first) / max(time.perf_counter() - started, 1e-9))
        return status, batch

    def epoch_cost(self):
        """(sum of the samples' costs, samples), or with weights (sum w C, sum w)."""
        if self.weights is None:
            return float(self.costs.sum()), self.costs.shape[0]
        visited = self.weights[self.visited]  # costs are indexed like the epoch's order
        return float(np.dot(self.costs, visited)), float(visited.sum())

    def opening_cost(self):
        m = min(self.settings.batch_size, self.costs.shape[0])
        if self.weights is None:
            first = self.costs[:m]
            return float(first.sum()), first.shape[0]
        rows = self.visited[:m]
        return float(np.dot(self.costs[:m], self.weights[rows])), float(self.weights[rows].sum())

    def gradient_norms(self):
        return self.norms / self.n_units


# --------------------------------------------------------------------------- the loop

def start(net, X, y, validation_data, sample_weight, arguments, rows=None):
    """The loop's start in one process: (X, Y, weights or None, validation triple or None, Settings,
    the stepper's class, whether X's values were checked); ``fastbp.distributed.prepare`` is its twin
    over MPI ranks. With `rows` (int64), each epoch visits X[rows], in that order, and X's values
    are not checked: the caller has (the estimators train unweighted epochs on their own shuffles
    of an X they checked once and never copy). It takes no shuffle and no metrics (they would
    visit all of X).

    A dense X's values are not checked here when no sample_weight is given: the first epoch checks
    them without a pass of its own. A NaN or infinity in X always reaches layer 0's weight gradient
    (NaN times anything, and infinity times 0, are NaN; infinity times anything else is infinite),
    so the minibatch that holds it makes the parameters or the cost non-finite, and the driver
    reports it. fit then finds the value, puts the network back as it was and raises the ValueError
    this check would have raised (:class:`_Unchecked`). The pass it saves costs a tenth of an epoch
    of a network that is small against its input (nielsen, 784-30-10: 1.10x a fit of one epoch),
    but under 1% for a large one (wide, 784-1024-1024-10), whose snapshot for putting it back (3
    copies of the parameters: 22 MB for wide) would cost memory for nothing. So X is checked here
    when the network has more than SMALL_NETWORK weights per input, or X fewer values than the
    snapshot (the pass is cheaper then); with sample weights (a minibatch whose weights sum to 0
    takes no step, and ReLU maps NaN to 0, so its cost can stay finite); and for a sparse X (its
    values are few)."""
    if arguments["allreduce_every"] != 1:
        raise ValueError("allreduce_every needs comm (distributed training)")
    if arguments["shuffle"] == "global":
        raise ValueError("shuffle='global' is for distributed training (comm); one process always "
                         "shuffles all of its data")
    if arguments["seed"] is not None:
        raise ValueError("seed (the shuffling's) needs comm; a network's shuffles come from its "
                         "own seed")
    if rows is not None and (arguments["shuffle"] or arguments["metrics"]):
        raise ValueError("rows= takes shuffle=False and no metrics")
    n_params = net.parameters.size
    checked = (sample_weight is not None or validation.is_sparse(X) or np.size(X) < 3 * n_params
               or n_params > SMALL_NETWORK * net.layer_sizes[0])
    X, Y, weights, val = data(net, X, y, validation_data, sample_weight,
                              check_x=checked and rows is None)
    settings = Settings(net, **arguments)
    settings.watch(has_validation=val is not None)
    if rows is not None:
        return X, Y, weights, val, settings, functools.partial(LocalStepper, rows=rows), True
    return X, Y, weights, val, settings, LocalStepper, checked


def fit(net, X, y, validation_data=None, sample_weight=None, verbose=False, callback=None,
        progress=False, begin=start, checkpoint=None, checkpoint_every=1, resume=True, **arguments):
    """Network.fit (see there): `begin` checks the input and settings and names the stepper (`start`
    here, or ``fastbp.distributed.prepare`` over MPI)."""
    X, Y, weights, val, settings, make, checked = begin(net, X, y, validation_data,
                                                        sample_weight, arguments)
    fingerprint = settings.fingerprint()  # before training changes the hyperparameters
    if checkpoint is not None:
        checkpoint = _Checkpoint(checkpoint, checkpoint_every, resume)
    with net.exclusive():
        unchecked = None if checked else _Unchecked(net, X)  # before fit changes the network
        optimizer = settings.optimizer
        if net._optimizer != optimizer.kind:  # another optimizer: fresh state
            net.reset_optimizer()
            net._optimizer = optimizer.kind
        settings.hyper[codes.H_STEP] = net._hyper[codes.H_STEP]
        settings.hyper[codes.H_SEED] = net.rng.integers(0, 2 ** 53)
        net._hyper = settings.hyper
        stepper = make(net, X, Y, settings, weights)
        history = net.history = History(loss=[])
        stepper.begin(history)
        loop = _Loop(net, stepper, settings, history, unchecked)
        try:
            if checkpoint is not None:
                checkpoint.start(loop, fingerprint, verbose)
            _epochs(loop, val, verbose, callback, progress, checkpoint)
        finally:
            stepper.finish()
            # no whole epoch trained (epochs=0, resumed when done, Ctrl-C, an error): X's error, if
            # it has one, comes first
            if loop.unchecked is not None:
                loop.unchecked.check()
    return history


class _Unchecked:
    """A dense X whose values fit has not checked (see :func:`start`), and what fit puts back if one
    is not finite: the network as it was when fit was called."""

    def __init__(self, net, X):
        self.net, self.X = net, X
        self.saved = (net.parameters.copy(), net._state.copy(), net._hyper.copy(), net._optimizer,
                      net.rng.bit_generator.state, net.history)

    def check(self):
        """If X holds a NaN or infinity: put the network back and raise the ValueError naming it
        (after early stopping's restore, which the epoch loop ends with)."""
        try:
            validation.finite("X", self.X)
        except ValueError as error:
            net = self.net
            parameters, state, net._hyper, net._optimizer, rng, net.history = self.saved
            net.parameters[:], net._state[:] = parameters, state
            net.rng.bit_generator.state = rng
            raise error from None


class _Loop:
    """The state of the epoch loop besides the network's buffers: what a checkpoint holds (but
    `unchecked`: an X whose values no whole epoch has seen yet, or None)."""

    def __init__(self, net, stepper, settings, history, unchecked=None):
        self.net, self.stepper, self.settings, self.history = net, stepper, settings, history
        self.unchecked = unchecked
        self.stopper = _EarlyStopping(settings.monitor, settings.patience, settings.min_delta) \
            if settings.early_stopping else None
        self.schedule = settings.schedule
        self.schedule.reset(settings.epochs)
        self.growth = _CostGrowth()
        self.done = 0  # epochs completed


def _epochs(loop, val, verbose, callback, progress, checkpoint):
    net, stepper, settings, history = loop.net, loop.stepper, loop.settings, loop.history
    stopper, schedule, growth = loop.stopper, loop.schedule, loop.growth
    bar = _progress_bar(progress and stepper.lead, (settings.epochs - loop.done) * stepper.n_units,
                        stepper.unit)
    try:
        # Ctrl-C is answered between chunks of minibatches and once an epoch is recorded, so that the
        # parameters, the history and history.interrupted always tell the same story.
        with _DeferredInterrupt() as interrupt:
            first = settings.epochs + 1 if history.stopped_epoch else loop.done + 1
            for epoch in range(first, settings.epochs + 1):
                started = time.perf_counter()
                stepper.hyper[codes.H_LR] = schedule.lr(epoch - 1, settings.lr)
                _run_epoch(stepper, epoch, history, bar, interrupt)
                loop.unchecked = None  # a whole epoch trained: X's values are finite (see start)
                values = _measure(net, stepper, settings, val)
                values["seconds"] = time.perf_counter() - started
                values.update(stepper.extras(values["seconds"]))
                history.add(**values)
                growth.check(stepper, epoch, values["loss"])
                stepper.end_epoch(epoch)
                stop = stepper.any(_epoch_done(net, epoch, settings.epochs, values, settings.monitor,
                                               schedule, stopper, callback, verbose and stepper.lead))
                loop.done = epoch
                if stop:
                    history.stopped_epoch = epoch
                if checkpoint is not None and stepper.lead:
                    checkpoint.save(loop)
                if stepper.any(interrupt.pending):
                    history.interrupted = (epoch, stepper.n_units)
                    raise KeyboardInterrupt
                if stop:
                    break
    finally:
        if bar is not None:
            bar.close()
        if stopper is not None:
            stopper.finish(net, history)


def _run_epoch(stepper, epoch, history, bar, interrupt):
    """One epoch, in chunks; a chunk that makes the parameters NaN or infinite is undone and replayed
    up to its last finite step. A Ctrl-C stops the epoch after a chunk (``history.interrupted`` says
    how many of its minibatches were trained) unless the epoch is done: then it is recorded first."""
    order = stepper.order(epoch)
    stepper.start_epoch()
    n = stepper.n_units
    chunk = stepper.first_chunk()
    first = 0
    while first < n:
        last = min(first + chunk, n)
        if stepper.trying():
            last = first + max(1, (last - first) // EXPLORE_SHARE)
        saved = stepper.parameters.copy(), stepper.state.copy(), stepper.hyper.copy()
        started = time.perf_counter()
        status, batch = stepper.run(order, first, last)
        if status == codes.PARAMS_NOT_FINITE:  # back to the last finite step
            stepper.parameters[:], stepper.state[:], stepper.hyper[:] = saved
            stepper.run(order, first, batch)
        if status != codes.DONE:
            what = "cost" if status == codes.COST_NOT_FINITE else "parameters"
            raise TrainingDiverged(
                f"training diverged: the {what} became NaN or infinite at epoch {epoch}, "
                f"{stepper.unit} {batch + 1} of {n}; the network keeps the parameters of the last "
                f"finite step (try a smaller learning rate)", epoch, batch, history)
        if last < n and stepper.any(interrupt.pending):
            history.interrupted = (epoch, last)
            raise KeyboardInterrupt
        if bar is not None:
            bar.update(last - first)
        chunk = stepper.next_chunk(last - first, time.perf_counter() - started)
        first = last


class _Checkpoint:
    """fit's checkpoint file: the loop's state written (atomically, by the leading rank) after every
    `every`-th epoch and the last, and read back when a fit starts with the same file, so that it
    continues where the last one stopped and ends with the same bits as a run never interrupted."""

    def __init__(self, path, every, resume):
        self.path = os.fspath(path)
        self.every = validation.integer("checkpoint_every", every, 1)
        self.resume = bool(resume)

    def start(self, loop, settings_fingerprint, verbose):
        """Fingerprint this training; when the file holds a checkpoint of it, restore it whole."""
        net, stepper = loop.net, loop.stepper
        self.fingerprint = _jsonable({"settings": settings_fingerprint, "network": net.config(),
                                      "data": stepper.data_fingerprint()})
        if not (self.resume and stepper.agree("looking for the checkpoint",
                                              lambda: os.path.exists(self.path))):
            return
        record, arrays = stepper.agree("reading the checkpoint", lambda: checkpoints.load(self.path))
        differ = checkpoints.differences(record.get("fingerprint", {}), self.fingerprint)
        if differ:
            raise checkpoints.CheckpointError(
                f"{self.path} is a checkpoint of another training: {'; '.join(differ)}. Use another "
                f"checkpoint path, or resume=False (--fresh on the command line) to start afresh "
                f"and overwrite it")
        buffers = {"parameters": net.parameters, "slots": net._state, "hyper": net._hyper}
        try:
            if record["stopper"] is not None:
                buffers.update(best_parameters=net.parameters, best_slots=net._state,
                               best_hyper=net._hyper)
            modelfile.check_arrays(self.path, arrays, buffers)
            history = dict(record["history"])
            attributes = history.pop("_attributes")
            rng_state, schedule_state = record["rng"], record["schedule"]
            opening, warned = record["growth"]
            done = int(record["epoch"])
            seed = record.get("seed")  # the shuffles' seed (MPI); older checkpoints have none
        except modelfile.ModelFileError:
            raise  # it names the file and the array already
        except (KeyError, TypeError, ValueError) as error:
            raise checkpoints.CheckpointError(f"{self.path}: a damaged checkpoint ({error})") from error
        # Everything is read and checked: only now do the network and the loop take it.
        for name, target in (("parameters", net.parameters), ("slots", net._state),
                             ("hyper", net._hyper)):
            target[:] = arrays[name]
        net.rng.bit_generator.state = rng_state
        if loop.settings.seed_drawn and seed is not None:  # the shuffles of the run being resumed
            loop.settings.seed = loop.history.seed = int(seed)
        vars(loop.schedule).update(schedule_state)
        if loop.stopper is not None and record["stopper"] is not None:
            value, loop.stopper.best_epoch, loop.stopper.waited = record["stopper"]
            loop.stopper.best = (value, arrays["best_parameters"], arrays["best_slots"],
                                 arrays["best_hyper"])
        loop.history.update(history)
        for name, value in attributes.items():
            setattr(loop.history, name, value)
        loop.growth.opening, loop.growth.warned = opening, warned
        loop.done = done
        if verbose and stepper.lead:
            print(resuming_line(done, loop.settings.epochs, self.path, attributes["stopped_epoch"]),
                  flush=True)

    def save(self, loop):
        """After an epoch: write the checkpoint when it is an `every`-th, the last or the stopping one."""
        last = loop.done == loop.settings.epochs or loop.history.stopped_epoch
        if loop.done % self.every and not last:
            return
        net, stopper = loop.net, loop.stopper
        arrays = {"parameters": net.parameters, "slots": net._state, "hyper": net._hyper}
        best = None
        if stopper is not None and stopper.best is not None:
            best = [stopper.best[0], stopper.best_epoch, stopper.waited]
            arrays.update(zip(("best_parameters", "best_slots", "best_hyper"), stopper.best[1:]))
        history = dict(loop.history, _attributes={"best_epoch": loop.history.best_epoch,
                                                  "stopped_epoch": loop.history.stopped_epoch})
        record = {"epoch": loop.done, "epochs": loop.settings.epochs, "seed": loop.settings.seed,
                  "fingerprint": self.fingerprint, "rng": net.rng.bit_generator.state,
                  "schedule": vars(loop.schedule), "stopper": best, "history": history,
                  "growth": [loop.growth.opening, loop.growth.warned]}
        checkpoints.save(self.path, _jsonable(record), arrays)


def resuming_line(done, epochs, path, stopped=None):
    """What a fit resuming from a checkpoint after `done` epochs of `epochs` says."""
    if stopped or done >= epochs:
        return f"{path}: training already complete ({done} of {epochs} epochs); nothing to resume"
    return f"resuming at epoch {done + 1} of {epochs} ({path})"


def _jsonable(value):
    """`value` with numpy scalars and arrays as plain Python (the JSON of a checkpoint)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class CostGrowthWarning(RuntimeWarning):
    """The training cost grew far above its starting value: finite, but most likely diverging."""


class _CostGrowth:
    """Warns once per fit when an epoch's cost exceeds GROWTH times the cost of the untrained network
    (the first minibatch's mean cost, before its update): finite training is legal, but a cost that
    grew a thousandfold means the learning rate is too large far more often than not."""

    GROWTH = 1e3

    def __init__(self):
        self.opening = None
        self.warned = False

    def check(self, stepper, epoch, loss):
        if self.opening is None:
            total, count = stepper.reduce(np.array(stepper.opening_cost(), np.float64))
            self.opening = total / count if count > 0 else 0.0  # weights: the first batch's may be 0
        if not self.warned and self.opening > 0 and loss > self.GROWTH * self.opening:
            self.warned = True
            if stepper.lead:
                warnings.warn(CostGrowthWarning(
                    f"the training cost grew from {self.opening:.4g} (before the first update) to "
                    f"{loss:.4g} at epoch {epoch}: training is most likely diverging; try a smaller "
                    f"learning rate"), stacklevel=5)


def _measure(net, stepper, settings, val):
    """The epoch's values: loss and lr, and the metrics asked for (over every rank's samples)."""
    penalty = 0.5 * settings.l2 * net.squared_weights() if settings.l2_in_cost else 0.0
    cost, count = stepper.reduce(np.array(stepper.epoch_cost(), np.float64))
    values = {"loss": cost / count + penalty, "lr": stepper.hyper[codes.H_LR]}
    for prefix, (X, Y, weights) in (("train_", (stepper.X, stepper.Y, stepper.weights)),
                                    ("val_", val or (None, None, None))):
        if settings.metrics & {prefix + "loss", prefix + "accuracy"}:
            cost, right, n = stepper.sums(X, Y, weights)
            values[prefix + "loss"] = cost / n + penalty
            values[prefix + "accuracy"] = right / n
    values = {name: value for name, value in values.items()
              if name in ("loss", "lr") or name in settings.metrics}
    if "gradient_norms" in settings.metrics:
        values.update((f"gradient_norm_{m}", norm)
                      for m, norm in enumerate(stepper.gradient_norms(), start=1))
    return values


class _EarlyStopping:
    """Tracks the monitored metric; keeps the best epoch's parameters, optimizer state and counters."""

    def __init__(self, monitor, patience, min_delta):
        self.sign = -1.0 if monitor.endswith("accuracy") else 1.0  # minimize sign * value
        self.patience, self.min_delta = patience, min_delta
        self.best = self.best_epoch = None
        self.waited = 0

    def update(self, epoch, value, net):
        """Record this epoch; True when training should stop."""
        if self.best is None or self.sign * value < self.sign * self.best[0] - self.min_delta:
            self.best = (value, net.parameters.copy(), net._state.copy(), net._hyper.copy())
            self.best_epoch, self.waited = epoch, 0
            return False
        self.waited += 1
        return self.waited >= self.patience

    def finish(self, net, history):
        """At the end of training: back to the best epoch's parameters and state, if there was one."""
        if self.best is not None:
            _, parameters, state, hyper = self.best
            net.parameters[:], net._state[:], net._hyper[:] = parameters, state, hyper
            history.best_epoch = self.best_epoch


def _epoch_done(net, epoch, epochs, values, monitor, schedule, stopper, callback, verbose):
    """After an epoch's metrics (in `values`): the schedule observes the monitor, the epoch's line is
    printed, early stopping and the callback decide. Returns whether training should stop."""
    schedule.observe(values[monitor] if monitor in values else values["loss"])
    if verbose:
        print(f"epoch {epoch}/{epochs}  " + "  ".join(
            f"{name} {value:.4g}" for name, value in values.items()), flush=True)
    stop = stopper is not None and stopper.update(epoch, values[monitor], net)
    if callback is not None and callback(epoch, dict(values)):
        stop = True
    return stop


class _ThreadTuner:
    """Picks the thread count of each chunk of minibatches when n_threads is None: results do not
    depend on it, so it can follow the machine. Each candidate (every CPU, half of them, one) is
    measured in MEASURED chunks first, in turn; then the fastest is used and another is tried now and
    then: on a busy machine, threads that wait for each other at every step can be slower than fewer.

    A candidate's rate is the best of its last RECENT chunks. A chunk only ever runs slower than its
    thread count allows (the cold caches of a first epoch, another process, a spell in which the
    CPUs share no cache), so a single slow chunk must not condemn a count for good: with a smoothed
    mean, one first-epoch chunk at 2 threads measured at 28 k batches/s (76 k later) kept nielsen on
    1 thread for a whole fit (483 k against 773 k samples/s). A count that stays slow loses within
    RECENT chunks."""

    EXPLORE = 12  # chunks between two tries of another count
    MEASURED = 2  # chunks each count is measured in before the fastest is chosen
    RECENT = 3    # a count's rate: the best of its last RECENT chunks

    def __init__(self, most, fixed):
        self.most = most
        self.options = [most] if fixed else sorted({most, max(1, most // 2), 1}, reverse=True)
        self.rates = {n: [] for n in self.options}
        self.chunks = 0

    def rate(self, threads):
        return max(self.rates[threads], default=0.0)

    def pick(self):
        self.chunks += 1
        fewest = min(self.options, key=lambda n: len(self.rates[n]))
        if len(self.rates[fewest]) < self.MEASURED:
            return fewest
        best = max(self.options, key=self.rate)
        if self.explores(self.chunks):
            others = [n for n in self.options if n != best]
            return others[(self.chunks // self.EXPLORE) % len(others)]
        return best

    def explores(self, chunk):
        """Whether chunk number `chunk` (counted from 1) tries a count other than the fastest."""
        return len(self.options) > 1 and chunk % self.EXPLORE == 0 and all(
            len(rates) >= self.MEASURED for rates in self.rates.values())

    def record(self, threads, rate):
        if self.chunks == 1:  # the first call may include compiling and page faults: not a rate
            return
        self.rates[threads] = (self.rates[threads] + [rate])[-self.RECENT:]


def _progress_bar(progress, total, unit):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress bars need tqdm: pip install tqdm") from None
    return tqdm(total=total, unit=unit, leave=False, dynamic_ncols=True)


class _DeferredInterrupt:
    """Holds SIGINT (Ctrl-C) back during a block, so that a call into the backend is never cut in the
    middle of a minibatch; ``pending`` tells whether one arrived. Only in the main thread (the only
    one Python delivers signals to)."""

    def __enter__(self):
        self.pending = False
        self._previous = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT):
            try:
                self._previous = signal.signal(signal.SIGINT, self._hold)
            except ValueError:  # signals unavailable (e.g. an embedded interpreter)
                self._previous = None
        return self

    def _hold(self, signum, frame):
        self.pending = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
