"""Peer trainers: other libraries training the same workloads with the same semantics.

Every peer trains ``workloads.WORKLOADS[name]`` for one epoch of minibatch SGD:

* the same layers, hidden activation, loss and output activation (costs as fastbp defines them:
  mse ``1/2 ||a - y||^2``, binary cross-entropy summed over the units with a sigmoid output,
  categorical cross-entropy with softmax; each the mean over the minibatch);
* L2 as an added gradient ``l2 * W`` on the weights only (never the biases);
* momentum as ``torch.optim.SGD``: ``v = mu v + g``, ``theta -= lr v``;
* every epoch visits the samples in a fresh random order, in minibatches of ``batch`` samples; the
  last, partial minibatch is trained too (as fastbp does), so every peer processes all n samples.

Peers (``PEERS``): ``torch`` (eager PyTorch, the usual training loop), ``jax`` (the whole epoch one
jitted function, ``lax.scan`` over the minibatches: the strongest peer), ``jax-step`` (one jitted step
per minibatch, driven from Python), ``sklearn`` (``MLPClassifier.partial_fit``, solver sgd),
``numpy`` (matrix-based minibatch backprop, the textbook formulation). A peer whose package is
missing raises ``PeerUnavailable`` with the reason; ``unavailable(name)`` tells without building.

scikit-learn cannot express every workload exactly: its classifier's output is softmax with
cross-entropy for single-label targets and sigmoid with binary cross-entropy for multi-label
targets, and it has no mse with a sigmoid output. So ``sklearn`` trains the one-hot targets
as multi-label (sigmoid output, binary cross-entropy: exact for nielsen2, a different cost for
nielsen with the same arithmetic shape) and the labels as single-label for mid and wide (exact). Its
``alpha`` is divided by the batch size in the gradient, so alpha = l2 * batch.

Usage as a tool (one peer, one workload; prints samples/s):

    python bench/peers.py WORKLOAD PEER [--n 20000] [--threads 2] [--dtype float32] [--reps 3]
"""
import importlib.util
import math
import os
import sys
import time

if __name__ == "__main__":  # before numpy loads: drop the BLAS variables of this machine
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchenv
    benchenv.reexec_clean()

import numpy as np

import benchenv
import workloads


class PeerUnavailable(RuntimeError):
    """The peer's package is not installed (or does not work) here."""


class Peer:
    def __init__(self, name, library, requires, build, note=""):
        self.name, self.library, self.requires, self.build, self.note = (name, library, requires,
                                                                          build, note)

    def __repr__(self):
        return f"Peer({self.name!r})"


def unavailable(name):
    """Why peer `name` cannot run here (a message), or None when its packages are installed."""
    peer = PEERS[name]
    missing = [module for module in peer.requires if importlib.util.find_spec(module) is None]
    if missing:
        return f"peer {name} skipped: {', '.join(missing)} not installed (pip install {' '.join(missing)})"
    return None


def build(name, workload, X, y, threads=2, dtype="float32", seed=0):
    """A callable that trains one epoch of `workload` on (X, y) with peer `name`.

    The callable has attributes ``samples`` (processed per epoch), ``peer``, ``library`` and
    ``parameters()`` (the current weights (n_out, n_in) and biases, as numpy arrays, for checks).
    Raises PeerUnavailable when the peer's package is missing.
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    reason = unavailable(name)
    if reason:
        raise PeerUnavailable(reason)
    workload = workloads.get(workload) if isinstance(workload, str) else workload
    X = np.ascontiguousarray(X, dtype=dtype)
    y = np.asarray(y, dtype=np.int64)
    try:
        epoch = PEERS[name].build(workload, X, y, threads, np.dtype(dtype), seed)
    except ImportError as error:
        raise PeerUnavailable(f"peer {name} skipped: {error}") from error
    epoch.samples = X.shape[0]
    epoch.peer, epoch.library = name, PEERS[name].library
    return epoch


def initial_parameters(workload, dtype, rng):
    """Weights (n_out, n_in) and biases drawn as fastbp's default initialization draws them from a
    generator seeded alike (so every peer starts where fastbp starts): He for ReLU networks (b = 0),
    scaled normal N(0, 1/n_in) with N(0, 1) biases for sigmoid networks."""
    Ws, bs = [], []
    for n_in, n_out in workload.shapes:
        if workload.activation == "relu":
            Ws.append(math.sqrt(2.0 / n_in) * rng.standard_normal((n_out, n_in)))
            bs.append(np.zeros(n_out))
        else:
            Ws.append((1.0 / math.sqrt(n_in)) * rng.standard_normal((n_out, n_in)))
            bs.append(rng.standard_normal(n_out))
    return [W.astype(dtype) for W in Ws], [b.astype(dtype) for b in bs]


def minibatches(order, batch):
    """Slices of `order`, the last one possibly partial."""
    return [order[s:s + batch] for s in range(0, len(order), batch)]


# --------------------------------------------------------------------------- torch

def build_torch(w, X, y, threads, dtype, seed):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype.type]
    layers = []
    for i, (n_in, n_out) in enumerate(w.shapes):
        layers.append(torch.nn.Linear(n_in, n_out, dtype=tdtype))
        if i < len(w.shapes) - 1:
            layers.append(torch.nn.Sigmoid() if w.activation == "sigmoid" else torch.nn.ReLU())
    if w.loss == "mse":  # the sigmoid output is part of the model; cross-entropy takes logits
        layers.append(torch.nn.Sigmoid())
    model = torch.nn.Sequential(*layers)
    linears = [layer for layer in layers if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        for linear, W, b in zip(linears, *initial_parameters(w, dtype, np.random.default_rng(seed))):
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    # torch's weight_decay adds l2 * W to the gradient before momentum: the same update as fastbp's
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": w.l2},
                                 {"params": biases, "weight_decay": 0.0}],
                                lr=w.lr, momentum=w.momentum)
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y)
    Yt = torch.nn.functional.one_hot(yt, w.layers[-1]).to(tdtype)
    n = X.shape[0]
    F = torch.nn.functional

    def cost(out, idx):
        m = idx.shape[0]
        if w.loss == "mse":
            return 0.5 * ((out - Yt[idx]) ** 2).sum() / m
        if w.output == "sigmoid":
            return F.binary_cross_entropy_with_logits(out, Yt[idx], reduction="sum") / m
        return F.cross_entropy(out, yt[idx])

    def epoch():
        for idx in torch.randperm(n).split(w.batch):
            out = model(Xt[idx])
            loss = cost(out, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def predict(x):  # a served request: numpy in, the output activations as numpy out
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
            if w.loss != "mse":  # the model ends in logits: its output activation, as fastbp's
                out = torch.softmax(out, 1) if w.output == "softmax" else torch.sigmoid(out)
            return out.numpy()

    epoch.parameters = lambda: ([l.weight.detach().numpy().copy() for l in linears],
                                [l.bias.detach().numpy().copy() for l in linears])
    epoch.predict = predict
    return epoch


# --------------------------------------------------------------------------- jax

def _import_jax(threads, dtype):
    if "jax" not in sys.modules:  # XLA reads its flags when the CPU client starts
        flags = benchenv.thread_env(threads).get("XLA_FLAGS")
        if flags and "XLA_FLAGS" not in os.environ:
            os.environ["XLA_FLAGS"] = flags
    import jax
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    return jax


def _jax_step(w, jax):
    """The jitted-to-be step: (params, velocity), X, Y, idx -> new (params, velocity)."""
    jnp = jax.numpy
    f = jax.nn.sigmoid if w.activation == "sigmoid" else jax.nn.relu
    n_layers = len(w.shapes)

    def cost(params, xb, yb):
        a = xb
        for i, (W, b) in enumerate(params):
            z = a @ W.T + b
            a = f(z) if i < n_layers - 1 else z
        m = xb.shape[0]
        if w.loss == "mse":
            return 0.5 * jnp.sum((jax.nn.sigmoid(a) - yb) ** 2) / m
        if w.output == "sigmoid":  # -sum[y ln s(z) + (1-y) ln(1-s(z))], from z
            return -jnp.sum(yb * jax.nn.log_sigmoid(a) + (1 - yb) * jax.nn.log_sigmoid(-a)) / m
        return -jnp.sum(yb * jax.nn.log_softmax(a)) / m

    grad = jax.grad(cost)

    def step(carry, X, Y, idx):
        params, velocity = carry
        g = grad(params, X[idx], Y[idx])
        g = [(gW + w.l2 * W, gb) if w.l2 else (gW, gb) for (W, _), (gW, gb) in zip(params, g)]
        if w.momentum:
            velocity = jax.tree_util.tree_map(lambda v, gg: w.momentum * v + gg, velocity, g)
            g = velocity
        params = jax.tree_util.tree_map(lambda p, gg: p - w.lr * gg, params, g)
        return params, velocity

    return step


def _jax_state(w, X, y, dtype, seed, jax):
    jnp = jax.numpy
    Ws, bs = initial_parameters(w, dtype, np.random.default_rng(seed))
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(Ws, bs)]
    velocity = [(jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in params]
    Xj = jnp.asarray(X)
    Yj = jnp.asarray(np.eye(w.layers[-1], dtype=dtype)[y])
    return (params, velocity), Xj, Yj


def _jax_parameters(carry):
    params = carry[0]
    return [np.array(W) for W, _ in params], [np.array(b) for _, b in params]


def build_jax(w, X, y, threads, dtype, seed):
    """The whole epoch in one jitted function: permutation, lax.scan over the full minibatches, and
    the partial last one, without leaving XLA."""
    jax = _import_jax(threads, dtype)
    step = _jax_step(w, jax)
    carry, Xj, Yj = _jax_state(w, X, y, dtype, seed, jax)
    n = X.shape[0]
    full, rest = divmod(n, w.batch)

    def run(carry, X, Y, key):
        order = jax.random.permutation(key, n)
        batches = order[:full * w.batch].reshape(full, w.batch)
        carry, _ = jax.lax.scan(lambda c, idx: (step(c, X, Y, idx), None), carry, batches)
        if rest:
            carry = step(carry, X, Y, order[full * w.batch:])
        return carry

    run = jax.jit(run, donate_argnums=0)
    state = {"carry": carry, "key": jax.random.PRNGKey(seed)}

    def epoch():
        state["key"], key = jax.random.split(state["key"])
        state["carry"] = jax.block_until_ready(run(state["carry"], Xj, Yj, key))

    epoch.parameters = lambda: _jax_parameters(state["carry"])
    return epoch


def build_jax_step(w, X, y, threads, dtype, seed):
    """One jitted step per minibatch, the loop in Python; the samples are gathered inside the step
    from X resident in JAX."""
    jax = _import_jax(threads, dtype)
    step = jax.jit(_jax_step(w, jax), donate_argnums=0)
    carry, Xj, Yj = _jax_state(w, X, y, dtype, seed, jax)
    rng = np.random.default_rng(seed)
    state = {"carry": carry}
    n = X.shape[0]

    def epoch():
        carry = state["carry"]
        for idx in minibatches(rng.permutation(n), w.batch):
            carry = step(carry, Xj, Yj, idx)
        state["carry"] = jax.block_until_ready(carry)

    epoch.parameters = lambda: _jax_parameters(state["carry"])
    return epoch


# --------------------------------------------------------------------------- scikit-learn

def build_sklearn(w, X, y, threads, dtype, seed):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits
    limits = threadpool_limits(limits=threads)  # kept for the life of the epoch callable
    clf = MLPClassifier(hidden_layer_sizes=tuple(w.layers[1:-1]),
                        activation="logistic" if w.activation == "sigmoid" else w.activation,
                        solver="sgd", batch_size=w.batch, learning_rate="constant",
                        learning_rate_init=w.lr, momentum=w.momentum, nesterovs_momentum=False,
                        alpha=w.l2 * w.batch, shuffle=True, random_state=seed, max_iter=1, tol=0.0)
    if hasattr(clf, "_init_coef"):  # start from fastbp's initial parameters (a private hook)
        initial = iter(zip(*initial_parameters(w, dtype, np.random.default_rng(seed))))
        clf._init_coef = lambda fan_in, fan_out, dtype_: tuple(
            np.ascontiguousarray(a.T if a.ndim == 2 else a, dtype=dtype_) for a in next(initial))
    # multi-label targets (one-hot rows): sigmoid output, binary cross-entropy summed per unit
    target = np.eye(w.layers[-1], dtype=np.int64)[y] if w.output == "sigmoid" else y
    classes = np.arange(w.layers[-1])

    def epoch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.partial_fit(X, target, classes=classes)

    epoch.limits = limits
    epoch.parameters = lambda: ([W.T.copy() for W in clf.coefs_], [b.copy() for b in clf.intercepts_])
    return epoch


# --------------------------------------------------------------------------- numpy

def build_numpy(w, X, y, threads, dtype, seed):
    """Minibatch backprop with matrices, as a course writes it: Z = A W^T + b forward, deltas
    backward, G = D^T A."""
    from threadpoolctl import threadpool_limits
    limits = threadpool_limits(limits=threads)
    rng = np.random.default_rng(seed)
    Ws, bs = initial_parameters(w, dtype, rng)
    vW = [np.zeros_like(W) for W in Ws]
    vb = [np.zeros_like(b) for b in bs]
    Y = np.eye(w.layers[-1], dtype=dtype)[y]
    n_layers = len(Ws)

    def sigmoid(z):
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1
        return np.reciprocal(z, out=z)

    def train(idx):
        m = len(idx)
        activations = [X[idx]]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = activations[-1] @ W.T
            z += b
            if i < n_layers - 1:
                activations.append(sigmoid(z) if w.activation == "sigmoid" else np.maximum(z, 0, out=z))
            elif w.output == "sigmoid":
                activations.append(sigmoid(z))
            else:  # softmax
                z -= z.max(axis=1, keepdims=True)
                np.exp(z, out=z)
                z /= z.sum(axis=1, keepdims=True)
                activations.append(z)
        a = activations[-1]
        delta = a - Y[idx]                      # cross-entropy with sigmoid or softmax: a - y
        if w.loss == "mse":
            delta *= a * (1 - a)                # mse with a sigmoid output
        delta /= m                              # the gradient of the mean
        for i in range(n_layers - 1, -1, -1):
            gW = delta.T @ activations[i]
            gb = delta.sum(axis=0)
            if i:
                below = activations[i]
                delta = delta @ Ws[i]
                delta *= below * (1 - below) if w.activation == "sigmoid" else (below > 0)
            if w.l2:
                gW += w.l2 * Ws[i]
            if w.momentum:
                vW[i] *= w.momentum
                vW[i] += gW
                vb[i] *= w.momentum
                vb[i] += gb
                gW, gb = vW[i], vb[i]
            Ws[i] -= w.lr * gW
            bs[i] -= w.lr * gb

    def epoch():
        for idx in minibatches(rng.permutation(X.shape[0]), w.batch):
            train(idx)

    epoch.limits = limits
    epoch.parameters = lambda: ([W.copy() for W in Ws], [b.copy() for b in bs])
    return epoch


PEERS = {
    "torch": Peer("torch", "torch", ("torch",), build_torch),
    "jax": Peer("jax", "jax", ("jax",), build_jax),
    "jax-step": Peer("jax-step", "jax", ("jax",), build_jax_step),
    "sklearn": Peer("sklearn", "scikit-learn", ("sklearn", "threadpoolctl"), build_sklearn,
                    note="nielsen: sigmoid + binary cross-entropy instead of mse"),
    "numpy": Peer("numpy", "numpy", ("threadpoolctl",), build_numpy),
}
NAMES = tuple(PEERS)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Train one peer on one workload; print samples/s.")
    parser.add_argument("workload", choices=workloads.NAMES)
    parser.add_argument("peer", choices=NAMES)
    parser.add_argument("--n", type=int, default=20000, help="samples per epoch")
    parser.add_argument("--threads", type=int, default=benchenv.cpus())
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--reps", type=int, default=3, help="timed epochs after the warm-up epoch")
    args = parser.parse_args(argv)
    X, y = workloads.data(args.workload, args.n, args.dtype)
    try:
        epoch = build(args.peer, args.workload, X, y, args.threads, args.dtype)
    except PeerUnavailable as error:
        print(error)
        return 0
    epoch()  # warm-up: compilation, first-touch
    times = []
    for _ in range(args.reps):
        started = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - started)
    best = min(times)
    print(f"{args.peer} {args.workload} {args.dtype} threads={args.threads} n={args.n} "
          f"best={best:.4f}s samples_per_s={args.n / best:.0f} "
          f"median_samples_per_s={args.n / sorted(times)[len(times) // 2]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
