"""Numba drivers: forward pass, gradients and the fused training loop, on the flat buffers of codes.py.

Twin of ``cy_train.pyx``. How the work is shared (the same in both backends):

* ``n_threads`` workers each run ``_worker`` over the same *program* (``planner.program``): the phases
  of a minibatch (forward through layer l, the output error, the error terms below layer l, the
  gradient and update of every layer), minibatch after minibatch, with no Python in between. Here the
  workers are the calling thread and a pool of threads: the compiled worker releases the GIL, and a
  Numba ``prange`` region around it would cost seconds of compilation (the whole worker is compiled
  again inside the parallel region) and a launch per call.
* A phase is cut into tiles whose size depends only on the shapes; the planner counts them, for a
  full batch and for the call's partial last batch (the program's P_TILES and P_LAST_TILES columns).
  Workers claim the tiles of the step they are in from that step's counter and count the finished
  ones; a step (one or more phases) is over when every tile of it is finished. Small consecutive
  phases form one serial step, done by one worker; large layers' tiles call BLAS (single-threaded:
  the workers already use every thread).
* A tile owns its outputs (rows of W, a block of error terms): nothing is summed across threads, and
  what a tile computes does not depend on who computes it, so results are the same for every thread
  count. A worker waits only for tiles other workers have already claimed, so the workers need not
  run at the same time: one thread running them one after the other gives the same result.
* The gradient norms (``norms``) too: a gradient tile writes its rows' squared norms, which the next
  minibatch's serial output phase (or, after the call's last, worker 0) adds up in row order.
"""
import math
import platform
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from . import codes, planner
from .codes import (ALIGNMENT, C_L2, C_SCALE, C_SIZE, COST_NOT_FINITE, D_CAPACITY, D_HEADER,
                    D_LAYERS, D_LOSS, D_NWEIGHTS, D_ODD_A0, D_OPTIMIZER, D_OUTPUT, D_SLOT, DONE,
                    FORWARD, GRADIENTS, H_DROPOUT, H_KEY, H_SEED, H_STEP, IDENTITY, L_A, L_ACT, L_B,
                    L_D, L_FIELDS, L_IN, L_OUT, L_W, OP_BACKWARD, OP_FORWARD, OP_GRADIENT, OP_OUTPUT,
                    P_AHEAD, P_BLAS, P_COLUMNS, P_FORWARD_NEXT, P_GATHERED, P_LAST_TILES, P_LAYER,
                    P_OP, P_PREFETCH, P_ROWS, P_SAMPLES, P_SERIAL, P_STEP, P_TILES,
                    PARAMS_NOT_FINITE, TRAIN)
from .nb_kernels import (FASTMATH, _backward_block, _bias_activate, _coefficients, _derivative_block,
                         _dropout_rows, _finite, _forward_rows, _gradient_rows, _row_squares,
                         _sparse_forward_rows, _sparse_gradient_rows, _update_range,
                         activation_forward, jit, jit_inline, output_error,
                         update_parameters)  # noqa: F401  (a driver too: the MPI step)

# The fingerprint of nb_kernels.py (its text's sha256, first 16 hex digits), whose kernels, and
# through its CODES the codes, are compiled into the worker. Numba keys the worker's cache on the
# text of this file alone: without this line, a cached worker would keep running the kernels of an
# earlier nb_kernels.py, after an upgrade too (tests/test_numba_cache.py keeps it current).
KERNELS = "2b201974c689af79"


# --------------------------------------------------------------------------- atomics (LLVM)

def _item_pointer(context, builder, sig, args, n_indices=1):
    """The address of array[indices]: the intrinsic's first argument, indexed by the next n_indices."""
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, aryty, ary, list(args[1:1 + n_indices]))


@intrinsic
def _atomic_add(typingctx, counters, i, value):
    """counters[i] += value atomically (sequentially consistent); returns the old value."""
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _item_pointer(context, builder, sig, args), args[2],
                                  "seq_cst")
    return types.int64(counters, i, types.int64), codegen


@intrinsic
def _atomic_set(typingctx, counters, i, value):
    """counters[i] = value atomically; returns the old value."""
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("xchg", _item_pointer(context, builder, sig, args), args[2],
                                  "seq_cst")
    return types.int64(counters, i, types.int64), codegen


@intrinsic
def _atomic_load(typingctx, counters, i):
    """counters[i], read with acquire ordering (sees every write made before the matching add)."""
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_item_pointer(context, builder, sig, args), "acquire", 8)
    return types.int64(counters, i), codegen


@intrinsic
def _pause(typingctx):
    """A spin-wait hint to the CPU (x86 'pause'); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


def _prefetch_codegen(locality):
    """The code of a prefetch of array[indices] (llvm.prefetch, a read; `locality` 3 keeps the line
    in every cache level, 2 in L2 and beyond): the program does not wait for it, and an address
    outside the array does no harm."""
    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        item = _item_pointer(context, builder, sig, args, len(args) - 1)
        builder.call(fn, [builder.bitcast(item, i8p), ir.Constant(i32, 0),
                          ir.Constant(i32, locality), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return codegen


@intrinsic
def _prefetch(typingctx, array, i):
    """Start loading array[i] into every cache level."""
    return types.void(array, i), _prefetch_codegen(3)


@intrinsic
def _prefetch_l2(typingctx, array, i, j):
    """Start loading array[i, j] into L2, not L1 (see _prefetch_ahead)."""
    return types.void(array, i, j), _prefetch_codegen(2)


@intrinsic
def _yield(typingctx):
    """Give the CPU to another thread (POSIX sched_yield; Windows SwitchToThread)."""
    def codegen(context, builder, sig, args):
        name = "SwitchToThread" if sys.platform == "win32" else "sched_yield"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), name)
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@jit_inline
def _part_start(v, parts, offset, n_workers):
    """Where part v starts when `parts` tiles are split in n_workers contiguous parts, the split
    shifted by `offset` (_share_tile's row index: one-tile rows go round the workers); part v ends
    where part v + 1 starts. Twin: cy_train._part_start."""
    return (v * parts + offset) // n_workers


@jit
def _share_tile(program, p, q, tiles, serial, v, n_workers, j):
    """Tile j of share v of the step of program rows p..q-1, whose tiles are counted in column
    `tiles` (a serial step: one tile, its rows in order): (row, the tile's number in its row), the
    number -1 past the share.
    Each row's tiles are split in n_workers contiguous parts, the i-th row's offset by i so that
    one-tile rows go round the workers: a share holds a part of every layer, as the rows of one step
    differ in work per tile far more than in tile counts. Twin: cy_train._share_tile."""
    i = 0
    for r in range(p, q):
        if serial and r > p:
            break
        parts = 1 if serial else program[r, tiles]
        lo = _part_start(v, parts, i, n_workers)
        hi = _part_start(v + 1, parts, i, n_workers)
        if j < hi - lo:
            return r, lo + j
        j -= hi - lo
        i = (i + 1) % n_workers
    return q, -1


@jit
def _wait(counters, i, target, spins):
    """Wait until counters[i] >= target: spin `spins` times (planner.SPINS: a few microseconds; the
    other workers are usually about to finish), then yield the CPU at each look (they may be waiting
    for one: the machine may be busier than the thread count). Twin: cy_train._wait."""
    spun = 0
    while _atomic_load(counters, i) < target:
        if spun < spins:
            _pause()
            spun += 1
        else:
            _yield()


@jit
def _prefetch_ahead(X, order, batch_size, limit, last, values, batch, sample, end, element):
    """Ask for the next `values` values (a cache line at a time) of the rows of X this worker will
    gather, batch `limit` (the first it has not gathered; the stream skips those it fell behind).
    (batch, sample, the batch's size, element): where the stream stands, returned moved on. Into L2
    only: a prefetch into L1 holds one of the core's few L1 miss buffers for the whole trip to
    memory, and stalled the tiles being computed as much as it saved (measured). X's rows come
    from memory in shuffled order: a gather that finds them there waits 4-5 us per batch of 10
    rows of 784 float32. Twin: cy_train._prefetch_ahead."""
    n, n_in = order.shape[0], X.shape[1]
    line = ALIGNMENT // X.itemsize
    if batch + 1 < limit:
        batch, sample, end = limit - 1, 0, 0
    while values > 0:
        if sample >= end:  # on to the next batch
            if batch + 1 > limit or batch + 1 >= last:
                break
            batch += 1
            sample = 0
            end = min((batch + 1) * batch_size, n) - batch * batch_size
            element = 0
            continue
        row = order[batch * batch_size + sample]
        _prefetch_l2(X, row, element)
        values -= line
        element += line
        if element >= n_in:  # and the row's last line, which a row not starting at one spills into
            _prefetch_l2(X, row, n_in - 1)
            sample += 1
            element = 0
    return batch, sample, end, element


@intrinsic
def _view(typingctx, flat, offset, rows, cols):
    """A (rows, cols) C-contiguous view of flat[offset:] that holds no reference to flat's memory
    (the worker runs without reference counting). Valid while flat lives (the worker's call)."""
    return _borrowed(flat, types.Array(flat.dtype, 2, "C"),
                     types.Array(flat.dtype, 2, "C")(flat, types.intp, types.intp, types.intp))


@intrinsic
def _row(typingctx, flat, offset, n):
    """flat[offset:offset + n] as a view with no reference count (see _view)."""
    return _borrowed(flat, types.Array(flat.dtype, 1, "C"),
                     types.Array(flat.dtype, 1, "C")(flat, types.intp, types.intp))


def _borrowed(flat, result, signature):
    def codegen(context, builder, sig, args):
        source = make_array(sig.args[0])(context, builder, args[0])
        view = make_array(result)(context, builder)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(flat.dtype)))
        shape = list(args[2:])
        strides = [builder.mul(shape[1], itemsize), itemsize] if len(shape) == 2 else [itemsize]
        populate_array(view, data=builder.gep(source.data, [args[1]]), shape=shape, strides=strides,
                       itemsize=itemsize, meminfo=None)
        return view._getvalue()
    return signature, codegen


@intrinsic
def _gemm(typingctx, transa, transb, m, n, k, alpha, A, a, lda, B, b, ldb, C, c, ldc):
    """Row-major C[c:] (m, n) = alpha op(A[a:]) op(B[b:]) with leading dimensions lda, ldb, ldc;
    op is 'N' or 'T' (character codes). A, B, C are flat arrays and a, b, c element offsets.
    Through numba_xxgemm, the entry point of Numba's np.dot into scipy's BLAS (found by name, so it
    caches), and as in cy_kernels._gemm: a row-major matrix is the transpose of a column-major one,
    so this asks for C^T = op(B)^T op(A)^T. Twin: cy_kernels._gemm."""
    dtype = A.dtype

    def codegen(context, builder, sig, args):
        (ta, tb, m_, n_, k_, alpha_, A_, a_, lda_, B_, b_, ldb_, C_, c_, ldc_) = args
        char = ir.IntType(8)
        void_p = ir.IntType(8).as_pointer()
        intp = context.get_value_type(types.intp)
        ll_dtype = context.get_value_type(dtype)

        def pointer(array, aryty, offset):
            data = make_array(aryty)(context, builder, array).data
            return builder.bitcast(builder.gep(data, [offset]), void_p)

        alpha_slot = cgutils.alloca_once_value(builder, context.cast(builder, alpha_, sig.args[5], dtype))
        beta_slot = cgutils.alloca_once_value(builder, ir.Constant(ll_dtype, 0))
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, void_p, void_p,
                                                intp, void_p, intp, void_p, void_p, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        kind = ir.Constant(char, ord("s" if dtype == types.float32 else "d"))
        builder.call(fn, [kind, builder.trunc(tb, char), builder.trunc(ta, char), n_, m_, k_,
                          builder.bitcast(alpha_slot, void_p), pointer(B_, sig.args[9], b_), ldb_,
                          pointer(A_, sig.args[6], a_), lda_, builder.bitcast(beta_slot, void_p),
                          pointer(C_, sig.args[12], c_), ldc_])
        return context.get_dummy_value()

    intp = types.intp
    return types.void(intp, intp, intp, intp, intp, alpha, A, intp, intp, B, intp, intp, C, intp,
                      intp), codegen


_N, _T = ord("N"), ord("T")


# --------------------------------------------------------------------------- tiles and phases

@jit
def _gather(X, order, batch_size, have, batch, slots, at, slot):
    """Gather the rows of X of batches have+1..batch, each into slot i % 2 of this worker's two
    (slots[at:], each `slot` values long), side by side; returns the batch gathered last. In order,
    with none left out from the batch the worker is in (it passes have >= that batch - 1): a
    worker reads each batch from the slot it gathered it into. Twin: cy_train._gather."""
    n, n_in = order.shape[0], X.shape[1]
    while have < batch:
        have += 1
        m = min((have + 1) * batch_size, n) - have * batch_size
        into = _view(slots, at + (have % 2) * slot, m, n_in)
        for s in range(m):
            x = X[order[have * batch_size + s]]
            g = into[s]
            for i in range(n_in):  # a loop: an array assignment compiles its error messages
                g[i] = x[i]
    return have


@jit_inline
def _activations(desc, l, batch):
    """Where layer l's activations for batch number `batch` of the call start in the work buffer:
    layer 0's alternate with the batch's parity (D_ODD_A0). Twin: cy_train._activations."""
    if l == 0 and batch % 2 != 0:
        return desc[D_ODD_A0]
    return desc[D_HEADER + L_FIELDS * l + L_A]


@njit(cache=True, nogil=True)  # no fast-math: the additions stay in order wherever this is compiled
def _fold_norms(desc, squares, norms):
    """IN/OUT norms[l] += ||G_l||_F for every layer l: the square root of the sum, in row order, of
    the squared norms of the rows of W_l's gradient (squares: one per row, laid out like the biases,
    each written by the tile that computed the row). The same bits for any tiling and any thread
    count, whether the output phase or worker 0 at the end calls it. Twin: cy_train._fold_norms."""
    n_weights = desc[D_NWEIGHTS]
    for l in range(desc[D_LAYERS]):
        rec = D_HEADER + L_FIELDS * l
        lo = desc[rec + L_B] - n_weights
        total = 0.0
        for j in range(lo, lo + desc[rec + L_OUT]):
            total += squares[j]
        norms[l] += math.sqrt(total)


@jit_inline
def _output(kind, desc, Y, rows, first_row, work, costs, out, norms, squares, hyper, c, status,
            batch, weights):
    """The one-tile phase after the forward pass: the output activations, costs and error terms.

    TRAIN also stops on a non-finite cost and sets this batch's update coefficients; FORWARD copies
    the activations to out. With norms (TRAIN), it first adds the previous minibatch's gradient norms
    (squares is zero before the call's first: that adds nothing). With weights (not empty; TRAIN and
    GRADIENTS), each sample's error term is multiplied by its weight, and TRAIN's gradient scale is
    1 / (the batch's weight sum, added in order) instead of 1/m; a batch whose weights sum to 0 gets
    scale 0 and no step (the update tiles skip it; the step counter stays). Twin: cy_train._output.
    """
    if norms.shape[0] != 0:
        _fold_norms(desc, squares, norms)
    rec = D_HEADER + L_FIELDS * (desc[D_LAYERS] - 1)
    k = desc[rec + L_OUT]
    m = rows.shape[0]
    a = _activations(desc, desc[D_LAYERS] - 1, batch)
    d = desc[rec + L_D]
    Z = _view(work, a, m, k)
    cost = _row(costs, first_row, m)
    if kind == FORWARD and costs.shape[0] == 0:
        activation_forward(desc[D_OUTPUT], Z)
    else:
        output_error(desc[D_OUTPUT], desc[D_LOSS], Z, Y, rows, _view(work, d, m, k), cost)
    weight_sum = 0.0
    if weights.shape[0] != 0 and kind != FORWARD:
        D = _view(work, d, m, k)
        for s in range(m):
            w = weights[rows[s]]
            weight_sum += w
            for j in range(k):
                D[s, j] *= w
    if kind == FORWARD:
        for s in range(m):
            for j in range(k):
                out[first_row + s, j] = Z[s, j]
    elif kind == TRAIN:
        total = 0.0
        for s in range(m):
            total += cost[s]
        if not _finite(total):
            _atomic_set(status, 1, batch)
            _atomic_set(status, 0, COST_NOT_FINITE)
        else:
            hyper[H_KEY] = hyper[H_STEP]  # the dropout masks' key, for the error terms
            if weights.shape[0] == 0:
                _coefficients(desc[D_OPTIMIZER], hyper, m, c)
            elif weight_sum > 0:
                _coefficients(desc[D_OPTIMIZER], hyper, m, c)
                c[C_SCALE] = 1.0 / weight_sum
            else:  # no weight: no step
                c[C_SCALE] = 0.0


@jit_inline
def _tile(phase, t, kind, desc, params, grads, state, X, Y, rows, first_row, ident, work, gathers,
          gathered, costs, out, norms, squares, hyper, c, status, batch, weights, indptr, indices,
          data):
    """Tile t of program row `phase` for the batch X[rows]; with a sparse X (indptr not empty: a CSR
    X of indptr, indices, data), layer 0 runs over its nonzeros. `gathered`: the offset in gathers
    where the worker has gathered the batch's rows of X (_gather). Twin: cy_train._tile."""
    op = phase[P_OP]
    l = phase[P_LAYER]
    if op == OP_OUTPUT:
        _output(kind, desc, Y, rows, first_row, work, costs, out, norms, squares, hyper, c, status,
                batch, weights)
        return
    m = rows.shape[0]
    rec = D_HEADER + L_FIELDS * l
    n_in = desc[rec + L_IN]
    n_out = desc[rec + L_OUT]
    w = desc[rec + L_W]
    b = desc[rec + L_B]
    W = _view(params, w, n_out, n_in)
    sparse = l == 0 and indptr.shape[0] != 0
    source, a_in = gathers, gathered  # where a BLAS tile finds the layer's input: source[a_in:]
    if l > 0:
        source, a_in = work, _activations(desc, l - 1, batch)
        A_in = _view(source, a_in, m, n_in)
        rows_in = _row(ident, 0, m)
    elif phase[P_GATHERED] != 0:
        A_in = _view(source, a_in, m, n_in)
        rows_in = _row(ident, 0, m)
    else:
        A_in = X
        rows_in = rows
    D = _view(work, desc[rec + L_D], m, n_out)
    blas = phase[P_BLAS] != 0
    if op == OP_BACKWARD:
        samples = phase[P_SAMPLES]
        E = _view(work, desc[rec - L_FIELDS + L_D], m, n_in)
        act = desc[rec - L_FIELDS + L_ACT]
        rate = hyper[H_DROPOUT + l - 1]
        columns = phase[P_COLUMNS]
        if blas:  # E[:, i0:i1] = D W[:, i0:i1]
            i0 = t * columns
            i1 = min(i0 + columns, n_in)
            _gemm(_N, _N, m, i1 - i0, n_out, W.dtype.type(1), work, desc[rec + L_D], n_out, params,
                  w + i0, n_in, work, desc[rec - L_FIELDS + L_D] + i0, n_in)
            _derivative_block(A_in, act, E, np.int64(0), m, i0, i1, rate, hyper[H_SEED],
                              hyper[H_KEY], l - 1)
            return
        n_col = -(-n_in // columns)
        s0 = (t // n_col) * samples
        i0 = (t % n_col) * columns
        _backward_block(W, D, A_in, act, E, s0, min(s0 + samples, m), i0, min(i0 + columns, n_in),
                        rate, hyper[H_SEED], hyper[H_KEY], l - 1)
        return
    if op == OP_FORWARD:
        act = desc[rec + L_ACT] if l < desc[D_LAYERS] - 1 else IDENTITY
        a_out = _activations(desc, l, batch)
        Z = _view(work, a_out, m, n_out)
        bias = _row(params, b, n_out)
        j0 = t * phase[P_ROWS]
        j1 = min(j0 + phase[P_ROWS], n_out)
        if blas:  # Z[:, j0:j1] = A_in W[j0:j1]^T (gemm writes the column block), then f(Z + b)
            _gemm(_N, _T, m, j1 - j0, n_in, W.dtype.type(1), source, a_in, n_in, params,
                  w + j0 * n_in, n_in, work, a_out + j0, n_out)
            _bias_activate(Z, bias, act, np.int64(0), m, j0, j1)
        elif sparse:
            _sparse_forward_rows(W, bias, indptr, indices, data, rows, act, Z, j0, j1)
        else:
            _forward_rows(W, bias, A_in, rows_in, act, Z, j0, j1)
        if hyper[H_DROPOUT + l] > 0:
            _dropout_rows(Z, hyper[H_DROPOUT + l], hyper[H_SEED], hyper[H_STEP], l, 0, m, j0, j1)
        return
    j0 = t * phase[P_ROWS]
    j1 = min(j0 + phase[P_ROWS], n_out)
    G = _view(grads, w, n_out, n_in)
    gb = _row(grads, b, n_out)
    scale = c[C_SCALE]
    if blas:  # G[j0:j1] = scale D[:, j0:j1]^T A_in
        _gemm(_T, _N, j1 - j0, n_in, m, scale, work, desc[rec + L_D] + j0, n_out, source, a_in, n_in,
              grads, w + j0 * n_in, n_in)
        for j in range(j0, j1):
            gb[j] = 0
        for s in range(m):  # row by row: D is read in order
            for j in range(j0, j1):
                gb[j] += D[s, j]
        for j in range(j0, j1):
            gb[j] *= scale
    elif sparse:
        _sparse_gradient_rows(D, indptr, indices, data, rows, scale, G, gb, j0, j1)
    else:
        _gradient_rows(D, A_in, rows_in, scale, G, gb, j0, j1)
    if squares.shape[0] != 0:  # the gradient norms: this tile's rows' squared norms
        _row_squares(G, _row(squares, b - desc[D_NWEIGHTS], n_out), j0, j1)
    if op == OP_GRADIENT:  # accumulate this block's share of the mean gradient into state[0]
        for lo, hi in ((w + j0 * n_in, w + j1 * n_in), (b + j0, b + j1)):
            total_grad = _row(state[0], lo, hi - lo)  # loops from 0 vectorize (_update_range)
            block = _row(grads, lo, hi - lo)
            for i in range(hi - lo):
                total_grad[i] += block[i]
        return
    if scale == 0:  # a batch whose weights sum to 0: no step
        return
    opt = desc[D_OPTIMIZER]
    check = _update_range(opt, params, grads, state[0], state[1], c, c[C_L2], w + j0 * n_in,
                          w + j1 * n_in)
    check += _update_range(opt, params, grads, state[0], state[1], c, c[C_L2] - c[C_L2], b + j0,
                           b + j1)
    if not _finite(check):
        _atomic_set(status, 1, batch)
        _atomic_set(status, 0, PARAMS_NOT_FINITE)


# Without Numba's reference counting (NRT): the worker allocates nothing, and every array it touches is
# the caller's for the whole call, but with NRT each kernel call would update the arrays' shared
# counts, atomically, from every thread: about 200 ns per tile, 1.12-1.17x nielsen's and nielsen2's
# epochs (measured). The kernels it calls are compiled for it the same way, so none may allocate.
@njit(fastmath=FASTMATH, cache=True, nogil=True, _nrt=False)
def _worker(worker, n_workers, kind, program, desc, params, grads, state, X, Y, order, batch_size,
            first, last, hyper, work, costs, out, norms, squares, counters, claims, claim_stride,
            status, c, ident, spins, weights, indptr, indices, data, gathers):
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
    Twin: cy_train._worker.
    """
    n = order.shape[0]
    n_program = program.shape[0]
    base = 0
    k = 0
    done = 0
    host = program[0, P_AHEAD]
    slot = desc[D_SLOT] if host > 0 else 0
    mine = 2 * worker * slot  # where this worker's two slots start in gathers
    have = first - 1  # the last batch this worker gathered
    n_targets = desc[D_HEADER + L_FIELDS * (desc[D_LAYERS] - 1) + L_OUT]
    targets = kind != FORWARD or costs.shape[0] != 0  # the output phase reads Y[rows]
    # where this worker's stream of prefetches is (_prefetch_ahead): batch, sample, size, element
    a_batch, a_sample, a_end, a_element = first, np.int64(0), np.int64(0), np.int64(0)  # as p
    ahead_values = program[0, P_PREFETCH] * n_workers
    fused = -1  # the program row of layer 0's forward pass, when update tiles run it
    for r in range(n_program):
        if program[r, P_FORWARD_NEXT] > 0:
            fused = program[r, P_FORWARD_NEXT] - 1
    for i in range(first, last):
        start = i * batch_size
        m = min(start + batch_size, n) - start
        rows = _row(order, start, m)
        tiles = P_TILES if m == batch_size else P_LAST_TILES
        gathered = mine + (i % 2) * slot
        gathered_next = mine + ((i + 1) % 2) * slot
        next_m = min(start + 2 * batch_size, n) - start - batch_size
        ahead = _row(order, start + batch_size, max(next_m, 0))  # the next batch's rows
        if targets:
            # the output phase's scattered reads, a cache miss each in the serial step: started now
            for j in range(m):
                y = Y[rows[j]]
                _prefetch(y, 0)
                _prefetch(y, n_targets - 1)  # its lines, if it spans two
                if weights.shape[0] != 0:
                    _prefetch(weights, rows[j])
        p = np.int64(0)  # not a literal 0: _share_tile would be typed (compiled) twice
        while p < n_program:
            q = p + 1
            while q < n_program and program[q, P_STEP] == program[p, P_STEP]:
                q += 1
            # the gather's step never runs; the fused forward step, by the batch before
            if (p == 0 and host > 0) or (i > first and p == fused):
                p = q
                k += 1
                continue
            serial = program[p, P_SERIAL] != 0
            n_tiles = 1
            if not serial:
                n_tiles = 0
                for r in range(p, q):
                    n_tiles += program[r, tiles]
            for j in range(n_workers):  # its own share first, then the others'
                v = (worker + j) % n_workers
                while True:
                    r, t = _share_tile(program, p, q, tiles, serial, v, n_workers,
                                       _atomic_add(claims, v * claim_stride + k, 1))
                    if t < 0:
                        break
                    batch, first_row, batch_rows, into = i, start, rows, gathered
                    if ahead_values > 0 and not serial:  # before every parallel tile
                        a_batch, a_sample, a_end, a_element = _prefetch_ahead(
                            X, order, batch_size, have + 1, last, ahead_values, a_batch, a_sample,
                            a_end, a_element)
                    # run 0: the claimed tile, or the serial step's rows; run 1, after a fused
                    # update tile: the next batch's layer-0 forward tiles over its rows
                    runs = 2 if program[r, P_FORWARD_NEXT] > 0 and i + 1 < last else 1
                    span = 1
                    for run in range(runs):
                        lo, hi = r, (q if serial else r + 1)  # serial: rows p..q-1, in order
                        if run == 1:
                            span = program[r, P_ROWS] // program[fused, P_ROWS]
                            lo, hi, t = fused, fused + 1, t * span
                            batch, first_row = i + 1, start + batch_size
                            batch_rows, into = ahead, gathered_next
                        for row in range(lo, hi):  # one call site: _tile is inlined
                            first_tile = 0 if serial else t
                            end_tile = program[row, tiles] if serial else t + 1
                            if run == 1:  # its forward tiles, the last first
                                end_tile = min(t + span, program[row, P_TILES])
                            if host > 0 and program[row, P_LAYER] == 0 \
                                    and program[row, P_OP] != OP_OUTPUT:
                                have = _gather(X, order, batch_size, max(have, i - 1), batch,
                                               gathers, mine, slot)
                            for u in range(end_tile - first_tile):
                                if status[0] != DONE:  # a failed row stops the serial step
                                    break
                                _tile(program[row], end_tile - 1 - u if run == 1 else first_tile + u,
                                      kind, desc, params, grads, state, X, Y, batch_rows, first_row,
                                      ident, work, gathers, into, costs, out, norms, squares, hyper,
                                      c, status, batch, weights, indptr, indices, data)
                    done += 1
            if done > 0:  # one add per worker and step: each add moves the line between cores
                _atomic_add(counters, 0, done)
                done = 0
            base += n_tiles
            if host > 0 and program[p, P_STEP] == host and i + 1 < last \
                    and _atomic_load(counters, 0) < base:  # the others are still at work: gather ahead
                have = _gather(X, order, batch_size, max(have, i - 1), i + 1, gathers, mine, slot)
            _wait(counters, 0, base, spins)
            if _atomic_load(status, 0) != DONE:
                return
            p = q
            k += 1
    if worker == 0 and norms.shape[0] != 0 and last > first:
        # the last batch's norms, by the worker as the output phase folds the others': the fold
        # compiled inside the fast-math worker may add in another order than a separate call
        _fold_norms(desc, squares, norms)


# --------------------------------------------------------------------------- drivers

_pool = None
_announced = set()
# What _announce_compilation says. The time is nielsen's first epoch with an empty cache, every
# kernel compiled for one dtype: 13-31 s on 2-core VMs (bench/README.md: compare.py and
# compile_times.py); one thread compiles, whatever n_threads says.
COMPILING = ("fastbp: compiling the Numba kernels for {dtype} on this machine (13-30 s, once: "
             "they are cached afterwards)")


def _compiled_for(index, dtype, magic):
    """Whether a Numba cache index (the worker's: {key: file}, each key (argument types, the
    machine's magic tuple, the source's hashes)) holds a worker for parameters of `dtype` compiled
    for the machine `magic` describes."""
    for key in index:
        try:
            signature, machine = key[0], key[1]
            if machine == magic and str(signature[5].dtype) == np.dtype(dtype).name:
                return True
        except (IndexError, TypeError, AttributeError):  # not a key this knows
            continue
    return False


def _announce_compilation(dtype):
    """Say on stderr, once per process and dtype, that Numba is about to compile the kernels when
    its on-disk cache holds no worker for this dtype and machine (the first use on a machine, or of
    the other dtype, or after an upgrade: the kernels are compiled for each dtype): the wait would
    otherwise look like a hang. Numba finds the cache in NUMBA_CACHE_DIR when set, else in the
    __pycache__ beside this file when writable, else in a user-wide directory; the worker's cache
    index (numba.core.caching, not public API: nothing is said if it changes) is empty until the
    worker is compiled and saved there, and again when this file changes."""
    dtype = np.dtype(dtype).name
    if dtype in _announced:
        return
    _announced.add(dtype)
    try:
        index = _worker._cache._cache_file._load_index()
        magic = _worker.targetctx.codegen().magic_tuple()
    except Exception:  # not a cache this knows: say nothing
        return
    if not _compiled_for(index, dtype, magic):
        print(COMPILING.format(dtype=dtype), file=sys.stderr, flush=True)


def _launch(kind, n_threads, desc, params, grads, state, X, Y, order, batch_size, first, last,
            hyper, work, costs, out, norms, scale, weights):
    """Run up to n_threads workers (planner.workers: as many as the call's work pays for) over
    batches first..last-1: one on the calling thread, the others on a pool of threads (the worker
    releases the GIL); with norms, worker 0 adds the last batch's gradient norms at the end (the
    others' were added by the next batch's output phase). Returns the status array."""
    _announce_compilation(params.dtype)
    X, indptr, indices, data = codes.split_input(X)
    n_workers, program, counters, claims, claim_stride, gathers, blas = planner.launch(
        kind, desc, batch_size, order.shape[0], indptr.shape[0] != 0, codes.misaligned(X), first,
        last, n_threads, params.dtype)
    status = np.zeros(2, np.int64)
    c = np.zeros(C_SIZE, params.dtype)
    c[C_SCALE] = scale
    ident = np.arange(desc[D_CAPACITY])
    # one squared norm per row of W (laid out like the biases), zero before the first batch
    squares = np.zeros(params.shape[0] - desc[D_NWEIGHTS] if norms.shape[0] else 0)
    args = (kind, program, desc, params, grads, state, X, Y, order, batch_size, first, last, hyper,
            work, costs, out, norms, squares, counters, claims, claim_stride, status, c, ident,
            planner.SPINS, weights, indptr, indices, data, gathers)
    with blas:
        _run_workers(n_workers, args)
    return status


def _run_workers(n_threads, args):
    """The workers: one on the calling thread, n_threads - 1 on the pool."""
    global _pool
    helpers = []
    if n_threads > 1:
        if _pool is None or _pool._max_workers < n_threads - 1:
            _pool = ThreadPoolExecutor(max_workers=n_threads - 1, thread_name_prefix="fastbp")
        helpers = [_pool.submit(_worker, w, n_threads, *args) for w in range(1, n_threads)]
    interrupted = None
    try:
        _worker(0, max(1, n_threads), *args)
    except KeyboardInterrupt as error:  # raised when the worker returns: it finished
        interrupted = error
    for helper in helpers:  # never leave while helpers still write into the buffers
        while True:
            try:
                helper.result()
                break
            except KeyboardInterrupt as error:
                interrupted = error
    if interrupted is not None:
        raise interrupted


def train_batches(desc, params, grads, state, X, Y, order, batch_size, first, last, hyper, work,
                costs, n_threads, norms=None, weights=None):
    """Minibatch training over batches first..last-1 of the epoch that visits X in `order`.

    Batch i is X[order[i*batch_size : (i+1)*batch_size]] (the last may be partial); order (k,) lists
    the rows to visit, all of X's or some. IN/OUT params, state, hyper (the step counter advances),
    work; OUT grads (the last batch's mean gradient without L2), costs (k,): each sample's cost
    before its batch's update, indexed like order. IN/OUT norms:
    None or empty (off), or float64 (n_layers,): norms[l] += ||G_l||_F, the Frobenius norm of the
    batch's mean gradient of W_l (without L2), for each batch trained (on a failure, those before the
    failing batch), added in batch order. IN weights: None or empty (unweighted), or float64 (n,), the
    samples' weights indexed like X's rows: each batch's gradient is then the weighted mean
    sum w_x dC_x / sum w_x (costs stay unweighted); a batch whose weights sum to 0 makes no step.
    Returns codes.outcome: (batches done, status, batch). Twin: cy_train.train_batches.
    """
    norms = np.zeros(0) if norms is None else norms
    weights = np.zeros(0) if weights is None else weights
    codes.check_buffers(desc, params, X, Y, None, costs, work, hyper, order, grads, state, norms,
                        weights, (batch_size, first, last))
    status = _launch(TRAIN, n_threads, desc, params, grads, state, X, Y, order, batch_size, first,
                     last, hyper, work, costs, params[:0].reshape(0, 1), norms, 0.0, weights)
    return codes.outcome(status, first, last)


def gradients(desc, params, grads, X, Y, work, costs, n_threads, weights=None):
    """OUT grads: the gradient of the mean cost over all samples of X (no L2 term), by backpropagation
    in blocks of the work buffer's capacity; OUT costs (n,): each sample's cost. IN weights: None or
    empty, or float64 (n,): the gradient of the weighted mean cost sum w_x C_x / sum w_x (0 when the
    weights sum to 0). Twin: cy_train.gradients.
    """
    weights = np.zeros(0) if weights is None else weights
    codes.check_buffers(desc, params, X, Y, None, costs, work, grads=grads, weights=weights)
    n = X.shape[0]
    capacity = int(desc[D_CAPACITY])
    total = np.zeros((2, params.shape[0]), params.dtype)
    _launch(GRADIENTS, n_threads, desc, params, grads, total, X, Y, np.arange(n), capacity, 0,
            -(-n // capacity), codes.hyperparameters(int(desc[D_LAYERS])), work, costs,
            params[:0].reshape(0, 1), np.zeros(0), codes.gradient_scale(n, weights), weights)
    grads[:] = total[0]


def forward(desc, params, X, Y, out, costs, work, n_threads):
    """OUT out (n, k): the output activations for every sample of X. When costs is not empty,
    OUT costs (n,): each sample's cost against the targets Y. Twin: cy_train.forward.
    """
    codes.check_buffers(desc, params, X, Y, out, costs, work)
    n = X.shape[0]
    capacity = int(desc[D_CAPACITY])
    no_state = np.zeros((2, 1), params.dtype)
    _launch(FORWARD, n_threads, desc, params, params, no_state, X, Y, np.arange(n), capacity, 0,
            -(-n // capacity), codes.hyperparameters(int(desc[D_LAYERS])), work, costs, out,
            np.zeros(0), 0.0, np.zeros(0))
