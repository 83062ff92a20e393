"""Numba kernels: the arithmetic of backpropagation as hand-written loops.

Twin of ``cy_kernels.pyx``: the same functions under the same names, arguments and meaning.
Layers of this file, bottom up:

* elementwise: ``_activate`` and ``_derivative`` (the latter written on the activation's output);
* row kernels: ``_forward_rows``, ``_backward_block``, ``_gradient_rows``, ``_row_squares``,
  ``_sparse_forward_rows`` and ``_sparse_gradient_rows`` (layer 0 over a CSR X's nonzeros),
  ``_update_range`` each compute one slice (a *tile*) of an output; the drivers in ``nb_train.py``
  hand tiles to threads;
* primitives (``codes.KERNELS``): whole arrays, on the calling thread, for tests and for users who
  write their own training loop. Arguments are marked IN, OUT or IN/OUT; outputs are preallocated.

Arrays are C-contiguous and share one floating dtype; ``rows`` (int64) selects the samples of ``A``
that form the batch, so a shuffled minibatch is read in place: the kernels never gather it into a
copy (the drivers may, nb_train._gather).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .codes import (ADAM, C_1MB1, C_1MB2, C_1MRHO, C_B2, C_EPS, C_INV_SQRT_BC2, C_L2, C_LR,
                    C_MU, C_NESTEROV, C_RHO, C_SCALE, C_SIZE, C_STEP_SIZE, CROSS_ENTROPY, GOLDEN,
                    H_BETA1, H_BETA2, H_EPS, H_L2, H_LR, H_MOMENTUM, H_NESTEROV, H_RHO, H_STEP,
                    IDENTITY, LEAKY_RELU, LEAKY_SLOPE, MIX_1, MIX_2, RELU, RMSPROP, SGD, SIGMOID,
                    SOFTMAX, SPAN_BYTES, TANH)

# The fingerprint of the codes compiled in here (codes.source_hash()). Numba keys its cache of a
# function on the text of that function's file alone: this line makes the text change when the codes
# do (tests/test_numba_cache.py keeps it current), so that no cached kernel keeps old codes.
CODES = "54fba7a80eb7d73e"

# Fast-math flags, defined once: reassociation lets LLVM vectorize the dot products. Never 'nnan' or
# 'ninf': divergence detection relies on NaN and inf surviving the arithmetic.
FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
jit = njit(fastmath=FASTMATH, cache=True, nogil=True)
# For helpers called from one place: inlined into their caller (one compilation instead of two).
jit_inline = njit(fastmath=FASTMATH, cache=True, nogil=True, inline="always")
# For loops with a division: IEEE division (x/0 is inf or NaN), as the Cython twin's cdivision. Numba's
# default error model tests every divisor for zero to raise ZeroDivisionError, a branch that keeps
# LLVM from vectorizing the loop (the Adam and RMSprop updates: 2-3x slower; the float32 sigmoid of
# _forward_rows, inlined there, stayed scalar).
jit_ieee = njit(fastmath=FASTMATH, cache=True, nogil=True, error_model="numpy")


# --------------------------------------------------------------------------- elementwise

@jit
def _finite(x):
    """x is neither NaN nor infinite. Written as a comparison because fast-math (reassoc with nsz)
    lets LLVM fold math.isfinite away. Twin: cy_kernels._finite."""
    return abs(x) <= 1.7976931348623157e308


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the int64 `bits` (2^k for _exp32)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())
    return types.float32(types.int64), codegen


# _exp32's constants, float32 (a float64 constant would make the arithmetic float64).
_F32 = [np.float32(c) for c in (88.0, -87.0, 1.44269504088896341, 0.5, 1.9875691500e-4,
                                1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                                5.0000001201e-1, 1.0)]
(_HI, _LO, _LOG2E, _HALF, _P0, _P1, _P2, _P3, _P4, _P5, _ONE) = _F32


@jit_inline
def _exp32(x):
    """e^x in float32 with no library call, so that a loop over it vectorizes: 2^k e^r with
    k = round(x / ln 2), |r| <= ln(2) / 2 and Cephes' expf polynomial (at most 1 ulp from e^x on
    [-87, 88], measured; r in float32 would lose up to 60 ulp once gcc reassociates); x is clamped
    to [-87, 88] (e^x stays normal and finite), NaN stays NaN. Twin: cy_kernels._exp32."""
    if x > _HI:
        x = _HI
    if x < _LO:
        x = _LO
    k = np.floor(x * _LOG2E + _HALF)
    if k != k:  # NaN: r and p carry it; k must still convert to an integer
        k = _HALF - _HALF
    ki = np.int32(k)
    r = np.float32(np.float64(x) - np.float64(k) * 0.6931471805599453)  # exact enough in any order
    p = _P0
    p = p * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * r * r + r + _ONE
    return p * _float32_from_bits((np.int64(ki) + 127) << 23)


@jit_inline
def _sigmoid32(z):
    """The sigmoid of float32 networks' forward tiles (vectorizable: _exp32). Twin: cy_kernels._sigmoid32."""
    return _ONE / (_ONE + _exp32(-z))


# _log1p32's constants: 1/17, 1/15, ..., 1/3, and 2, float32.
_Q = tuple(np.float32(1.0 / k) for k in range(17, 1, -2))
_TWO = np.float32(2.0)


@jit_inline
def _log1p32(x):
    """log(1 + x) for x in [0, 1] in float32 with no library call (vectorizable): 2 atanh(s) with
    s = x / (2 + x) <= 1/3, its series to s^17 (the next term is under 2e-10; at most 1.6 ulp from
    log1p(e^-|z|), measured). No cancellation for fast-math to undo, as log(1 + x) with a correction
    term would have (gcc folds (1 + x) - 1 to x). Twin: cy_kernels._log1p32."""
    s = x / (_TWO + x)
    t = s * s
    p = _Q[0]
    p = p * t + _Q[1]
    p = p * t + _Q[2]
    p = p * t + _Q[3]
    p = p * t + _Q[4]
    p = p * t + _Q[5]
    p = p * t + _Q[6]
    p = p * t + _Q[7]
    return _TWO * s + _TWO * s * t * p


@jit
def _activate(code, z):
    """f(z) in float64 for an elementwise activation code. Twin: cy_kernels._activate."""
    if code == SIGMOID:
        return 1.0 / (1.0 + math.exp(-z))
    if code == TANH:
        return math.tanh(z)
    if code == RELU:
        return z if z > 0.0 else 0.0
    if code == LEAKY_RELU:
        return z if z > 0.0 else LEAKY_SLOPE * z
    return z


@jit
def _derivative(code, a):
    """f'(z) written on a = f(z), in float64. Twin: cy_kernels._derivative."""
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == RELU:
        return 1.0 if a > 0.0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if a > 0.0 else LEAKY_SLOPE
    return 1.0


@jit
def _softplus(x):
    """log(1 + e^x) without overflow. Twin: cy_kernels._softplus."""
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


@jit
def _bias_activate(Z, b, act, s0, s1, j0, j1):
    """IN/OUT Z[s, j] = f(Z[s, j] + b[j]) over a block, one loop per activation (vectorizable); b
    may be empty (no bias). Twin: cy_kernels._bias_activate."""
    for s in range(s0, s1):
        z = Z[s, j0:j1]
        n = j1 - j0
        if b.shape[0] == 0:
            if act == RELU:
                for j in range(n):
                    z[j] = z[j] if z[j] > 0 else 0
            elif act != IDENTITY:
                for j in range(n):
                    z[j] = _activate(act, z[j])
            continue
        c = b[j0:j1]
        if act == RELU:
            for j in range(n):
                v = z[j] + c[j]
                z[j] = v if v > 0 else 0
        elif act == LEAKY_RELU:
            for j in range(n):
                v = z[j] + c[j]
                z[j] = v if v > 0 else LEAKY_SLOPE * v
        elif act == IDENTITY:
            for j in range(n):
                z[j] += c[j]
        else:
            for j in range(n):
                z[j] = _activate(act, z[j] + c[j])


# splitmix64's constants (codes.py), as uint64 constants of the compiled code.
_GOLDEN, _MIX_1, _MIX_2 = np.uint64(GOLDEN), np.uint64(MIX_1), np.uint64(MIX_2)


@jit
def _mix(x):
    """splitmix64's finalizer, on uint64. Twin: cy_kernels._mix."""
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    return x ^ (x >> np.uint64(31))


@jit
def _keep(seed, key, layer, sample, unit, rate):
    """Whether dropout keeps this unit: the hash of codes.dropout_keep. Twin: cy_kernels._keep."""
    x = _mix(np.uint64(seed) + _GOLDEN * (np.uint64(key) + np.uint64(1)))
    x = _mix(x + _GOLDEN * (np.uint64(layer) * np.uint64(4294967296) + np.uint64(unit) + np.uint64(1)))
    x = _mix(x + _GOLDEN * (np.uint64(sample) + np.uint64(1)))
    return np.float64(x >> np.uint64(11)) * 1.1102230246251565e-16 >= rate


@jit
def _dropout_rows(Z, rate, seed, key, layer, s0, s1, j0, j1):
    """IN/OUT Z[s0:s1, j0:j1]: inverted dropout, each unit kept (times 1/(1-rate)) or zeroed.
    Twin: cy_kernels._dropout_rows."""
    scale = 1.0 / (1.0 - rate)
    for s in range(s0, s1):
        for j in range(j0, j1):
            if _keep(seed, key, layer, s, j, rate):
                Z[s, j] *= scale
            else:
                Z[s, j] = 0


@jit
def _softmax_row(z):
    """IN/OUT z: one row of pre-activations becomes softmax(z); returns log-sum-exp(z).

    One exponential per value, e^(z_j - max z) (float32: _exp32, so the loop vectorizes), divided
    by their sum, added in double. Twin: cy_kernels._softmax_row."""
    k = z.shape[0]
    zmax = z[0]
    for j in range(1, k):
        zmax = max(zmax, z[j])
    total = 0.0
    if z.itemsize == 4:  # tested outside the loop: itemsize is not a constant to Numba
        for j in range(k):
            z[j] = _exp32(z[j] - zmax)
            total += z[j]
    else:
        for j in range(k):
            z[j] = math.exp(z[j] - zmax)
            total += z[j]
    inverse = 1.0 / total
    for j in range(k):
        z[j] = z[j] * inverse
    return zmax + math.log(total)


# --------------------------------------------------------------------------- row kernels

@jit_inline
def _sigmoid_block(Z, m, j0, j1):
    """IN/OUT Z[s, j] = sigmoid(Z[s, j]) for s < m, j in [j0, j1), float32.
    Twin: cy_kernels._sigmoid_block."""
    for s in range(m):
        z = Z[s, j0:j1]  # indices from 0: no negative-index wraparound, the loop vectorizes
        for j in range(j1 - j0):
            z[j] = _sigmoid32(z[j])


@jit_inline
def _span(A, n):
    """The inputs a tile takes at a time (SPAN_BYTES of A's values) and n, as unsigned integers:
    LLVM vectorizes a loop over an unsigned range, where a signed index that it cannot prove
    non-negative keeps Numba's wraparound test (measured: 2.8x a dot product of 784)."""
    return np.uint64(SPAN_BYTES // A.itemsize), np.uint64(n)


@jit_ieee
def _forward_rows(W, b, A, rows, act, Z, j0, j1):
    """OUT Z[s, j] = f(b[j] + W[j] . A[rows[s]]) for j in [j0, j1) and every sample s.

    Register tile: 4 rows of W by 2 samples, 8 dot products sharing each load. The inputs are taken
    a span (SPAN_BYTES) at a time over the whole batch, the sums kept in Z between spans, so that
    the 4 rows' span stays in L1 from sample to sample (float64 rows of 784 inputs would not).
    A float32 sigmoid is applied to each tile's block afterwards, vectorized (_sigmoid32: 1.2x the
    forward of nielsen's layer 0 against a double exp per value). Twin: cy_kernels._forward_rows.
    """
    m = rows.shape[0]
    n = W.shape[1]
    span, end = _span(Z, n)
    tile_act = IDENTITY if act == SIGMOID and Z.itemsize == 4 else act
    j = j0
    while j < j1:
        # a last tile of fewer than 4 rows repeats its last row, and stores its sums again: the
        # same values, in the tile's vector loop (not one row at a time)
        r1 = j + min(1, j1 - 1 - j)
        r2 = j + min(2, j1 - 1 - j)
        r3 = j + min(3, j1 - 1 - j)
        w0 = W[j]
        w1 = W[r1]
        w2 = W[r2]
        w3 = W[r3]
        i0 = end - end
        while i0 < end:
            i1 = min(i0 + span, end)
            span_act = tile_act if i1 == end else IDENTITY  # the sums, then f of them
            s = 0
            while s < m:
                t = s + 1 if s + 1 < m else s  # an odd last sample: twice
                x = A[rows[s]]
                y = A[rows[t]]
                if i0 == 0:
                    x0 = b[j]
                    x1 = b[r1]
                    x2 = b[r2]
                    x3 = b[r3]
                    y0 = b[j]
                    y1 = b[r1]
                    y2 = b[r2]
                    y3 = b[r3]
                else:
                    x0 = Z[s, j]
                    x1 = Z[s, r1]
                    x2 = Z[s, r2]
                    x3 = Z[s, r3]
                    y0 = Z[t, j]
                    y1 = Z[t, r1]
                    y2 = Z[t, r2]
                    y3 = Z[t, r3]
                for i in range(i0, i1):  # each value loaded once: 6 loads for 8 multiply-adds
                    xi = x[i]
                    yi = y[i]
                    v0 = w0[i]
                    v1 = w1[i]
                    v2 = w2[i]
                    v3 = w3[i]
                    x0 += v0 * xi
                    x1 += v1 * xi
                    x2 += v2 * xi
                    x3 += v3 * xi
                    y0 += v0 * yi
                    y1 += v1 * yi
                    y2 += v2 * yi
                    y3 += v3 * yi
                Z[t, j] = _activate(span_act, y0)
                Z[t, r1] = _activate(span_act, y1)
                Z[t, r2] = _activate(span_act, y2)
                Z[t, r3] = _activate(span_act, y3)
                Z[s, j] = _activate(span_act, x0)
                Z[s, r1] = _activate(span_act, x1)
                Z[s, r2] = _activate(span_act, x2)
                Z[s, r3] = _activate(span_act, x3)
                s += 2
            i0 = i1
        if tile_act != act:
            _sigmoid_block(Z, m, j, r3 + 1)
        j += 4


@jit
def _backward_block(W, D, A, act, E, s0, s1, i0, i1, rate, seed, key, layer):
    """OUT E[s, i] = (sum_j D[s, j] W[j, i]) * f'(A[s, i]) for s in [s0, s1), i in [i0, i1).

    A holds the lower layer's activations (the derivative is written on them); with dropout (rate >
    0, that layer's masks keyed by seed, key, layer) the dropped units get 0 and the kept ones the
    factor 1/(1-rate). Register tile: 2 samples by 4 rows of W, accumulated along the contiguous
    columns. Twin: cy_kernels._backward_block.
    """
    n_out = W.shape[0]
    n = i1 - i0
    s = s0
    while s < s1:
        pair = s + 1 < s1
        e = E[s, i0:i1]
        f = E[s + 1 if pair else s, i0:i1]
        for i in range(n):
            e[i] = 0
            f[i] = 0
        j = 0
        while j < n_out:
            if j + 4 <= n_out:
                w0 = W[j, i0:i1]
                w1 = W[j + 1, i0:i1]
                w2 = W[j + 2, i0:i1]
                w3 = W[j + 3, i0:i1]
                p0 = D[s, j]
                p1 = D[s, j + 1]
                p2 = D[s, j + 2]
                p3 = D[s, j + 3]
                if pair:
                    q0 = D[s + 1, j]
                    q1 = D[s + 1, j + 1]
                    q2 = D[s + 1, j + 2]
                    q3 = D[s + 1, j + 3]
                    for i in range(n):
                        x0 = w0[i]
                        x1 = w1[i]
                        x2 = w2[i]
                        x3 = w3[i]
                        e[i] += p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3
                        f[i] += q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3
                else:
                    for i in range(n):
                        e[i] += p0 * w0[i] + p1 * w1[i] + p2 * w2[i] + p3 * w3[i]
                j += 4
            else:
                w0 = W[j, i0:i1]
                p0 = D[s, j]
                q0 = D[s + 1, j] if pair else p0 - p0
                for i in range(n):
                    x0 = w0[i]
                    e[i] += p0 * x0
                    if pair:
                        f[i] += q0 * x0
                j += 1
        _derivative_block(A, act, E, s, s + 2 if pair else s + 1, i0, i1, rate, seed, key, layer)
        s += 2


@jit
def _derivative_block(A, act, E, s0, s1, i0, i1, rate, seed, key, layer):
    """IN/OUT E[s0:s1, i0:i1] *= f'(z), written on the activations A; with dropout (rate > 0) A holds
    a * mask / (1 - rate): dropped units get 0, kept ones f'(z) / (1 - rate).
    Twin: cy_kernels._derivative_block."""
    for r in range(s0, s1):
        a = A[r, i0:i1]
        g = E[r, i0:i1]
        if rate == 0:
            for i in range(i1 - i0):
                g[i] *= _derivative(act, a[i])
        else:
            for i in range(i1 - i0):
                if _keep(seed, key, layer, r, i0 + i, rate):
                    g[i] *= _derivative(act, a[i] * (1.0 - rate)) / (1.0 - rate)
                else:
                    g[i] = 0


@jit
def _gradient_rows(D, A, rows, scale, G, gb, j0, j1):
    """OUT G[j] = scale * sum_s D[s, j] A[rows[s]] and gb[j] = scale * sum_s D[s, j], j in [j0, j1).

    The outer products of the batch summed row by row: register tile of 2 rows of G by 5 samples
    (a batch of 10 in two groups), so each row of G is written ceil(m / 5) times (the first group
    assigns; a last group of fewer than 5 samples repeats a sample with coefficient 0). The inputs
    are taken a span (SPAN_BYTES) at a time, so that the samples' span stays in L1 from row to row;
    each value is computed as without spans. Twin: cy_kernels._gradient_rows.
    """
    m = rows.shape[0]
    n = G.shape[1]
    span, end = _span(G, n)
    zero = scale - scale
    i0 = end - end
    while i0 < end:
        i1 = min(i0 + span, end)
        for s in range(0, m, 5):
            k = min(5, m - s)
            a0 = A[rows[s]]
            a1 = A[rows[s + 1]] if k > 1 else a0
            a2 = A[rows[s + 2]] if k > 2 else a0
            a3 = A[rows[s + 3]] if k > 3 else a0
            a4 = A[rows[s + 4]] if k > 4 else a0
            j = j0
            while j < j1:
                pair = j + 1 < j1
                g = G[j]
                p0 = scale * D[s, j]
                p1 = scale * D[s + 1, j] if k > 1 else zero
                p2 = scale * D[s + 2, j] if k > 2 else zero
                p3 = scale * D[s + 3, j] if k > 3 else zero
                p4 = scale * D[s + 4, j] if k > 4 else zero
                if pair:
                    h = G[j + 1]
                    q0 = scale * D[s, j + 1]
                    q1 = scale * D[s + 1, j + 1] if k > 1 else zero
                    q2 = scale * D[s + 2, j + 1] if k > 2 else zero
                    q3 = scale * D[s + 3, j + 1] if k > 3 else zero
                    q4 = scale * D[s + 4, j + 1] if k > 4 else zero
                    if s == 0:
                        for i in range(i0, i1):
                            x0 = a0[i]
                            x1 = a1[i]
                            x2 = a2[i]
                            x3 = a3[i]
                            x4 = a4[i]
                            g[i] = p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3 + p4 * x4
                            h[i] = q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3 + q4 * x4
                    else:
                        for i in range(i0, i1):
                            x0 = a0[i]
                            x1 = a1[i]
                            x2 = a2[i]
                            x3 = a3[i]
                            x4 = a4[i]
                            g[i] += p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3 + p4 * x4
                            h[i] += q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3 + q4 * x4
                elif s == 0:
                    for i in range(i0, i1):
                        g[i] = p0 * a0[i] + p1 * a1[i] + p2 * a2[i] + p3 * a3[i] + p4 * a4[i]
                else:
                    for i in range(i0, i1):
                        g[i] += p0 * a0[i] + p1 * a1[i] + p2 * a2[i] + p3 * a3[i] + p4 * a4[i]
                j += 2
        i0 = i1
    _bias_rows(D, m, scale, gb, j0, j1)


@jit_inline
def _bias_rows(D, m, scale, gb, j0, j1):
    """OUT gb[j] = scale * sum_s D[s, j] for j in [j0, j1), samples s < m added in order.
    Twin: cy_kernels._bias_rows."""
    for j in range(j0, j1):
        total = scale - scale
        for s in range(m):
            total += D[s, j]
        gb[j] = scale * total


@jit
def _sparse_forward_rows(W, b, indptr, indices, data, rows, act, Z, j0, j1):
    """OUT Z[s, j] = f(b[j] + sum_k W[j, indices[k]] data[k]) for j in [j0, j1) and every sample s,
    the sum over the nonzeros k of the sample's row rows[s] of a CSR X (indptr, indices, data), in
    their stored order: layer 0's forward over the nonzeros. Register tile: 4 rows of W share each
    nonzero's loads. Twin: cy_kernels._sparse_forward_rows.
    """
    for s in range(rows.shape[0]):
        lo = indptr[rows[s]]
        hi = indptr[rows[s] + 1]
        j = j0
        while j + 4 <= j1:
            w0 = W[j]
            w1 = W[j + 1]
            w2 = W[j + 2]
            w3 = W[j + 3]
            x0 = b[j]
            x1 = b[j + 1]
            x2 = b[j + 2]
            x3 = b[j + 3]
            for k in range(lo, hi):
                i = indices[k]
                v = data[k]
                x0 += w0[i] * v
                x1 += w1[i] * v
                x2 += w2[i] * v
                x3 += w3[i] * v
            Z[s, j] = _activate(act, x0)
            Z[s, j + 1] = _activate(act, x1)
            Z[s, j + 2] = _activate(act, x2)
            Z[s, j + 3] = _activate(act, x3)
            j += 4
        while j < j1:
            w0 = W[j]
            x0 = b[j]
            for k in range(lo, hi):
                x0 += w0[indices[k]] * data[k]
            Z[s, j] = _activate(act, x0)
            j += 1


@jit
def _sparse_gradient_rows(D, indptr, indices, data, rows, scale, G, gb, j0, j1):
    """OUT G[j] = scale * sum_s D[s, j] X[rows[s]] and gb[j] = scale * sum_s D[s, j], j in [j0, j1),
    for a CSR X (indptr, indices, data): the rows of G zeroed, then each sample's nonzeros scattered
    into their columns, samples in order (layer 0's gradient: only the nonzero columns get terms).
    Twin: cy_kernels._sparse_gradient_rows.
    """
    m = rows.shape[0]
    zero = scale - scale
    for j in range(j0, j1):
        g = G[j]
        for i in range(g.shape[0]):
            g[i] = zero
    for s in range(m):
        lo = indptr[rows[s]]
        hi = indptr[rows[s] + 1]
        for j in range(j0, j1):
            g = G[j]
            p = scale * D[s, j]
            for k in range(lo, hi):
                g[indices[k]] += p * data[k]
    _bias_rows(D, m, scale, gb, j0, j1)


@jit
def _row_squares(G, squares, j0, j1):
    """OUT squares[j] = sum_i G[j, i]^2, in float64, for the rows j in [j0, j1) of G: a gradient
    tile's share of ||G||_F^2 (the drivers add the rows up in order). Twin: cy_kernels._row_squares.
    """
    for j in range(j0, j1):
        g = G[j]
        total = 0.0
        for i in range(g.shape[0]):
            x = np.float64(g[i])
            total += x * x
        squares[j] = total


@jit_ieee
def _update_range(opt, P, G, S0, S1, c, l2, lo, hi):
    """IN/OUT P[lo:hi] and optimizer state S0, S1 take one step along g = G + l2 * P.

    SGD (momentum mu, Nesterov), Adam and RMSprop, as torch.optim does them; c holds the step's
    coefficients (_coefficients). Returns the sum of the new values: finite iff they all are.
    Twin: cy_kernels._update_range.
    """
    # Loops from 0 over views: with range(lo, hi), i might be negative for all Numba knows, and the
    # wraparound of each P[i] keeps LLVM from vectorizing (6x slower).
    P = P[lo:hi]
    G = G[lo:hi]
    S0 = S0[lo:hi]
    S1 = S1[lo:hi]
    lr = c[C_LR]
    total = lr - lr
    if opt == SGD:
        mu = c[C_MU]
        if mu == 0:
            for i in range(P.shape[0]):
                P[i] -= lr * (G[i] + l2 * P[i])
                total += P[i]
        elif c[C_NESTEROV] != 0:
            for i in range(P.shape[0]):
                g = G[i] + l2 * P[i]
                v = mu * S0[i] + g
                S0[i] = v
                P[i] -= lr * (g + mu * v)
                total += P[i]
        else:
            for i in range(P.shape[0]):
                v = mu * S0[i] + G[i] + l2 * P[i]
                S0[i] = v
                P[i] -= lr * v
                total += P[i]
    elif opt == ADAM:
        one_m_b1 = c[C_1MB1]
        b2 = c[C_B2]
        one_m_b2 = c[C_1MB2]
        eps = c[C_EPS]
        step_size = c[C_STEP_SIZE]
        inv_sqrt_bc2 = c[C_INV_SQRT_BC2]
        for i in range(P.shape[0]):
            g = G[i] + l2 * P[i]
            m1 = S0[i] + one_m_b1 * (g - S0[i])
            m2 = b2 * S1[i] + one_m_b2 * g * g
            S0[i] = m1
            S1[i] = m2
            P[i] -= step_size * m1 / (math.sqrt(m2) * inv_sqrt_bc2 + eps)
            total += P[i]
    elif opt == RMSPROP:
        rho = c[C_RHO]
        one_m_rho = c[C_1MRHO]
        eps = c[C_EPS]
        for i in range(P.shape[0]):
            g = G[i] + l2 * P[i]
            m2 = rho * S1[i] + one_m_rho * g * g
            S1[i] = m2
            P[i] -= lr * g / (math.sqrt(m2) + eps)
            total += P[i]
    return total


@jit
def _coefficients(opt, hyper, m, c):
    """IN/OUT hyper: advance the step counter; OUT c: that step's coefficients in c's dtype.

    m is the batch size (the gradient is a mean: scale 1/m). Twin: cy_kernels._coefficients.
    """
    hyper[H_STEP] += 1.0
    step = hyper[H_STEP]
    c[C_LR] = hyper[H_LR]
    c[C_L2] = hyper[H_L2]
    c[C_MU] = hyper[H_MOMENTUM]
    c[C_NESTEROV] = hyper[H_NESTEROV]
    c[C_1MB1] = 1.0 - hyper[H_BETA1]
    c[C_B2] = hyper[H_BETA2]
    c[C_1MB2] = 1.0 - hyper[H_BETA2]
    c[C_EPS] = hyper[H_EPS]
    c[C_RHO] = hyper[H_RHO]
    c[C_1MRHO] = 1.0 - hyper[H_RHO]
    c[C_SCALE] = 1.0 / m
    if opt == ADAM:
        c[C_STEP_SIZE] = hyper[H_LR] / (1.0 - hyper[H_BETA1] ** step)
        c[C_INV_SQRT_BC2] = 1.0 / math.sqrt(1.0 - hyper[H_BETA2] ** step)


# --------------------------------------------------------------------------- primitives

@jit
def dense_forward(W, b, A, rows, act, Z):
    """Forward through one layer: OUT Z (m, n_out) = f(A[rows] W^T + b), m = len(rows).

    IN W (n_out, n_in), b (n_out,), A (n, n_in), rows (m,) int64 sample indices, act code (softmax
    is applied per row). With one row this is the matrix-vector product z = W a + b.
    Twin: cy_kernels.dense_forward.
    """
    _forward_rows(W, b, A, rows, IDENTITY if act == SOFTMAX else act, Z, 0, W.shape[0])
    if act == SOFTMAX:
        for s in range(rows.shape[0]):
            _softmax_row(Z[s])


@jit_ieee
def activation_forward(act, Z):
    """IN/OUT Z (m, n): pre-activations become activations f(Z), in place (softmax per row); a
    float32 sigmoid is the forward tiles' (as output_error's, so predict and fit agree).

    Twin: cy_kernels.activation_forward.
    """
    if act == SOFTMAX:
        for s in range(Z.shape[0]):
            _softmax_row(Z[s])
    elif act == SIGMOID and Z.itemsize == 4:
        _sigmoid_block(Z, Z.shape[0], 0, Z.shape[1])
    else:
        _bias_activate(Z, Z.reshape(Z.size)[:0], act, np.int64(0), Z.shape[0], np.int64(0),
                       Z.shape[1])  # no bias, and no allocation (the worker runs without NRT)


@jit
def activation_backward(act, A, D):
    """IN A (m, n) activations; IN/OUT D (m, n): dC/da becomes dC/dz = f'(z) * dC/da, in place.

    For softmax the Jacobian product: D_j <- a_j (D_j - sum_k a_k D_k). Twin: cy_kernels.activation_backward.
    """
    for s in range(A.shape[0]):
        a = A[s]
        d = D[s]
        if act == SOFTMAX:
            dot = 0.0
            for j in range(a.shape[0]):
                dot += a[j] * d[j]
            for j in range(a.shape[0]):
                d[j] = a[j] * (d[j] - dot)
        else:
            for j in range(a.shape[0]):
                d[j] *= _derivative(act, a[j])


@jit_ieee
def output_error(act, loss, Z, Y, rows, D, cost):
    """The output layer's error term and cost.

    IN/OUT Z (m, k): pre-activations in, activations a out. IN Y (n, k) targets, sample s being
    Y[rows[s]]. OUT D (m, k): delta = dC/dz; OUT cost (m,): C_x per sample (float64).
    mse: C = 1/2 ||a - y||^2, delta = f'(z) * (a - y) (the softmax Jacobian for softmax);
    cross_entropy with sigmoid: C = -sum[y ln a + (1-y) ln(1-a)], delta = a - y;
    cross_entropy with softmax: C = -sum y ln a, delta = a sum(y) - y (= a - y for one-hot y).
    Logarithms are taken of z (softplus, log-sum-exp), so saturated units give finite costs.
    Twin: cy_kernels.output_error.
    """
    k = Z.shape[1]
    activated = act == SIGMOID and loss != CROSS_ENTROPY and Z.itemsize == 4
    if activated:
        _sigmoid_block(Z, Z.shape[0], 0, k)  # the forward tiles' float32 sigmoid, vectorized
    for s in range(Z.shape[0]):
        z = Z[s]
        y = Y[rows[s]]
        d = D[s]
        c = 0.0
        if act == SOFTMAX:
            if loss == CROSS_ENTROPY:
                ysum = 0.0
                for j in range(k):
                    c -= y[j] * z[j]
                    ysum += y[j]
                c += ysum * _softmax_row(z)
                for j in range(k):
                    d[j] = z[j] * ysum - y[j]
            else:
                _softmax_row(z)
                dot = 0.0
                for j in range(k):
                    g = z[j] - y[j]
                    c += 0.5 * g * g
                    dot += z[j] * g
                for j in range(k):
                    d[j] = z[j] * (z[j] - y[j] - dot)
        elif act == SIGMOID and loss == CROSS_ENTROPY and Z.itemsize == 4:
            for j in range(k):  # as below, in float32 with no library call: the loop vectorizes
                zf = z[j]
                af = _sigmoid32(zf)  # the sigmoid of activation_forward, so predict and fit agree
                z[j] = af
                c += _log1p32(_exp32(-abs(zf)))
                c += (1.0 - y[j]) * zf if zf > 0 else -np.float64(y[j]) * zf
                d[j] = af - y[j]
        elif act == SIGMOID and loss == CROSS_ENTROPY:
            for j in range(k):
                # one exp for both softplus terms of the cost:
                # y sp(-z) + (1 - y) sp(z) = log1p(e^-|z|) + (1 - y) max(z, 0) + y max(-z, 0)
                zj = np.float64(z[j])
                e = math.exp(-abs(zj))
                a = _activate(SIGMOID, zj)
                z[j] = a
                c += math.log1p(e) + ((1.0 - y[j]) * zj if zj > 0.0 else -y[j] * zj)
                d[j] = a - y[j]
        elif activated:  # mse on the float32 sigmoid: f'(z) = a (1 - a) with no switch in the loop
            for j in range(k):
                g = np.float64(z[j]) - y[j]
                c += 0.5 * g * g
                d[j] = g * (np.float64(z[j]) * (1.0 - z[j]))
        else:
            for j in range(k):
                zj = np.float64(z[j])
                a = _activate(act, zj)
                z[j] = a
                if loss == CROSS_ENTROPY:
                    c += y[j] * _softplus(-zj) + (1.0 - y[j]) * _softplus(zj)
                    d[j] = a - y[j]
                else:
                    g = a - y[j]
                    c += 0.5 * g * g
                    d[j] = g * _derivative(act, a)
        cost[s] = c


@jit
def backward_error(W, D, A, act, E):
    """Error terms of the layer below: OUT E (m, n_in) = (D W) * f'(A).

    IN W (n_out, n_in) the weights between the two layers, D (m, n_out) the error terms above,
    A (m, n_in) the lower layer's activations, act its activation code (not softmax).
    Twin: cy_kernels.backward_error.
    """
    _backward_block(W, D, A, act, E, 0, D.shape[0], 0, W.shape[1], 0.0, 0, 0, 0)


@jit
def weight_gradient(D, A, rows, scale, G, gb):
    """Gradients of one layer: OUT G (n_out, n_in) = scale * sum_s D[s] A[rows[s]]^T (outer products),
    OUT gb (n_out,) = scale * sum_s D[s]. IN D (m, n_out), A (n, n_in), rows (m,), scale (1/m for a
    mean). Twin: cy_kernels.weight_gradient.
    """
    _gradient_rows(D, A, rows, G.dtype.type(scale), G, gb, 0, G.shape[0])


@jit
def update_parameters(opt, P, G, S, hyper, n_weights):
    """One optimizer step on flat buffers: IN/OUT P (n,) parameters, IN G (n,) gradient (a mean,
    without L2), IN/OUT S (2, n) optimizer state, IN/OUT hyper (float64, codes.H_*; the step
    counter advances). L2 (hyper[H_L2]) applies to P[:n_weights] only, never to biases.
    Returns False if a parameter became non-finite. Twin: cy_kernels.update_parameters.
    """
    c = np.empty(C_SIZE, P.dtype)
    _coefficients(opt, hyper, 1, c)
    n = P.shape[0]
    total = _update_range(opt, P, G, S[0], S[1], c, c[C_L2], 0, n_weights)
    total += _update_range(opt, P, G, S[0], S[1], c, c[C_L2] - c[C_L2], n_weights, n)
    return _finite(total)
