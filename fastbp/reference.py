"""The numpy backend: backpropagation as a textbook writes it, one matrix product per step.

This is the reference every compiled backend is checked against. It reads like Nielsen's network.py
with the minibatch as a matrix (one row per sample): for each layer ``Z = A W^T + b`` and ``A = f(Z)``;
the output error ``delta_L``; ``delta_l = f'(z_l) * (delta_{l+1} W_{l+1})``; gradients
``dW_l = delta_l^T A_{l-1} / m`` and ``db_l = mean(delta_l)``; then the optimizer's step.

It exports the same drivers, with the same arguments, as the compiled backends (``forward``,
``gradients``, ``train_batches``, ``update_parameters``; see ``kernels/codes.py`` for the buffers), so the
Network runs on any of
them unchanged. Arguments only the compiled backends need (``work``, ``n_threads``) are ignored. A
sparse X (``codes.CSR``) becomes a scipy CSR matrix over the same arrays, never a dense one: layer 0's
products ``X W^T`` and ``X^T delta`` are scipy's sparse ones.
"""
import numpy as np
import scipy.sparse

from .kernels.codes import (ADAM, COST_NOT_FINITE, CROSS_ENTROPY, D_LOSS, D_NWEIGHTS, D_OPTIMIZER,
                            D_OUTPUT, DONE, H_BETA1, H_BETA2, H_DROPOUT, H_EPS, H_KEY, H_L2, H_LR,
                            H_MOMENTUM, H_NESTEROV, H_RHO, H_SEED, H_STEP, IDENTITY, LEAKY_RELU,
                            LEAKY_SLOPE, PARAMS_NOT_FINITE, RELU, RMSPROP, SGD, SIGMOID, SOFTMAX,
                            TANH, CSR, dropout_keep, layer, layer_views)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


ACTIVATE = {
    IDENTITY: lambda z: z,
    SIGMOID: sigmoid,
    TANH: np.tanh,
    RELU: lambda z: np.maximum(z, 0),
    LEAKY_RELU: lambda z: np.where(z > 0, z, LEAKY_SLOPE * z),
    SOFTMAX: softmax,
}
# f'(z) written on a = f(z); softmax has no elementwise derivative (see output_error).
DERIVATIVE = {
    IDENTITY: lambda a: np.ones_like(a),
    SIGMOID: lambda a: a * (1 - a),
    TANH: lambda a: 1 - a * a,
    RELU: lambda a: (a > 0).astype(a.dtype),
    LEAKY_RELU: lambda a: np.where(a > 0, 1, LEAKY_SLOPE).astype(a.dtype),
}


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def dropout_factor(hyper, l, A):
    """Inverted dropout of layer l's outputs A (m, n): the factor each unit is multiplied by, 0 or
    1/(1-rate), from the masks of codes.dropout_keep; None without dropout."""
    rate = 0.0 if hyper is None else hyper[H_DROPOUT + l]
    if rate == 0:
        return None
    m, n = A.shape
    keep = dropout_keep(hyper[H_SEED], hyper[H_STEP], l, np.arange(m)[:, None], np.arange(n), rate)
    return np.where(keep, 1 / (1 - rate), 0).astype(A.dtype)


def feedforward(desc, params, X, hyper=None):
    """Activations of every layer (X first; with dropout, as the next layer sees them) and the output
    layer's pre-activations Z_L. Dropout (training only) comes from hyper's rates."""
    Ws, bs = layer_views(desc, params)
    activations = [X]
    for l, (W, b) in enumerate(zip(Ws, bs)):
        Z = activations[-1] @ W.T + b
        if l < len(Ws) - 1:
            A = ACTIVATE[layer(desc, l)[6]](Z)
            factor = dropout_factor(hyper, l, A)
            activations.append(A if factor is None else A * factor)
    return activations, Z


def output_error(act, loss, Z, Y):
    """Output activations A, error terms delta = dC/dZ and the cost of each sample (float64)."""
    A = ACTIVATE[act](Z)
    Z64, A64, Y = Z.astype(np.float64), A.astype(np.float64), Y.astype(np.float64)  # costs in double
    if loss == CROSS_ENTROPY and act == SOFTMAX:
        log_a = Z64 - Z64.max(axis=1, keepdims=True)
        log_a -= np.log(np.exp(log_a).sum(axis=1, keepdims=True))
        cost = -(Y * log_a).sum(axis=1)
        delta = A64 * Y.sum(axis=1, keepdims=True) - Y
    elif loss == CROSS_ENTROPY:  # sigmoid: -[y ln a + (1-y) ln(1-a)], with ln a = -softplus(-z)
        cost = (Y * softplus(-Z64) + (1 - Y) * softplus(Z64)).sum(axis=1)
        delta = A64 - Y
    else:
        cost = 0.5 * ((A64 - Y) ** 2).sum(axis=1)
        if act == SOFTMAX:  # the softmax Jacobian applied to dC/da = a - y
            g = A64 - Y
            delta = A64 * (g - (A64 * g).sum(axis=1, keepdims=True))
        else:
            delta = DERIVATIVE[act](A64) * (A64 - Y)
    return A, delta.astype(Z.dtype), cost


def backprop(desc, params, X, Y, hyper=None, weights=None):
    """Gradients of the mean cost over the rows of X (flat, like params) and each sample's cost.

    With weights (one per row of X), the gradient of the weighted mean sum w C / sum w: each sample's
    output error is multiplied by its weight and the sum divided by sum w (0 if that is 0)."""
    Ws, bs = layer_views(desc, params)
    activations, Z = feedforward(desc, params, X, hyper)
    _, delta, cost = output_error(int(desc[D_OUTPUT]), int(desc[D_LOSS]), Z, Y)
    grads = np.empty_like(params)
    dWs, dbs = layer_views(desc, grads)
    m = X.shape[0]
    if weights is not None:
        delta = (delta * weights[:, None]).astype(delta.dtype)
        total = weights.sum()
        m = total if total > 0 else np.inf
    for l in range(len(Ws) - 1, -1, -1):
        if scipy.sparse.issparse(activations[l]):  # (X^T delta)^T: scipy's sparse-dense product
            dWs[l][:] = (activations[l].T @ delta).T / m
        else:
            dWs[l][:] = delta.T @ activations[l] / m
        dbs[l][:] = delta.mean(axis=0) if weights is None else delta.sum(axis=0) / m
        if l > 0:
            derivative = DERIVATIVE[layer(desc, l - 1)[6]]
            factor = dropout_factor(hyper, l - 1, activations[l])
            if factor is None:
                delta = (delta @ Ws[l]) * derivative(activations[l])
            else:  # f'(z) of the kept units, whose activations were scaled by 1/(1-rate)
                rate = hyper[H_DROPOUT + l - 1]
                delta = (delta @ Ws[l]) * derivative(activations[l] * (1 - rate)) * factor
    return grads, cost


def update_parameters(opt, P, G, S, hyper, n_weights):
    """One optimizer step, in place, as torch.optim does it, on the parameters P with the gradient G
    and the optimizer state S; L2 on the weights (P[:n_weights]). Returns whether every parameter is
    still finite (the compiled kernels' contract)."""
    params, grads, state = P, G, S
    hyper[H_STEP] += 1
    lr, t = hyper[H_LR], hyper[H_STEP]
    g = grads.copy()
    g[:n_weights] += hyper[H_L2] * params[:n_weights]
    if opt == SGD:
        if hyper[H_MOMENTUM]:
            state[0] = hyper[H_MOMENTUM] * state[0] + g
            g = g + hyper[H_MOMENTUM] * state[0] if hyper[H_NESTEROV] else state[0]
        params -= lr * g
    elif opt == ADAM:
        b1, b2 = hyper[H_BETA1], hyper[H_BETA2]
        state[0] += (1 - b1) * (g - state[0])
        state[1] = b2 * state[1] + (1 - b2) * g * g
        step_size = lr / (1 - b1 ** t)
        params -= step_size * state[0] / (np.sqrt(state[1]) / np.sqrt(1 - b2 ** t) + hyper[H_EPS])
    elif opt == RMSPROP:
        rho = hyper[H_RHO]
        state[1] = rho * state[1] + (1 - rho) * g * g
        params -= lr * g / (np.sqrt(state[1]) + hyper[H_EPS])
    return bool(np.isfinite(params).all())


# --------------------------------------------------------------------------- the drivers

def _matrix(X):
    """X as the products take it: a scipy CSR matrix over a sparse X's arrays (not densified)."""
    return X.scipy() if isinstance(X, CSR) else X


def train_batches(desc, params, grads, state, X, Y, order, batch_size, first, last, hyper, work,
                costs, n_threads, norms=None, weights=None):
    """Minibatches first..last-1 of the epoch visiting X in `order`: backprop, then one step each;
    with norms (not empty), norms[l] += ||dW_l||_F for each batch trained; with weights (not empty),
    each batch's gradient is its weighted mean, and a batch whose weights sum to 0 makes no step.

    Same contract as kernels.nb_train.train_batches; returns (batches done, status, batch).
    """
    n = order.shape[0]
    X = _matrix(X)
    dWs = layer_views(desc, grads)[0] if norms is not None and norms.shape[0] else ()
    weighted = weights is not None and weights.shape[0] > 0
    for i in range(first, last):
        rows = order[i * batch_size:min((i + 1) * batch_size, n)]
        w = weights[rows] if weighted else None
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned
            grads[:], cost = backprop(desc, params, X[rows], Y[rows], hyper, w)
        costs[i * batch_size:i * batch_size + len(rows)] = cost
        if not np.isfinite(cost.sum()):
            return i - first, COST_NOT_FINITE, i
        hyper[H_KEY] = hyper[H_STEP]
        if weighted and not w.sum() > 0:  # no weight: no step
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            finite = update_parameters(int(desc[D_OPTIMIZER]), params, grads, state, hyper,
                                       int(desc[D_NWEIGHTS]))
        if not finite:
            return i - first + 1, PARAMS_NOT_FINITE, i
        for l, dW in enumerate(dWs):  # the Frobenius norm of the batch's mean gradient of W_l
            norms[l] += np.sqrt(np.sum(np.square(dW, dtype=np.float64)))
    return last - first, DONE, last


def gradients(desc, params, grads, X, Y, work, costs, n_threads, weights=None):
    """OUT grads: the gradient of the mean cost over X (no L2), weighted by weights when not empty;
    OUT costs: each sample's cost."""
    weighted = weights is not None and weights.shape[0] > 0
    grads[:], costs[:] = backprop(desc, params, _matrix(X), Y, weights=weights if weighted else None)


def forward(desc, params, X, Y, out, costs, work, n_threads):
    """OUT out: the output activations for X; and, when costs is not empty, each sample's cost."""
    _, Z = feedforward(desc, params, _matrix(X))
    if costs.shape[0]:
        out[:], _, costs[:] = output_error(int(desc[D_OUTPUT]), int(desc[D_LOSS]), Z, Y)
    else:
        out[:] = ACTIVATE[int(desc[D_OUTPUT])](Z)
