"""The contract between the Python API and the kernels: integer codes and the network descriptor.

One source for every backend (Numba, Cython, the numpy reference): activations, losses and optimizers
enter the kernels as the integer codes below, never as Python functions, and a network's static shape
enters as one int64 array, the *descriptor*, built by :func:`describe`.

The compiled code is built from the constants of this module: Numba imports them, and setup.py
writes them into the Cython sources (``cy_codes.pxi``, from :func:`cython_declarations`) with their
fingerprint, :func:`source_hash`, which the loader checks. Only the names and values count: a
docstring or a Python-only function may change without a rebuild. How a minibatch is cut into tiles
(the *program* of the ``P_*`` fields below) is planned in ``planner.py``, in Python only.

Buffers the descriptor points into (all C-contiguous, one dtype, float32 or float64):

``params``  flat, ``[W_1, ..., W_L, b_1, ..., b_L]``; ``W_l`` is ``(n_l, n_{l-1})`` row-major, so every
            weight comes before every bias and L2 applies to the prefix ``params[:n_weights]``.
``grads``   same layout: the mean gradient of the last batch (without the L2 term).
``state``   ``(2, n_params)``: optimizer slots (SGD: velocity; Adam: first and second moments;
            RMSprop: slot 1 holds the square average).
``work``    per layer ``l``: the activations ``A_l``, the error terms ``D_l``, each
            ``(capacity, n_l)`` (a batch of ``m <= capacity`` samples uses the first ``m`` rows);
            then, at ``D_ODD_A0``, layer 0's activations for the odd-numbered batches (batch i uses
            ``A_0`` when i is even: the next batch's forward pass through layer 0 runs beside the
            update tiles of the layers above, which still read this batch's). The rows of X a
            worker gathers are not here: each worker copies every batch its tiles read into slots of
            its own (``D_SLOT``), which the drivers allocate per call for their thread count.
``norms``   float64, ``(n_layers,)`` or empty (off): what ``train_batches`` adds up, when asked, of
            each minibatch's ``||G_l||_F`` (the Frobenius norm of layer l's mean weight gradient,
            without L2). The compiled drivers fold it from one squared norm per row of ``W_l`` (a
            float64 scratch laid out like the biases, each row's written by the tile that computes
            it), summed in row order by one serial step: the same bits for any thread count.
``weights`` float64, ``(n,)`` indexed like X's rows, or empty (unweighted, and nothing is spent on
            it): the samples' weights. The serial output phase multiplies each sample's output error
            by its weight and scales the gradient by 1 / (the batch's weight sum) instead of 1/m
            (C_SCALE); the costs stay unweighted (the caller weights them).
``X``       a C-contiguous ``(n, n_0)`` array, or a sparse :class:`CSR` (``indptr`` and ``indices``
            int64, ``data`` of the parameters' dtype): the compiled drivers then get a ``(0, n_0)``
            dense X and the three arrays (empty for a dense X; :func:`split_input`), and layer 0's
            forward and gradient run over the nonzeros (never BLAS, never gathered): its descriptor
            says so with ``D_SLOT`` 0 (``describe(..., gather=False)``).
"""
import math

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
# D_SLOT: the values one batch's rows of X take gathered side by side (capacity * n_0 rounded up to
# cache lines), 0 when they are never gathered. D_ODD_A0: where layer 0's activations for odd batches
# are.
(D_LAYERS, D_HIDDEN, D_OUTPUT, D_LOSS, D_OPTIMIZER, D_CAPACITY, D_NPARAMS, D_NWEIGHTS,
 D_WORK, D_SLOT, D_ODD_A0) = range(11)
D_HEADER = 11
(L_IN, L_OUT, L_W, L_B, L_A, L_D, L_ACT) = range(7)
L_FIELDS = 7

# Per-step coefficients, in the parameters' dtype, derived from the hyperparameters by _coefficients.
(C_LR, C_L2, C_MU, C_NESTEROV, C_1MB1, C_B2, C_1MB2, C_EPS, C_STEP_SIZE, C_INV_SQRT_BC2,
 C_RHO, C_1MRHO, C_SCALE) = range(13)
C_SIZE = 13

# What a driver call computes, and the phases ("ops") a minibatch goes through.
TRAIN, GRADIENTS, FORWARD = range(3)
OP_FORWARD, OP_OUTPUT, OP_BACKWARD, OP_UPDATE, OP_GRADIENT, OP_GATHER = range(6)

# A driver's program: one row per phase of a minibatch. Rows with the same P_STEP form a step; the
# workers finish a step before starting the next. A parallel step's tiles are its rows' tiles, which
# are independent; a serial step is one tile that runs its rows in order.
# P_BLAS: the phase's tiles call BLAS (single-threaded gemm on the tile: deterministic); error-term
# tiles are then blocks of P_SAMPLES samples. P_GATHERED: layer 0 reads the batch's rows of X
# gathered side by side (program row 0 is then an OP_GATHER row) rather than through the
# permutation.
# P_TILES: how many tiles the phase has for a full batch; P_LAST_TILES: for the call's last batch,
# which may be partial (the workers count tiles only through these two).
# An OP_GATHER row has no tiles and its step never runs: every worker copies the batches its layer-0
# tiles read into slots of its own (batch i into its slot i % 2, each D_SLOT long), before the first
# such tile or ahead; its tiles then read lines no other core writes. P_AHEAD, on it: the step (the
# first serial one) in which a worker with no tile left gathers the next batch while the others
# finish. P_PREFETCH: how many values of the next batch's rows of X a worker asks the caches for
# before each of its parallel tiles, times the number of workers (0: none).
# P_FORWARD_NEXT, on layer 0's OP_UPDATE row: 0, or 1 + the program row of layer 0's forward pass
# (a step of its own), which each update tile then runs over its rows for the next batch of the
# call, right after their update: that step runs at a call's first batch only.
(P_OP, P_LAYER, P_STEP, P_SERIAL, P_ROWS, P_SAMPLES, P_COLUMNS, P_BLAS, P_GATHERED, P_TILES,
 P_LAST_TILES, P_AHEAD, P_PREFETCH, P_FORWARD_NEXT) = range(14)
P_FIELDS = 14
# The primitive kernels every compiled backend exports under these names (a test checks it).
KERNELS = ("dense_forward", "activation_forward", "activation_backward", "output_error",
           "backward_error", "weight_gradient", "update_parameters")
# The drivers every backend (the numpy reference too) exports with the same arguments.
DRIVERS = ("forward", "gradients", "train_batches", "update_parameters")


# Buffers the kernels stream (parameters, gradients, optimizer state, work, gathered rows) start at a
# cache line: a vector load or store that straddles two lines costs about two (measured: nielsen's
# epoch 1.03x, mid's 1.08x with the network's buffers aligned; nielsen2's 1.16x with X's rows too).
ALIGNMENT = 64

# The inputs a forward or gradient tile takes at a time, in bytes: a tile's rows of W (or the
# batch's rows of X) over one span stay in L1 while the tile goes over the batch (or the rows).
SPAN_BYTES = 4096


def zeros(shape, dtype):
    """A zero-filled C-contiguous array whose data starts at an ALIGNMENT-byte boundary."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    size = math.prod(shape) * dtype.itemsize
    raw = np.zeros(size + ALIGNMENT, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def misaligned(X):
    """Whether the rows of the 2-D array X do not start at ALIGNMENT-byte boundaries but would when
    gathered side by side at one (a row's size is a multiple of ALIGNMENT)."""
    row = X.shape[1] * X.itemsize
    return row % ALIGNMENT == 0 and (X.ctypes.data % ALIGNMENT != 0 or X.strides[0] != row)


def describe(sizes, hidden, output, loss, optimizer, capacity, gather=True):
    """Build the int64 descriptor of a network with layer ``sizes`` and a work buffer of ``capacity`` rows.

    Returns ``(descriptor, work_size)``. With ``gather``, D_SLOT is the size of one batch's rows of X
    gathered (the drivers allocate two per worker when the planner gathers); without it, 0: the
    planner then never gathers them (sparse input: ``capacity * n_0`` could be gigabytes).
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
    odd_a0 = work  # layer 0's activations for odd batches
    work += capacity * sizes[1]
    # every slot of gathered rows starts at a cache line: a multiple of the float32 values in one (a
    # whole number of lines for float64 too)
    line = ALIGNMENT // 4
    slot = -(-capacity * sizes[0] // line) * line if gather else 0
    desc[:D_HEADER] = (n_layers, hidden, output, loss, optimizer, capacity, n_weights + sum(sizes[1:]),
                       n_weights, work, slot, odd_a0)
    return desc, work


def check_buffers(desc, params, X, Y=None, out=None, costs=None, work=None, hyper=None, order=None,
                  grads=None, state=None, norms=None, weights=None, batches=None):
    """Refuse buffers that do not fit the descriptor, before a compiled driver reads or writes them
    (the kernels do not check bounds), and `batches` (batch_size, first, last) that order does not
    hold. Raises ValueError naming the buffer."""
    n_params, n_layers = int(desc[D_NPARAMS]), int(desc[D_LAYERS])
    n_in, n_out = int(desc[D_HEADER + L_IN]), int(desc[D_HEADER + L_FIELDS * (n_layers - 1) + L_OUT])
    dtype = params.dtype

    def need(name, array, shape, dt=dtype):
        if not isinstance(array, np.ndarray) or array.dtype != dt or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {np.dtype(dt)} array")
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}; the network needs {shape}")

    need("params", params, (n_params,))
    if isinstance(X, CSR):
        X.check(n_in, dtype)
    else:
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
    visits = n  # rows visited: all of X, or those of order (any of them, in its order)
    if order is not None:
        visits = order.shape[0] if getattr(order, "ndim", 0) == 1 else -1
        need("order", order, (visits,), np.int64)
    read = order  # the part of order the kernels read: the batches' (all of it without batches)
    if batches is not None:
        size, first, last = batches
        if not (size >= 1 and 0 <= first <= last <= -(-visits // size)):
            raise ValueError(f"batches {first}..{last - 1} of {size} samples: order has "
                             f"{-(-visits // max(size, 1))} batches of that size")
        read = None if order is None else order[first * size:last * size]
    if read is not None and read.size and (read.min() < 0 or read.max() >= n):
        raise ValueError(f"order must index the rows of X (0..{n - 1})")
    # the output phase reads Y and writes costs (indexed like order): always when training (grads
    # given), in a forward pass when asked for costs (not empty)
    if grads is not None or (costs is not None and costs.shape[0]):
        need("costs", costs, (visits,), np.float64)
        need("Y", Y, (n, n_out))
    if out is not None:
        need("out", out, (n, n_out))
    if norms is not None:  # empty: not asked for
        off = isinstance(norms, np.ndarray) and norms.shape == (0,)
        need("norms", norms, (0,) if off else (n_layers,), np.float64)
    if weights is not None:  # empty: unweighted
        off = isinstance(weights, np.ndarray) and weights.shape == (0,)
        need("weights", weights, (0,) if off else (n,), np.float64)


class CSR:
    """A sparse X in compressed sparse row form, as the drivers take it: row s holds the values
    ``data[indptr[s]:indptr[s + 1]]`` in the columns ``indices[indptr[s]:indptr[s + 1]]`` (int64
    both, each column at most once a row, in any order; ``data`` in the network's dtype). scipy's
    arrays, converted once (``fastbp.validation.features`` does it); never densified."""

    ndim = 2

    def __init__(self, indptr, indices, data, shape):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.shape = (int(shape[0]), int(shape[1]))

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def nnz(self):
        return int(self.indptr[-1])

    def check(self, n_in, dtype):
        """Refuse (ValueError) arrays the kernels would read out of bounds: wrong dtypes or
        lengths, row pointers not increasing, column indices outside 0..n_in-1."""
        n, width = self.shape
        if width != n_in:
            raise ValueError(f"X has shape {self.shape}; the network needs (n, {n_in})")
        for name, array, dt in (("indptr", self.indptr, np.int64), ("indices", self.indices, np.int64),
                                ("data", self.data, dtype)):
            if not isinstance(array, np.ndarray) or array.dtype != dt or array.ndim != 1 \
                    or not array.flags.c_contiguous:
                raise ValueError(f"sparse X's {name} must be a 1-D C-contiguous {np.dtype(dt)} array")
        nnz = self.indices.shape[0]
        if self.indptr.shape[0] != n + 1 or self.data.shape[0] != nnz or (
                n >= 0 and (self.indptr[0] != 0 or self.indptr[-1] != nnz)):
            raise ValueError(f"sparse X's indptr must have {n + 1} entries from 0 to its {nnz} "
                             f"nonzeros")
        if n and (np.diff(self.indptr) < 0).any():
            raise ValueError("sparse X's indptr must not decrease")
        if nnz and (self.indices.min() < 0 or self.indices.max() >= n_in):
            raise ValueError(f"sparse X's column indices must be in 0..{n_in - 1}")

    def scipy(self):
        """A scipy CSR matrix over the same arrays (nothing copied, never densified)."""
        import scipy.sparse  # here: the compiled drivers never need it
        return scipy.sparse.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    def rows_digest(self, rows, digest):
        """Feed rows `rows` (their columns and values) to a hashlib digest."""
        for s in rows:
            lo, hi = self.indptr[s], self.indptr[s + 1]
            digest.update(self.indices[lo:hi].tobytes())
            digest.update(self.data[lo:hi].tobytes())


def split_input(X):
    """(dense X, indptr, indices, data): what a compiled worker takes for X. A dense X with empty
    sparse arrays, or for a CSR a (0, n_0) dense X (nothing to read) with its three arrays; one
    signature either way (one compilation)."""
    if isinstance(X, CSR):
        return np.zeros((0, X.shape[1]), X.dtype), X.indptr, X.indices, X.data
    none = np.zeros(0, np.int64)
    return X, none, none, np.zeros(0, X.dtype)


def gradient_scale(n, weights):
    """The factor the ``gradients`` driver multiplies its summed gradient by: 1/n for n samples, or
    with weights (not empty) 1/sum(weights), 0 when they sum to 0."""
    if weights.shape[0] == 0:
        return 1.0 / n
    total = float(weights.sum())
    return 1.0 / total if total > 0 else 0.0


def outcome(status, first, last):
    """What train_batches returns, from the kernels' status pair (code, batch) after batches first..last-1:
    (batches done, code, batch). COST_NOT_FINITE stops before that batch's update; PARAMS_NOT_FINITE
    after it (partly applied)."""
    code, batch = int(status[0]), int(status[1])
    if code == DONE:
        return last - first, DONE, last
    return batch - first + (code == PARAMS_NOT_FINITE), code, batch


def declarations():
    """What the compiled code is built from: every integer constant of this module and LEAKY_SLOPE,
    as ``(name, C type, C literal)`` sorted by name. The codes and indices are ``int``; the dropout
    hash's 64-bit constants ``uint64_t`` (unsigned 64-bit literals); LEAKY_SLOPE ``double``."""
    found = []
    for name, value in sorted(globals().items()):
        if not name.isupper() or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float):
            found.append((name, "double", repr(value)))
        elif -2 ** 31 <= value < 2 ** 31:
            found.append((name, "int", str(value)))
        else:
            assert 0 <= value < 2 ** 64, name
            found.append((name, "uint64_t", f"{value:#x}ULL"))
    return found


def source_hash():
    """The fingerprint of :func:`declarations` (names, types and values). The Cython build records
    the one it was compiled from and ``fastbp.kernels.loader`` refuses a build whose fingerprint is
    not this one, rather than misread the codes. Nothing else in this file, and nothing in the
    planner, changes it."""
    import hashlib
    text = "\n".join(" ".join(declaration) for declaration in declarations())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cython_declarations():
    """The text of ``cy_codes.pxi``, which setup.py writes beside the Cython sources: each of
    :func:`declarations` as a C macro ``FBP_<name>`` and a Cython name, and ``CODES_HASH``, their
    :func:`source_hash`."""
    found = declarations()
    defines = [f"    #define FBP_{name} {literal}" for name, _, literal in found]
    defines.append(f'    #define FBP_CODES_HASH "{source_hash()}"')
    members = [f'        {name} "FBP_{name}"' for name, ctype, _ in found if ctype == "int"]
    constants = [f'    const {ctype} {name} "FBP_{name}"' for name, ctype, _ in found if ctype != "int"]
    return "\n".join(["# Generated by setup.py from kernels/codes.py (codes.cython_declarations): "
                      "do not edit.", "from libc.stdint cimport uint64_t", "",
                      "cdef extern from *:", '    """', *defines, '    """', "    enum:", *members,
                      *constants, '    const char* CODES_HASH "FBP_CODES_HASH"', ""])


def hyperparameters(n_layers):
    """A zeroed hyperparameter array for a network of n_layers weight layers (no dropout)."""
    return np.zeros(H_SIZE + n_layers)


def dropout_keep(seed, key, layer, sample, unit, rate):
    """Whether inverted dropout keeps unit `unit` of layer `layer` for the sample at position `sample`
    of the minibatch whose key is `key`: a counter-based hash (splitmix64), so a mask depends on
    nothing else (not on threads, tiles or backend). Vectorized over numpy arrays; the compiled
    backends compute the same bits (nb_kernels._keep, cy_kernels._keep)."""
    with np.errstate(over="ignore"):
        golden = np.uint64(GOLDEN)
        x = _mix(np.uint64(seed) + golden * (np.uint64(key) + np.uint64(1)))
        x = _mix(x + golden * (np.uint64(layer) * np.uint64(1 << 32) + np.asarray(unit, np.uint64)
                               + np.uint64(1)))
        x = _mix(x + golden * (np.asarray(sample, np.uint64) + np.uint64(1)))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 >= rate


# splitmix64's constants, for the dropout masks (here, nb_kernels and, through cy_codes.pxi,
# cy_kernels.pxd): the increment (2^64 over the golden ratio) and the finalizer's two multipliers.
GOLDEN = 0x9E3779B97F4A7C15
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB


def _mix(x):
    """splitmix64's finalizer."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(MIX_1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(MIX_2)
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
