"""One backpropagation, shown in the course's notation: ``net.trace(x, y)``.

For layers m = 1..L (lists indexed as the course indexes them; index 0 of z, delta, dW, db is None)::

    a^0 = x,   z^m = W^m a^{m-1} + b^m,   a^m = f(z^m)
    δ^L = f'(z^L) ⊙ ∂C/∂a^L          (a^L − y for softmax or sigmoid with cross-entropy)
    δ^m = f'(z^m) ⊙ (W^{m+1})ᵀ δ^{m+1}
    ∂C/∂W^m = δ^m (a^{m-1})ᵀ,   ∂C/∂b^m = δ^m

The numbers are the network's own: computed in numpy in the network's dtype with the reference
backend's activations and output error (``fastbp.reference``), so that ``dW`` and ``db`` of a batch
equal ``net.gradients(X, y)``. Nothing in the network changes.
"""
import numpy as np

from . import reference, validation
from .kernels import codes

FEW = 6  # values shown of an array printed in part

_COSTS = {  # the cost of one sample, as the course writes it
    ("mse", False): "½‖a^L − y‖²",
    ("cross_entropy", False): "−Σ [y ln a^L + (1 − y) ln(1 − a^L)]",  # sigmoid output
    ("cross_entropy", True): "−Σ y ln a^L",                            # softmax output
}

_NOTES = {
    ("softmax", "cross_entropy"):
        "softmax with cross-entropy: the softmax Jacobian diag(a) − a aᵀ applied to ∂C/∂a = −y/a "
        "gives a Σy − y = a − y, so f' cancels and δ^L = a^L − y (a^L Σy − y if y does not sum "
        "to 1)",
    ("sigmoid", "cross_entropy"):
        "sigmoid with cross-entropy: ∂C/∂a = (a − y) / (a(1 − a)) and σ'(z) = a(1 − a), so f' "
        "cancels and δ^L = a^L − y",
    ("softmax", "mse"):
        "softmax has no elementwise derivative: δ^L is its Jacobian diag(a) − a aᵀ applied to "
        "∂C/∂a^L = a^L − y, that is a ⊙ (g − a·g) with g = a − y",
}


class Trace:
    """One backpropagation through a network, in the course's notation (see ``fastbp.trace``).

    Attributes
    ----------
    a, z, delta : list of ndarray
        ``a[m]``, ``z[m]``, ``delta[m]`` for m = 0..L (``a[0]`` is x; ``z[0]``, ``delta[0]`` None);
        with a batch, each has a leading sample axis.
    W, b : list of ndarray
        Copies of the parameters: ``W[m]`` of shape (n_m, n_{m-1}), ``b[m]`` (index 0 None).
    dW, db : list of ndarray
        ``∂C/∂W^m = δ^m (a^{m-1})ᵀ`` and ``∂C/∂b^m = δ^m``; with a batch, their means over it
        (``net.gradients``). Index 0 None.
    x, y : ndarray
        The input and the target (a class label becomes its one-hot row).
    C : float
        The cost (the mean over the batch).
    f : list of str
        The activation of each layer (index 0 None); ``loss`` the cost's name.
    note : str or None
        Why δ^L is written as it is, when it is not ``f'(z^L) ⊙ ∂C/∂a^L`` elementwise.
    lr, W_after, b_after, cost_after
        With ``lr``: the parameters after one plain gradient step ``W − lr·dW`` (computed on a copy
        of the network) and the cost there; else None.
    """

    def __init__(self, net, x, y, W, b, a, z, delta, dW, db, C, lr=None, after=None):
        self.network = repr(net)
        self.x, self.y, self.W, self.b, self.a, self.z, self.delta = x, y, W, b, a, z, delta
        self.dW, self.db, self.C, self.lr = dW, db, C, lr
        self.L = len(W) - 1
        self.f = [None] + [net.activation] * (self.L - 1) + [net.output_activation]
        self.loss = net.loss
        self.note = _NOTES.get((net.output_activation, net.loss))
        self.batch = x.ndim == 2
        self.W_after, self.b_after, self.cost_after = after or (None, None, None)

    def __repr__(self):
        what = f"a batch of {len(self.x)} samples" if self.batch else "one sample"
        return f"<fastbp.Trace of {what} through {self.network}: C = {self.C:.6g}>"

    def __str__(self):
        return self.format()

    def format(self, whole=0):
        """The trace as text: every equation with its shapes and values; arrays of at most `whole`
        values are printed whole (with numpy's print options in effect), larger ones in part."""
        L, batch = self.L, self.batch
        out = [f"Backpropagation through {self.network}"]
        if batch:
            out.append(f"on a batch of {len(self.x)} samples: each equation is one sample's; the "
                       f"arrays hold a row per sample, and the gradients are means over the batch")
        else:
            out.append("on one sample")

        def shape(array):  # one sample's shape, as the equation has it
            return str(array.shape[1:] if batch else array.shape)

        def line(equation, *arrays, value=None, indent="  "):
            out.append(indent + equation + (": " + " ".join(arrays) if arrays else ""))
            if value is not None:
                out.extend(_values(value, whole, indent + "    "))

        out.append("\nForward pass")
        line("a^0 = x", shape(self.a[0]), value=self.a[0])
        line("y", shape(self.y), value=self.y)
        for m in range(1, L + 1):
            W, b, z, a = self.W[m], self.b[m], self.z[m], self.a[m]
            line(f"z^{m} = W^{m} a^{m - 1} + b^{m}",
                 f"{shape(z)} = {W.shape}{shape(self.a[m - 1])} + {b.shape}")
            line(f"W^{m}", str(W.shape), value=W, indent="    ")
            line(f"b^{m}", str(b.shape), value=b, indent="    ")
            line(f"z^{m}", shape(z), value=z, indent="    ")
            line(f"a^{m} = {self.f[m]}(z^{m})", shape(a), value=a)
        softmax = self.loss == "cross_entropy" and self.f[L] == "softmax"
        cost = _COSTS[self.loss, softmax].replace("L", str(L))
        line(f"C = {'mean over the batch of ' if batch else ''}{cost} = {self.C:.6g}")

        out.append("\nError terms (backward pass)")
        f, aL = self.f[L], f"a^{L}"
        if self.note and self.loss == "cross_entropy":
            equation, shapes = f"δ^{L} = {aL} − y", f"{shape(self.delta[L])}"
        elif self.note:  # softmax with mse
            n = self.W[L].shape[0]
            equation = f"δ^{L} = (diag({aL}) − {aL} ({aL})ᵀ)({aL} − y)"
            shapes = f"{shape(self.delta[L])} = {(n, n)}{shape(self.delta[L])}"
        else:
            equation = f"δ^{L} = {f}'(z^{L}) ⊙ ∂C/∂{aL} = {f}'(z^{L}) ⊙ ({aL} − y)"
            shapes = f"{shape(self.delta[L])} = {shape(self.z[L])} ⊙ {shape(self.a[L])}"
        line(equation, shapes, value=self.delta[L])
        if self.note:
            out.append(f"    note: {self.note}")
        for m in range(L - 1, 0, -1):
            line(f"δ^{m} = {self.f[m]}'(z^{m}) ⊙ (W^{m + 1})ᵀ δ^{m + 1}",
                 f"{shape(self.delta[m])} = {shape(self.z[m])} ⊙ {self.W[m + 1].T.shape}"
                 f"{shape(self.delta[m + 1])}", value=self.delta[m])

        out.append("\nGradients" + (" (means over the batch)" if batch else ""))
        mean = "mean of " if batch else ""
        for m in range(L, 0, -1):
            line(f"∂C/∂W^{m} = {mean}δ^{m} (a^{m - 1})ᵀ",
                 f"{self.dW[m].shape} = {shape(self.delta[m])}{shape(self.a[m - 1])}ᵀ",
                 value=self.dW[m])
            line(f"∂C/∂b^{m} = {mean}δ^{m}", str(self.db[m].shape), value=self.db[m])

        if self.lr is not None:
            out.append(f"\nOne gradient step, α = {self.lr:g} (on a copy: the network is unchanged)")
            out.append(f"  W^m(k+1) = W^m(k) − α {mean}δ^m (a^(m-1))ᵀ,   "
                       f"b^m(k+1) = b^m(k) − α {mean}δ^m")
            for m in range(1, L + 1):
                line(f"W^{m}(k+1) = W^{m}(k) − {self.lr:g} {mean}δ^{m} (a^{m - 1})ᵀ",
                     str(self.W_after[m].shape), value=self.W_after[m])
                line(f"b^{m}(k+1) = b^{m}(k) − {self.lr:g} {mean}δ^{m}",
                     str(self.b_after[m].shape), value=self.b_after[m])
            out.append(f"  C = {self.C:.6g} before the step, {self.cost_after:.6g} after")
        return "\n".join(out)


def _values(array, whole, indent):
    """Lines showing `array`: whole when it has at most `whole` values, else its first few."""
    if array.size <= max(whole, FEW):
        text = np.array2string(array)
    else:
        first = np.array2string(array.ravel()[:FEW])
        text = f"{first[:-1]} …]  (the first {FEW} of {array.size} values)"
    return [indent + row for row in text.splitlines()]


def _propagate(Ws, bs, acts, X):
    """a^0..a^L and z^1..z^L (as lists indexed by layer) of a batch X: a row per sample."""
    a, z = [X], [None]
    for m in range(1, len(Ws)):
        z.append(a[m - 1] @ Ws[m].T + bs[m])
        a.append(reference.ACTIVATE[acts[m]](z[m]))
    return a, z


def _sample(net, x, y):
    """x, y as a batch (X, Y) of the network's dtype, checked; and whether x was one sample."""
    validation.dense_only(x, "trace", "x")
    x = np.asarray(x)
    n_in, n_out = net.layer_sizes[0], net.layer_sizes[-1]
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be one sample (1-D, {n_in} values) or a batch (2-D, a row per "
                         f"sample), got shape {x.shape}")
    one = x.ndim == 1
    if one:
        if x.dtype.kind == "f":
            validation.finite("x", x)  # named by its own index, not the batch's
        y = np.asarray(y)
        if y.ndim == 0 and n_out == 1:  # one output unit: the target value
            y = y.reshape(1, 1)
        elif y.ndim <= 1:  # a class label, or a target row
            y = y.reshape(1, *y.shape)
    X = validation.features(x.reshape(1, -1) if one else x, n_in, net.dtype, "x")
    Y = validation.targets(y, X.shape[0], n_out, net.dtype, "y")
    return X, Y, one


def trace(net, x, y, lr=None):
    """One backpropagation through `net` in the course's notation, as a :class:`Trace`.

    Parameters
    ----------
    net : fastbp.Network
    x : array
        One sample (1-D, ``layer_sizes[0]`` values) or a batch (2-D, a row per sample).
    y : int or array
        For one sample: a class label or a target row (with one output unit, a number is the target);
        for a batch: labels (1-D) or target rows (2-D), as ``Network.fit`` takes them.
    lr : float, optional
        Also take one plain gradient step of this size on a copy of the network
        (``W^m − lr·∂C/∂W^m``) and report the cost after it (``cost_after``).

    Returns
    -------
    Trace
        ``a``, ``z``, ``delta``, ``W``, ``b``, ``dW``, ``db`` as lists indexed by layer 0..L,
        the cost ``C``; ``print(trace)`` shows the equations with their shapes and values.

    Nothing in the network changes. Bad input raises ValueError or TypeError saying what was wrong.
    """
    X, Y, one = _sample(net, x, y)
    if lr is not None:
        lr = validation.real("lr", lr, low=0, low_open=True)
    acts = [None] + [codes.ACTIVATIONS[net.activation]] * (len(net.weights) - 1) \
        + [codes.ACTIVATIONS[net.output_activation]]
    with net.exclusive():
        W = [None] + [w.copy() for w in net.weights]
        b = [None] + [v.copy() for v in net.biases]
        after = net.copy() if lr is not None else None
    L, n = len(W) - 1, X.shape[0]
    a, z = _propagate(W, b, acts, X)
    delta = [None] * (L + 1)
    _, delta[L], costs = reference.output_error(acts[L], codes.LOSSES[net.loss], z[L], Y)
    for m in range(L - 1, 0, -1):
        delta[m] = reference.DERIVATIVE[acts[m]](a[m]) * (delta[m + 1] @ W[m + 1])
    dW = [None] + [delta[m].T @ a[m - 1] / n for m in range(1, L + 1)]
    db = [None] + [delta[m].mean(axis=0) for m in range(1, L + 1)]
    if after is not None:
        for m in range(1, L + 1):
            after.weights[m - 1][:] -= lr * dW[m]
            after.biases[m - 1][:] -= lr * db[m]
        W_after = [None] + [w.copy() for w in after.weights]
        b_after = [None] + [v.copy() for v in after.biases]
        z_after = _propagate(W_after, b_after, acts, X)[1][L]
        cost_after = float(reference.output_error(acts[L], codes.LOSSES[net.loss], z_after,
                                                  Y)[2].mean())
        after = (W_after, b_after, cost_after)
    if one:
        X, Y, a, z, delta = X[0], Y[0], [v[0] for v in a], [None] + [v[0] for v in z[1:]], \
            [None] + [v[0] for v in delta[1:]]
    return Trace(net, X, Y, W, b, a, z, delta, dW, db, float(costs.mean()), lr, after)
