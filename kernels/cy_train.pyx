# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython drivers: forward pass, gradients and the fused training loop, on the flat buffers of codes.py.

Twin of ``nb_train.py``; the way work is shared is described there (the program of tiles comes
from ``planner.program``). Here the workers are the threads of one OpenMP parallel region (``prange``
over the workers, static schedule: one worker per thread), and the atomic counters are C11-style
builtins. Without OpenMP the workers run one after the other on the calling thread, which gives the
same results.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from fastbp.kernels cimport cy_kernels as K
from fastbp.kernels.cy_kernels cimport (ALIGNMENT, C_L2, C_SCALE, C_SIZE, COST_NOT_FINITE,
                                        D_CAPACITY, D_HEADER, D_LAYERS, D_LOSS,
                                        D_NWEIGHTS, D_ODD_A0, D_OPTIMIZER, D_OUTPUT, D_SLOT, DONE,
                                        FORWARD, GRADIENTS, H_DROPOUT, H_KEY, H_SEED, H_STEP,
                                        IDENTITY, L_A, L_ACT, L_B, L_D, L_FIELDS, L_IN, L_OUT, L_W,
                                        OP_BACKWARD, OP_FORWARD, OP_GRADIENT, OP_OUTPUT,
                                        OP_UPDATE, P_AHEAD, P_BLAS, P_COLUMNS, P_FIELDS,
                                        P_FORWARD_NEXT, P_GATHERED, P_LAST_TILES, P_LAYER, P_OP,
                                        P_PREFETCH, P_ROWS, P_SAMPLES, P_SERIAL, P_STEP, P_TILES,
                                        PARAMS_NOT_FINITE, TRAIN, _finite)

from . import codes, planner
from .cy_kernels import update_parameters  # a driver too (the MPI step)

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(_MSC_VER)
    #include <intrin.h>
    static int64_t fbp_atomic_add(int64_t *p, int64_t v) { return _InterlockedExchangeAdd64((volatile __int64 *)p, v); }
    static int64_t fbp_atomic_set(int64_t *p, int64_t v) { return _InterlockedExchange64((volatile __int64 *)p, v); }
    static int64_t fbp_atomic_load(int64_t *p) { return _InterlockedCompareExchange64((volatile __int64 *)p, 0, 0); }
    static void fbp_pause(void) { _mm_pause(); }
    #else
    static int64_t fbp_atomic_add(int64_t *p, int64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
    static int64_t fbp_atomic_set(int64_t *p, int64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
    static int64_t fbp_atomic_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    #if defined(__x86_64__) || defined(__i386__)
    static void fbp_pause(void) { __builtin_ia32_pause(); }
    #elif defined(__aarch64__)
    static void fbp_pause(void) { __asm__ __volatile__("yield"); }
    #else
    static void fbp_pause(void) { }
    #endif
    #endif
    #if defined(__GNUC__) || defined(__clang__)
    static void fbp_prefetch(const void *p) { __builtin_prefetch(p); }
    static void fbp_prefetch_l2(const void *p) { __builtin_prefetch(p, 0, 2); }
    #elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    static void fbp_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }
    static void fbp_prefetch_l2(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T1); }
    #else
    static void fbp_prefetch(const void *p) { (void)p; }
    static void fbp_prefetch_l2(const void *p) { (void)p; }
    #endif
    #if defined(_WIN32)
    #include <windows.h>
    static void fbp_yield(void) { SwitchToThread(); }
    #else
    #include <sched.h>
    static void fbp_yield(void) { sched_yield(); }
    #endif
    #ifdef _OPENMP
    #define FBP_OPENMP 1
    #else
    #define FBP_OPENMP 0
    #endif
    /* x[0] + x[1] + ... + x[n-1], added in this order: through a volatile, which no fast-math flag
       (-fassociative-math) may reorder, so the sum has the same bits wherever it is inlined. */
    static double fbp_ordered_sum(const double *x, int64_t n) {
        volatile double total = 0.0;
        int64_t i;
        for (i = 0; i < n; i++) total = total + x[i];
        return total;
    }
    """
    int64_t _atomic_add "fbp_atomic_add"(int64_t* counters, int64_t value) noexcept nogil
    int64_t _atomic_set "fbp_atomic_set"(int64_t* counters, int64_t value) noexcept nogil
    int64_t _atomic_load "fbp_atomic_load"(int64_t* counters) noexcept nogil
    void _pause "fbp_pause"() noexcept nogil
    void _yield "fbp_yield"() noexcept nogil
    double _ordered_sum "fbp_ordered_sum"(const double* x, int64_t n) noexcept nogil
    void _prefetch "fbp_prefetch"(const void* p) noexcept nogil
    void _prefetch_l2 "fbp_prefetch_l2"(const void* p) noexcept nogil
    const int FBP_OPENMP

OPENMP = bool(FBP_OPENMP)  # whether this build runs its workers on OpenMP threads
CODES = K.CODES_HASH.decode()  # the fingerprint of the codes this build was compiled from


# --------------------------------------------------------------------------- tiles and phases

cdef inline Py_ssize_t _activations(const int64_t* desc, Py_ssize_t l, int64_t batch) noexcept nogil:
    """Where layer l's activations for batch number `batch` of the call start in the work buffer:
    layer 0's alternate with the batch's parity (D_ODD_A0). Twin: nb_train._activations."""
    if l == 0 and batch % 2 != 0:
        return desc[D_ODD_A0]
    return desc[D_HEADER + L_FIELDS * l + L_A]


cdef void _fold_norms(const int64_t* desc, const double* squares, double* norms) noexcept nogil:
    """IN/OUT norms[l] += ||G_l||_F for every layer l: the square root of the sum, in row order, of
    the squared norms of the rows of W_l's gradient (squares: one per row, laid out like the biases,
    each written by the tile that computed the row). The same bits for any tiling and any thread
    count, whether the output phase or worker 0 at the end calls it. Twin: nb_train._fold_norms."""
    cdef Py_ssize_t l, rec
    for l in range(desc[D_LAYERS]):
        rec = D_HEADER + L_FIELDS * l
        norms[l] += sqrt(_ordered_sum(squares + desc[rec + L_B] - desc[D_NWEIGHTS],
                                      desc[rec + L_OUT]))


cdef void _output(int kind, const int64_t* desc, const floating* Y, const int64_t* rows,
                  Py_ssize_t m, Py_ssize_t first_row, floating* work, double* costs,
                  Py_ssize_t n_costs, floating* out, double* norms, double* squares, double* hyper,
                  floating* c, int64_t* status, int64_t batch,
                  const double* weights) noexcept nogil:
    """The one-tile phase after the forward pass: the output activations, costs and error terms.

    TRAIN also stops on a non-finite cost and sets this batch's update coefficients; FORWARD copies
    the activations to out. With norms (TRAIN), it first adds the previous minibatch's gradient norms
    (squares is zero before the call's first: that adds nothing). With weights (not NULL; TRAIN and
    GRADIENTS), each sample's error term is multiplied by its weight, and TRAIN's gradient scale is
    1 / (the batch's weight sum, added in order) instead of 1/m; a batch whose weights sum to 0 gets
    scale 0 and no step (the update tiles skip it; the step counter stays). Twin: nb_train._output.
    """
    cdef Py_ssize_t rec = D_HEADER + L_FIELDS * (desc[D_LAYERS] - 1), s, j
    cdef Py_ssize_t k = desc[rec + L_OUT]
    cdef floating* Z = work + _activations(desc, desc[D_LAYERS] - 1, batch)
    cdef double* cost = costs + first_row
    cdef floating* D = work + desc[rec + L_D]
    cdef double total, w, weight_sum = 0.0
    if norms != NULL:
        _fold_norms(desc, squares, norms)
    if kind == FORWARD and n_costs == 0:
        K._activation_forward(desc[D_OUTPUT], Z, m, k)
    else:
        K._output_error(desc[D_OUTPUT], desc[D_LOSS], Z, Y, rows, m, k, D, cost)
    if weights != NULL and kind != FORWARD:
        for s in range(m):
            w = weights[rows[s]]
            weight_sum += w
            for j in range(k):
                D[s * k + j] *= w
    if kind == FORWARD:
        for s in range(m):
            for j in range(k):
                out[(first_row + s) * k + j] = Z[s * k + j]
    elif kind == TRAIN:
        total = 0.0
        for s in range(m):
            total += cost[s]
        if not _finite(total):
            _atomic_set(status + 1, batch)
            _atomic_set(status, COST_NOT_FINITE)
        else:
            hyper[H_KEY] = hyper[H_STEP]  # the dropout masks' key, for the error terms
            if weights == NULL:
                K._coefficients(desc[D_OPTIMIZER], hyper, m, c)
            elif weight_sum > 0:
                K._coefficients(desc[D_OPTIMIZER], hyper, m, c)
                c[C_SCALE] = <floating>(1.0 / weight_sum)
            else:  # no weight: no step
                c[C_SCALE] = 0


cdef void _tile(const int64_t* phase, Py_ssize_t t, int kind, const int64_t* desc,
                floating* params, floating* grads, floating* S0, floating* S1, const floating* X,
                const floating* Y, const int64_t* rows, Py_ssize_t m, Py_ssize_t first_row,
                const int64_t* ident, floating* work, floating* gathered, double* costs,
                Py_ssize_t n_costs, floating* out, double* norms, double* squares, double* hyper,
                floating* c, int64_t* status, int64_t batch, const double* weights,
                const int64_t* indptr, const int64_t* indices, const floating* data) noexcept nogil:
    """Tile t of program row `phase` for the batch X[rows]; with a sparse X (indptr not NULL: a CSR
    X of indptr, indices, data), layer 0 runs over its nonzeros. `gathered`: where the worker has
    gathered the batch's rows of X (_gather). Twin: nb_train._tile."""
    cdef Py_ssize_t rec, n_in, n_out, w, b, n_col, s0, i0, i1, j0, j1, i, j, s, samples, columns
    cdef Py_ssize_t l = phase[P_LAYER]
    cdef int op = phase[P_OP], act
    cdef bint blas = phase[P_BLAS] != 0
    cdef bint sparse = l == 0 and indptr != NULL
    cdef const floating* A_in
    cdef const int64_t* rows_in
    cdef floating* Z
    cdef floating* D
    cdef floating check, scale
    cdef double rate
    if op == OP_OUTPUT:
        _output(kind, desc, Y, rows, m, first_row, work, costs, n_costs, out, norms, squares, hyper,
                c, status, batch, weights)
        return
    rec = D_HEADER + L_FIELDS * l
    n_in = desc[rec + L_IN]
    n_out = desc[rec + L_OUT]
    w = desc[rec + L_W]
    b = desc[rec + L_B]
    if l > 0:
        A_in = work + _activations(desc, l - 1, batch)
        rows_in = ident
    elif phase[P_GATHERED] != 0:
        A_in = gathered
        rows_in = ident
    else:
        A_in = X
        rows_in = rows
    D = work + desc[rec + L_D]
    if op == OP_BACKWARD:
        samples = phase[P_SAMPLES]
        act = desc[rec - L_FIELDS + L_ACT]
        rate = hyper[H_DROPOUT + l - 1]
        columns = phase[P_COLUMNS]
        if blas:  # E[:, i0:i1] = D W[:, i0:i1]
            i0 = t * columns
            i1 = min(i0 + columns, n_in)
            K._gemm(c'N', c'N', m, i1 - i0, n_out, <floating>1, D, n_out, params + w + i0, n_in,
                    work + desc[rec - L_FIELDS + L_D] + i0, n_in)
            K._derivative_block(A_in, act, work + desc[rec - L_FIELDS + L_D], n_in, 0, m, i0, i1,
                                rate, hyper[H_SEED], hyper[H_KEY], l - 1)
            return
        n_col = (n_in + columns - 1) // columns
        s0 = (t // n_col) * samples
        i0 = (t % n_col) * columns
        K._backward_block(params + w, D, A_in, act, work + desc[rec - L_FIELDS + L_D], n_in, n_out,
                          s0, min(s0 + samples, m), i0, min(i0 + columns, n_in), rate,
                          hyper[H_SEED], hyper[H_KEY], l - 1)
        return
    if op == OP_FORWARD:
        act = desc[rec + L_ACT] if l < desc[D_LAYERS] - 1 else IDENTITY
        Z = work + _activations(desc, l, batch)
        j0 = t * phase[P_ROWS]
        j1 = min(j0 + phase[P_ROWS], n_out)
        if blas:  # Z[:, j0:j1] = A_in W[j0:j1]^T (gemm writes the column block), then f(Z + b)
            K._gemm(c'N', c'T', m, j1 - j0, n_in, <floating>1, A_in, n_in, params + w + j0 * n_in,
                    n_in, Z + j0, n_out)
            K._bias_activate(Z, n_out, params + b, act, 0, m, j0, j1)
        elif sparse:
            K._sparse_forward_rows(params + w, params + b, indptr, indices, data, rows, m, n_in,
                                   n_out, act, Z, j0, j1)
        else:
            K._forward_rows(params + w, params + b, A_in, rows_in, m, n_in, n_out, act, Z, j0, j1)
        if hyper[H_DROPOUT + l] > 0:
            K._dropout_rows(Z, n_out, hyper[H_DROPOUT + l], hyper[H_SEED], hyper[H_STEP], l, 0, m,
                            j0, j1)
        return
    j0 = t * phase[P_ROWS]
    j1 = min(j0 + phase[P_ROWS], n_out)
    scale = c[C_SCALE]
    if blas:  # G[j0:j1] = scale D[:, j0:j1]^T A_in
        K._gemm(c'T', c'N', j1 - j0, n_in, m, scale, D + j0, n_out, A_in, n_in,
                grads + w + j0 * n_in, n_in)
        for j in range(j0, j1):
            grads[b + j] = 0
        for s in range(m):  # row by row: D is read in order
            for j in range(j0, j1):
                grads[b + j] += D[s * n_out + j]
        for j in range(j0, j1):
            grads[b + j] *= scale
    elif sparse:
        K._sparse_gradient_rows(D, indptr, indices, data, rows, m, n_in, n_out, scale, grads + w,
                                grads + b, j0, j1)
    else:
        K._gradient_rows(D, A_in, rows_in, m, n_in, n_out, scale, grads + w, grads + b, j0, j1)
    if squares != NULL:  # the gradient norms: this tile's rows' squared norms
        K._row_squares(grads + w, n_in, squares + b - desc[D_NWEIGHTS], j0, j1)
    if op == OP_GRADIENT:  # accumulate this block's share of the mean gradient into S0
        for i in range(w + j0 * n_in, w + j1 * n_in):
            S0[i] += grads[i]
        for i in range(b + j0, b + j1):
            S0[i] += grads[i]
        return
    if scale == 0:  # a batch whose weights sum to 0: no step
        return
    check = K._update_range(desc[D_OPTIMIZER], params, grads, S0, S1, c, c[C_L2], w + j0 * n_in,
                            w + j1 * n_in)
    check += K._update_range(desc[D_OPTIMIZER], params, grads, S0, S1, c, <floating>0, b + j0,
                             b + j1)
    if not _finite(check):
        _atomic_set(status + 1, batch)
        _atomic_set(status, PARAMS_NOT_FINITE)


cdef inline Py_ssize_t _part_start(Py_ssize_t v, Py_ssize_t parts, Py_ssize_t offset,
                                   Py_ssize_t n_workers) noexcept nogil:
    """Where part v starts when `parts` tiles are split in n_workers contiguous parts, the split
    shifted by `offset` (_share_tile's row index: one-tile rows go round the workers); part v ends
    where part v + 1 starts. Twin: nb_train._part_start."""
    return (v * parts + offset) // n_workers


cdef inline Py_ssize_t _share_tile(const int64_t* program, Py_ssize_t p, Py_ssize_t q,
                                   Py_ssize_t tiles, bint serial, Py_ssize_t v,
                                   Py_ssize_t n_workers, Py_ssize_t j, Py_ssize_t* row) noexcept nogil:
    """Tile j of share v of the step of program rows p..q-1, whose tiles are counted in column
    `tiles` (a serial step: one tile, its rows in order): the tile's number in its row, the row in
    *row; -1 past the share.
    Each row's tiles are split in n_workers contiguous parts, the i-th row's offset by i so that
    one-tile rows go round the workers: a share holds a part of every layer, as the rows of one step
    differ in work per tile far more than in tile counts. Twin: nb_train._share_tile."""
    cdef Py_ssize_t r, parts, lo, hi, i = 0
    for r in range(p, q):
        if serial and r > p:
            break
        parts = 1 if serial else program[r * P_FIELDS + tiles]
        lo = _part_start(v, parts, i, n_workers)
        hi = _part_start(v + 1, parts, i, n_workers)
        if j < hi - lo:
            row[0] = r
            return lo + j
        j -= hi - lo
        i = (i + 1) % n_workers
    return -1


cdef inline void _prefetch_ahead(const floating* X, const int64_t* order, Py_ssize_t n,
                                 Py_ssize_t batch_size, Py_ssize_t n_in, Py_ssize_t limit,
                                 Py_ssize_t last, Py_ssize_t values,
                                 Py_ssize_t* ahead) noexcept nogil:
    """Ask for the next `values` values (a cache line at a time) of the rows of X this worker will
    gather, batch `limit` (the first it has not gathered; the stream skips those it fell behind).
    ahead = (batch, sample, the batch's size, element): where the stream stands, moved on. Into L2
    only: a prefetch into L1 holds one of the core's few L1 miss buffers for the whole trip to
    memory, and stalled the tiles being computed as much as it saved (measured). X's rows come
    from memory in shuffled order: a gather that finds them there waits 4-5 us per batch of 10
    rows of 784 float32. Twin: nb_train._prefetch_ahead."""
    cdef Py_ssize_t line = ALIGNMENT // sizeof(floating)
    cdef const floating* row
    if ahead[0] + 1 < limit:
        ahead[0], ahead[1], ahead[2] = limit - 1, 0, 0
    while values > 0:
        if ahead[1] >= ahead[2]:  # on to the next batch
            if ahead[0] + 1 > limit or ahead[0] + 1 >= last:
                return
            ahead[0] += 1
            ahead[1] = 0
            ahead[2] = min((ahead[0] + 1) * batch_size, n) - ahead[0] * batch_size
            ahead[3] = 0
            continue
        row = X + order[ahead[0] * batch_size + ahead[1]] * n_in
        _prefetch_l2(row + ahead[3])
        values -= line
        ahead[3] += line
        if ahead[3] >= n_in:  # and the row's last line, which a row not starting at one spills into
            _prefetch_l2(row + n_in - 1)
            ahead[1] += 1
            ahead[3] = 0


cdef inline Py_ssize_t _gather(const floating* X, const int64_t* order, Py_ssize_t n,
                              Py_ssize_t batch_size, Py_ssize_t n_in, Py_ssize_t have,
                              Py_ssize_t batch, floating* slots, Py_ssize_t slot) noexcept nogil:
    """Gather the rows of X of batches have+1..batch, each into slot i % 2 of this worker's two
    (slots, each `slot` values long), side by side; returns the batch gathered last. In order,
    with none left out from the batch the worker is in (it passes have >= that batch - 1): a
    worker reads each batch from the slot it gathered it into. Twin: nb_train._gather."""
    cdef Py_ssize_t s, m
    cdef floating* into
    while have < batch:
        have += 1
        m = min((have + 1) * batch_size, n) - have * batch_size
        into = slots + (have % 2) * slot
        for s in range(m):
            memcpy(into + s * n_in, X + order[have * batch_size + s] * n_in, n_in * sizeof(floating))
    return have


cdef inline void _wait(int64_t* counter, int64_t target, Py_ssize_t spins) noexcept nogil:
    """Wait until *counter >= target: spin `spins` times (planner.SPINS: a few microseconds), then
    yield the CPU at each look. Twin: nb_train._wait."""
    cdef Py_ssize_t spun = 0
    while _atomic_load(counter) < target:
        if spun < spins:
            _pause()
            spun += 1
        else:
            _yield()


cdef void _worker(int kind, const int64_t* program, Py_ssize_t n_program, const int64_t* desc,
                  floating* params, floating* grads, floating* S0, floating* S1, const floating* X,
                  const floating* Y, const int64_t* order, Py_ssize_t n, Py_ssize_t batch_size,
                  Py_ssize_t first, Py_ssize_t last, double* hyper, floating* work, double* costs,
                  Py_ssize_t n_costs, floating* out, double* norms, double* squares,
                  int64_t* counters, int64_t* claims, Py_ssize_t claim_stride, int64_t* status,
                  floating* c, const int64_t* ident, Py_ssize_t spins, Py_ssize_t worker,
                  Py_ssize_t n_workers, const double* weights, const int64_t* indptr,
                  const int64_t* indices, const floating* data, floating* gathers) noexcept nogil:
    """Worker `worker` of n_workers: a pass over batches first..last-1, every step of `program`.

    The tiles of step k are split into n_workers shares (_share_tile: a part of each of its rows),
    share v handed out through claims[v * claim_stride + k]. A worker claims from its own share
    first, so that it keeps the same rows of W (in its core's cache) from batch to batch, then helps
    with the others'. counters[0] counts the finished tiles of the whole call; a worker adds its
    count once per step. A worker claims only tiles of the step it is in, and a step is over when
    every tile before its end is finished. A row's tiles are counted in its
    P_TILES column, or P_LAST_TILES for the partial last batch. When the program gathers (program
    row 0 an OP_GATHER row, whose step never runs), the worker gathers batch i's rows of X into its
    own slot i % 2 in `gathers` (planner.gather_slots) before its first layer-0 tile of the batch,
    or, ahead, when it has no tile left in the step P_AHEAD; before each parallel tile it asks the
    caches for a part of the rows it will gather next (_prefetch_ahead, P_PREFETCH values times the
    number of workers). With a fused forward pass (P_FORWARD_NEXT on layer 0's update row), each of
    that row's tiles then runs the next batch's layer-0 forward tiles over its rows, the last rows
    first (the update left them in cache), and the forward step runs at the call's first batch only.
    Twin: nb_train._worker.
    """
    cdef Py_ssize_t i, j, p, q, r, u, v, start, m, n_tiles, t, run, runs, lo, hi, span
    cdef Py_ssize_t first_tile, end_tile
    cdef Py_ssize_t fused = -1  # the program row of layer 0's forward pass, when update tiles run it
    cdef Py_ssize_t tiles, next_m  # tiles: the program's column of tile counts for this batch
    cdef Py_ssize_t base = 0, k = 0, done = 0, host = program[P_AHEAD]
    cdef Py_ssize_t slot = desc[D_SLOT] if host > 0 else 0, n_in = desc[D_HEADER + L_IN]
    cdef Py_ssize_t have = first - 1  # the last batch this worker gathered
    cdef Py_ssize_t n_targets = desc[D_HEADER + L_FIELDS * (desc[D_LAYERS] - 1) + L_OUT]
    cdef bint targets = kind != FORWARD or n_costs != 0  # the output phase reads Y[rows]
    cdef Py_ssize_t batch_no, first_row, n_rows, row
    cdef bint serial
    cdef const int64_t* rows
    cdef const int64_t* batch_rows
    cdef floating* slots = gathers + 2 * worker * slot if host > 0 else NULL  # this worker's two
    cdef floating* gathered
    cdef floating* gathered_next
    cdef floating* into
    # where this worker's stream of prefetches is (_prefetch_ahead): batch, sample, size, element
    cdef Py_ssize_t[4] ahead = [first, 0, 0, 0]
    cdef Py_ssize_t ahead_values = program[P_PREFETCH] * n_workers
    for r in range(n_program):
        if program[r * P_FIELDS + P_FORWARD_NEXT] > 0:
            fused = program[r * P_FIELDS + P_FORWARD_NEXT] - 1
    for i in range(first, last):
        start = i * batch_size
        rows = order + start
        m = min(start + batch_size, n) - start
        tiles = P_TILES if m == batch_size else P_LAST_TILES
        gathered = gathered_next = NULL
        if host > 0:
            gathered = slots + (i % 2) * slot
            gathered_next = slots + ((i + 1) % 2) * slot
        next_m = min(start + 2 * batch_size, n) - start - batch_size
        if targets:
            # the output phase's scattered reads, a cache miss each in the serial step: started now
            for j in range(m):
                _prefetch(Y + rows[j] * n_targets)
                _prefetch(Y + rows[j] * n_targets + n_targets - 1)  # its lines, if it spans two
                if weights != NULL:
                    _prefetch(weights + rows[j])
        p = 0
        while p < n_program:
            q = p + 1
            while q < n_program and program[q * P_FIELDS + P_STEP] == program[p * P_FIELDS + P_STEP]:
                q += 1
            # the gather's step never runs; the fused forward step, by the batch before
            if (p == 0 and host > 0) or (i > first and p == fused):
                p = q
                k += 1
                continue
            serial = program[p * P_FIELDS + P_SERIAL] != 0
            n_tiles = 1
            if not serial:
                n_tiles = 0
                for r in range(p, q):
                    n_tiles += program[r * P_FIELDS + tiles]
            for j in range(n_workers):  # its own share first, then the others'
                v = (worker + j) % n_workers
                while True:
                    t = _share_tile(program, p, q, tiles, serial, v, n_workers,
                                    _atomic_add(claims + v * claim_stride + k, 1), &r)
                    if t < 0:
                        break
                    batch_no, first_row, n_rows = i, start, m
                    batch_rows, into = rows, gathered
                    if ahead_values > 0 and not serial:  # before every parallel tile
                        _prefetch_ahead(X, order, n, batch_size, n_in, have + 1, last, ahead_values,
                                        ahead)
                    # run 0: the claimed tile, or the serial step's rows; run 1, after a fused
                    # update tile: the next batch's layer-0 forward tiles over its rows
                    runs = 2 if program[r * P_FIELDS + P_FORWARD_NEXT] > 0 and i + 1 < last else 1
                    for run in range(runs):
                        lo, hi = r, (q if serial else r + 1)  # serial: rows p..q-1, in order
                        if run == 1:
                            span = program[r * P_FIELDS + P_ROWS] // program[fused * P_FIELDS + P_ROWS]
                            lo, hi, t = fused, fused + 1, t * span
                            batch_no, first_row, n_rows = i + 1, start + batch_size, next_m
                            batch_rows, into = rows + batch_size, gathered_next
                        for row in range(lo, hi):  # one call site, as in nb_train
                            first_tile = 0 if serial else t
                            end_tile = program[row * P_FIELDS + tiles] if serial else t + 1
                            if run == 1:  # its forward tiles, the last first
                                end_tile = min(t + span, program[row * P_FIELDS + P_TILES])
                            if host > 0 and program[row * P_FIELDS + P_LAYER] == 0 \
                                    and program[row * P_FIELDS + P_OP] != OP_OUTPUT:
                                have = _gather(X, order, n, batch_size, n_in, max(have, i - 1),
                                               batch_no, slots, slot)
                            for u in range(end_tile - first_tile):
                                if status[0] != DONE:  # a failed row stops the serial step
                                    break
                                _tile(program + row * P_FIELDS,
                                      end_tile - 1 - u if run == 1 else first_tile + u, kind, desc,
                                      params, grads, S0, S1, X, Y, batch_rows, n_rows, first_row,
                                      ident, work, into, costs, n_costs, out, norms, squares, hyper,
                                      c, status, batch_no, weights, indptr, indices, data)
                    done += 1
            if done > 0:  # one add per worker and step: each add moves the line between cores
                _atomic_add(counters, done)
                done = 0
            base += n_tiles
            if host > 0 and program[p * P_FIELDS + P_STEP] == host and i + 1 < last \
                    and _atomic_load(counters) < base:  # the others are still at work: gather ahead
                have = _gather(X, order, n, batch_size, n_in, max(have, i - 1), i + 1, slots, slot)
            _wait(counters, base, spins)
            if _atomic_load(status) != DONE:
                return
            p = q
            k += 1
    if worker == 0 and norms != NULL and last > first:  # the last batch's norms (as nb_train)
        _fold_norms(desc, squares, norms)


# --------------------------------------------------------------------------- drivers

cdef _launch(int kind, int n_threads, const int64_t[::1] desc, floating[::1] params,
             floating[::1] grads, floating[:, ::1] state, X_in, const floating[:, ::1] Y,
             const int64_t[::1] order, Py_ssize_t batch_size, Py_ssize_t first, Py_ssize_t last,
             double[::1] hyper, floating[::1] work, double[::1] costs, floating[:, ::1] out,
             double[::1] norms, double scale, const double[::1] weights):
    """Run up to n_threads workers (OpenMP threads; planner.workers: as many as the call's work pays
    for) over batches first..last-1 of X_in (an array or a codes.CSR); with norms, worker 0 adds
    the last batch's gradient norms at the end (the others' were added by the next batch's output
    phase). Returns the status pair."""
    parts = codes.split_input(X_in)
    cdef const floating[:, ::1] X = parts[0]
    cdef const int64_t[::1] indptr = parts[1]
    cdef const int64_t[::1] indices = parts[2]
    cdef const floating[::1] data = parts[3]
    dtype = params.base.dtype
    call = planner.launch(kind, desc.base, batch_size, order.shape[0], indptr.shape[0] > 0,
                          codes.misaligned(parts[0]), first, last, n_threads, dtype)
    cdef int n_workers = call[0]
    cdef int64_t[:, ::1] program = call[1]
    cdef int64_t[::1] counters = call[2]
    cdef int64_t[::1] claims = call[3]
    cdef Py_ssize_t claim_stride = call[4]
    status_array = np.zeros(2, np.int64)
    cdef int64_t[::1] status = status_array
    cdef floating[::1] c = np.zeros(C_SIZE, dtype)
    cdef int64_t[::1] ident = np.arange(desc[D_CAPACITY])
    cdef Py_ssize_t spins = planner.SPINS
    cdef const floating* Y_data = &Y[0, 0] if Y.shape[0] > 0 else NULL
    cdef floating* out_data = &out[0, 0] if out.shape[0] > 0 else NULL
    cdef double* costs_data = &costs[0] if costs.shape[0] > 0 else NULL
    # one squared norm per row of W (laid out like the biases), zero before the first batch
    cdef double[::1] squares = np.zeros(params.shape[0] - desc[D_NWEIGHTS] if norms.shape[0] > 0
                                        else 0)
    cdef double* norms_data = &norms[0] if norms.shape[0] > 0 else NULL
    cdef double* squares_data = &squares[0] if norms.shape[0] > 0 else NULL
    cdef const double* weights_data = &weights[0] if weights.shape[0] > 0 else NULL
    cdef const int64_t* indptr_data = &indptr[0] if indptr.shape[0] > 0 else NULL
    cdef const int64_t* indices_data = &indices[0] if indices.shape[0] > 0 else NULL
    cdef const floating* values_data = &data[0] if data.shape[0] > 0 else NULL
    c[C_SCALE] = <floating>scale
    cdef floating[::1] slots = call[5]
    cdef floating* gathers = &slots[0] if slots.shape[0] > 0 else NULL
    with call[6]:
        _run_workers(kind, program, desc, params, grads, state, X, Y_data, order, batch_size, first,
                     last, hyper, work, costs_data, costs.shape[0], out_data, norms_data,
                     squares_data, counters, claims, claim_stride, status, c, ident, spins, n_workers,
                     weights_data, indptr_data, indices_data, values_data, gathers)
    return status_array


cdef void _run_workers(int kind, int64_t[:, ::1] program, const int64_t[::1] desc,
                       floating[::1] params, floating[::1] grads, floating[:, ::1] state,
                       const floating[:, ::1] X, const floating* Y_data, const int64_t[::1] order,
                       Py_ssize_t batch_size, Py_ssize_t first, Py_ssize_t last, double[::1] hyper,
                       floating[::1] work, double* costs_data, Py_ssize_t n_costs, floating* out_data,
                       double* norms, double* squares, int64_t[::1] counters, int64_t[::1] claims,
                       Py_ssize_t claim_stride, int64_t[::1] status,
                       floating[::1] c, int64_t[::1] ident, Py_ssize_t spins,
                       int n_workers, const double* weights, const int64_t* indptr,
                       const int64_t* indices, const floating* data,
                       floating* gathers) noexcept:
    """The workers: one per OpenMP thread (prange over workers, static schedule); one worker runs on
    the calling thread, as in the Numba twin (an OpenMP team of one still made two system calls)."""
    cdef int worker
    if n_workers == 1:
        with nogil:
            _worker(kind, &program[0, 0], program.shape[0], &desc[0], &params[0], &grads[0],
                    &state[0, 0], &state[1, 0], &X[0, 0], Y_data, &order[0], order.shape[0],
                    batch_size, first, last, &hyper[0], &work[0], costs_data, n_costs, out_data,
                    norms, squares, &counters[0], &claims[0], claim_stride, &status[0], &c[0],
                    &ident[0], spins, 0, 1, weights, indptr, indices, data, gathers)
        return
    for worker in prange(n_workers, nogil=True, schedule="static", num_threads=n_workers):
        _worker(kind, &program[0, 0], program.shape[0], &desc[0], &params[0], &grads[0],
                &state[0, 0], &state[1, 0], &X[0, 0], Y_data, &order[0], order.shape[0],
                batch_size, first, last, &hyper[0], &work[0], costs_data, n_costs,
                out_data, norms, squares, &counters[0], &claims[0], claim_stride, &status[0], &c[0],
                &ident[0],
                spins, worker, n_workers, weights, indptr, indices, data, gathers)


def train_batches(const int64_t[::1] desc, floating[::1] params, floating[::1] grads,
                floating[:, ::1] state, X, const floating[:, ::1] Y,
                const int64_t[::1] order, Py_ssize_t batch_size, Py_ssize_t first,
                Py_ssize_t last, double[::1] hyper, floating[::1] work, double[::1] costs,
                int n_threads, norms=None, weights=None):
    """Minibatch training over batches first..last-1 of the epoch that visits X in `order`, adding
    each batch's gradient norms to norms when not empty, each batch's gradient weighted by weights
    when not empty; see nb_train.train_batches. Returns
    codes.outcome: (batches done, status, batch). Twin: nb_train.train_batches.
    """
    cdef floating[:, ::1] no_out = np.zeros((0, 1), params.base.dtype)
    norms = np.zeros(0) if norms is None else norms
    weights = np.zeros(0) if weights is None else weights
    codes.check_buffers(desc.base, params.base, X, Y.base, None, costs.base, work.base, hyper.base,
                        order.base, grads.base, state.base, norms, weights,
                        (batch_size, first, last))
    cdef double[::1] sums = norms
    cdef const double[::1] sample_weights = weights
    status = _launch(TRAIN, n_threads, desc, params, grads, state, X, Y, order, batch_size, first,
                     last, hyper, work, costs, no_out, sums, 0.0, sample_weights)
    return codes.outcome(status, first, last)


def gradients(const int64_t[::1] desc, floating[::1] params, floating[::1] grads,
              X, const floating[:, ::1] Y, floating[::1] work,
              double[::1] costs, int n_threads, weights=None):
    """OUT grads: the gradient of the (weighted, with weights not empty) mean cost over X (no L2);
    OUT costs. Twin: nb_train.gradients."""
    cdef Py_ssize_t n = X.shape[0], capacity = desc[D_CAPACITY]
    weights = np.zeros(0) if weights is None else weights
    codes.check_buffers(desc.base, params.base, X, Y.base, None, costs.base, work.base,
                        grads=grads.base, weights=weights)
    cdef const double[::1] sample_weights = weights
    cdef double scale = codes.gradient_scale(n, weights)
    dtype = params.base.dtype
    cdef floating[:, ::1] total = np.zeros((2, params.shape[0]), dtype)
    cdef floating[:, ::1] no_out = np.zeros((0, 1), dtype)
    cdef int64_t[::1] order = np.arange(n)
    cdef double[::1] no_hyper = codes.hyperparameters(desc[D_LAYERS])
    cdef double[::1] no_norms = np.zeros(0)
    _launch(GRADIENTS, n_threads, desc, params, grads, total, X, Y, order, capacity, 0,
            (n + capacity - 1) // capacity, no_hyper, work, costs, no_out, no_norms,
            scale, sample_weights)
    grads[:] = total[0]


def forward(const int64_t[::1] desc, floating[::1] params, X,
            const floating[:, ::1] Y, floating[:, ::1] out, double[::1] costs, floating[::1] work,
            int n_threads):
    """OUT out: the output activations for X; OUT costs when not empty. Twin: nb_train.forward."""
    cdef Py_ssize_t n = X.shape[0], capacity = desc[D_CAPACITY]
    codes.check_buffers(desc.base, params.base, X, Y.base, out.base, costs.base, work.base)
    cdef floating[:, ::1] no_state = np.zeros((2, 1), params.base.dtype)
    cdef int64_t[::1] order = np.arange(n)
    cdef double[::1] no_hyper = codes.hyperparameters(desc[D_LAYERS])
    cdef double[::1] no_norms = np.zeros(0)
    _launch(FORWARD, n_threads, desc, params, params, no_state, X, Y, order, capacity, 0,
            (n + capacity - 1) // capacity, no_hyper, work, costs, out, no_norms, 0.0, no_norms)
