"""fastbp.kernels: the compiled kernels of backpropagation, for people who write their own training loop.

Each function checks its arguments (shapes, dtypes, names), then runs one kernel of the chosen compiled
backend (``"numba"``, ``"cython"``, or by default ``"auto"``: cython when it is built, else numba) on
numpy arrays. Arrays are float32 or float64 (all the same); matrices are row-major with one row per
sample; ``W`` has shape ``(n_out, n_in)`` (the W of ``z = W a + b``). Outputs may be passed in
(``out=``, C-contiguous, the right dtype) to avoid allocating; they are returned either way.

>>> from fastbp import kernels as K
>>> Z = K.dense_forward(W, b, X, activation="sigmoid")          # forward through a layer
>>> D, cost = K.output_error(Z_out, Y, "softmax", "cross_entropy")  # delta_L and the costs
>>> E = K.backward_error(W2, D, A1, "sigmoid")                    # delta of the layer below
>>> G, gb = K.weight_gradient(D, A1)                              # mean of the outer products

The unchecked kernels these call are ``fastbp.kernels.nb_kernels`` (Numba; callable from your own
``numba.njit`` code) and ``fastbp.kernels.cy_kernels`` (Cython): twins with the same names, taking
integer codes (``fastbp.kernels.codes``) instead of names. Wrong shapes there are not caught.
"""
import numpy as np

from . import checks, codes, loader
from .optimizers import DEFAULTS, OPTIMIZERS

__all__ = ["dense_forward", "activation_forward", "activation_backward", "output_error",
           "backward_error", "weight_gradient", "update_parameters", "hyperparameters"]


def _module(backend):
    return loader.kernels(loader.resolve(backend))


def _arrays(dtype=None, **arrays):
    """The arrays as C-contiguous real arrays of one floating dtype (the first one's, or dtype).
    A floating array of another dtype is refused: converting it would cost a copy on every call,
    unseen (integer arrays are converted)."""
    out, first = {}, None
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        if dtype is None:
            dtype = array.dtype if array.dtype.kind == "f" else np.dtype(np.float64)
            checks.dtype(dtype)
        if array.dtype.kind == "f" and array.dtype != dtype:
            raise TypeError(f"{name} is {array.dtype} but {first or 'the other arrays'} "
                            f"{'is' if first else 'are'} {np.dtype(dtype)}: pass arrays of one dtype "
                            f"(convert once, outside the loop: {name}.astype(np.{np.dtype(dtype)}))")
        first = first or name
        out[name] = np.ascontiguousarray(array, dtype=dtype)
    return out, np.dtype(dtype)


def _output(name, out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous {dtype} array of shape "
                         f"{tuple(shape)}")
    return out


def _matrix(name, array, columns=None):
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise ValueError(f"{name} has {array.shape[1]} columns, expected {columns}")


def _rows(rows, n):
    if rows is None:
        return np.arange(n, dtype=np.int64)
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ValueError("rows must be a 1-D array of integer sample indices")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must index samples 0..{n - 1}, got {rows.min()}..{rows.max()}")
    return np.ascontiguousarray(rows, dtype=np.int64)


def _code(what, name, options):
    return checks.choice(what, name, options)


def dense_forward(W, b, A, rows=None, activation="identity", out=None, backend="auto"):
    """Forward through one layer: ``Z = f(A[rows] W^T + b)``, shape (m, n_out).

    With one row of A this is the matrix-vector product ``z = W a + b``. ``rows`` (default: all)
    selects the samples of A that form the batch, without copying them.
    """
    arrays, dt = _arrays(W=W, b=b, A=A)
    W, b, A = arrays["W"], arrays["b"], arrays["A"]
    _matrix("W", W)
    _matrix("A", A, W.shape[1])
    if b.shape != (W.shape[0],):
        raise ValueError(f"b must have shape ({W.shape[0]},), got {b.shape}")
    rows = _rows(rows, A.shape[0])
    Z = _output("out", out, (rows.size, W.shape[0]), dt)
    if rows.size:
        _module(backend).dense_forward(W, b, A, rows, _code("activation", activation,
                                                            codes.ACTIVATIONS), Z)
    return Z


def activation_forward(Z, activation, backend="auto"):
    """Apply the activation to the pre-activations Z in place (softmax per row); returns Z."""
    Z = _output("Z", Z, np.shape(Z), getattr(Z, "dtype", None))
    _matrix("Z", Z)
    if Z.size:
        _module(backend).activation_forward(_code("activation", activation, codes.ACTIVATIONS), Z)
    return Z


def activation_backward(A, D, activation, backend="auto"):
    """Turn D = dC/da into dC/dz = f'(z) * dC/da in place, from the activations A; returns D."""
    arrays, dt = _arrays(getattr(D, "dtype", None), A=A)
    A = arrays["A"]
    D = _output("D", D, A.shape, dt)
    _matrix("A", A)
    if A.size:
        _module(backend).activation_backward(_code("activation", activation, codes.ACTIVATIONS), A, D)
    return D


def output_error(Z, Y, activation, loss, rows=None, out=None, cost=None, backend="auto"):
    """The output layer's error terms delta = dC/dz and each sample's cost.

    Z (m, k): the output layer's pre-activations, turned into its activations in place. Y: targets,
    sample s being Y[rows[s]] (default rows: all, in order). Returns (delta, cost); cost is float64.
    """
    Z = _output("Z", Z, np.shape(Z), getattr(Z, "dtype", None))
    _matrix("Z", Z)
    arrays, dt = _arrays(Z.dtype, Y=Y)
    Y = arrays["Y"]
    _matrix("Y", Y, Z.shape[1])
    rows = _rows(rows, Y.shape[0])
    if rows.size != Z.shape[0]:
        raise ValueError(f"rows selects {rows.size} samples but Z has {Z.shape[0]}")
    loss_code = _code("loss", loss, codes.LOSSES)
    act = _code("activation", activation, codes.ACTIVATIONS)
    if loss == "cross_entropy" and activation not in ("sigmoid", "softmax"):
        raise ValueError("cross_entropy needs a sigmoid or softmax output")
    D = _output("out", out, Z.shape, dt)
    C = _output("cost", cost, (Z.shape[0],), np.dtype(np.float64))
    if Z.size:
        _module(backend).output_error(act, loss_code, Z, Y, rows, D, C)
    return D, C


def backward_error(W, D, A, activation, out=None, backend="auto"):
    """Error terms of the layer below: ``E = (D W) * f'(A)``, shape (m, n_in).

    W (n_out, n_in) the weights between the two layers, D (m, n_out) the error terms above, A (m, n_in)
    the lower layer's activations, `activation` its activation (elementwise).
    """
    arrays, dt = _arrays(W=W, D=D, A=A)
    W, D, A = arrays["W"], arrays["D"], arrays["A"]
    _matrix("W", W)
    _matrix("D", D, W.shape[0])
    _matrix("A", A, W.shape[1])
    if A.shape[0] != D.shape[0]:
        raise ValueError(f"A has {A.shape[0]} samples but D has {D.shape[0]}")
    if activation == "softmax":
        raise ValueError("backward_error takes a hidden layer's (elementwise) activation")
    E = _output("out", out, A.shape, dt)
    if E.size:
        _module(backend).backward_error(W, D, A, _code("activation", activation, codes.ACTIVATIONS), E)
    return E


def weight_gradient(D, A, rows=None, scale=None, out=None, bias_out=None, backend="auto"):
    """A layer's gradients: ``G = scale * sum_s D[s] A[rows[s]]^T`` (outer products) and
    ``gb = scale * sum_s D[s]``; scale defaults to 1/m (the mean over the batch). Returns (G, gb)."""
    arrays, dt = _arrays(D=D, A=A)
    D, A = arrays["D"], arrays["A"]
    _matrix("D", D)
    _matrix("A", A)
    rows = _rows(rows, A.shape[0])
    if rows.size != D.shape[0]:
        raise ValueError(f"rows selects {rows.size} samples but D has {D.shape[0]}")
    G = _output("out", out, (D.shape[1], A.shape[1]), dt)
    gb = _output("bias_out", bias_out, (D.shape[1],), dt)
    if rows.size == 0:
        G[:] = 0
        gb[:] = 0
        return G, gb
    scale = 1.0 / rows.size if scale is None else float(scale)
    _module(backend).weight_gradient(D, A, rows, scale, G, gb)
    return G, gb


def hyperparameters(lr, l2=0.0, momentum=0.0, nesterov=False, beta1=0.9, beta2=0.999, eps=1e-8,
                    rho=0.99):
    """The float64 hyperparameter array update_parameters takes. Make it once, before the training
    loop, and pass the same array to every step: it counts the steps (Adam's bias correction needs
    the count), and update_parameters advances it."""
    hyper = codes.hyperparameters(0)
    hyper[codes.H_LR] = checks.real("lr", lr, low=0, low_open=True)
    hyper[codes.H_L2] = checks.real("l2", l2, low=0)
    settings = dict(momentum=momentum, nesterov=nesterov, beta1=beta1, beta2=beta2, eps=eps, rho=rho)
    for cls in OPTIMIZERS.values():  # every optimizer's slots, checked by the optimizer
        cls(**{k: settings.get(k, DEFAULTS[k]) for k in cls._slots}).fill(hyper)
    return hyper


def update_parameters(params, grads, state, hyper, optimizer="sgd", n_weights=None,
                      backend="auto"):
    """One optimizer step, in place, on flat buffers: params (n,) and state (2, n) change.

    grads (n,) is the mean gradient without L2; L2 (``hyper``, from ``hyperparameters()``) applies
    to ``params[:n_weights]`` (default: all). The step counter in hyper advances: pass the same
    ``hyper`` to every step. Returns False if a parameter became NaN or infinite.
    """
    for name, array, ndim in (("params", params, 1), ("state", state, 2)):
        if not isinstance(array, np.ndarray) or array.ndim != ndim or not array.flags.c_contiguous \
                or not array.flags.writeable or array.dtype.name not in ("float32", "float64"):
            raise ValueError(f"{name} must be a writeable C-contiguous float32/float64 {ndim}-D array")
    if state.dtype != params.dtype or state.shape != (2, params.size):
        raise ValueError(f"state must have shape (2, {params.size}) and dtype {params.dtype}")
    arrays, dt = _arrays(params.dtype, grads=grads)
    grads = arrays["grads"]
    if grads.shape != params.shape:
        raise ValueError(f"grads must have shape {params.shape}, got {grads.shape}")
    if not isinstance(hyper, np.ndarray) or hyper.dtype != np.float64 or hyper.size < codes.H_SIZE:
        raise ValueError("hyper must be the float64 array of fastbp.kernels.hyperparameters()")
    n_weights = params.size if n_weights is None else int(n_weights)
    if not 0 <= n_weights <= params.size:
        raise ValueError(f"n_weights must be in 0..{params.size}, got {n_weights}")
    code = _code("optimizer", optimizer, codes.OPTIMIZERS)
    if code == codes.ADAM and hyper[codes.H_STEP] == 0 and state.any():
        raise ValueError("hyper's step counter is 0 but Adam's moments are not: make the "
                         "hyperparameters once, before the loop, and pass the same array to every "
                         "step (it counts the steps for Adam's bias correction)")
    if params.size == 0:
        return True
    return bool(_module(backend).update_parameters(code, params, grads, state, hyper, n_weights))
