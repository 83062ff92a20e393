"""The planner: how the compiled drivers cut a minibatch into tiles, in Python only.

A driver call starts by asking :func:`program` (planned once per shape, then kept) for the
*program* of its minibatches: one row per phase (forward through a layer, the output error, the
error terms below a layer, a layer's gradient and update), with the size of its tiles, whether it
calls BLAS, the step it belongs to and how many tiles it has, for a full batch and for the call's
partial last batch. The workers only read that table (its columns are the ``P_*`` fields of
``codes.py``). Nothing here is compiled in, so tuning it never invalidates a build: results do not
depend on the tiling, only the speed does (``bench/ab_codes.py`` compares values of a constant in
one process).
"""
import contextlib
import functools

import numpy as np

from . import codes
from .codes import (ALIGNMENT, D_LAYERS, D_NWEIGHTS, D_SLOT, FORWARD, OP_BACKWARD, OP_FORWARD,
                    OP_GATHER, OP_GRADIENT, OP_OUTPUT, OP_UPDATE, P_AHEAD, P_BLAS, P_COLUMNS,
                    P_FIELDS, P_FORWARD_NEXT, P_GATHERED, P_LAST_TILES, P_LAYER, P_OP, P_PREFETCH,
                    P_ROWS, P_SAMPLES, P_SERIAL, P_STEP, P_TILES, TRAIN, layer, zeros)

# Threads work on tiles whose size depends on the shapes only (never on the thread count, so neither
# do the results). A tile is made big enough to be worth handing to another thread.
TILE_ROWS = 4            # weight rows per forward / gradient tile: a multiple of this
TILE_COLUMNS = 512       # columns per error-term tile, at most
MIN_TILE_WORK = 16384    # multiply-adds per tile, at least (when the phase is that big)
SPINS = 4000             # spin-wait iterations (a few microseconds) before a waiting worker yields

# When a phase uses BLAS: big enough batches and layers (where measured faster than the tiles); a
# BLAS phase has about BLAS_TILES tiles. Forward and gradient tiles are blocks of rows of W (a block
# of columns of Z = A W^T, rows of G = D^T A), error-term tiles blocks of BLAS_COLUMNS columns of
# E = D W (whole columns: a gemm call packs the part of W it multiplies, and blocks of samples would
# each pack all of W: wide, 784-1024-1024-10, then spent 0.55 ms more per batch of 16 ms).
BLAS_MIN_BATCH = 32
# The forward pass from bigger batches only: the forward tile is as fast as a gemm that repacks its
# operands up to batches of about 128 (measured), in float64 too since the tile goes over the inputs
# a span at a time (codes.SPAN_BYTES; mid, batches of 64, float64: 1.05-1.09x an epoch at 1 thread,
# 1.13-1.14x at 2, against gemm from BLAS_MIN_BATCH on as before).
FORWARD_MIN_BATCH = 4 * BLAS_MIN_BATCH
BLAS_MIN_LAYER = 128 * 128
BLAS_COLUMNS = 16  # error-term tiles start at a multiple of this: a cache line of float32 values
BLAS_TILES = 2  # few, large tiles: each gemm call packs its operands again (measured: 2 > 4 > 8)
# Up to how many values a gather slot (codes.D_SLOT) holds (0: never) layer 0's tiles read a copy of
# the batch's rows of X, gathered at a cache line, when X's rows do not start at one (most numpy
# arrays start 16 bytes after one): the vector loads of the forward and gradient tiles would
# otherwise straddle two lines. A bigger batch's copy leaves L2, and costs more than it saves
# (784-30-10, Cython, epochs gathered / in place: batches of 10-256 1.04-1.18x; of 1024 0.69x at 2
# threads, 1.04x at 1).
GATHER_UNALIGNED = 1 << 18
# Each worker gathers every batch its layer-0 tiles read into slots of its own (codes.py: OP_GATHER):
# the copy costs a worker a batch rather than its share, but no line of it moves between cores
# (shared slots, each worker copying a share that the others' tiles then read, cost nielsen at 2
# threads 0.98x an epoch when the CPUs' round trip was 70 ns, and 0.76-0.78x at 320-340 ns: every
# store took the line from the other core's cache). While it computes the tiles before it gathers
# the next batch, each worker asks for that batch's rows of X (from memory: the rows come in
# shuffled order), a part before each tile, PREFETCH_SPREAD times a batch's values over its parallel
# tiles: done about two thirds of the way, yet spread thin enough not to stall the tiles (nielsen, 1
# thread: the serial step 6.0 -> 2.4 us per batch, the epoch 1.09-1.12x; all of it before the first
# tile stalled it as much as it saved).
PREFETCH_SPREAD = 1.5
# A driver call allocates 2 x workers x D_SLOT values of slots. Above GATHER_MAX_VALUES values a
# slot (batches of over 10,700 rows of 784), layer 0 reads X in place instead, with its tiles (BLAS
# needs the batch gathered), rather than cost each worker two copies of a batch that large
# (full-batch gradient descent on MNIST's 60,000 x 784 would take 376 MB a thread). That costs
# time: 784-256-128-10 at 2 threads runs 2.0x (batches of 1024) to 2.3x (of 20,000) faster with
# layer 0 gathered for BLAS.
GATHER_MAX_VALUES = 1 << 23
# A driver call runs one worker for each MIN_WORKER_WORK multiply-adds it has (planner.workers):
# waking a thread costs more than a small call's arithmetic (a Numba helper about 0.15 ms, through
# the Python thread pool). Where a second one starts to pay on nielsen: bench/README, test_calls.
MIN_WORKER_WORK = 1 << 22
# Whether layer 0's update tiles run the next batch's forward pass over their rows, right after
# updating them (P_FORWARD_NEXT): one wait per minibatch fewer, and the rows of W come from the
# core's cache, where the update left them.
FUSE_FORWARD = 1


def part_tiles(phase, n_in, n_out, m):
    """How many tiles one program row has for a batch of m samples (the workers read the counts
    from the program's P_TILES and P_LAST_TILES columns)."""
    op, rows, samples, columns = phase[P_OP], phase[P_ROWS], phase[P_SAMPLES], phase[P_COLUMNS]
    if op == OP_OUTPUT:
        return 1
    if op == OP_GATHER:  # the workers gather outside the tiles
        return 0
    if phase[P_BLAS] and op == OP_BACKWARD:
        return -(-n_in // columns)
    if op == OP_BACKWARD:
        return -(-m // samples) * -(-n_in // columns)
    return -(-n_out // rows)


def use_blas(op, m, n_in, n_out):
    """Whether a phase of this shape calls BLAS rather than the hand-written tiles."""
    if op == OP_FORWARD and m < FORWARD_MIN_BATCH:
        return False
    return m >= BLAS_MIN_BATCH and n_in * n_out >= BLAS_MIN_LAYER and min(n_in, n_out) >= 64


# The planner's own constants above (bench/ab_codes.py and the tests change them at run time): with
# the shapes, the key under which program() keeps what it planned.
TUNING = tuple(name for name, value in globals().items()
               if name.isupper() and isinstance(value, (int, float)) and name not in vars(codes))


def program(kind, desc, batch_size, n_samples=None, sparse=False, misaligned=False):
    """:func:`_plan`'s program for a driver call over `n_samples` samples (default: a full batch),
    whose last batch is partial when batch_size does not divide n_samples; planned once for each
    shape and kept (a copy: the caller may write it). Planning takes about 0.1 ms, as much as a
    minibatch of a small network: a caller that trains one minibatch per driver call would
    otherwise pay it every time."""
    return _kept(kind, desc, batch_size, n_samples, sparse, misaligned)[0].copy()


def launch(kind, desc, batch_size, n_samples, sparse, misaligned, first, last, n_threads, dtype):
    """What a driver call over batches first..last-1 of n_samples needs besides the caller's
    buffers, in one Python call (a one-sample forward's arithmetic takes about 1 us; its driver call
    took 35 us when it asked the planner four times): (the number of workers (:func:`workers`); the
    kept program, which the workers only read; the counters, claims and claim stride of
    :func:`counters`; the gather slots of :func:`gather_slots`; the BLAS context of
    :func:`blas_single_threaded`)."""
    table, steps, slot, blas = _kept(kind, desc, batch_size, n_samples, sparse, misaligned)
    samples = min(last * batch_size, n_samples) - first * batch_size
    n_workers = workers(kind, desc, samples, n_threads)
    finished, claims, stride = counters(steps, first, last, n_workers)
    return (n_workers, table, finished, claims, stride, gather_slots(slot, n_workers, dtype),
            blas_single_threaded(blas))


def workers(kind, desc, n_samples, n_threads):
    """How many of n_threads workers a driver call over n_samples samples runs: each beyond the
    first needs MIN_WORKER_WORK multiply-adds of the call's own (the forward pass, and when
    training the error terms and gradients: three times as many). Any number gives the same bits."""
    work = n_samples * int(desc[D_NWEIGHTS]) * (1 if kind == FORWARD else 3)
    return max(1, min(n_threads, work // MIN_WORKER_WORK if MIN_WORKER_WORK else n_threads))


def _kept(kind, desc, batch_size, n_samples, sparse, misaligned):
    last = batch_size if not n_samples else (n_samples - 1) % batch_size + 1
    tuning = tuple(map(globals().__getitem__, TUNING))
    return _planned(kind, np.asarray(desc, np.int64).tobytes(), batch_size, last, bool(sparse),
                    bool(misaligned), tuning)


@functools.lru_cache(maxsize=256)
def _planned(kind, desc, batch_size, last, sparse, misaligned, tuning):
    """The program, with what each call of it needs to know: its steps per batch, the size of a
    gather slot (0: it does not gather) and whether it calls BLAS."""
    desc = np.frombuffer(desc, np.int64)
    table = _plan(kind, desc, batch_size, last, sparse, misaligned)
    gathers = table[0, P_OP] == OP_GATHER
    return (table, int(table[-1, P_STEP]) + 1, int(desc[D_SLOT]) if gathers else 0,
            bool(table[:, P_BLAS].any()))


def _plan(kind, desc, batch_size, last, sparse=False, misaligned=False):
    """The phases of one minibatch of `batch_size` samples for a driver call of this kind, with their
    tiles, as an int64 array of P_FIELDS columns.

    Forward through every layer, then the output error; for TRAIN and GRADIENTS, the error terms of
    every layer but the first, top down, then every layer's gradient with its update (TRAIN) or
    accumulation (GRADIENTS), bottom up, all layers in one step: they are independent (a small top
    layer's single tile then joins that parallel step rather than the serial one before it). Large
    layers use BLAS (layer 0 then reads the batch gathered first). Consecutive phases of one tile
    each are merged into one serial step (no waiting between them). When training, layer 0's update
    tiles also run the next batch's forward pass through layer 0 over their rows (FUSE_FORWARD), when
    both are parallel (a serial step's tile runs its rows whole) and the forward tiles divide theirs.
    P_TILES counts a row's tiles for a full batch, P_LAST_TILES for the call's last batch, of
    `last` samples (program() derives it from the call's samples). With a `sparse` X (or a
    descriptor with no gather slot, or one larger than GATHER_MAX_VALUES), layer 0 never uses BLAS:
    its tiles run over the nonzeros (or read X in place). Otherwise, when X's rows are `misaligned`
    (codes.misaligned), layer 0 reads the gathered batch if its slot is small enough
    (GATHER_UNALIGNED). A gathering program starts with an OP_GATHER row: each worker gathers the
    batches it reads itself, the next one during the first serial step (P_AHEAD) when it has no tile
    left there.
    """
    n_layers = int(desc[D_LAYERS])
    slot = int(desc[D_SLOT])
    can_gather = not sparse and 0 < slot <= GATHER_MAX_VALUES
    m = batch_size
    sample_tile = max(BLAS_MIN_BATCH // 2, -(-m // BLAS_TILES))

    def rows_for(n_in, n_out, blas):
        if blas:  # a few large tiles: each gemm call packs the whole batch again
            return TILE_ROWS * max(1, -(-n_out // (BLAS_TILES * TILE_ROWS)))
        return TILE_ROWS * max(1, -(-MIN_TILE_WORK // (TILE_ROWS * m * n_in)))

    phases = []
    for l in range(n_layers):
        n_in, n_out = layer(desc, l)[:2]
        blas = use_blas(OP_FORWARD, m, n_in, n_out) and (l > 0 or can_gather)
        phases.append([OP_FORWARD, l, rows_for(n_in, n_out, blas), sample_tile, 0, blas])
    phases.append([OP_OUTPUT, n_layers - 1, 0, 0, 0, 0])
    if kind != FORWARD:
        for l in range(n_layers - 1, 0, -1):
            n_in, n_out = layer(desc, l)[:2]
            blas = use_blas(OP_BACKWARD, m, n_in, n_out)
            if blas:  # whole columns of E = D W: a gemm packs only its columns of W (and all of D)
                columns, samples = BLAS_COLUMNS * -(-n_in // (BLAS_TILES * BLAS_COLUMNS)), m
            else:
                columns = min(n_in, TILE_COLUMNS)
                samples = min(m, max(2, 2 * -(-MIN_TILE_WORK // (2 * columns * n_out))))
            phases.append([OP_BACKWARD, l, 0, samples, columns, blas])
        op = OP_UPDATE if kind == TRAIN else OP_GRADIENT
        for l in range(n_layers):  # bottom up: the small top layers' tiles last, in a parallel step
            n_in, n_out = layer(desc, l)[:2]
            blas = use_blas(op, m, n_in, n_out) and (l > 0 or can_gather)
            phases.append([op, l, rows_for(n_in, n_out, blas), 0, 0, blas])
    gathered = any(p[5] and p[1] == 0 for p in phases) or (
        can_gather and misaligned and slot <= GATHER_UNALIGNED)
    if gathered:  # no tiles: the workers gather, each for itself
        phases.insert(0, [OP_GATHER, 0, 0, 0, 0, 0])
    table = np.zeros((len(phases), P_FIELDS), dtype=np.int64)
    step, previous = -1, None
    for i, (op, l, rows, samples, columns, blas) in enumerate(phases):
        row = table[i]
        row[[P_OP, P_LAYER, P_ROWS, P_SAMPLES, P_COLUMNS, P_BLAS, P_GATHERED]] = (
            op, l, rows, samples, columns, blas, gathered)
        n_in, n_out = layer(desc, l)[:2]
        row[P_TILES] = part_tiles(row, n_in, n_out, m)
        row[P_LAST_TILES] = part_tiles(row, n_in, n_out, last)
        single = row[P_TILES] == 1
        together = previous is not None and (
            (single and previous[P_SERIAL]) or (op == previous[P_OP] and op in (OP_UPDATE, OP_GRADIENT)
                                                and not previous[P_SERIAL]))
        if not together:
            step += 1
        row[P_STEP] = step
        row[P_SERIAL] = single and (not together or previous[P_SERIAL])
        previous = row
    forward, update = (np.flatnonzero((table[:, P_OP] == op) & (table[:, P_LAYER] == 0))
                       for op in (OP_FORWARD, OP_UPDATE))
    if FUSE_FORWARD and update.size and not table[forward[0], P_SERIAL] \
            and not table[update[0], P_SERIAL] \
            and table[update[0], P_ROWS] % table[forward[0], P_ROWS] == 0:
        table[update[0], P_FORWARD_NEXT] = forward[0] + 1
    if gathered:  # a worker left without a tile in the first serial step gathers the next batch
        table[0, P_AHEAD] = table[table[:, P_SERIAL] != 0][0, P_STEP]
        parallel = table[table[:, P_SERIAL] == 0, P_TILES].sum()
        if table[:, P_FORWARD_NEXT].any():  # a batch's own forward tiles run in the batch before
            parallel -= table[forward[0], P_TILES]
        n_in = layer(desc, 0)[0]
        table[0, P_PREFETCH] = int(np.ceil(PREFETCH_SPREAD * m * n_in / max(parallel, 1)))
    return table


def counters(steps_per_batch, first, last, n_workers):
    """The counters the workers of a driver call over batches first..last-1 share: (finished, claims,
    stride). finished[0] counts the finished tiles, alone on its cache line; worker v's share of step
    k is claimed through claims[v * stride + k], each worker's claims on cache lines of their own.
    Every atomic add moves a line from core to core, so nothing else shares those lines."""
    line = ALIGNMENT // 8  # int64 values per cache line
    steps = max(last - first, 1) * steps_per_batch
    stride = -(-steps // line) * line
    lines = zeros(line + n_workers * stride, np.int64)
    return lines[:line], lines[line:], stride


def gather_slots(slot, n_workers, dtype):
    """The slots the workers of a driver call gather batches into, when its program gathers (slot:
    D_SLOT, else 0): two per worker, worker v's batch i at (2 v + i % 2) * slot, each slot at a
    cache line; else empty."""
    return zeros(2 * n_workers * slot, dtype) if slot else np.zeros(0, dtype)


_BLAS_CONTROLLER = []


def blas_single_threaded(blas):
    """A context in which BLAS runs on one thread, when the program calls BLAS (`blas`): the workers
    already use every thread, and a BLAS tile must not depend on the thread count (determinism)."""
    if not blas:
        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        import scipy.linalg.cython_blas  # noqa: F401  the BLAS both backends call, loaded before
        from threadpoolctl import ThreadpoolController  # the controller lists the libraries
        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")
