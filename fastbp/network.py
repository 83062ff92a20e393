"""The Network: layer sizes, one flat parameter buffer with per-layer views, and what you do with it.

The arithmetic happens in a backend (``backends.py``); this class validates input, owns the buffers
(parameters, gradients, optimizer state, work space) and calls the backend's drivers: one call per
chunk of minibatches, sized to take a fraction of a second, so that progress is shown, Ctrl-C is
answered and divergence is caught without Python between minibatches.
"""
import copy
import functools
import threading

import numpy as np

from . import backends, export, initializers, lbfgs, modelfile, trace, training, validation
from .kernels import codes
from .training import FORWARD_BLOCK, Evaluation, History, TrainingDiverged  # noqa: F401  (public)


_SAME = object()  # copy(): keep this setting


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
                 dtype="float64", backend="auto", n_threads=None, seed=None, init="auto"):
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
        self.parameters = codes.zeros(n_params, self.dtype)
        self._grads = codes.zeros(n_params, self.dtype)
        self._state = codes.zeros((2, n_params), self.dtype)
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
        for name in ("parameters", "_grads", "_state", "_hyper"):  # e.g. read-only memory maps
            array = state[name]
            if not array.flags.writeable or array.ctypes.data % codes.ALIGNMENT:  # or unaligned
                state[name] = codes.zeros(array.shape, array.dtype)
                state[name][...] = array
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

    def _layout(self, capacity, optimizer, gather=True):
        return codes.describe(self.layer_sizes, self._hidden, self._output, self._loss, optimizer,
                              capacity, gather)

    def _buffers(self, capacity, optimizer=codes.SGD, X=None):
        """The descriptor and a work buffer for batches of up to `capacity` samples of X (kept for
        reuse); for a sparse X (codes.CSR) a descriptor whose rows are never gathered."""
        sparse = isinstance(X, codes.CSR)
        key = (capacity, optimizer, sparse)
        if key not in self._work:
            desc, size = self._layout(capacity, optimizer, gather=not sparse)
            self._work = {key: (desc, codes.zeros(size, self.dtype))}  # keep one: work can be large
        return self._work[key]

    def exclusive(self):
        """``with net.exclusive():`` holds the network for one user, as fit and forward do: refused
        (RuntimeError) rather than waited for when another thread holds it."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this network is being used by another thread (training or "
                               "predicting); use one network per thread, or wait for it")
        return _Release(self._lock)

    def _X(self, X, name="X"):
        return validation.features(X, self.layer_sizes[0], self.dtype, name)

    def _Y(self, y, n, name="y"):
        return validation.targets(y, n, self.layer_sizes[-1], self.dtype, name)

    def _forward(self, X, Y=None, threads=None):
        """Output activations for X and, given targets Y, each sample's cost (on `threads` threads,
        default self.threads)."""
        n = X.shape[0]
        desc, work = self._buffers(min(n, FORWARD_BLOCK), X=X)
        out = np.empty((n, self.layer_sizes[-1]), self.dtype)
        costs = np.empty(n if Y is not None else 0)
        if Y is None:
            Y = np.empty((0, self.layer_sizes[-1]), self.dtype)
        self._driver.forward(desc, self.parameters, X, Y, out, costs, work, threads or self.threads)
        return out, costs

    # ----------------------------------------------------------------------- using the network

    def forward(self, X):
        """The output layer's activations for every sample of X, shape (n, layer_sizes[-1])."""
        with self.exclusive():
            return self._forward(self._X(X))[0]

    def predict(self, X):
        """Class labels: the index of the largest output (with one output unit: output > 0.5)."""
        outputs = self.forward(X)
        if outputs.shape[1] == 1:
            return (outputs[:, 0] > 0.5).astype(np.int64)
        return outputs.argmax(axis=1)

    def evaluate(self, X, y, sample_weight=None):
        """The mean cost (without L2) and the accuracy on (X, y), as ``Evaluation(loss, accuracy)``;
        with ``sample_weight`` (one weight >= 0 per sample), the weighted mean cost
        ``sum w C / sum w`` and the weighted accuracy."""
        with self.exclusive():
            X = self._X(X)
            Y = self._Y(y, X.shape[0])
            weights = validation.sample_weight(sample_weight, X.shape[0])
            outputs, costs = self._forward(X, Y)
        if weights is None:
            return Evaluation(float(costs.mean()), training.correct(outputs, Y) / X.shape[0])
        return Evaluation(training.weighted_mean(costs, weights),
                          training.correct(outputs, Y, weights) / float(weights.sum()))

    def gradients(self, X, y, sample_weight=None):
        """Gradients of the mean cost over (X, y) by backpropagation, without updating anything;
        with ``sample_weight``, of the weighted mean cost ``sum w C / sum w``.

        Returns ``(dW, db)``: lists shaped like ``weights`` and ``biases``.
        """
        with self.exclusive():
            X = self._X(X)
            Y = self._Y(y, X.shape[0])
            weights = validation.sample_weight(sample_weight, X.shape[0])
            desc, work = self._buffers(min(X.shape[0], FORWARD_BLOCK), X=X)
            grads = codes.zeros(self.parameters.shape, self.dtype)
            extra = () if weights is None else (weights,)
            self._driver.gradients(desc, self.parameters, grads, X, Y, work, np.empty(X.shape[0]),
                                   self.threads, *extra)
        return self.views(grads)

    # ----------------------------------------------------------------------- training

    def fit(self, X, y, epochs=10, batch_size=32, lr=0.1, l2=0.0, momentum=0.0, shuffle=True,
            validation_data=None, verbose=False, optimizer="sgd", nesterov=False, beta1=0.9,
            beta2=0.999, eps=1e-8, rho=0.99, schedule=None, dropout=0.0, early_stopping=False,
            monitor=None, patience=10, min_delta=0.0, metrics=None, l2_in_cost=False,
            callback=None, progress=False, checkpoint=None, checkpoint_every=1, resume=True,
            comm=None, seed=None, allreduce_every=1, sample_weight=None):
        """Train by minibatch gradient descent; returns the History (also kept as ``self.history``).

        Parameters
        ----------
        X : array (n, layer_sizes[0]); y : labels (n,) or targets (n, layer_sizes[-1])
        epochs, batch_size : int
            Each epoch visits X in a fresh random order (``shuffle``) or in order, in minibatches of
            ``batch_size`` (the last one may be smaller). With ``comm``, ``shuffle="global"`` has
            every rank pass the whole (X, y) and trains on the minibatches one process would, each
            split among the ranks (see ``fastbp.distributed``).
        lr, l2 : float
            Learning rate; L2 penalty: the gradient of a minibatch is the mean of its samples'
            gradients plus ``l2 * W`` for the weights (never the biases).
        optimizer : {"sgd", "adam", "rmsprop"} or a fastbp.optimizers object
            ``Adam(beta2=0.99)`` carries its own settings; a name takes them from the arguments below.
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
        sample_weight : array (n,), optional
            Each sample's weight (finite, >= 0, not all 0): a minibatch's gradient becomes the
            weighted mean ``sum w dC/dtheta / sum w`` (plus L2 as before), the same as repeating
            each sample w times (for integer w) within its minibatch; ``loss`` and the train metrics
            are weighted means too. A minibatch whose weights sum to 0 makes no update (the
            optimizer's step count does not advance). Under ``comm``, each rank's weights of its rows.
        validation_data : pair (X_val, y_val) or triple (X_val, y_val, sample_weight_val)
            Evaluated after each epoch (``val_loss``, ``val_accuracy``). Hold it out of the training
            data, and never pass the test set: early stopping and the plateau schedule choose by it,
            so a test set passed here stops being an unbiased estimate.
        metrics : iterable of str
            What to measure after each epoch, among ``train_loss``, ``train_accuracy`` (the whole
            training set, one forward pass), ``val_loss``, ``val_accuracy``, and ``gradient_norms``
            (``gradient_norm_1`` .. ``gradient_norm_L``: the epoch's mean over its minibatches of
            ``||dC/dW^m||_F``, without L2, computed in the compiled drivers). Default: the validation
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
        checkpoint : path, optional
            After every ``checkpoint_every``-th epoch (and the last) write, atomically, all that
            training needs to continue: parameters, optimizer state, the random generator, the
            schedule's and early stopping's state, the history, and a fingerprint of the settings,
            network and data. A fit started with an existing checkpoint of the same training
            continues after its last epoch and ends with the same parameters, bit for bit, as a run
            never interrupted; one of another training is refused (CheckpointError, saying what
            differs) unless ``resume=False``, which starts afresh and overwrites it.
        comm : mpi4py communicator
            Train data-parallel over MPI: each rank passes its own shard (X, y) (see
            ``fastbp.distributed.load_shard``) and ``batch_size`` is the global minibatch; see
            ``fastbp.distributed``. ``allreduce_every``: one Allreduce and update per K minibatches;
            ``seed``: the shards' shuffling seed (None: drawn by rank 0 from the network's generator).

        Raises TrainingDiverged if the cost or a parameter becomes NaN or infinite; the network then
        holds the parameters of the last finite step. On KeyboardInterrupt the network holds the
        parameters after the last completed minibatch and ``history`` the completed epochs. Bad
        input raises ValueError or TypeError and changes nothing; a small network finds a NaN or
        infinity in a large dense X in its first epoch (no extra pass over X), then puts itself
        back as it was and raises the same ValueError (``training.start`` says when).
        """
        arguments = dict(locals())  # every argument, by name: the loop's one list of them
        del arguments["self"], arguments["comm"]
        if comm is None:
            return training.fit(self, **arguments)
        from . import distributed
        return training.fit(self, begin=functools.partial(distributed.prepare, comm=comm),
                            **arguments)

    def fit_lbfgs(self, X, y, max_iter=200, l2=0.0, tol=1e-4, max_fun=15000, verbose=False,
                  sample_weight=None):
        """Train by full-batch L-BFGS-B (scipy), as scikit-learn's ``solver="lbfgs"``; returns a
        ``fastbp.lbfgs.LbfgsHistory`` (also kept as ``self.history``).

        Minimizes the mean cost over all of (X, y) plus ``l2/2 * sum(W**2)`` (weights only), its
        gradient from the compiled ``gradients`` driver. Stops after ``max_iter`` iterations,
        ``max_fun`` evaluations, or when every gradient component is within ``tol`` (scipy's gtol).
        ``history.converged`` and ``history.message`` tell which; ``history["loss"]`` holds the
        objective after each iteration. The optimizer state of ``fit`` is not touched. With
        ``sample_weight``, the mean cost is the weighted mean ``sum w C / sum w``.
        """
        return lbfgs.fit(self, X, y, max_iter=max_iter, l2=l2, tol=tol, max_fun=max_fun,
                         verbose=verbose, sample_weight=sample_weight)

    # ----------------------------------------------------------------------- files

    def save(self, path):
        """Write the network (configuration, parameters, optimizer state) to an .npz file."""
        modelfile.save(path, self.config(), self.parameters, self.optimizer_state)

    def config(self):
        """The configuration that rebuilds this network's shape: a dict of Network's arguments."""
        return {"layer_sizes": list(self.layer_sizes), "activation": self.activation,
                "output_activation": self.output_activation, "loss": self.loss,
                "dtype": self.dtype.name, "init": self.init}

    def copy(self, backend=_SAME, dtype=_SAME, n_threads=_SAME):
        """A network with this one's configuration, parameters, optimizer state and random generator
        (independent copies), on another backend, dtype or thread count where given."""
        config = dict(self.config(), backend=self.backend, n_threads=self.n_threads, seed=self.seed)
        config.update({name: value for name, value in
                       (("backend", backend), ("dtype", dtype), ("n_threads", n_threads))
                       if value is not _SAME})
        net = Network(**config)
        net.parameters[:] = self.parameters
        net.optimizer_state = self.optimizer_state
        net._rng = copy.deepcopy(self._rng)
        return net

    @property
    def optimizer_state(self):
        """The optimizer's state: ``optimizer`` (its name and whether it is Nesterov's, or None before
        any fit), ``slots`` (the (2, n_parameters) array of velocities or moments: a view, so writing
        into it changes the state) and ``step`` (updates made). Assign such a dict to restore one."""
        return {"optimizer": self._optimizer, "slots": self._state,
                "step": int(self._hyper[codes.H_STEP])}

    @optimizer_state.setter
    def optimizer_state(self, value):
        kind = value["optimizer"]
        if kind is not None:
            validation.choice("optimizer", kind[0], codes.OPTIMIZERS)
            kind = (kind[0], bool(kind[1]))
        self._state[:] = value["slots"]
        self._hyper[codes.H_STEP] = value["step"]
        self._optimizer = kind

    @property
    def rng(self):
        """The network's random generator (numpy Generator, from ``seed``): the initial parameters,
        each epoch's shuffle and the dropout masks' seed are drawn from it."""
        return self._rng

    def views(self, flat):
        """(weights, biases): per-layer views of a flat array laid out like ``parameters``."""
        return codes.layer_views(self._desc, flat)

    @property
    def threads(self):
        """The threads a minibatch uses at most: n_threads, or every CPU this process may use."""
        return self.n_threads or backends.default_threads()

    def squared_weights(self):
        """The sum of the squared weights (not the biases): twice the L2 term per unit of l2."""
        return float(sum(np.dot(w.ravel(), w.ravel()) for w in self.weights))

    def to_onnx(self, path):
        """Write the network to an ONNX file (input ``input``, output ``output``, batch axis dynamic);
        returns the onnx.ModelProto. Needs ``pip install 'fastbp[onnx]'``; see fastbp.export."""
        return export.to_onnx(self, path)

    def to_torch(self):
        """The network as a torch.nn.Sequential of Linear and activation modules, in its dtype
        (``fastbp.from_torch`` reads it back). Needs torch; see fastbp.export."""
        return export.to_torch(self)

    def trace(self, x, y, lr=None):
        """One backpropagation of x (a sample or a batch) in the course's notation: a fastbp.Trace
        of every a, z, δ and gradient by layer; nothing changes (see fastbp.trace.trace)."""
        return trace.trace(self, x, y, lr)


def from_torch(module, loss=None, backend="auto", n_threads=None):
    """A Network with the layers, activations and parameters of a ``torch.nn.Sequential``.

    Parameters
    ----------
    module : torch.nn.Sequential
        ``Linear`` layers (with biases), each followed by at most one activation module:
        ``Sigmoid``, ``Tanh``, ``ReLU``, ``LeakyReLU(0.01)``, ``Softmax(dim=-1)`` (or ``dim=1``, the
        same on a batch; output only) or none (the identity; ``Identity`` modules are skipped).
        Every hidden layer has the same activation. What ``Network.to_torch`` returns.
    loss : {"mse", "cross_entropy"} or None
        The network's loss (for training and evaluating it further). None: ``cross_entropy`` for a
        softmax output, else ``mse``.
    backend, n_threads
        As for ``fastbp.Network``.

    Returns
    -------
    Network
        Layer sizes from the Linear layers, dtype from their weights (float32 or float64), weights
        and biases copied. With a single layer the hidden activation, which nothing uses, is the
        output's (``sigmoid`` when that is softmax).

    Raises
    ------
    TypeError
        `module` is not a Sequential.
    ValueError
        A module it cannot represent, named by its index and type.
    """
    config, weights, biases = export.read_torch(module, loss)
    net = Network(**config, backend=backend, n_threads=n_threads)
    for W, b, W_torch, b_torch in zip(net.weights, net.biases, weights, biases):
        W[:], b[:] = W_torch, b_torch
    return net


def load(path, backend="auto", n_threads=None):
    """Read a network written by ``Network.save``, to run on `backend`.

    Parameters
    ----------
    path : str or path-like
        An .npz file written by ``Network.save``. It is untrusted input: nothing in it is executed.
    backend : str, default="auto"
        The backend the loaded network runs on (see ``fastbp.Network``).
    n_threads : int or None, default=None
        Threads for training and prediction (None: every CPU).

    Returns
    -------
    Network
        The network with its configuration, parameters and optimizer state.

    Raises
    ------
    FileNotFoundError, OSError
        The file is missing or cannot be read.
    ModelFileError (a ValueError)
        The file is not a fastbp model, or it is damaged, tampered with or of another format version.
    ValueError
        An unknown backend.
    """
    backend = backends.resolve(backend)
    backends.get(backend)  # a bad backend is the caller's mistake, not the file's
    config, arrays = modelfile.read(path)
    try:
        net = Network(**config, backend=backend, n_threads=n_threads)
        modelfile.check_arrays(path, arrays, {"parameters": net.parameters, "slots": net._state,
                                              "hyper": net._hyper})
        net.parameters[:] = arrays["parameters"]
        net.optimizer_state = arrays
    except modelfile.ModelFileError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise modelfile.ModelFileError(f"{path}: invalid model configuration ({error})") from error
    return net


class _Release:
    def __init__(self, lock):
        self._lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._lock.release()
