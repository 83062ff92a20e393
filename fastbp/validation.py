"""Every check of user input, in one place: what was wrong and what was expected.

Each function returns the value in the form the kernels take (codes, C-contiguous arrays of the
network's dtype) or raises ValueError / TypeError. Nothing here changes a network.
"""
import math

import numpy as np

from .kernels import codes
from .kernels.checks import DTYPES, choice, dtype, integer, real  # noqa: F401  (one place)


def layer_sizes(sizes):
    """At least two layers, each a positive integer: [n_inputs, hidden..., n_outputs]."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of integers such as [784, 30, 10], "
                        f"got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least an input and an output layer, got {list(sizes)}")
    return [integer(f"layer_sizes[{i}]", n, 1) for i, n in enumerate(sizes)]


def threads(value):
    """None (every CPU this process may use) or an int >= 1."""
    return None if value is None else integer("n_threads", value, 1)


def _real_array(name, values):
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def _all_finite(array):
    """Whether every value of a float array is finite. First its sum, one pass and no temporary: NaN
    and inf survive any sum (inf - inf is NaN), so a finite sum proves every value finite; only a
    sum that is not (a non-finite value, or finite values so large that their sum overflows) costs
    the exact test, np.isfinite of each value."""
    with np.errstate(over="ignore", invalid="ignore"):  # the sum's overflow and inf - inf: not errors
        total = np.add.reduce(array, axis=None)  # np.sum's own work, without its 2 us of Python
    return math.isfinite(total) or bool(np.isfinite(array).all())


def finite(name, array):
    """Raise ValueError naming the first NaN or infinity of a float array, if it holds one."""
    if array.dtype.kind == "f" and not _all_finite(array):
        bad = np.argwhere(~np.isfinite(array))[0]
        where = ", ".join(str(i) for i in bad)
        raise ValueError(f"{name} must be finite; {name}[{where}] is {array[tuple(bad)]}")


def features(X, n_features, dt, name="X", check_finite=True):
    """X as a C-contiguous (n, n_features) array of dtype dt (copied only when it must be); a
    scipy.sparse X (any format) as a ``codes.CSR`` (see :func:`sparse_features`). A dense X's values
    are checked to be finite unless check_finite is False (then the caller checks them: fit does,
    by training, see ``training.start``)."""
    if is_sparse(X):
        return sparse_features(X, n_features, dt, name)
    X = _real_array(name, X)
    _shape(X, n_features, name)
    X = _kernel_array(X, dt)
    if check_finite:
        finite(name, X)
    return X


def _shape(X, n_features, name):
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no samples")
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features per sample; the network's input layer "
                         f"has {n_features}")


def n_samples(X):
    """len(X), also for a scipy.sparse X (whose len is refused)."""
    return X.shape[0] if is_sparse(X) else len(X)


def is_sparse(X):
    return isinstance(X, codes.CSR) or (hasattr(X, "tocsr") and hasattr(X, "nnz"))


def sparse_features(X, n_features, dt, name="X"):
    """A scipy.sparse X (CSR; CSC, COO and the other formats converted once) as a ``codes.CSR``
    whose arrays the kernels take: int64 row pointers and column indices, values of dtype dt. The
    indices and values are copied when their types differ (int32 indices, another float type),
    never expanded to a dense array."""
    if isinstance(X, codes.CSR):
        X = X.scipy()
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    _shape(X, n_features, name)
    X = X.tocsr()
    indptr, indices, data = (_kernel_array(a, t) for a, t in ((X.indptr, np.int64),
                                                             (X.indices, np.int64), (X.data, dt)))
    if data.dtype.kind == "f" and not _all_finite(data):
        k = int(np.argmin(np.isfinite(data)))
        row = int(np.searchsorted(indptr, k, side="right")) - 1
        raise ValueError(f"{name} must be finite; {name}[{row}, {int(indices[k])}] is {data[k]}")
    return codes.CSR(indptr, indices, data, X.shape)


def _kernel_array(array, dt):
    """array as a C-contiguous array of dtype dt, copied only when it is not one, or is read-only
    (the kernels take writeable arrays)."""
    array = np.ascontiguousarray(array, dtype=dt)
    return array if array.flags.writeable else array.copy()


def dense_only(X, what, name="X"):
    """Refuse a sparse X (TypeError) where `what` cannot take one, rather than densify it."""
    if is_sparse(X):
        raise TypeError(f"{what} takes a dense {name}, not a sparse matrix (fastbp never densifies "
                        f"one: pass X.toarray() yourself if it fits in memory)")


def sample_weight(w, n_samples, name="sample_weight", positive_sum=True):
    """None, or the samples' weights as a C-contiguous float64 array of n_samples entries, finite and
    >= 0 (copied: the caller's array is never kept); with positive_sum, their sum must be > 0."""
    if w is None:
        return None
    w = _real_array(name, w)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"{name} must have one weight per sample ({n_samples},), got shape "
                         f"{w.shape}")
    w = np.array(w, dtype=np.float64, order="C")
    finite(name, w)
    if w.size and w.min() < 0:
        raise ValueError(f"{name} must be >= 0; {name}[{int(np.argmin(w))}] is {w.min()}")
    if positive_sum and not w.sum() > 0:
        raise ValueError(f"{name} sums to 0: no sample counts")
    return w


def targets(y, n_samples, n_outputs, dt, name="y"):
    """y as (n, n_outputs) targets of dtype dt: 1-D integer class labels become one-hot rows."""
    y = _real_array(name, y)
    if y.ndim == 0 or y.ndim > 2:
        raise ValueError(f"{name} must be 1-D class labels or 2-D targets, got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} samples but X has {n_samples}")
    if y.ndim == 1:
        if y.dtype.kind == "f":
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                raise ValueError(f"{name} is 1-D, so it must hold integer class labels; for "
                                 f"real-valued targets pass a 2-D array of {n_outputs} columns")
        labels = y.astype(np.int64)
        if n_outputs == 1:
            raise ValueError(f"class labels need one output unit per class; this network has one "
                             f"output: pass {name} as a 2-D (n, 1) array of targets")
        if labels.min() < 0 or labels.max() >= n_outputs:
            raise ValueError(f"{name} holds class labels from {labels.min()} to {labels.max()}, but "
                             f"the network has {n_outputs} output units (labels 0..{n_outputs - 1})")
        Y = np.zeros((n_samples, n_outputs), dtype=dt)
        Y[np.arange(n_samples), labels] = 1
        return Y
    if y.shape[1] != n_outputs:
        raise ValueError(f"{name} has {y.shape[1]} columns; the network has {n_outputs} outputs")
    Y = _kernel_array(y, dt)
    finite(name, Y)
    return Y


# What fit measures after each epoch when asked. gradient_norms records one value per layer
# (gradient_norm_1 .. gradient_norm_L), so it cannot be monitored.
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "gradient_norms")
MONITORS = ("loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


def monitoring(metrics, monitor, has_validation, watched=False):
    """The metrics to measure after each epoch (a set) and the one to monitor: defaults (validation
    loss and accuracy with validation data; monitor val_loss there, else loss) and checks. When
    something watches the monitor (early stopping, reduce-on-plateau), it is measured too."""
    if metrics is None:
        metrics = ("val_loss", "val_accuracy") if has_validation else ()
    metrics = set(metrics)
    if not metrics <= set(METRICS):
        raise ValueError(f"unknown metrics {sorted(metrics - set(METRICS))}; choose from "
                         f"{', '.join(METRICS)}")
    if monitor is None:
        monitor = "val_loss" if has_validation else "loss"
    if monitor not in MONITORS:
        raise ValueError(f"unknown monitor {monitor!r}; choose loss or one of "
                         f"{', '.join(MONITORS[1:])}")
    needs_validation = sorted({m for m in metrics | {monitor} if m.startswith("val_")})
    if needs_validation and not has_validation:
        raise ValueError(f"monitoring {', '.join(needs_validation)} needs validation_data")
    if watched and monitor != "loss":
        metrics.add(monitor)
    return metrics, monitor
