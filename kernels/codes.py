"""The contract between the Python API and the kernels: integer codes and the network descriptor.

One source for every backend (Numba, Cython, the numpy reference): activations, losses and optimizers
enter the kernels as the integer codes below, never as Python functions, and a network's static shape
enters as one int64 array, the *descriptor*, built by :func:`describe`.

Buffers the descriptor points into (all C-contiguous, one dtype, float32 or float64):

``params``  flat, ``[W_1, ..., W_L, b_1, ..., b_L]``; ``W_l`` is ``(n_l, n_{l-1})`` row-major, so every
            weight comes before every bias and L2 applies to the prefix ``params[:n_weights]``.
``grads``   same layout: the mean gradient of the last batch (without the L2 term).
``state``   ``(2, n_params)``: optimizer slots (SGD: velocity; Adam: first and second moments;
            RMSprop: slot 1 holds the square average).
``work``    per layer ``l``: the activations ``A_l``, the error terms ``D_l``, each
            ``(capacity, n_l)`` (a batch of ``m <= capacity`` samples uses the first ``m`` rows);
            then, at ``D_GATHER``, room for the batch's rows of X gathered ``(capacity, n_0)``.
"""
import contextlib

import numpy as np

# Activations. Derivatives are computed from the activation's output a = f(z).
IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX = range(6)
ACTIVATIONS = {"identity": IDENTITY, "sigmoid": SIGMOID, "tanh": TANH, "relu": RELU,
               "leaky_relu": LEAKY_RELU, "softmax": SOFTMAX}
HIDDEN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")
LEAKY_SLOPE = 0.01  # as torch.nn.LeakyReLU

# Losses (costs per sample): MSE 1/2 ||a - y||^2; CROSS_ENTROPY is binary per unit with a sigmoid
# output and categorical with a softmax output.
MSE, CROSS_ENTROPY = range(2)
LOSSES = {"mse": MSE, "cross_entropy": CROSS_ENTROPY}

# Optimizers, with PyTorch's update rules.
SGD, ADAM, RMSPROP = range(3)
OPTIMIZERS = {"sgd": SGD, "adam": ADAM, "rmsprop": RMSPROP}

# Why train_batches stopped before its last batch.
DONE, COST_NOT_FINITE, PARAMS_NOT_FINITE = range(3)

# Hyperparameters: a float64 array of H_SIZE + n_layers entries, indexed by these names. H_STEP
# counts the updates made (Adam's t); H_KEY is its value when the current minibatch started (the
# dropout masks' key); H_SEED seeds the dropout masks; H_DROPOUT + l is the dropout rate of layer
# l's outputs (0 for the output layer, and everywhere when predicting).
(H_LR, H_L2, H_MOMENTUM, H_NESTEROV, H_BETA1, H_BETA2, H_EPS, H_RHO, H_STEP, H_KEY, H_SEED,
 H_DROPOUT) = range(12)
H_SIZE = H_DROPOUT

# The descriptor: a header, then one record per layer.
(D_LAYERS, D_HIDDEN, D_OUTPUT, D_LOSS, D_OPTIMIZER, D_CAPACITY, D_NPARAMS, D_NWEIGHTS,
 D_WORK, D_GATHER) = range(10)
D_HEADER = 10
(L_IN, L_OUT, L_W, L_B, L_A, L_D, L_ACT) = range(7)
L_FIELDS = 7

# Per-step coefficients, in the parameters' dtype, derived from the hyperparameters by _coefficients.
(C_LR, C_L2, C_MU, C_NESTEROV, C_1MB1, C_B2, C_1MB2, C_EPS, C_STEP_SIZE, C_INV_SQRT_BC2,
 C_RHO, C_1MRHO, C_SCALE) = range(13)
C_SIZE = 13

# What a driver call computes, and the phases ("ops") a minibatch goes through.
TRAIN, GRADIENTS, FORWARD = range(3)
OP_FORWARD, OP_OUTPUT, OP_BACKWARD, OP_UPDATE, OP_GRADIENT, OP_GATHER = range(6)

# Threads work on tiles whose size depends on the shapes only (never on the thread count, so neither
# do the results). A tile is made big enough to be worth handing to another thread.
TILE_ROWS = 4            # weight rows per forward / gradient tile: a multiple of this
TILE_COLUMNS = 512       # columns per error-term tile, at most
MIN_TILE_WORK = 16384    # multiply-adds per tile, at least (when the phase is that big)
SPINS = 4000             # spin-wait iterations (a few microseconds) before a waiting worker yields

# A driver's program: one row per phase of a minibatch. Rows with the same P_STEP form a step; the
# workers finish a step before starting the next. A parallel step's tiles are its rows' tiles, which
# are independent; a serial step is one tile that runs its rows in order.
# P_BLAS: the phase's tiles call BLAS (single-threaded gemm on the tile: deterministic); error-term
# tiles are then blocks of P_SAMPLES samples. P_GATHERED: layer 0 reads the batch from the
# gather buffer (filled by an OP_GATHER phase) rather than from X through the permutation.
(P_OP, P_LAYER, P_STEP, P_SERIAL, P_ROWS, P_SAMPLES, P_COLUMNS, P_BLAS, P_GATHERED) = range(9)
P_FIELDS = 9
# When a phase uses BLAS: big enough batches and layers (where measured faster than the tiles); a
# BLAS phase has about BLAS_TILES tiles. Forward and gradient tiles are blocks of rows of W (a block
# of columns of Z = A W^T, rows of G = D^T A), error-term tiles blocks of samples (rows of E = D W).
BLAS_MIN_BATCH = 32
BLAS_MIN_LAYER = 128 * 128
BLAS_TILES = 2  # few, large tiles: each gemm call packs its operands again (measured: 2 > 4 > 8)

# The primitive kernels every compiled backend exports under these names (a test checks it).
KERNELS = ("dense_forward", "activation_forward", "activation_backward", "output_error",
           "backward_error", "weight_gradient", "update_parameters")
# The drivers every backend (the numpy reference too) exports with the same arguments.
DRIVERS = ("forward", "gradients", "train_batches", "update_parameters")


def describe(sizes, hidden, output, loss, optimizer, capacity):
    """Build the int64 descriptor of a network with layer ``sizes`` and a work buffer of ``capacity`` rows.

    Returns ``(descriptor, work_size)``.
    """
    sizes = [int(n) for n in sizes]
    n_layers = len(sizes) - 1
    desc = np.zeros(D_HEADER + L_FIELDS * n_layers, dtype=np.int64)
    n_weights = sum(sizes[l] * sizes[l + 1] for l in range(n_layers))
    w_off, b_off, work = 0, n_weights, 0
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        rec = D_HEADER + L_FIELDS * l
        desc[rec:rec + L_FIELDS] = (n_in, n_out, w_off, b_off, work, work + capacity * n_out,
                                    output if l == n_layers - 1 else hidden)
        w_off += n_in * n_out
        b_off += n_out
        work += 2 * capacity * n_out
    gather = work
    work += capacity * sizes[0]
    desc[:D_HEADER] = (n_layers, hidden, output, loss, optimizer, capacity, n_weights + sum(sizes[1:]),
                       n_weights, work, gather)
    return desc, work


def check_buffers(desc, params, X, Y=None, out=None, costs=None, work=None, hyper=None, order=None,
                  grads=None, state=None):
    """Refuse buffers that do not fit the descriptor, before a compiled driver reads or writes them
    (the kernels do not check bounds). Raises ValueError naming the buffer."""
    n_params, n_layers = int(desc[D_NPARAMS]), int(desc[D_LAYERS])
    n_in, n_out = int(desc[D_HEADER + L_IN]), int(desc[D_HEADER + L_FIELDS * (n_layers - 1) + L_OUT])
    dtype = params.dtype

    def need(name, array, shape, dt=dtype, at_least=False):
        if not isinstance(array, np.ndarray) or array.dtype != dt or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {np.dtype(dt)} array")
        fits = (array.ndim == len(shape) and all(a >= s if at_least else a == s
                                                  for a, s in zip(array.shape, shape)))
        if not fits:
            raise ValueError(f"{name} has shape {array.shape}; the network needs "
                             f"{'at least ' if at_least else ''}{shape}")

    need("params", params, (n_params,))
    need("X", X, (X.shape[0] if getattr(X, "ndim", 0) == 2 else -1, n_in))
    n = X.shape[0]
    if grads is not None:
        need("grads", grads, (n_params,))
    if state is not None:
        need("state", state, (2, n_params))
    if work is not None:
        need("work", work, (int(desc[D_WORK]),))
    if hyper is not None:
        need("hyper", hyper, (H_SIZE + n_layers,), np.float64)
    if order is not None:
        need("order", order, (n,), np.int64)
        if n and (order.min() < 0 or order.max() >= n):
            raise ValueError(f"order must index the rows of X (0..{n - 1})")
    if costs is not None and costs.shape[0]:
        need("costs", costs, (n,), np.float64)
    if Y is not None and (costs is None or costs.shape[0]):
        need("Y", Y, (n, n_out))
    if out is not None:
        need("out", out, (n, n_out))


def part_tiles(phase, n_in, n_out, m):
    """How many tiles one program row has for a batch of m samples (the same arithmetic is in
    both backends' workers)."""
    op, rows, samples, columns = phase[P_OP], phase[P_ROWS], phase[P_SAMPLES], phase[P_COLUMNS]
    if op == OP_OUTPUT:
        return 1
    if op == OP_GATHER or (phase[P_BLAS] and op == OP_BACKWARD):
        return -(-m // samples)
    if op == OP_BACKWARD:
        return -(-m // samples) * -(-n_in // columns)
    return -(-n_out // rows)


def use_blas(op, m, n_in, n_out):
    """Whether a phase of this shape calls BLAS rather than the hand-written tiles (measured: the
    forward tile is as fast as a gemm that repacks its operands, up to batches of about 128)."""
    if op == OP_FORWARD and m < 4 * BLAS_MIN_BATCH:
        return False
    return m >= BLAS_MIN_BATCH and n_in * n_out >= BLAS_MIN_LAYER and min(n_in, n_out) >= 64


def program(kind, desc, batch_size):
    """The phases of one minibatch of `batch_size` samples for a driver call of this kind, with their
    tiles, as an int64 array of P_FIELDS columns.

    Forward through every layer, then the output error; for TRAIN and GRADIENTS, the error terms of
    every layer but the first, top down, then every layer's gradient with its update (TRAIN) or
    accumulation (GRADIENTS), all layers in one step: they are independent. Large layers use BLAS
    (layer 0 then reads the batch gathered first). Consecutive phases of one tile each are merged into
    one serial step (no waiting between them).
    """
    n_layers = int(desc[D_LAYERS])
    m = batch_size
    sample_tile = max(BLAS_MIN_BATCH // 2, -(-m // BLAS_TILES))

    def rows_for(n_in, n_out, blas):
        if blas:  # a few large tiles: each gemm call packs the whole batch again
            return TILE_ROWS * max(1, -(-n_out // (BLAS_TILES * TILE_ROWS)))
        return TILE_ROWS * max(1, -(-MIN_TILE_WORK // (TILE_ROWS * m * n_in)))

    phases = []
    for l in range(n_layers):
        n_in, n_out = layer(desc, l)[:2]
        blas = use_blas(OP_FORWARD, m, n_in, n_out)
        phases.append([OP_FORWARD, l, rows_for(n_in, n_out, blas), sample_tile, 0, blas])
    phases.append([OP_OUTPUT, n_layers - 1, 0, 0, 0, 0])
    if kind != FORWARD:
        for l in range(n_layers - 1, 0, -1):
            n_in, n_out = layer(desc, l)[:2]
            blas = use_blas(OP_BACKWARD, m, n_in, n_out)
            columns = min(n_in, TILE_COLUMNS)
            samples = sample_tile if blas else min(
                m, max(2, 2 * -(-MIN_TILE_WORK // (2 * columns * n_out))))
            phases.append([OP_BACKWARD, l, 0, samples, columns, blas])
        op = OP_UPDATE if kind == TRAIN else OP_GRADIENT
        for l in range(n_layers - 1, -1, -1):
            n_in, n_out = layer(desc, l)[:2]
            blas = use_blas(op, m, n_in, n_out)
            phases.append([op, l, rows_for(n_in, n_out, blas), 0, 0, blas])
    gathered = any(p[5] and p[1] == 0 for p in phases)
    if gathered:
        phases.insert(0, [OP_GATHER, 0, 0, sample_tile, 0, 0])
    table = np.zeros((len(phases), P_FIELDS), dtype=np.int64)
    step, previous = -1, None
    for i, (op, l, rows, samples, columns, blas) in enumerate(phases):
        row = table[i]
        row[[P_OP, P_LAYER, P_ROWS, P_SAMPLES, P_COLUMNS, P_BLAS, P_GATHERED]] = (
            op, l, rows, samples, columns, blas, gathered)
        n_in, n_out = layer(desc, l)[:2]
        single = part_tiles(row, n_in, n_out, m) == 1
        together = previous is not None and (
            (single and previous[P_SERIAL]) or (op == previous[P_OP] and op in (OP_UPDATE, OP_GRADIENT)
                                                and not previous[P_SERIAL]))
        if not together:
            step += 1
        row[P_STEP] = step
        row[P_SERIAL] = single and (not together or previous[P_SERIAL])
        previous = row
    return table


_BLAS_CONTROLLER = []


def blas_single_threaded(program):
    """A context in which BLAS runs on one thread, when `program` calls BLAS: the workers already use
    every thread, and a BLAS tile must not depend on the thread count (determinism)."""
    if not program[:, P_BLAS].any():
        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        import scipy.linalg.cython_blas  # noqa: F401  the BLAS both backends call, loaded before
        from threadpoolctl import ThreadpoolController  # the controller lists the libraries
        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")


def outcome(status, first, last):
    """What train_batches returns, from the kernels' status pair (code, batch) after batches first..last-1:
    (batches done, code, batch). COST_NOT_FINITE stops before that batch's update; PARAMS_NOT_FINITE
    after it (partly applied)."""
    code, batch = int(status[0]), int(status[1])
    if code == DONE:
        return last - first, DONE, last
    return batch - first + (code == PARAMS_NOT_FINITE), code, batch


def source_hash():
    """A fingerprint of this file: the Cython build records the one it was compiled from, so that
    kernels built from other codes are refused rather than misread."""
    import hashlib
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def hyperparameters(n_layers):
    """A zeroed hyperparameter array for a network of n_layers weight layers (no dropout)."""
    return np.zeros(H_SIZE + n_layers)


def dropout_keep(seed, key, layer, sample, unit, rate):
    """Whether inverted dropout keeps unit `unit` of layer `layer` for the sample at position `sample`
    of the minibatch whose key is `key`: a counter-based hash (splitmix64), so a mask depends on
    nothing else (not on threads, tiles or backend). Vectorized over numpy arrays; the compiled
    backends compute the same bits (nb_kernels._keep, cy_kernels._keep)."""
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(seed) + GOLDEN * (np.uint64(key) + np.uint64(1)))
        x = _mix(x + GOLDEN * (np.uint64(layer) * np.uint64(1 << 32) + np.asarray(unit, np.uint64)
                               + np.uint64(1)))
        x = _mix(x + GOLDEN * (np.asarray(sample, np.uint64) + np.uint64(1)))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 >= rate


GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x):
    """splitmix64's finalizer."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def layer_views(desc, flat):
    """Per-layer views (W_l of shape (n_l, n_{l-1}), b_l) of a flat buffer laid out like params."""
    weights, biases = [], []
    for l in range(int(desc[D_LAYERS])):
        n_in, n_out, w, b = layer(desc, l)[:4]
        weights.append(flat[w:w + n_out * n_in].reshape(n_out, n_in))
        biases.append(flat[b:b + n_out])
    return weights, biases


def layer(desc, l):
    """The record of layer ``l`` (0-based) as a tuple (n_in, n_out, w_off, b_off, a_off, d_off, act)."""
    rec = D_HEADER + L_FIELDS * l
    return tuple(int(v) for v in desc[rec:rec + L_FIELDS])
