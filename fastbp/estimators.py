"""scikit-learn estimators on fastbp: ``MLPClassifier`` and ``MLPRegressor``.

They take scikit-learn's ``MLPClassifier`` / ``MLPRegressor`` parameters with the same meanings, and
train a :class:`fastbp.Network` (kept as ``network_``) with its compiled kernels. An estimator mirrors
scikit-learn's stochastic solvers step for step: the same initial weights (Glorot uniform, drawn from
``random_state`` in the same order), the same shuffles, the same minibatches, the same L2 penalty,
momentum, learning-rate schedules and stopping rules, so that the two reach the same parameters up to
rounding (see "Differences from scikit-learn" in the class docstrings for where they cannot).
With ``solver="lbfgs"`` it hands scipy's L-BFGS-B the same loss and gradient of the whole training set
as scikit-learn does (``fastbp.lbfgs``; the gradient from the compiled kernels).

How scikit-learn's conventions map onto the Network's:

- scikit-learn's minibatch gradient is ``(sum of the samples' gradients + alpha * W) / m`` for a batch
  of ``m`` samples; the Network's is ``mean + l2 * W``; so each batch trains with ``l2 = alpha / m``
  (the last, smaller batch of an epoch with its own ``m``: it is trained by a separate call).
- scikit-learn's SGD keeps ``v = momentum * v - lr * g``, ``theta += v``; the Network keeps
  torch's ``v = momentum * v + g``, ``theta -= lr * v``. With a constant learning rate they are the
  same; when the learning rate changes between epochs (``invscaling``, ``adaptive``) the velocity is
  rescaled by ``old_lr / new_lr`` so that they stay the same.
- With ``sample_weight``, scikit-learn's minibatch gradient is ``(sum of w * the samples' gradients +
  alpha * W) / sum(w)``: the Network's weighted mean with ``l2 = alpha / sum(w)``; consecutive
  minibatches with the same size and weight sum are trained by one call.
- The regressor's cost is ``1/2 ||a - y||^2`` per sample for both; scikit-learn *reports* it divided
  by the number of outputs (its ``squared_error`` averages over outputs), and so does ``loss_curve_``.
"""
import functools
import inspect
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d, shuffle as _shuffle
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("fastbp's scikit-learn estimators need scikit-learn: pip install scikit-learn "
                      "(or pip install 'fastbp[digits]')") from None

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from . import backends, lbfgs, training, validation
from .network import Network, TrainingDiverged

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> the Network's ("sigmoid" and "leaky_relu" are fastbp's extras).
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "sigmoid": "sigmoid", "tanh": "tanh",
               "relu": "relu", "leaky_relu": "leaky_relu"}
SOLVERS = ("lbfgs", "sgd", "adam")
STOCHASTIC_SOLVERS = ("sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
# scikit-learn's out_activation_ names -> the Network's output activation and loss.
OUTPUTS = {"softmax": ("softmax", "cross_entropy"), "logistic": ("sigmoid", "cross_entropy"),
           "identity": ("identity", "mse")}


# What only the stochastic solvers record (scikit-learn sets none of them with lbfgs).
_STOCHASTIC_RECORDS = ("loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_",
                       "_best_parameters", "_no_improvement_count")


def _own(arguments):
    """An __init__'s arguments from its locals(): the parameters, without self (and the __class__
    cell that super() brings)."""
    return {k: v for k, v in arguments.items() if k not in ("self", "__class__")}


def _stochastic_solver(estimator):
    """available_if's test for partial_fit: True, or AttributeError with scikit-learn's words."""
    if estimator.solver not in STOCHASTIC_SOLVERS:
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                             f"{estimator.solver} is not stochastic.")
    return True


# --------------------------------------------------------------------------- the estimators

SPARSE_FORMATS = ("csr", "csc", "coo")  # what scikit-learn's validation passes on (others: CSR)
# Network.fit's arguments and their defaults (all it does is pass them on to training.fit, which
# the unweighted epochs call themselves, over their order of the rows: see _train_epoch)
FIT_DEFAULTS = {name: p.default for name, p in inspect.signature(Network.fit).parameters.items()
                if p.default is not p.empty and name != "comm"}


def _network_input(X, dt):
    """X as the network takes it without a copy per call: a C-contiguous array of dtype dt, or a
    scipy CSR matrix of dtype dt (rows can be taken in any order; never densified)."""
    if validation.is_sparse(X):
        X = X.tocsr()
        return X if X.dtype == dt else X.astype(dt)
    return np.ascontiguousarray(X, dtype=dt)


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, fitting, the fitted attributes."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, backend="auto", n_threads=None,
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.n_threads = n_threads
        self.dtype = dtype

    # ------------------------------------------------------------------- fitted attributes

    @property
    def coefs_(self):
        """list of ndarray: ``coefs_[i]`` has shape ``(n_in, n_out)``, scikit-learn's layout.

        Each is a transposed *view* of ``network_.weights[i]`` (which is ``(n_out, n_in)``): writing
        into it changes the network. Assigning a list copies its arrays into the network.
        """
        return [W.T for W in self.network_.weights]

    @coefs_.setter
    def coefs_(self, values):
        self._assign("coefs_", [W.T for W in self.network_.weights], values)

    @property
    def intercepts_(self):
        """list of ndarray: ``intercepts_[i]`` has shape ``(n_out,)``; views of ``network_.biases``."""
        return list(self.network_.biases)

    @intercepts_.setter
    def intercepts_(self, values):
        self._assign("intercepts_", list(self.network_.biases), values)

    @staticmethod
    def _assign(name, targets, values):
        values = list(values)
        if len(values) != len(targets):
            raise ValueError(f"{name} needs {len(targets)} arrays, got {len(values)}")
        for i, (target, value) in enumerate(zip(targets, values)):
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(f"{name}[{i}] must have shape {target.shape}, got {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name}[{i}] holds NaN or infinite values")
            target[...] = value

    def __sklearn_is_fitted__(self):
        return hasattr(self, "network_")

    # ------------------------------------------------------------------- parameters

    def _check_params(self):
        """Validate the hyperparameters; return the hidden layer sizes as a list."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = [sizes]
        elif isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"hidden_layer_sizes must be an int or a sequence of ints, "
                            f"got {sizes!r}")
        sizes = [validation.integer(f"hidden_layer_sizes[{i}]", n, 1) for i, n in enumerate(sizes)]
        validation.choice("activation", self.activation, ACTIVATIONS)
        validation.choice("solver", self.solver, dict.fromkeys(SOLVERS))
        validation.choice("learning_rate", self.learning_rate, dict.fromkeys(LEARNING_RATES))
        validation.real("alpha", self.alpha, low=0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            validation.integer("batch_size", self.batch_size, 1)
        validation.real("learning_rate_init", self.learning_rate_init, low=0, low_open=True)
        validation.real("power_t", self.power_t, low=0)
        validation.integer("max_iter", self.max_iter, 1)
        validation.real("tol", self.tol, low=0)
        validation.real("momentum", self.momentum, 0, 1, high_open=True)
        validation.real("validation_fraction", self.validation_fraction, 0, 1, high_open=True)
        validation.real("beta_1", self.beta_1, 0, 1, high_open=True)
        validation.real("beta_2", self.beta_2, 0, 1, high_open=True)
        validation.real("epsilon", self.epsilon, low=0, low_open=True)
        if not (isinstance(self.n_iter_no_change, numbers.Real) and self.n_iter_no_change == np.inf):
            validation.integer("n_iter_no_change", self.n_iter_no_change, 1)
        validation.integer("max_fun", self.max_fun, 1)
        if self.dtype is not None:
            validation.dtype(self.dtype)
        validation.threads(self.n_threads)
        return sizes

    def _optimizer_arguments(self):
        if self.solver == "adam":
            return {"optimizer": "adam", "beta1": self.beta_1, "beta2": self.beta_2,
                    "eps": self.epsilon}
        return {"optimizer": "sgd", "momentum": self.momentum,
                "nesterov": bool(self.nesterovs_momentum) and self.momentum > 0}

    # ------------------------------------------------------------------- fitting

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self._check_params()
        first_pass = not hasattr(self, "network_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        sample_weight = self._sample_weight(X, y, sample_weight, incremental)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        layer_units = [X.shape[1]] + hidden + [y.shape[1]]
        rng = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, rng, X.dtype)
        else:
            self._reuse_network(layer_units)
        dt = self.network_.dtype
        X = _network_input(X, dt)
        y = np.ascontiguousarray(y, dtype=dt)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, y, sample_weight)
        else:
            self._fit_stochastic(X, y, sample_weight, incremental, rng)
        if not np.isfinite(self.network_.parameters).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _sample_weight(self, X, y, sample_weight, incremental):
        """None, or the samples' weights as float64 (finite, >= 0), as scikit-learn checks them."""
        if sample_weight is None:
            return None
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                             ensure_non_negative=True)
        return validation.sample_weight(sample_weight, X.shape[0], positive_sum=False)

    def _initialize(self, y, layer_units, rng, x_dtype):
        """A new network with scikit-learn's initial weights, and fresh training records.

        Its dtype is ``dtype``, or with ``dtype=None`` X's (float32 or float64 once validated).
        """
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        output, loss = OUTPUTS[self.out_activation_]
        net = Network(layer_units, activation=ACTIVATIONS[self.activation], output_activation=output,
                      loss=loss, dtype=x_dtype if self.dtype is None else self.dtype,
                      backend=self.backend, n_threads=self.n_threads, seed=0)
        # Glorot uniform, as scikit-learn's _init_coef: per layer the (n_in, n_out) weights, then the
        # biases, from the same generator in the same order, so the two start from the same numbers.
        factor = 2.0 if ACTIVATIONS[self.activation] == "sigmoid" else 6.0
        for W, b in zip(net.weights, net.biases):
            n_out, n_in = W.shape
            bound = np.sqrt(factor / (n_in + n_out))
            W[...] = rng.uniform(-bound, bound, (n_in, n_out)).T
            b[...] = rng.uniform(-bound, bound, n_out)
        self.network_ = net
        for name in _STOCHASTIC_RECORDS:  # a new fit keeps none of an earlier fit's records
            self.__dict__.pop(name, None)
        if self.solver in STOCHASTIC_SOLVERS:  # scikit-learn keeps none of them for lbfgs
            self._start_records()

    def _start_records(self):
        self._best_parameters = self.network_.parameters.copy()
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self._reset_scores()

    def _reset_scores(self):
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _reuse_network(self, layer_units):
        """Warm start / partial_fit: check the shapes; follow changed backend, dtype (when given)
        or n_threads."""
        net = self.network_
        if layer_units != net.layer_sizes:
            raise ValueError(f"warm_start and partial_fit continue training the fitted network of "
                             f"layer sizes {net.layer_sizes}, but the data and hidden_layer_sizes "
                             f"now give {layer_units}; refit from scratch (warm_start=False)")
        if self.solver in STOCHASTIC_SOLVERS:
            if not hasattr(self, "loss_curve_"):  # the first fit was lbfgs's
                self._start_records()
            elif ((self.early_stopping and self.validation_scores_ is None)
                    or (not self.early_stopping and self.best_loss_ is None)):
                self._reset_scores()
        dtype = net.dtype if self.dtype is None else validation.dtype(self.dtype)
        wanted = {"backend": backends.resolve(self.backend), "n_threads": self.n_threads,
                  "dtype": dtype.name}
        if wanted != {"backend": net.backend, "n_threads": net.n_threads, "dtype": net.dtype.name}:
            self.network_ = net.copy(**wanted)

    def _fit_stochastic(self, X, y, sample_weight, incremental, rng):
        net = self.network_
        dt = net.dtype
        if not incremental or not hasattr(self, "_lr"):
            self._lr = float(self.learning_rate_init)  # scikit-learn's optimizer.learning_rate
            net.reset_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            # as scikit-learn: stratified for single-output classifiers, from the same generator
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            if sample_weight is None:
                X_train, X_val, y_train, y_val = train_test_split(
                    X, y, random_state=rng, test_size=self.validation_fraction, stratify=stratify)
                w_train = w_val = None
            else:  # the same split, the weights going with their samples
                X_train, X_val, y_train, y_val, w_train, w_val = train_test_split(
                    X, y, sample_weight, random_state=rng, test_size=self.validation_fraction,
                    stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            X_train, y_train = _network_input(X_train, dt), np.ascontiguousarray(y_train)
            X_val = _network_input(X_val, dt)
            y_val = self._targets_to_y(y_val)
        else:
            X_train, y_train, X_val, y_val = X, y, None, None
            w_train = w_val = sample_weight

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        sample_idx = np.arange(n_samples, dtype=np.int64)
        if w_train is None:  # the network's forms, once, checked (a float64 X cast to float32 can
            # overflow): the epochs visit the rows in sample_idx's order, never copying X
            X_train = validation.features(X_train, net.layer_sizes[0], dt)
            y_train = validation.targets(y_train, n_samples, net.layer_sizes[-1], dt)
        n_batches = -(-n_samples // batch_size)
        penalty = 0.5 * self.alpha * n_batches / n_samples  # times sum(W**2): the loss's L2 term
        scale = 1.0 / self.n_outputs_ if self._averages_outputs else 1.0

        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = _shuffle(sample_idx, random_state=rng)
                squares = net.squared_weights()
                if w_train is None:
                    cost, per_weight = self._train_epoch(X_train, y_train, None, batch_size,
                                                         sample_idx)
                else:  # a call per group of batches (below): on a copy of the epoch's rows
                    epoch = [a[sample_idx] if self.shuffle else a for a in (X_train, y_train, w_train)]
                    cost, per_weight = self._train_epoch(*epoch, batch_size)
                if per_weight is not None:  # sum over batches of (rows / weight sum), over n
                    penalty = 0.5 * self.alpha * per_weight / n_samples
                squares = 0.5 * (squares + net.squared_weights())
                self.n_iter_ += 1
                self.loss_ = cost * scale + penalty * squares
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

                self._update_no_improvement_count(early_stopping, X_val, y_val, w_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    self._set_learning_rate(self.learning_rate_init
                                            / (self.t_ + 1) ** self.power_t)

                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    if self._stop_or_slow_down(msg):
                        break
                    self._no_improvement_count = 0

                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                                  "optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning, stacklevel=3)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        except TrainingDiverged as error:
            raise ValueError(f"{error} The input data may contain large values and need to be "
                             f"preprocessed (StandardScaler), or learning_rate_init is too "
                             f"large.") from error

        if early_stopping:  # restore the best parameters
            net.parameters[:] = self._best_parameters

    def _fit_lbfgs(self, X, y, sample_weight=None):
        """scikit-learn's _fit_lbfgs: full-batch L-BFGS-B from the network's parameters (with
        weights: the weighted mean cost, and alpha divided by the weights' sum)."""
        scale = 1.0 / self.n_outputs_ if self._averages_outputs else 1.0
        total = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        if not total > 0:
            raise ValueError("sample_weight sums to 0: no sample counts")
        try:
            history = lbfgs.fit(self.network_, X, y, max_iter=self.max_iter,
                                l2=self.alpha / total, tol=self.tol, max_fun=self.max_fun,
                                verbose=bool(self.verbose), cost_scale=scale,
                                sample_weight=sample_weight)
        except KeyboardInterrupt:
            history = self.network_.history
            warnings.warn("Training interrupted by user.", stacklevel=3)
            self.n_iter_ = history.epochs
            self.loss_ = history["loss"][-1] if history.epochs else np.nan
            return
        self.n_iter_ = history.n_iter
        self.loss_ = history.final_loss
        if history.status != 0:  # scikit-learn's _check_optimize_result, word for word
            message = (f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                       f"(status={history.status}):\n{history.message}\n")
            if self.n_iter_ == self.max_iter:
                message += (f"\nIncrease the number of iterations to improve the convergence "
                            f"(max_iter={self.max_iter}).")
            message += ("\nYou might also want to scale the data as shown in:\n"
                        "    https://scikit-learn.org/stable/modules/preprocessing.html")
            warnings.warn(message, ConvergenceWarning, stacklevel=4)

    def _train_epoch(self, X, Y, weights, batch_size, order=None):
        """One epoch over X in order, or over the rows X[order] (without weights), in minibatches:
        (the mean over the samples of their batch's mean cost, before updates; with weights, the
        sum over batches of rows / weight sum, else None).

        The full batches train with ``l2 = alpha / batch_size``; a last, smaller batch of ``m``
        samples is trained by a second call with ``l2 = alpha / m``, as scikit-learn penalizes it.
        With weights, each batch's gradient is its weighted mean and ``l2 = alpha / sum(w)`` of the
        batch: consecutive batches of the same size and weight sum are trained by one call; a batch
        whose weights sum to 0 is skipped (scikit-learn's update would be NaN there) and adds 0.
        With order, X is never copied: the driver visits the rows in that order (X and Y in the
        network's forms, checked); a call then costs a pass over Y, which the two calls of an
        unweighted epoch can afford and the call per batch of a weighted one could not.
        """
        net = self.network_
        n = X.shape[0] if order is None else order.shape[0]
        arguments = dict(epochs=1, lr=self._lr, shuffle=False, **self._optimizer_arguments())

        def fit(start, stop, **these):
            if order is None:
                return net.fit(X[start:stop], Y[start:stop], **arguments, **these)
            rows = functools.partial(training.start, rows=order[start:stop])
            return training.fit(net, X, Y, begin=rows, **dict(FIT_DEFAULTS, **arguments, **these))
        n_full = n - n % batch_size
        total = 0.0
        if weights is None:
            for start, stop, size in ((0, n_full, batch_size), (n_full, n, n - n_full)):
                if stop > start:
                    history = fit(start, stop, batch_size=size, l2=self.alpha / size)
                    total += history["loss"][0] * (stop - start)
            return total / n, None
        starts = np.arange(0, n, batch_size)
        sizes = np.minimum(batch_size, n - starts)
        sums = np.add.reduceat(weights, starts)
        per_weight = 0.0
        i = 0
        while i < len(starts):
            j = i + 1
            while j < len(starts) and sizes[j] == sizes[i] and sums[j] == sums[i]:
                j += 1
            start, stop = starts[i], starts[j - 1] + sizes[j - 1]
            if sums[i] > 0:
                history = fit(start, stop, batch_size=int(sizes[i]), l2=self.alpha / sums[i],
                              sample_weight=weights[start:stop])
                total += history["loss"][0] * (stop - start)
                per_weight += (j - i) * sizes[i] / sums[i]
            i = j
        return total / n, per_weight

    def _set_learning_rate(self, lr):
        """Change the learning rate between epochs, keeping scikit-learn's SGD velocity."""
        if self.solver == "sgd" and self.momentum > 0 and lr != self._lr:
            self.network_.optimizer_state["slots"][0] *= self._lr / lr  # the SGD velocity
        self._lr = lr

    def _stop_or_slow_down(self, msg):
        """scikit-learn's trigger_stopping: True to stop; 'adaptive' SGD divides the rate by 5."""
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if self._lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_learning_rate(self._lr / 5.0)
        if self.verbose:
            print(msg + " Setting learning rate to %f" % self._lr)
        return False

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, w_val=None):
        if early_stopping:
            score = self._score_arrays(X_val, y_val, w_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_parameters = self.network_.parameters.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _score_arrays(self, X, y, sample_weight=None):
        """The validation score (accuracy or R^2, weighted with sample_weight) on X already of the
        network's dtype."""
        y_pred = self._predictions(self.network_.forward(X))
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(self._score_function(y, y_pred, sample_weight))

    # ------------------------------------------------------------------- predicting

    def _outputs(self, X):
        """The output layer's activations for X (validated against the fit)."""
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=(np.float64, np.float32), reset=False,
                           accept_sparse=SPARSE_FORMATS)
        return self.network_.forward(_network_input(X, self.network_.dtype))


_PARAMETERS = """
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Units of each hidden layer (``()`` for none).
    activation : {"identity", "logistic", "tanh", "relu", "leaky_relu"}, default="relu"
        The hidden layers' activation; ``"sigmoid"`` is accepted for ``"logistic"``.
    solver : {"lbfgs", "sgd", "adam"}, default="adam"
        Minibatch SGD (with ``momentum``), Adam, or full-batch L-BFGS-B (scipy's, over the whole
        training set's cost and gradient from the compiled kernels; the minibatch parameters do not
        apply to it; see ``fastbp.lbfgs``).
    alpha : float, default=0.0001
        L2 penalty, as scikit-learn's: the loss adds ``alpha / (2 m) * sum(W**2)`` per minibatch of
        ``m`` samples (``m = n_samples`` for lbfgs), the gradient ``alpha / m * W`` (weights only,
        never the intercepts).
    batch_size : int or "auto", default="auto"
        Minibatch size; ``"auto"`` is ``min(200, n_samples)``; larger than n_samples is clipped.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        The learning rate schedule of ``solver="sgd"``, changed between epochs: ``invscaling`` uses
        ``learning_rate_init / (t + 1) ** power_t`` after ``t`` samples; ``adaptive`` divides the
        rate by 5 whenever ``n_iter_no_change`` epochs fail to improve by ``tol`` (and stops when it
        falls to 1e-6). Adam keeps ``learning_rate_init``.
    learning_rate_init : float, default=0.001
        The initial learning rate.
    power_t : float, default=0.5
        The exponent of ``invscaling``.
    max_iter : int, default=200
        Epochs (each sample visited once per epoch) at most; for lbfgs, iterations.
    shuffle : bool, default=True
        Visit the samples in a fresh random order each epoch (drawn from ``random_state``).
    random_state : int, RandomState instance or None, default=None
        Draws the initial weights, the early-stopping split and the shuffles (as scikit-learn's,
        in the same order, so the same seed gives the same numbers).
    tol : float, default=1e-4
        Improvement of the loss (or validation score) that counts as progress; for lbfgs, the
        largest gradient component at which it has converged (scipy's ``gtol``).
    verbose : bool, default=False
        Print the loss after each epoch (and the validation score), or lbfgs iteration.
    warm_start : bool, default=False
        Start ``fit`` from the fitted parameters instead of new ones (with a fresh optimizer state
        and learning rate, as scikit-learn).
    momentum : float, default=0.9
        SGD momentum, in [0, 1).
    nesterovs_momentum : bool, default=True
        Nesterov's momentum (SGD with momentum > 0).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, stop when its score has not improved
        by ``tol`` for ``n_iter_no_change`` epochs, and keep the parameters of the best epoch.
    validation_fraction : float, default=0.1
        The held-out fraction for early stopping.
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        Adam's decay rates and its denominator's constant.
    n_iter_no_change : int, default=10
        Epochs without improvement by ``tol`` before stopping (or slowing down, ``adaptive``).
    max_fun : int, default=15000
        lbfgs only: evaluations of the loss and gradient at most (checked after each iteration).
    backend : {"auto", "cython", "numba", "numpy"}, default="auto"
        The fastbp backend that trains and predicts: ``auto`` is cython when built, else numba (see
        ``fastbp.available_backends()``).
    n_threads : int or None, default=None
        Threads per minibatch (None: every CPU this process may use). Results do not depend on it.
        Set it (to 1) when several estimators run in parallel (``n_jobs`` in GridSearchCV).
    dtype : {None, "float64", "float32"}, default=None
        The parameters' and arithmetic's floating point type (float32 is about twice as fast).
        None: X's, as scikit-learn's MLPs do: float32 input trains a float32 network (``coefs_``,
        ``predict_proba`` and the regressor's ``predict`` are float32 too), any other input
        (float64, integers, float16) a float64 one; a warm start or ``partial_fit`` keeps the fitted
        network's dtype. A name forces that dtype whatever the input.
"""

_ATTRIBUTES = """
    coefs_ : list of ndarray
        ``coefs_[i]``, shape ``(n_in, n_out)``, the weights of layer ``i + 1`` in scikit-learn's
        layout: transposed views of ``network_.weights[i]``; writing into them changes the network.
    intercepts_ : list of ndarray
        ``intercepts_[i]``, shape ``(n_out,)``: views of ``network_.biases[i]``.
    network_ : fastbp.Network
        The trained network (save it with ``network_.save(path)``).
    loss_ : float
        The loss of the last epoch (with the L2 term), as ``loss_curve_[-1]``; for lbfgs, the loss
        at the result (the mean cost plus ``alpha / (2 n) * sum(W**2)``).
    loss_curve_ : list of float
        The loss of each epoch as scikit-learn reports it: the mean cost of the epoch's samples, each
        computed before its minibatch's update, plus the L2 term. Not set by lbfgs (as
        scikit-learn); its loss after each iteration is in ``network_.history["loss"]``.
    best_loss_ : float or None
        The smallest ``loss_curve_`` entry (None with early stopping; not set by lbfgs).
    validation_scores_ : list of float or None
        The held-out score of each epoch with early stopping, else None (not set by lbfgs).
    best_validation_score_ : float or None
        The best of ``validation_scores_`` (None without early stopping; not set by lbfgs).
    n_iter_ : int
        Epochs run by the last ``fit`` (1 after ``partial_fit``); lbfgs iterations.
    t_ : int
        Training samples seen, ``n_iter_ * n_samples`` summed over fits (the ``invscaling`` clock;
        0 for lbfgs).
    n_features_in_ : int
        Features seen in ``fit``.
    feature_names_in_ : ndarray of str
        Feature names, when ``fit`` saw them (a DataFrame).
    n_layers_ : int
        Layers, input and output included.
    n_outputs_ : int
        Output units.
    out_activation_ : str
        The output activation, in scikit-learn's names: ``softmax``, ``logistic`` or ``identity``.
"""

_DIFFERENCES = """
    Sparse X (scipy.sparse CSR, CSC or COO; others converted to CSR) trains and predicts without
    being densified: the first layer runs over the nonzeros.
    Differences from scikit-learn: ``partial_fit`` is not available with lbfgs
    (scikit-learn's MLPRegressor runs a whole lbfgs fit there). ``sample_weight`` follows
    scikit-learn's MLP (the weights split with the samples for early stopping's validation set; each
    minibatch's loss and gradient are weighted means, with ``alpha / sum(w)`` as its L2 factor;
    lbfgs minimizes the weighted mean loss plus ``alpha / (2 sum(w)) * sum(W**2)``), except that
    a minibatch whose weights sum to 0 is skipped (scikit-learn's update is NaN there).
    With the same ``random_state`` and parameters the training follows scikit-learn's step for step
    (same initial weights, shuffles, minibatches, penalty, momentum and schedules; for lbfgs the same
    loss and gradient handed to the same scipy minimizer); what differs is rounding (the kernels
    sum in another order; float32 for float32 input or when asked, where scikit-learn's lbfgs
    returns float64 weights), Adam's ``epsilon`` (added, as in torch, to ``sqrt(v_hat)`` rather
    than to ``sqrt(v)``: a difference of order ``epsilon``), the logarithms of the cost (computed
    from ``z`` rather than from clipped probabilities), and the L2 term of ``loss_curve_``, which
    uses the squared weights averaged over the start and the end of the epoch where scikit-learn
    sums them at every minibatch. With ``verbose``, lbfgs prints the loss after each iteration
    (scikit-learn relies on scipy's ``iprint``, silent since scipy 1.15).
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron classifier trained by fastbp's compiled kernels.

    scikit-learn's ``MLPClassifier``, with its parameters and fitted attributes, on a
    :class:`fastbp.Network`: softmax output and cross-entropy for multiclass targets, sigmoid outputs
    and binary cross-entropy for binary and multilabel targets. Class labels may be any values
    scikit-learn accepts (integers, strings, ...).

    Parameters
    ----------""" + _PARAMETERS + """    class_weight : None, "balanced" or dict, default=None
        Weights of the classes, multiplied into the sample weights: a dict ``{label: weight}``
        (classes not in it weigh 1), or ``"balanced"``: ``n_samples / (n_classes * counts)``
        (weighted counts with ``sample_weight``). scikit-learn's MLPClassifier has no class_weight;
        this follows its other classifiers' convention (LogisticRegression's,
        ``sklearn.utils.class_weight.compute_class_weight``). Not for multilabel targets;
        ``"balanced"`` is refused by ``partial_fit`` (as SGDClassifier does): pass a dict.

    Attributes
    ----------
    classes_ : ndarray or list of ndarray
        The class labels (for multilabel targets, the label indices).""" + _ATTRIBUTES + """
    Notes
    -----""" + _DIFFERENCES + """
    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from fastbp.estimators import MLPClassifier
    >>> clf = make_pipeline(StandardScaler(), MLPClassifier((100,), solver="sgd", batch_size=10,
    ...                                                     max_iter=30, random_state=0))
    >>> clf.fit(X_train, y_train).score(X_test, y_test)  # doctest: +SKIP
    """

    _averages_outputs = False

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, class_weight=None, backend="auto",
                 n_threads=None, dtype=None):
        arguments = _own(locals())
        self.class_weight = arguments.pop("class_weight")
        super().__init__(**arguments)

    def _sample_weight(self, X, y, sample_weight, incremental):
        """The sample weights times the class weights (``class_weight``), as LogisticRegression
        combines them (``compute_class_weight`` of the labels, with the sample weights)."""
        sample_weight = super()._sample_weight(X, y, sample_weight, incremental)
        if self.class_weight is None:
            return sample_weight
        if self._label_binarizer.y_type_.startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets")
        if incremental and isinstance(self.class_weight, str):
            raise ValueError("class_weight 'balanced' is not supported for partial_fit. In order "
                             "to use 'balanced' weights, use compute_class_weight('balanced', "
                             "classes=classes, y=y) on a large enough sample of the training "
                             "targets, and pass the resulting weights (a dict) as class_weight.")
        labels = self._label_binarizer.inverse_transform(y.astype(np.int64))
        weights = compute_class_weight(self.class_weight, classes=self.classes_, y=labels,
                                       sample_weight=sample_weight)
        factors = weights[np.searchsorted(self.classes_, labels)]
        return factors if sample_weight is None else sample_weight * factors

    @staticmethod
    def _score_function(y, y_pred, sample_weight=None):
        return accuracy_score(y, y_pred, sample_weight=sample_weight)

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                              reset=reset, accept_sparse=SPARSE_FORMATS)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same classes "
                                     f"as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _targets_to_y(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    def _predictions(self, outputs):
        """The class labels the output activations stand for."""
        if self.n_outputs_ == 1:
            outputs = outputs.ravel()
        return self._label_binarizer.inverse_transform(outputs)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
            Class labels, or a binary indicator matrix for multilabel classification.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights (>= 0), multiplied by the class weights of ``class_weight``.

        Returns
        -------
        self : MLPClassifier
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Train for one epoch over X and y, continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
            Class labels (or a multilabel indicator matrix).
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights (>= 0).
        classes : array-like of shape (n_classes,), default=None
            Every class of all the calls: required on the first call, optional afterwards. ``y``
            need not hold all of them.

        Returns
        -------
        self : MLPClassifier
            The updated estimator.
        """
        if classes is None:
            if getattr(self, "classes_", None) is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
        elif getattr(self, "classes_", None) is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                                 f"partial_fit, was: {self.classes_!r}")
        else:
            self.classes_ = unique_labels(classes)
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
            The predicted classes (an indicator matrix for multilabel targets).
        """
        return self._predictions(self._outputs(X))

    def predict_proba(self, X):
        """Probability estimates.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            The probability of each class, in the order of ``classes_``; rows sum to 1 except for
            multilabel targets (one independent probability per label).
        """
        outputs = self._outputs(X)
        if self.n_outputs_ == 1:
            p = outputs.ravel()
            return np.vstack([1 - p, p]).T
        return outputs

    def predict_log_proba(self, X):
        """Logarithms of the probability estimates.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            ``log(predict_proba(X))``.
        """
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True}


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """Multi-layer perceptron regressor trained by fastbp's compiled kernels.

    scikit-learn's ``MLPRegressor``, with its parameters and fitted attributes, on a
    :class:`fastbp.Network` with an identity output and the squared error ``1/2 ||a - y||^2``.
    ``y`` may have several columns (one output unit each).

    Parameters
    ----------
    loss : {"squared_error"}, default="squared_error"
        scikit-learn's name for the (half) squared error; ``"poisson"`` is not supported.""" \
        + _PARAMETERS + """
    Attributes
    ----------""" + _ATTRIBUTES + """
    Notes
    -----""" + _DIFFERENCES + """
    ``loss_curve_`` reports the squared error averaged over the outputs, as scikit-learn does, while
    the gradient (for both) is that of the sum over the outputs. lbfgs, as scikit-learn's, hands
    scipy that averaged loss with that gradient (the same thing with one output).
    """

    _averages_outputs = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error",
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend="auto", n_threads=None, dtype=None):
        arguments = _own(locals())
        self.loss = arguments.pop("loss")
        super().__init__(**arguments)

    @staticmethod
    def _score_function(y, y_pred, sample_weight=None):
        return r2_score(y, y_pred, sample_weight=sample_weight)

    def _check_params(self):
        if self.loss != "squared_error":
            raise ValueError(f"loss={self.loss!r} is not supported by fastbp's MLPRegressor; "
                             f"only 'squared_error' (an identity output) is")
        return super()._check_params()

    def _output_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, multi_output=True, y_numeric=True,
                              dtype=(np.float64, np.float32), reset=reset,
                              accept_sparse=SPARSE_FORMATS)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _predictions(self, outputs):
        """The targets as the caller gave them: 1-D for a single output."""
        return outputs.ravel() if outputs.shape[1] == 1 else outputs

    _targets_to_y = _predictions

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights (>= 0).

        Returns
        -------
        self : MLPRegressor
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """Train for one epoch over X and y, continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights (>= 0).

        Returns
        -------
        self : MLPRegressor
            The updated estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predict the targets of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The predictions.
        """
        return self._predictions(self._outputs(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}
