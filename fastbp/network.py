"""The Network: layer sizes, one flat parameter buffer with per-layer views, and what you do with it.

The arithmetic happens in a backend (``backends.py``); this class validates input, owns the buffers
(parameters, gradients, optimizer state, work space) and calls the backend's drivers: one call per
chunk of minibatches, sized to take a fraction of a second, so that progress is shown, Ctrl-C is
answered and divergence is caught without Python between minibatches.
"""
import signal
import threading
import time
from collections import namedtuple

import numpy as np

from . import backends, initializers, schedules, validation
from .kernels import codes

FORWARD_BLOCK = 256   # samples per block when predicting or evaluating
CHUNK_SECONDS = 0.2   # wall time aimed at per call into the backend while training

Evaluation = namedtuple("Evaluation", "loss accuracy")


class TrainingDiverged(FloatingPointError):
    """The cost or the parameters became NaN or infinite. The network keeps the parameters of the last
    finite step; ``history`` holds the epochs completed before."""

    def __init__(self, message, epoch, batch, history):
        super().__init__(message)
        self.epoch, self.batch, self.history = epoch, batch, history


class History(dict):
    """What fit measured, one list per metric with an entry per epoch: ``loss`` (the mean cost of the
    epoch's samples, each computed before its minibatch's update), ``lr``, ``seconds``, and the
    metrics asked for (``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``).
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


def accuracy(outputs, Y):
    """The fraction of samples whose predicted class is the target's (argmax; 0.5 with one output)."""
    if outputs.shape[1] == 1:
        return float(np.mean((outputs[:, 0] > 0.5) == (Y[:, 0] > 0.5)))
    return float(np.mean(outputs.argmax(axis=1) == Y.argmax(axis=1)))


class Network:
    """A fully-connected network trained by backpropagation and minibatch gradient descent.

    Parameters
    ----------
    layer_sizes : sequence of int
        Units per layer, input first: ``[784, 30, 10]``.
    activation : str
        Hidden layers' activation: ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu`` or ``identity``.
    output_activation : str or None
        Those or ``softmax``. None means ``activation`` for ``mse`` and ``softmax`` for
        ``cross_entropy``.
    loss : str
        ``mse`` (1/2 ||a - y||^2 per sample) or ``cross_entropy`` (binary per unit with a sigmoid
        output, categorical with softmax).
    dtype : str
        ``float64`` or ``float32``: parameters and arithmetic.
    backend : str
        ``numba``, ``cython``, ``numpy`` (the reference) or ``auto`` (cython when built, else
        numba); see ``fastbp.available_backends()``.
    n_threads : int or None
        Threads per minibatch. None: up to every CPU this process may run on; while training, fastbp
        times chunks of minibatches and uses fewer threads when that is faster (a busy machine).
        Results never depend on it.
    seed : int or None
        Seeds the initial parameters and the shuffling.
    init : str
        ``auto``, ``scaled_normal``, ``normal``, ``xavier`` or ``he`` (see ``fastbp.initializers``).

    Attributes
    ----------
    weights, biases : list of ndarray
        ``weights[l]`` has shape ``(layer_sizes[l+1], layer_sizes[l])`` (the W of ``z = W a + b``).
        They are views of the one parameter buffer ``parameters``: writing into them changes the
        network, and training updates them in place.
    """

    def __init__(self, layer_sizes, activation="sigmoid", output_activation=None, loss="mse",
                 dtype="float64", backend="numba", n_threads=None, seed=None, init="auto"):
        self.layer_sizes = validation.layer_sizes(layer_sizes)
        hidden = {name: codes.ACTIVATIONS[name] for name in codes.HIDDEN_ACTIVATIONS}
        self._hidden = validation.choice("activation", activation, hidden)
        self._loss = validation.choice("loss", loss, codes.LOSSES)
        if output_activation is None:
            output_activation = "softmax" if loss == "cross_entropy" else activation
        self._output = validation.choice("output activation", output_activation, codes.ACTIVATIONS)
        if loss == "cross_entropy" and output_activation not in ("sigmoid", "softmax"):
            raise ValueError(f"cross_entropy needs a sigmoid or softmax output (probabilities), got "
                             f"output_activation={output_activation!r}; use loss='mse' for it")
        if output_activation == "softmax" and self.layer_sizes[-1] < 2:
            raise ValueError("a softmax output needs at least 2 units; use sigmoid for one output")
        validation.choice("init", init, {name: name for name in initializers.SCHEMES})
        self.activation, self.output_activation, self.loss = activation, output_activation, loss
        self.dtype = validation.dtype(dtype)
        self.backend = backends.resolve(backend)
        self._driver = backends.get(self.backend)
        self.n_threads = validation.threads(n_threads)
        self.seed, self.init = seed, init
        self._desc, _ = self._layout(1, codes.SGD)
        n_params = int(self._desc[codes.D_NPARAMS])
        self.parameters = np.zeros(n_params, self.dtype)
        self._grads = np.zeros(n_params, self.dtype)
        self._state = np.zeros((2, n_params), self.dtype)
        self._hyper = codes.hyperparameters(len(self.layer_sizes) - 1)
        self._optimizer = None
        self.weights, self.biases = codes.layer_views(self._desc, self.parameters)
        self._rng = np.random.default_rng(seed)
        initializers.initialize(init, activation, self.weights, self.biases, self._rng)
        self._work = {}
        self._lock = threading.Lock()
        self._tuner = None
        self.history = None

    def reset_optimizer(self):
        """Forget the optimizer state (velocity, moments, step count): the next fit starts afresh."""
        self._state[:] = 0
        self._hyper[codes.H_STEP] = 0
        self._optimizer = None

    def __getstate__(self):  # pickling: everything but the lock and the work buffers
        state = self.__dict__.copy()
        for name in ("_lock", "_work", "_driver", "weights", "biases"):
            state.pop(name)
        state["_tuner"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._driver = backends.get(self.backend)
        self._lock = threading.Lock()
        self._work = {}
        self.weights, self.biases = codes.layer_views(self._desc, self.parameters)

    def __repr__(self):
        return (f"Network({self.layer_sizes}, activation={self.activation!r}, output_activation="
                f"{self.output_activation!r}, loss={self.loss!r}, dtype={self.dtype.name!r}, "
                f"backend={self.backend!r})")

    # ----------------------------------------------------------------------- plumbing

    def _layout(self, capacity, optimizer):
        return codes.describe(self.layer_sizes, self._hidden, self._output, self._loss, optimizer,
                              capacity)

    def _buffers(self, capacity, optimizer=codes.SGD):
        """The descriptor and a work buffer for batches of up to `capacity` samples (kept for reuse)."""
        key = (capacity, optimizer)
        if key not in self._work:
            desc, size = self._layout(capacity, optimizer)
            self._work = {key: (desc, np.zeros(size, self.dtype))}  # keep one: work can be large
        return self._work[key]

    def _threads(self):
        return self.n_threads or backends.default_threads()

    def _exclusive(self):
        """The network's lock, refused rather than waited for: one network, one user at a time."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this network is being used by another thread (training or "
                               "predicting); use one network per thread, or wait for it")
        return _Release(self._lock)

    def _X(self, X, name="X"):
        return validation.features(X, self.layer_sizes[0], self.dtype, name)

    def _Y(self, y, n, name="y"):
        return validation.targets(y, n, self.layer_sizes[-1], self.dtype, name)

    def _forward(self, X, Y=None):
        """Output activations for X and, given targets Y, each sample's cost."""
        n = X.shape[0]
        desc, work = self._buffers(min(n, FORWARD_BLOCK))
        out = np.empty((n, self.layer_sizes[-1]), self.dtype)
        costs = np.empty(n if Y is not None else 0)
        if Y is None:
            Y = np.empty((0, self.layer_sizes[-1]), self.dtype)
        self._driver.forward(desc, self.parameters, X, Y, out, costs, work, self._threads())
        return out, costs

    # ----------------------------------------------------------------------- using the network

    def forward(self, X):
        """The output layer's activations for every sample of X, shape (n, layer_sizes[-1])."""
        with self._exclusive():
            return self._forward(self._X(X))[0]

    def predict(self, X):
        """Class labels: the index of the largest output (with one output unit: output > 0.5)."""
        outputs = self.forward(X)
        if outputs.shape[1] == 1:
            return (outputs[:, 0] > 0.5).astype(np.int64)
        return outputs.argmax(axis=1)

    def evaluate(self, X, y):
        """The mean cost (without L2) and the accuracy on (X, y), as ``Evaluation(loss, accuracy)``."""
        with self._exclusive():
            X = self._X(X)
            Y = self._Y(y, X.shape[0])
            outputs, costs = self._forward(X, Y)
        return Evaluation(float(costs.mean()), accuracy(outputs, Y))

    def gradients(self, X, y):
        """Gradients of the mean cost over (X, y) by backpropagation, without updating anything.

        Returns ``(dW, db)``: lists shaped like ``weights`` and ``biases``.
        """
        with self._exclusive():
            X = self._X(X)
            Y = self._Y(y, X.shape[0])
            desc, work = self._buffers(min(X.shape[0], FORWARD_BLOCK))
            grads = np.empty_like(self.parameters)
            self._driver.gradients(desc, self.parameters, grads, X, Y, work, np.empty(X.shape[0]),
                                   self._threads())
        dW, db = codes.layer_views(self._desc, grads)
        return dW, db

    # ----------------------------------------------------------------------- training

    def fit(self, X, y, epochs=10, batch_size=32, lr=0.1, l2=0.0, momentum=0.0, shuffle=True,
            validation_data=None, verbose=False, optimizer="sgd", nesterov=False, beta1=0.9,
            beta2=0.999, eps=1e-8, rho=0.99, schedule=None, dropout=0.0, early_stopping=False,
            monitor=None, patience=10, min_delta=0.0, metrics=None, l2_in_cost=False,
            callback=None, progress=False, comm=None, allreduce_every=1):
        """Train by minibatch gradient descent; returns the History (also kept as ``self.history``).

        Parameters
        ----------
        X : array (n, layer_sizes[0]); y : labels (n,) or targets (n, layer_sizes[-1])
        epochs, batch_size : int
            Each epoch visits X in a fresh random order (``shuffle``) or in order, in minibatches of
            ``batch_size`` (the last one may be smaller).
        lr, l2 : float
            Learning rate; L2 penalty: the gradient of a minibatch is the mean of its samples'
            gradients plus ``l2 * W`` for the weights (never the biases).
        optimizer : {"sgd", "adam", "rmsprop"}
            As in torch.optim: ``sgd`` with ``momentum`` (``v = momentum*v + g``, ``theta -= lr*v``)
            and ``nesterov``; ``adam`` (``beta1``, ``beta2``, ``eps``); ``rmsprop`` (square-average
            smoothing ``rho``, ``eps``). L2 enters the gradient (torch's ``weight_decay``), weights
            only. The optimizer state carries over to the next ``fit`` with the same optimizer.
        schedule : str or fastbp.schedules.Schedule
            The learning rate per epoch: ``constant``, ``step``, ``exponential``, ``inverse``,
            ``cosine``, ``plateau`` (reduce on plateau of the monitored loss), or a Schedule.
        dropout : float or sequence of float
            Inverted dropout rate of each hidden layer's outputs (one rate for all, or one per hidden
            layer); masks are drawn from the network's seed; no dropout when predicting.
        validation_data : pair (X_val, y_val)
            Evaluated after each epoch (``val_loss``, ``val_accuracy``).
        metrics : iterable of str
            What to measure after each epoch, among ``train_loss``, ``train_accuracy`` (the whole
            training set, one forward pass), ``val_loss``, ``val_accuracy``. Default: the validation
            ones when there is validation data. ``loss`` (the mean cost of the epoch's samples, each
            computed before its minibatch's update) is always recorded.
        l2_in_cost : bool
            Report costs with the L2 term ``l2/2 * sum(W**2)`` added (the cost the gradient descends).
        early_stopping : bool
            Stop when ``monitor`` (default ``val_loss`` with validation data, else ``loss``) has not
            improved by more than ``min_delta`` for ``patience`` epochs; the parameters (and optimizer
            state) of the best epoch are restored at the end. ``history.best_epoch`` tells which.
        callback : callable
            ``callback(epoch, metrics)`` after each epoch (epoch from 1, metrics a dict); returning
            True stops training.
        verbose, progress : bool
            Print a line per epoch; show a progress bar (tqdm) over the minibatches.
        comm : mpi4py communicator
            Train data-parallel over MPI: each rank passes its own shard (X, y) (see
            ``fastbp.distributed.load_shard``) and ``batch_size`` is the global minibatch; see
            ``fastbp.distributed``. ``allreduce_every``: one Allreduce and update per K minibatches.

        Raises TrainingDiverged if the cost or a parameter becomes NaN or infinite; the network then
        holds the parameters of the last finite step. On KeyboardInterrupt the network holds the
        parameters after the last completed minibatch and ``history`` the completed epochs.
        """
        if comm is not None:  # data-parallel over MPI
            from . import distributed
            return distributed.fit(
                self, X, y, comm, epochs=epochs, batch_size=batch_size, lr=lr, l2=l2,
                momentum=momentum, shuffle=shuffle, validation_data=validation_data, verbose=verbose,
                optimizer=optimizer, nesterov=nesterov, beta1=beta1, beta2=beta2, eps=eps, rho=rho,
                schedule=schedule, dropout=dropout, early_stopping=early_stopping, monitor=monitor,
                patience=patience, min_delta=min_delta, metrics=metrics, l2_in_cost=l2_in_cost,
                callback=callback, progress=progress, allreduce_every=allreduce_every)
        if allreduce_every != 1:
            raise ValueError("allreduce_every needs comm (distributed training)")
        X = self._X(X)
        Y = self._Y(y, X.shape[0])
        epochs = validation.integer("epochs", epochs, 0)
        batch_size = validation.integer("batch_size", batch_size, 1)
        opt = validation.choice("optimizer", optimizer, codes.OPTIMIZERS)
        base_lr = validation.real("lr", lr, low=0, low_open=True)
        hyper = codes.hyperparameters(len(self.weights))
        hyper[codes.H_L2] = validation.real("l2", l2, low=0)
        hyper[codes.H_MOMENTUM] = validation.real("momentum", momentum, 0, 1, high_open=True)
        hyper[codes.H_NESTEROV] = bool(nesterov)
        if nesterov and (opt != codes.SGD or momentum == 0):
            raise ValueError("nesterov needs optimizer='sgd' with momentum > 0")
        hyper[codes.H_BETA1] = validation.real("beta1", beta1, 0, 1, high_open=True)
        hyper[codes.H_BETA2] = validation.real("beta2", beta2, 0, 1, high_open=True)
        hyper[codes.H_EPS] = validation.real("eps", eps, low=0, low_open=True)
        hyper[codes.H_RHO] = validation.real("rho", rho, 0, 1, high_open=True)
        hyper[codes.H_DROPOUT:codes.H_DROPOUT + len(self.weights) - 1] = self._dropout(dropout)
        hyper[codes.H_SEED] = self._rng.integers(0, 2 ** 53)
        schedule = schedules.get(schedule)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            X_val = self._X(validation_data[0], "validation X")
            Y_val = self._Y(validation_data[1], X_val.shape[0], "validation y")
        metrics, monitor = validation.monitoring(
            metrics, monitor, validation_data is not None,
            watched=early_stopping or isinstance(schedule, schedules.ReduceOnPlateau))
        patience = validation.integer("patience", patience, 0)
        min_delta = validation.real("min_delta", min_delta, low=0)
        stopper = _EarlyStopping(monitor, patience, min_delta) if early_stopping else None
        bar = _progress_bar(progress, epochs * -(-X.shape[0] // batch_size))

        with self._exclusive():
            if self._optimizer != (optimizer, bool(nesterov)):  # new optimizer: fresh state
                self.reset_optimizer()
                self._optimizer = (optimizer, bool(nesterov))
            hyper[codes.H_STEP] = self._hyper[codes.H_STEP]
            self._hyper = hyper
            history = self.history = History(loss=[])
            desc, work = self._buffers(min(batch_size, X.shape[0]), opt)
            schedule.reset(epochs)
            try:
                for epoch in range(1, epochs + 1):
                    started = time.perf_counter()
                    hyper[codes.H_LR] = schedule.lr(epoch - 1, base_lr)
                    order = self._rng.permutation(X.shape[0]) if shuffle else np.arange(X.shape[0])
                    costs = self._train_epoch(desc, work, X, Y, order, batch_size, epoch, history, bar)
                    penalty = 0.5 * hyper[codes.H_L2] * self._squared_weights() if l2_in_cost else 0.0
                    values = {"loss": costs.mean() + penalty, "lr": hyper[codes.H_LR]}
                    for prefix, data in (("train_", (X, Y)), ("val_", validation_data and (X_val, Y_val))):
                        if metrics & {prefix + "loss", prefix + "accuracy"}:
                            outputs, cost = self._forward(*data)
                            values[prefix + "loss"] = cost.mean() + penalty
                            values[prefix + "accuracy"] = accuracy(outputs, data[1])
                    values = {name: value for name, value in values.items()
                              if name in ("loss", "lr") or name in metrics}
                    values["seconds"] = time.perf_counter() - started
                    history.add(**values)
                    if _epoch_done(self, epoch, epochs, values, monitor, schedule, stopper, callback,
                                   verbose):
                        history.stopped_epoch = epoch
                        break
            finally:
                if bar is not None:
                    bar.close()
                if stopper is not None:
                    stopper.finish(self, history)
        return history

    def _dropout(self, dropout):
        """Per-hidden-layer dropout rates from one rate or a sequence of them."""
        n_hidden = len(self.weights) - 1
        rates = [dropout] * n_hidden if np.ndim(dropout) == 0 else list(dropout)
        if len(rates) != n_hidden:
            raise ValueError(f"dropout needs one rate per hidden layer ({n_hidden}), got {len(rates)}")
        return [validation.real("dropout", rate, 0, 1, high_open=True) for rate in rates]

    def _squared_weights(self):
        return float(sum(np.dot(w.ravel(), w.ravel()) for w in self.weights))

    def _train_epoch(self, desc, work, X, Y, order, batch_size, epoch, history, bar=None):
        """One epoch, in chunks of minibatches timed to CHUNK_SECONDS. Returns each sample's cost."""
        n_batches = -(-X.shape[0] // batch_size)
        costs = np.zeros(X.shape[0])
        if self._tuner is None or self._tuner.most != self._threads():
            self._tuner = _ThreadTuner(self._threads(), fixed=self.n_threads is not None)
        chunk = max(1, 4096 // batch_size)
        first = 0
        while first < n_batches:
            last = min(first + chunk, n_batches)
            saved = self.parameters.copy(), self._state.copy(), self._hyper.copy()
            threads = self._tuner.pick()
            started = time.perf_counter()
            with _DeferredInterrupt() as interrupt:  # a chunk runs whole: Ctrl-C waits for its end
                done, status, batch = self._driver.train_epoch(
                    desc, self.parameters, self._grads, self._state, X, Y, order, batch_size, first,
                    last, self._hyper, work, costs, threads)
            if status != codes.DONE:
                if status == codes.PARAMS_NOT_FINITE:  # back to the last finite step
                    self.parameters[:], self._state[:], self._hyper[:] = saved
                    self._driver.train_epoch(desc, self.parameters, self._grads, self._state, X, Y,
                                             order, batch_size, first, batch, self._hyper, work,
                                             costs, threads)
                what = "cost" if status == codes.COST_NOT_FINITE else "parameters"
                raise TrainingDiverged(
                    f"training diverged: the {what} became NaN or infinite at epoch {epoch}, "
                    f"minibatch {batch + 1} of {n_batches}; the network keeps the parameters of the "
                    f"last finite step (try a smaller learning rate)", epoch, batch, history)
            if interrupt.pending:
                history.interrupted = (epoch, last)
                raise KeyboardInterrupt
            elapsed = time.perf_counter() - started
            self._tuner.record(threads, (last - first) / max(elapsed, 1e-9))
            if bar is not None:
                bar.update(last - first)
            chunk = int(np.clip(chunk * CHUNK_SECONDS / max(elapsed, 1e-6), 1, 1 << 20))
            first = last
        return costs

    # ----------------------------------------------------------------------- files

    def save(self, path):
        """Write the network (configuration, parameters, optimizer state) to an .npz file."""
        from . import modelfile
        modelfile.save(self, path)


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
    printed, early stopping and the callback decide. Returns whether training should stop (both fit
    drivers: Network.fit and fastbp.distributed.fit)."""
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
    depend on it, so it can follow the machine. It keeps a smoothed rate (minibatches per second) for
    each candidate (every CPU, half of them, one), uses the best, and now and then tries another: on
    a busy machine, threads that wait for each other at every step can be slower than fewer."""

    EXPLORE = 12  # chunks between two tries of another count

    def __init__(self, most, fixed):
        self.most = most
        self.options = [most] if fixed else sorted({most, max(1, most // 2), 1}, reverse=True)
        self.rates = {}
        self.chunks = 0

    def pick(self):
        self.chunks += 1
        untried = [n for n in self.options if n not in self.rates]
        if untried:
            return untried[0]
        best = max(self.options, key=self.rates.get)
        if len(self.options) > 1 and self.chunks % self.EXPLORE == 0:
            others = [n for n in self.options if n != best]
            return others[(self.chunks // self.EXPLORE) % len(others)]
        return best

    def record(self, threads, rate):
        if self.chunks == 1:  # the first call may include compiling and page faults: not a rate
            return
        old = self.rates.get(threads)
        self.rates[threads] = rate if old is None else 0.6 * old + 0.4 * rate


def _progress_bar(progress, total):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress bars need tqdm: pip install tqdm") from None
    return tqdm(total=total, unit="batch", leave=False, dynamic_ncols=True)


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


class _Release:
    def __init__(self, lock):
        self._lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._lock.release()
