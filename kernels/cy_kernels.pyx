# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython kernels: the arithmetic of backpropagation as hand-written loops.

Twin of ``nb_kernels.py``: the same functions under the same names and meaning. Layers, bottom up:

* elementwise (in cy_kernels.pxd, inlined): ``_finite``, ``_activate``, ``_derivative``, ``_softplus``;
* row kernels: ``_forward_rows``, ``_backward_block``, ``_gradient_rows``, ``_row_squares``,
  ``_sparse_forward_rows`` and ``_sparse_gradient_rows`` (layer 0 over a CSR X's nonzeros),
  ``_update_range`` compute one slice (a *tile*) of an output, on raw pointers of the fused type,
  ``nogil``; the drivers in ``cy_train.pyx`` hand tiles to threads. Matrices are row-major: ``W`` is
  ``(n_out, n_in)``, a batch ``(m, n)``; ``rows`` (int64) selects the samples of ``A`` that form the
  batch;
* primitives (``codes.KERNELS``): thin ``def`` wrappers on typed memoryviews with the arguments of
  their Numba twins, for tests and for users who write their own training loop (IN, OUT, IN/OUT as
  documented in nb_kernels.py).
"""
from cython cimport floating
from libc.math cimport exp, fabs, log, log1p, pow, sqrt
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport dgemm, sgemm


# --------------------------------------------------------------------------- row kernels

cdef void _dropout_rows(floating* Z, Py_ssize_t n, double rate, double seed, double key,
                        Py_ssize_t layer, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t j0,
                        Py_ssize_t j1) noexcept nogil:
    """IN/OUT Z[s0:s1, j0:j1] of a row-major block of n columns: inverted dropout, each unit kept
    (times 1/(1-rate)) or zeroed. Twin: nb_kernels._dropout_rows."""
    cdef Py_ssize_t s, j
    cdef double scale = 1.0 / (1.0 - rate)
    for s in range(s0, s1):
        for j in range(j0, j1):
            if _keep(seed, key, layer, s, j, rate):
                Z[s * n + j] = <floating>(Z[s * n + j] * scale)
            else:
                Z[s * n + j] = 0


cdef void _bias_activate(floating* Z, Py_ssize_t n, const floating* b, int act, Py_ssize_t s0,
                         Py_ssize_t s1, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """IN/OUT Z[s, j] = f(Z[s, j] + b[j]) over a block of a row-major (., n) array, one loop per
    activation (vectorizable); b may be NULL (no bias). Twin: nb_kernels._bias_activate."""
    cdef Py_ssize_t s, j
    cdef floating v
    cdef floating* z
    for s in range(s0, s1):
        z = Z + s * n
        if b == NULL:
            if act == RELU:
                for j in range(j0, j1):
                    z[j] = z[j] if z[j] > 0 else 0
            elif act != IDENTITY:
                for j in range(j0, j1):
                    z[j] = <floating>_activate(act, z[j])
        elif act == RELU:
            for j in range(j0, j1):
                v = z[j] + b[j]
                z[j] = v if v > 0 else 0
        elif act == LEAKY_RELU:
            for j in range(j0, j1):
                v = z[j] + b[j]
                z[j] = v if v > 0 else <floating>LEAKY_SLOPE * v
        elif act == IDENTITY:
            for j in range(j0, j1):
                z[j] += b[j]
        else:
            for j in range(j0, j1):
                z[j] = <floating>_activate(act, z[j] + b[j])


cdef void _gemm(char transa, char transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                floating* C, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (m, n) = alpha op(A) op(B), through Fortran BLAS (scipy's): a row-major matrix is
    the transpose of a column-major one, so this asks for C^T = op(B)^T op(A)^T."""
    cdef int M = <int>n, N = <int>m, K = <int>k, la = <int>lda, lb = <int>ldb, lc = <int>ldc
    cdef floating beta = 0
    if floating is float:
        sgemm(&transb, &transa, &M, &N, &K, &alpha, <float*>B, &lb, <float*>A, &la, &beta, C, &lc)
    else:
        dgemm(&transb, &transa, &M, &N, &K, &alpha, <double*>B, &lb, <double*>A, &la, &beta, C, &lc)


cdef double _softmax_row(floating* z, Py_ssize_t k) noexcept nogil:
    """IN/OUT z: one row of pre-activations becomes softmax(z); returns log-sum-exp(z).

    One exponential per value, e^(z_j - max z) (float32: _exp32, so the loop vectorizes), divided
    by their sum, added in double (two double exps per value, before: output_error's float32
    softmax and cross-entropy took 150 ns per row of 10, now 55). Twin: nb_kernels._softmax_row."""
    cdef Py_ssize_t j
    cdef floating zmax = z[0]
    cdef double total = 0.0, inverse
    for j in range(1, k):
        if z[j] > zmax:
            zmax = z[j]
    for j in range(k):
        if floating is float:
            z[j] = _exp32(z[j] - zmax)
        else:
            z[j] = exp(z[j] - zmax)
        total += z[j]
    inverse = 1.0 / total
    for j in range(k):
        z[j] = <floating>(z[j] * inverse)
    return zmax + log(total)


cdef inline void _sigmoid_block(floating* Z, Py_ssize_t n, Py_ssize_t m, Py_ssize_t j0,
                                Py_ssize_t j1) noexcept nogil:
    """IN/OUT Z[s, j] = sigmoid(Z[s, j]) for s < m, j in [j0, j1), float32 (row-major, n columns).
    Twin: nb_kernels._sigmoid_block."""
    cdef Py_ssize_t s, j
    cdef floating* z
    if floating is float:
        for s in range(m):
            z = Z + s * n
            for j in range(j0, j1):
                z[j] = _sigmoid32(z[j])


cdef void _forward_rows(const floating* W, const floating* b, const floating* A, const int64_t* rows,
                        Py_ssize_t m, Py_ssize_t n_in, Py_ssize_t n_out, int act, floating* Z,
                        Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """OUT Z[s, j] = f(b[j] + W[j] . A[rows[s]]) for j in [j0, j1) and every sample s.

    Register tile: 4 rows of W by 2 samples, 8 dot products sharing each load. The inputs are taken
    a span (SPAN_BYTES) at a time over the whole batch, the sums kept in Z between spans, so that
    the 4 rows' span stays in L1 from sample to sample (float64 rows of 784 inputs would not).
    A float32 sigmoid is applied to each tile's block afterwards, vectorized (_sigmoid32: 1.2x the
    forward of nielsen's layer 0 against a double exp per value). Twin: nb_kernels._forward_rows.
    """
    cdef Py_ssize_t i, s, j = j0, i0, i1, r1, r2, r3, span = SPAN_BYTES // sizeof(floating)
    cdef int tile_act = act, span_act
    if floating is float:
        if act == SIGMOID:
            tile_act = IDENTITY
    cdef const floating *w0
    cdef const floating *w1
    cdef const floating *w2
    cdef const floating *w3
    cdef const floating *x
    cdef const floating *y
    cdef floating *zx
    cdef floating *zy
    cdef floating x0, x1, x2, x3, y0, y1, y2, y3, xi, yi, v0, v1, v2, v3
    while j < j1:
        # a last tile of fewer than 4 rows repeats its last row, and stores its sums again: the
        # same values, in the tile's vector loop (not one row at a time)
        r1 = min(1, j1 - 1 - j)
        r2 = min(2, j1 - 1 - j)
        r3 = min(3, j1 - 1 - j)
        w0 = W + j * n_in
        w1 = w0 + r1 * n_in
        w2 = w0 + r2 * n_in
        w3 = w0 + r3 * n_in
        i0 = 0
        while i0 < n_in:
            i1 = min(i0 + span, n_in)
            span_act = tile_act if i1 == n_in else IDENTITY  # the sums, then f of them
            s = 0
            while s < m:
                x = A + rows[s] * n_in
                y = (A + rows[s + 1] * n_in) if s + 1 < m else x  # an odd last sample: twice
                zx = Z + s * n_out + j
                zy = (zx + n_out) if s + 1 < m else zx
                if i0 == 0:
                    x0 = b[j]
                    x1 = b[j + r1]
                    x2 = b[j + r2]
                    x3 = b[j + r3]
                    y0 = b[j]
                    y1 = b[j + r1]
                    y2 = b[j + r2]
                    y3 = b[j + r3]
                else:
                    x0 = zx[0]
                    x1 = zx[r1]
                    x2 = zx[r2]
                    x3 = zx[r3]
                    y0 = zy[0]
                    y1 = zy[r1]
                    y2 = zy[r2]
                    y3 = zy[r3]
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
                zy[0] = <floating>_activate(span_act, y0)
                zy[r1] = <floating>_activate(span_act, y1)
                zy[r2] = <floating>_activate(span_act, y2)
                zy[r3] = <floating>_activate(span_act, y3)
                zx[0] = <floating>_activate(span_act, x0)
                zx[r1] = <floating>_activate(span_act, x1)
                zx[r2] = <floating>_activate(span_act, x2)
                zx[r3] = <floating>_activate(span_act, x3)
                s += 2
            i0 = i1
        if tile_act != act:
            _sigmoid_block(Z, n_out, m, j, j + r3 + 1)
        j += 4


cdef void _backward_block(const floating* W, const floating* D, const floating* A, int act,
                          floating* E, Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t s0,
                          Py_ssize_t s1, Py_ssize_t i0, Py_ssize_t i1, double rate, double seed,
                          double key, Py_ssize_t layer) noexcept nogil:
    """OUT E[s, i] = (sum_j D[s, j] W[j, i]) * f'(A[s, i]) for s in [s0, s1), i in [i0, i1).

    A holds the lower layer's activations (the derivative is written on them); with dropout (rate >
    0, that layer's masks keyed by seed, key, layer) the dropped units get 0 and the kept ones the
    factor 1/(1-rate). Register tile: 2 samples by 4 rows of W, accumulated along the contiguous
    columns, each sum a chain of multiply-adds (_fma). Twin: nb_kernels._backward_block.
    """
    cdef Py_ssize_t n = i1 - i0, i, j, r, s = s0
    cdef bint pair
    cdef floating *e
    cdef floating *f
    cdef floating *g
    cdef const floating *a
    cdef const floating *w0
    cdef const floating *w1
    cdef const floating *w2
    cdef const floating *w3
    cdef floating p0, p1, p2, p3, q0, q1, q2, q3, x0, x1, x2, x3
    while s < s1:
        pair = s + 1 < s1
        e = E + s * n_in + i0
        f = E + ((s + 1) if pair else s) * n_in + i0
        for i in range(n):
            e[i] = 0
            f[i] = 0
        j = 0
        while j < n_out:
            if j + 4 <= n_out:
                w0 = W + j * n_in + i0
                w1 = w0 + n_in
                w2 = w1 + n_in
                w3 = w2 + n_in
                p0 = D[s * n_out + j]
                p1 = D[s * n_out + j + 1]
                p2 = D[s * n_out + j + 2]
                p3 = D[s * n_out + j + 3]
                if pair:
                    q0 = D[(s + 1) * n_out + j]
                    q1 = D[(s + 1) * n_out + j + 1]
                    q2 = D[(s + 1) * n_out + j + 2]
                    q3 = D[(s + 1) * n_out + j + 3]
                    for i in range(n):
                        x0 = w0[i]
                        x1 = w1[i]
                        x2 = w2[i]
                        x3 = w3[i]
                        e[i] = _fma(p3, x3, _fma(p2, x2, _fma(p1, x1, _fma(p0, x0, e[i]))))
                        f[i] = _fma(q3, x3, _fma(q2, x2, _fma(q1, x1, _fma(q0, x0, f[i]))))
                else:
                    for i in range(n):
                        e[i] = _fma(p3, w3[i], _fma(p2, w2[i], _fma(p1, w1[i], _fma(p0, w0[i], e[i]))))
                j += 4
            else:
                w0 = W + j * n_in + i0
                p0 = D[s * n_out + j]
                q0 = D[(s + 1) * n_out + j] if pair else 0
                for i in range(n):
                    x0 = w0[i]
                    e[i] += p0 * x0
                    if pair:
                        f[i] += q0 * x0
                j += 1
        _derivative_block(A, act, E, n_in, s, (s + 2) if pair else (s + 1), i0, i1, rate, seed, key,
                          layer)
        s += 2


cdef void _derivative_block(const floating* A, int act, floating* E, Py_ssize_t n, Py_ssize_t s0,
                            Py_ssize_t s1, Py_ssize_t i0, Py_ssize_t i1, double rate, double seed,
                            double key, Py_ssize_t layer) noexcept nogil:
    """IN/OUT E[s0:s1, i0:i1] *= f'(z), written on the activations A (both row-major, n columns);
    with dropout (rate > 0) A holds a * mask / (1 - rate): dropped units get 0, kept ones
    f'(z) / (1 - rate). Twin: nb_kernels._derivative_block."""
    cdef Py_ssize_t r, i
    cdef const floating* a
    cdef floating* g
    for r in range(s0, s1):
        a = A + r * n
        g = E + r * n
        if rate == 0:
            for i in range(i0, i1):
                g[i] = <floating>(g[i] * _derivative(act, a[i]))
        else:
            for i in range(i0, i1):
                if _keep(seed, key, layer, r, i, rate):
                    g[i] = <floating>(g[i] * _derivative(act, a[i] * (1.0 - rate)) / (1.0 - rate))
                else:
                    g[i] = 0


cdef void _gradient_rows(const floating* D, const floating* A, const int64_t* rows, Py_ssize_t m,
                         Py_ssize_t n_in, Py_ssize_t n_out, floating scale, floating* G,
                         floating* gb, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """OUT G[j] = scale * sum_s D[s, j] A[rows[s]] and gb[j] = scale * sum_s D[s, j], j in [j0, j1).

    The outer products of the batch summed row by row: register tile of 2 rows of G by 5 samples
    (a batch of 10 in two groups), so each row of G is written ceil(m / 5) times (the first group
    assigns; a last group of fewer than 5 samples repeats a sample with coefficient 0). The inputs
    are taken a span (SPAN_BYTES) at a time, so that the samples' span stays in L1 from row to row;
    each value is computed as without spans, a chain of multiply-adds (_fma: gcc's tree of separate
    multiplies and adds loaded each value of A twice; 1.1-1.2x this tile, 1.4x the backward one, on
    nielsen2's and mid's shapes). Twin: nb_kernels._gradient_rows.
    """
    cdef Py_ssize_t i, j, s, k, i0, i1, span = SPAN_BYTES // sizeof(floating)
    cdef bint pair
    cdef floating *g
    cdef floating *h
    cdef const floating *a0
    cdef const floating *a1
    cdef const floating *a2
    cdef const floating *a3
    cdef const floating *a4
    cdef floating p0, p1, p2, p3, p4, q0, q1, q2, q3, q4, x0, x1, x2, x3, x4
    i0 = 0
    while i0 < n_in:
        i1 = min(i0 + span, n_in)
        for s in range(0, m, 5):
            k = min(5, m - s)
            a0 = A + rows[s] * n_in
            a1 = (A + rows[s + 1] * n_in) if k > 1 else a0
            a2 = (A + rows[s + 2] * n_in) if k > 2 else a0
            a3 = (A + rows[s + 3] * n_in) if k > 3 else a0
            a4 = (A + rows[s + 4] * n_in) if k > 4 else a0
            j = j0
            while j < j1:
                pair = j + 1 < j1
                g = G + j * n_in
                h = (g + n_in) if pair else g
                p0 = scale * D[s * n_out + j]
                p1 = (scale * D[(s + 1) * n_out + j]) if k > 1 else 0
                p2 = (scale * D[(s + 2) * n_out + j]) if k > 2 else 0
                p3 = (scale * D[(s + 3) * n_out + j]) if k > 3 else 0
                p4 = (scale * D[(s + 4) * n_out + j]) if k > 4 else 0
                if pair:
                    q0 = scale * D[s * n_out + j + 1]
                    q1 = (scale * D[(s + 1) * n_out + j + 1]) if k > 1 else 0
                    q2 = (scale * D[(s + 2) * n_out + j + 1]) if k > 2 else 0
                    q3 = (scale * D[(s + 3) * n_out + j + 1]) if k > 3 else 0
                    q4 = (scale * D[(s + 4) * n_out + j + 1]) if k > 4 else 0
                    if s == 0:
                        for i in range(i0, i1):
                            x0 = a0[i]
                            x1 = a1[i]
                            x2 = a2[i]
                            x3 = a3[i]
                            x4 = a4[i]
                            g[i] = _fma(p4, x4, _fma(p3, x3, _fma(p2, x2, _fma(p1, x1, p0 * x0))))
                            h[i] = _fma(q4, x4, _fma(q3, x3, _fma(q2, x2, _fma(q1, x1, q0 * x0))))
                    else:
                        for i in range(i0, i1):
                            x0 = a0[i]
                            x1 = a1[i]
                            x2 = a2[i]
                            x3 = a3[i]
                            x4 = a4[i]
                            g[i] = _fma(p4, x4, _fma(p3, x3, _fma(p2, x2,
                                                                  _fma(p1, x1, _fma(p0, x0, g[i])))))
                            h[i] = _fma(q4, x4, _fma(q3, x3, _fma(q2, x2,
                                                                  _fma(q1, x1, _fma(q0, x0, h[i])))))
                elif s == 0:
                    for i in range(i0, i1):
                        g[i] = _fma(p4, a4[i], _fma(p3, a3[i], _fma(p2, a2[i],
                                                                    _fma(p1, a1[i], p0 * a0[i]))))
                else:
                    for i in range(i0, i1):
                        g[i] = _fma(p4, a4[i], _fma(p3, a3[i], _fma(p2, a2[i],
                                                                    _fma(p1, a1[i], _fma(p0, a0[i], g[i])))))
                j += 2
        i0 = i1
    _bias_rows(D, m, n_out, scale, gb, j0, j1)


cdef inline void _bias_rows(const floating* D, Py_ssize_t m, Py_ssize_t n_out, floating scale,
                            floating* gb, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """OUT gb[j] = scale * sum_s D[s, j] for j in [j0, j1), samples s < m added in order.
    Twin: nb_kernels._bias_rows."""
    cdef Py_ssize_t j, s
    cdef floating total
    for j in range(j0, j1):
        total = 0
        for s in range(m):
            total += D[s * n_out + j]
        gb[j] = scale * total


cdef void _sparse_forward_rows(const floating* W, const floating* b, const int64_t* indptr,
                               const int64_t* indices, const floating* data, const int64_t* rows,
                               Py_ssize_t m, Py_ssize_t n_in, Py_ssize_t n_out, int act,
                               floating* Z, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """OUT Z[s, j] = f(b[j] + sum_k W[j, indices[k]] data[k]) for j in [j0, j1) and every sample s,
    the sum over the nonzeros k of the sample's row rows[s] of a CSR X (indptr, indices, data), in
    their stored order: layer 0's forward over the nonzeros. Register tile: 4 rows of W share each
    nonzero's loads. Twin: nb_kernels._sparse_forward_rows.
    """
    cdef Py_ssize_t s, j, k, i, lo, hi
    cdef const floating *w0
    cdef const floating *w1
    cdef const floating *w2
    cdef const floating *w3
    cdef floating x0, x1, x2, x3, v
    for s in range(m):
        lo = indptr[rows[s]]
        hi = indptr[rows[s] + 1]
        j = j0
        while j + 4 <= j1:
            w0 = W + j * n_in
            w1 = w0 + n_in
            w2 = w1 + n_in
            w3 = w2 + n_in
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
            Z[s * n_out + j] = <floating>_activate(act, x0)
            Z[s * n_out + j + 1] = <floating>_activate(act, x1)
            Z[s * n_out + j + 2] = <floating>_activate(act, x2)
            Z[s * n_out + j + 3] = <floating>_activate(act, x3)
            j += 4
        while j < j1:
            w0 = W + j * n_in
            x0 = b[j]
            for k in range(lo, hi):
                x0 += w0[indices[k]] * data[k]
            Z[s * n_out + j] = <floating>_activate(act, x0)
            j += 1


cdef void _sparse_gradient_rows(const floating* D, const int64_t* indptr, const int64_t* indices,
                                const floating* data, const int64_t* rows, Py_ssize_t m,
                                Py_ssize_t n_in, Py_ssize_t n_out, floating scale, floating* G,
                                floating* gb, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """OUT G[j] = scale * sum_s D[s, j] X[rows[s]] and gb[j] = scale * sum_s D[s, j], j in [j0, j1),
    for a CSR X (indptr, indices, data): the rows of G zeroed, then each sample's nonzeros scattered
    into their columns, samples in order (layer 0's gradient: only the nonzero columns get terms).
    Twin: nb_kernels._sparse_gradient_rows.
    """
    cdef Py_ssize_t s, j, k, i, lo, hi
    cdef floating* g
    cdef floating p
    for i in range(j0 * n_in, j1 * n_in):
        G[i] = 0
    for s in range(m):
        lo = indptr[rows[s]]
        hi = indptr[rows[s] + 1]
        for j in range(j0, j1):
            g = G + j * n_in
            p = scale * D[s * n_out + j]
            for k in range(lo, hi):
                g[indices[k]] += p * data[k]
    _bias_rows(D, m, n_out, scale, gb, j0, j1)


cdef void _row_squares(const floating* G, Py_ssize_t n, double* squares, Py_ssize_t j0,
                       Py_ssize_t j1) noexcept nogil:
    """OUT squares[j] = sum_i G[j, i]^2, in double, for the rows j in [j0, j1) of a row-major (., n)
    G: a gradient tile's share of ||G||_F^2 (the drivers add the rows up in order).
    Twin: nb_kernels._row_squares."""
    cdef Py_ssize_t i, j
    cdef double total, x
    for j in range(j0, j1):
        total = 0.0
        for i in range(n):
            x = G[j * n + i]
            total += x * x
        squares[j] = total


cdef floating _update_range(int opt, floating* P, const floating* G, floating* S0, floating* S1,
                            const floating* c, floating l2, Py_ssize_t lo,
                            Py_ssize_t hi) noexcept nogil:
    """IN/OUT P[lo:hi] and optimizer state S0, S1 take one step along g = G + l2 * P.

    SGD (momentum mu, Nesterov), Adam and RMSprop, as torch.optim does them; c holds the step's
    coefficients (_coefficients). Returns the sum of the new values: finite iff they all are.
    Twin: nb_kernels._update_range.
    """
    cdef Py_ssize_t i
    cdef floating lr = c[C_LR], mu, g, v, m1, m2, total = 0
    cdef floating one_m_b1, b2, one_m_b2, eps, step_size, inv_sqrt_bc2, rho, one_m_rho
    if opt == SGD:
        mu = c[C_MU]
        if mu == 0:
            for i in range(lo, hi):
                P[i] -= lr * (G[i] + l2 * P[i])
                total += P[i]
        elif c[C_NESTEROV] != 0:
            for i in range(lo, hi):
                g = G[i] + l2 * P[i]
                v = mu * S0[i] + g
                S0[i] = v
                P[i] -= lr * (g + mu * v)
                total += P[i]
        else:
            for i in range(lo, hi):
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
        for i in range(lo, hi):
            g = G[i] + l2 * P[i]
            m1 = S0[i] + one_m_b1 * (g - S0[i])
            m2 = b2 * S1[i] + one_m_b2 * g * g
            S0[i] = m1
            S1[i] = m2
            P[i] -= step_size * m1 / (_sqrt(m2) * inv_sqrt_bc2 + eps)
            total += P[i]
    elif opt == RMSPROP:
        rho = c[C_RHO]
        one_m_rho = c[C_1MRHO]
        eps = c[C_EPS]
        for i in range(lo, hi):
            g = G[i] + l2 * P[i]
            m2 = rho * S1[i] + one_m_rho * g * g
            S1[i] = m2
            P[i] -= lr * g / (_sqrt(m2) + eps)
            total += P[i]
    return total


cdef void _coefficients(int opt, double* hyper, Py_ssize_t m, floating* c) noexcept nogil:
    """IN/OUT hyper: advance the step counter; OUT c: that step's coefficients in c's dtype.

    m is the batch size (the gradient is a mean: scale 1/m). Twin: nb_kernels._coefficients.
    """
    cdef double step
    hyper[H_STEP] += 1.0
    step = hyper[H_STEP]
    c[C_LR] = <floating>hyper[H_LR]
    c[C_L2] = <floating>hyper[H_L2]
    c[C_MU] = <floating>hyper[H_MOMENTUM]
    c[C_NESTEROV] = <floating>hyper[H_NESTEROV]
    c[C_1MB1] = <floating>(1.0 - hyper[H_BETA1])
    c[C_B2] = <floating>hyper[H_BETA2]
    c[C_1MB2] = <floating>(1.0 - hyper[H_BETA2])
    c[C_EPS] = <floating>hyper[H_EPS]
    c[C_RHO] = <floating>hyper[H_RHO]
    c[C_1MRHO] = <floating>(1.0 - hyper[H_RHO])
    c[C_SCALE] = <floating>(1.0 / m)
    if opt == ADAM:
        c[C_STEP_SIZE] = <floating>(hyper[H_LR] / (1.0 - pow(hyper[H_BETA1], step)))
        c[C_INV_SQRT_BC2] = <floating>(1.0 / sqrt(1.0 - pow(hyper[H_BETA2], step)))


cdef void _activation_forward(int act, floating* Z, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """IN/OUT Z (m, n): pre-activations become activations; a float32 sigmoid is the forward tiles'
    (as _output_error's, so predict and fit agree). Twin: nb_kernels.activation_forward."""
    cdef Py_ssize_t s
    if act == SOFTMAX:
        for s in range(m):
            _softmax_row(Z + s * n, n)
    elif floating is float and act == SIGMOID:
        _sigmoid_block(Z, n, m, 0, n)
    else:
        _bias_activate(Z, n, NULL, act, 0, m, 0, n)


cdef void _output_error(int act, int loss, floating* Z, const floating* Y, const int64_t* rows,
                        Py_ssize_t m, Py_ssize_t k, floating* D, double* cost) noexcept nogil:
    """The output layer's error term and cost; see output_error. Twin: nb_kernels.output_error."""
    cdef Py_ssize_t s, j
    cdef floating* z
    cdef floating* d
    cdef const floating* y
    cdef double c, ysum, dot, g, zj, a, e
    cdef float zf, af
    cdef bint activated = False
    if floating is float:
        if act == SIGMOID and loss != CROSS_ENTROPY:
            _sigmoid_block(Z, k, m, 0, k)  # the forward tiles' float32 sigmoid, vectorized
            activated = True
    for s in range(m):
        z = Z + s * k
        y = Y + rows[s] * k
        d = D + s * k
        c = 0.0
        if act == SOFTMAX:
            if loss == CROSS_ENTROPY:
                ysum = 0.0
                for j in range(k):
                    c -= y[j] * z[j]
                    ysum += y[j]
                c += ysum * _softmax_row(z, k)
                for j in range(k):
                    d[j] = <floating>(z[j] * ysum - y[j])
            else:
                _softmax_row(z, k)
                dot = 0.0
                for j in range(k):
                    g = z[j] - y[j]
                    c += 0.5 * g * g
                    dot += z[j] * g
                for j in range(k):
                    d[j] = <floating>(z[j] * (z[j] - y[j] - dot))
        elif floating is float and act == SIGMOID and loss == CROSS_ENTROPY:
            for j in range(k):  # as below, in float32 with no library call: the loop vectorizes
                zf = z[j]
                af = _sigmoid32(zf)  # the sigmoid of activation_forward, so predict and fit agree
                z[j] = af
                c += _log1p32(_exp32(-fabs(zf)))
                c += (1.0 - y[j]) * zf if zf > 0 else -<double>y[j] * zf
                d[j] = af - y[j]
        elif act == SIGMOID and loss == CROSS_ENTROPY:
            for j in range(k):
                # one exp for both softplus terms of the cost:
                # y sp(-z) + (1 - y) sp(z) = log1p(e^-|z|) + (1 - y) max(z, 0) + y max(-z, 0)
                zj = z[j]
                e = exp(-fabs(zj))
                a = _activate(SIGMOID, zj)
                z[j] = <floating>a
                c += log1p(e) + ((1.0 - y[j]) * zj if zj > 0.0 else -y[j] * zj)
                d[j] = <floating>(a - y[j])
        elif activated:  # mse on the float32 sigmoid: f'(z) = a (1 - a) with no switch in the loop
            for j in range(k):
                g = <double>z[j] - y[j]
                c += 0.5 * g * g
                d[j] = <floating>(g * (z[j] * (1.0 - z[j])))
        else:
            for j in range(k):
                zj = z[j]
                a = _activate(act, zj)
                z[j] = <floating>a
                if loss == CROSS_ENTROPY:
                    c += y[j] * _softplus(-zj) + (1.0 - y[j]) * _softplus(zj)
                    d[j] = <floating>(a - y[j])
                else:
                    g = a - y[j]
                    c += 0.5 * g * g
                    d[j] = <floating>(g * _derivative(act, a))
        cost[s] = c


# --------------------------------------------------------------------------- primitives

def dense_forward(const floating[:, ::1] W, const floating[::1] b, const floating[:, ::1] A,
                  const int64_t[::1] rows, int act, floating[:, ::1] Z):
    """Forward through one layer: OUT Z (m, n_out) = f(A[rows] W^T + b). Twin: nb_kernels.dense_forward."""
    cdef Py_ssize_t s, m = rows.shape[0], n_out = W.shape[0]
    with nogil:
        _forward_rows(&W[0, 0], &b[0], &A[0, 0], &rows[0], m, W.shape[1], n_out,
                      IDENTITY if act == SOFTMAX else act, &Z[0, 0], 0, n_out)
        if act == SOFTMAX:
            for s in range(m):
                _softmax_row(&Z[s, 0], n_out)


def activation_forward(int act, floating[:, ::1] Z):
    """IN/OUT Z (m, n): pre-activations become f(Z), in place. Twin: nb_kernels.activation_forward."""
    with nogil:
        _activation_forward(act, &Z[0, 0], Z.shape[0], Z.shape[1])


def activation_backward(int act, const floating[:, ::1] A, floating[:, ::1] D):
    """IN A (m, n) activations; IN/OUT D: dC/da becomes dC/dz. Twin: nb_kernels.activation_backward."""
    cdef Py_ssize_t s, j
    cdef double dot
    with nogil:
        for s in range(A.shape[0]):
            if act == SOFTMAX:
                dot = 0.0
                for j in range(A.shape[1]):
                    dot += A[s, j] * D[s, j]
                for j in range(A.shape[1]):
                    D[s, j] = <floating>(A[s, j] * (D[s, j] - dot))
            else:
                for j in range(A.shape[1]):
                    D[s, j] = <floating>(D[s, j] * _derivative(act, A[s, j]))


def output_error(int act, int loss, floating[:, ::1] Z, const floating[:, ::1] Y,
                 const int64_t[::1] rows, floating[:, ::1] D, double[::1] cost):
    """The output layer's error term and cost per sample. Twin: nb_kernels.output_error."""
    with nogil:
        _output_error(act, loss, &Z[0, 0], &Y[0, 0], &rows[0], Z.shape[0], Z.shape[1], &D[0, 0],
                      &cost[0])


def backward_error(const floating[:, ::1] W, const floating[:, ::1] D, const floating[:, ::1] A,
                   int act, floating[:, ::1] E):
    """Error terms of the layer below: OUT E = (D W) * f'(A). Twin: nb_kernels.backward_error."""
    with nogil:
        _backward_block(&W[0, 0], &D[0, 0], &A[0, 0], act, &E[0, 0], W.shape[1], W.shape[0], 0,
                        D.shape[0], 0, W.shape[1], 0.0, 0.0, 0.0, 0)


def weight_gradient(const floating[:, ::1] D, const floating[:, ::1] A, const int64_t[::1] rows,
                    double scale, floating[:, ::1] G, floating[::1] gb):
    """OUT G = scale * sum_s D[s] A[rows[s]]^T, gb = scale * sum_s D[s]. Twin: nb_kernels.weight_gradient."""
    with nogil:
        _gradient_rows(&D[0, 0], &A[0, 0], &rows[0], rows.shape[0], G.shape[1], G.shape[0],
                       <floating>scale, &G[0, 0], &gb[0], 0, G.shape[0])


def update_parameters(int opt, floating[::1] P, const floating[::1] G, floating[:, ::1] S,
                      double[::1] hyper, Py_ssize_t n_weights):
    """One optimizer step on flat buffers (L2 on P[:n_weights] only); False if a parameter became
    non-finite. Twin: nb_kernels.update_parameters."""
    cdef floating c[C_SIZE]
    cdef floating total
    with nogil:
        _coefficients(opt, &hyper[0], 1, c)
        total = _update_range(opt, &P[0], &G[0], &S[0, 0], &S[1, 0], c, c[C_L2], 0, n_weights)
        total += _update_range(opt, &P[0], &G[0], &S[0, 0], &S[1, 0], c, <floating>0, n_weights,
                               P.shape[0])
    return _finite(total)
