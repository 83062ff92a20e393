"""The command line: ``fastbp train`` (handwritten digits by default, or --dataset), ``fastbp info``
and ``fastbp trace`` (one backpropagation, printed in the course's notation)."""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from . import __version__, backends, datasets, distributed, initializers, schedules
from .kernels import codes
from .network import Network, TrainingDiverged


def _layers(text):
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers such as "
                                         f"64,32,10, got {text!r}") from None
    return sizes


def parser():
    p = argparse.ArgumentParser(prog="fastbp", description="Train fully-connected neural networks "
                                "by backpropagation on the CPU, fast.")
    p.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = p.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a network (on the bundled digits by default)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    net = train.add_argument_group("the network")
    net.add_argument("--layers", type=_layers, default=None,
                     help="units per layer, input first; default: inputs,64,classes")
    net.add_argument("--activation", default="relu", choices=codes.HIDDEN_ACTIVATIONS)
    net.add_argument("--output-activation", default=None, choices=tuple(codes.ACTIVATIONS),
                     help="default: softmax for cross_entropy, else the hidden activation")
    net.add_argument("--loss", default="cross_entropy", choices=tuple(codes.LOSSES))
    net.add_argument("--init", default="auto", choices=initializers.SCHEMES)
    net.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    net.add_argument("--backend", default="auto", choices=("auto",) + backends.BACKENDS,
                     help="auto: cython when built, else numba")
    net.add_argument("--threads", type=int, default=None, help="default: every CPU")
    net.add_argument("--seed", type=int, default=0)
    fit = train.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=30)
    fit.add_argument("--batch-size", type=int, default=16)
    fit.add_argument("--optimizer", default="sgd", choices=tuple(codes.OPTIMIZERS))
    fit.add_argument("--lr", type=float, default=None,
                     help="default: 0.05 for sgd, 0.001 for adam and rmsprop")
    fit.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    fit.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    fit.add_argument("--l2", type=float, default=1e-4)
    fit.add_argument("--schedule", default="constant", choices=tuple(schedules.SCHEDULES),
                     help="learning rate per epoch")
    fit.add_argument("--dropout", type=float, default=0.0, help="dropout rate of the hidden layers")
    fit.add_argument("--early-stopping", action="store_true",
                     help="stop when the test loss stops improving; keep the best epoch")
    fit.add_argument("--patience", type=int, default=10, help="epochs without improvement")
    data = train.add_argument_group("data and output")
    data.add_argument("--dataset", "--data", default="digits", metavar="SPEC",
                      help="digits (bundled), mnist:DIR (IDX files), FILE.npz (arrays X, y, and "
                           "optionally X_test, y_test with --distributed), a directory of X.npy "
                           "and y.npy (--distributed), or FILE.csv (the label in the last column); "
                           "with --distributed each rank reads only its rows of an .npz or "
                           "directory")
    data.add_argument("--test-fraction", type=float, default=0.2,
                      help="share of the data held out to test on")
    data.add_argument("--save", metavar="PATH", default=None,
                      help="write the trained model here (.npz; read it with fastbp.load)")
    data.add_argument("--plot", metavar="PATH", default=None,
                      help="draw the learning curves (cost and accuracy per epoch) to this image")
    data.add_argument("--plot-weights", metavar="PATH", default=None,
                      help="draw the first layer's weights as images to this file (image data "
                           "sets: digits, mnist:DIR)")
    data.add_argument("--plot-confusion", metavar="PATH", default=None,
                      help="draw the test set's confusion matrix to this file")
    data.add_argument("--json", metavar="PATH", default=None,
                      help="write the history (per-epoch metrics) as JSON to PATH ('-': stdout)")
    data.add_argument("--quiet", action="store_true", help="print only the final result")
    mpi = train.add_argument_group("training on many processes (MPI; see README)")
    mpi.add_argument("--distributed", action="store_true",
                     help="train data-parallel over MPI, each rank on its shard of the data: "
                          "mpiexec -n N fastbp train --distributed (--batch-size is the global "
                          "minibatch; rank 0 alone prints and writes files)")
    mpi.add_argument("--allreduce-every", metavar="K", type=int, default=1,
                     help="with --distributed: one Allreduce and update per K minibatches")
    commands.add_parser("info", help="the backends available here and how they are built")
    tr = commands.add_parser("trace", help="print one backpropagation of one sample through a small "
                             "network, in the course's notation",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--layers", type=_layers, default=None,
                    help="units per layer, input first; default: 2,3,2 (with --dataset: "
                         "features,3,classes)")
    tr.add_argument("--activation", default="sigmoid", choices=codes.HIDDEN_ACTIVATIONS,
                    help="the hidden layers' f")
    tr.add_argument("--output-activation", default=None, choices=tuple(codes.ACTIVATIONS),
                    help="default: softmax for cross_entropy, else the hidden activation")
    tr.add_argument("--loss", default="mse", choices=tuple(codes.LOSSES), help="the cost C")
    tr.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                    help="the arithmetic's precision")
    tr.add_argument("--seed", type=int, default=0, help="the parameters and the random sample")
    tr.add_argument("--lr", type=float, default=None,
                    help="also show one gradient step of this size and the cost after it")
    tr.add_argument("--dataset", "--data", default=None, metavar="SPEC",
                    help="take the sample from this data set (as in train); default: random")
    tr.add_argument("--sample", type=int, default=None, metavar="K",
                    help="which sample of --dataset (from 0); default: one drawn by --seed")
    return p


def _echo(text):
    """Print without breaking a progress bar."""
    try:
        from tqdm.auto import tqdm
        tqdm.write(text)
    except ImportError:
        print(text, flush=True)


def _communicator(args):
    """MPI.COMM_WORLD for --distributed (None otherwise)."""
    if not args.distributed:
        if args.allreduce_every != 1:
            raise ValueError("--allreduce-every needs --distributed")
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("--distributed needs mpi4py and an MPI library: pip install "
                          "'fastbp[mpi]'") from None
    return MPI.COMM_WORLD


def _data(args, c):
    """(X_train, y_train, X_test, y_test, where they come from) of this rank. In one process: the
    dataset split by --test-fraction. Over MPI, an .npz archive or a directory of .npy files is read
    rank by rank (its rows only; its X_test, y_test when it has them, else a share of each shard
    held out); any other dataset is read whole and split, and each rank takes its block of rows."""
    spec = args.dataset
    if c.size > 1 and (os.path.isdir(spec) or spec.lower().endswith(".npz")):
        X, y = distributed.load_shard(spec, c.rank, c.size)
        if datasets.has_arrays(spec, datasets.TEST_KEYS):
            X_test, y_test = distributed.load_shard(spec, c.rank, c.size, datasets.TEST_KEYS)
            return X, y, X_test, y_test, f"{spec} (with its test set)"
        X, X_test, y, y_test = datasets.train_test_split(X, y, args.test_fraction,
                                                         [args.seed, c.rank])
        return X, y, X_test, y_test, f"{spec} ({args.test_fraction:g} of each shard held out)"
    X, y = datasets.load(spec)
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, args.test_fraction, args.seed)
    if c.size > 1:
        (X_train, y_train), (X_test, y_test) = (
            tuple(a[slice(*distributed.shard_range(len(Xs), c.rank, c.size))] for a in (Xs, ys))
            for Xs, ys in ((X_train, y_train), (X_test, y_test)))
    return X_train, y_train, X_test, y_test, spec


def train(args):
    """``fastbp train``, in one process or (--distributed) on every MPI rank: rank 0 alone prints
    and writes files. Returns the exit status (the same on every rank)."""
    comm = _communicator(args)
    c = distributed.Comm(comm)
    lead = c.rank == 0

    def say(text):
        if lead and not args.quiet:
            _echo(text)

    try:
        X, y, X_test, y_test, source = distributed.agree(c, "reading the data",
                                                         lambda: _data(args, c))
        classes = np.unique(np.concatenate(c.allgather(np.unique(np.concatenate([y, y_test])))))
        y, y_test = np.searchsorted(classes, y), np.searchsorted(classes, y_test)  # 0..n-1
        facts = c.allgather((X.shape[1], len(X), len(X_test)))
        n_features, n_train, n_test = facts[0][0], sum(f[1] for f in facts), sum(f[2] for f in facts)
        layers = args.layers or [n_features, 64, len(classes)]
        shape = distributed.agree(c, "--plot-weights", lambda: _image_shape(args, n_features))
        lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 0.001)
        momentum = args.momentum if args.optimizer == "sgd" else 0.0
        net = distributed.agree(c, "building the network", lambda: Network(
            layers, args.activation, args.output_activation, args.loss, args.dtype, args.backend,
            args.threads, args.seed, args.init))
        threads = net.n_threads or (distributed.default_threads(comm) if comm else net.threads)
        say(f"fastbp {__version__}: {net}")
        say(f"{source}: {n_train} training and {n_test} test samples of {n_features} features, "
            f"{len(classes)} classes; {args.epochs} epochs, minibatches of {args.batch_size}"
            + (f" on {c.size} ranks ({'+'.join(map(str, distributed.local_batch_sizes(args.batch_size, c.size)))} rows each)" if comm else "")
            + f", {args.optimizer} lr {lr}, l2 {args.l2}"
            + (f", momentum {momentum}" if args.optimizer == "sgd" else "")
            + f", {threads} thread{'s' if threads > 1 else ''}{' per rank' if comm else ''}"
            + (f", one Allreduce and update per {args.allreduce_every} minibatches"
               if args.allreduce_every > 1 else ""))

        def progress(epoch, m):
            say(f"epoch {epoch:3d}/{args.epochs}  train loss {m['train_loss']:.4f} acc "
                f"{m['train_accuracy']:.4f}  test loss {m['val_loss']:.4f} acc "
                f"{m['val_accuracy']:.4f}  {m['seconds']:.2f}s"
                + (f"  allreduce {100 * m['comm_share']:.1f}%" if "comm_share" in m else ""))

        started = time.perf_counter()
        status, note = 0, ""
        try:
            net.fit(X, y, args.epochs, args.batch_size, lr, args.l2, momentum,
                    validation_data=(X_test, y_test), optimizer=args.optimizer,
                    nesterov=args.nesterov, schedule=args.schedule, dropout=args.dropout,
                    early_stopping=args.early_stopping, patience=args.patience,
                    metrics=("train_loss", "train_accuracy", "val_loss", "val_accuracy"),
                    callback=progress, progress=lead and not args.quiet and sys.stderr.isatty(),
                    comm=comm, allreduce_every=args.allreduce_every)
        except TrainingDiverged as error:
            if lead:
                print(f"fastbp: {error}", file=sys.stderr)
            status, note = 1, " (diverged)"
        except KeyboardInterrupt:
            status, note = 130, " (interrupted)"
        history = net.history
        if history.best_epoch is not None:
            say(f"best epoch {history.best_epoch}" + (
                f" (stopped after epoch {history.stopped_epoch})" if history.stopped_epoch else "")
                + "; its parameters are kept")
        result = distributed.evaluate(net, X_test, y_test, comm, threads) if comm else \
            net.evaluate(X_test, y_test)
        shares = history.get("comm_share", [])
        if lead:
            print(f"test accuracy {result.accuracy:.4f}  test loss {result.loss:.4f}  "
                  f"({time.perf_counter() - started:.2f}s"
                  + (f" on {c.size} ranks" if comm else "")
                  + (f", {100 * np.mean(shares):.1f}% in allreduce" if shares else "") + f"){note}",
                  flush=True)
        for line in distributed.agree(c, "writing the results", lambda: _write_results(
                args, net, history, result, layers, c.size) if lead else ()):
            print(line, flush=True)
        for line in distributed.agree(c, "drawing the pictures", lambda: _write_pictures(
                args, c, net, X_test, y_test, classes, shape)):
            print(line, flush=True)
        return status
    except distributed.DistributedError as error:
        if lead:
            print(f"fastbp: error: {error}", file=sys.stderr)
        return 2
    except BaseException:
        if c.size == 1:
            raise
        _abort(c)


def _abort(c):
    """An error on one rank alone would leave the others waiting in a collective: stop them all."""
    import traceback
    traceback.print_exc()
    print(f"fastbp: rank {c.rank} failed; stopping every rank", file=sys.stderr, flush=True)
    c.comm.Abort(1)


def history_record(history, result=None):
    """A JSON-ready dict of a History: the per-epoch metrics and, for distributed training, the
    ranks, threads, seed, shards and each update's seconds."""
    record = {"epochs": history.epochs, "best_epoch": history.best_epoch,
              "stopped_epoch": history.stopped_epoch, "history": dict(history)}
    if result is not None:
        record.update(test_accuracy=result.accuracy, test_loss=result.loss)
    if getattr(history, "ranks", None) is not None:
        record.update(ranks=history.ranks, threads_per_rank=history.threads, seed=history.seed,
                      shard_sizes=history.shard_sizes, local_batch_sizes=history.local_batch_sizes,
                      update_seconds=[a.tolist() for a in history.batch_seconds],
                      allreduce_seconds=[a.tolist() for a in history.allreduce_seconds])
    return record


def _write_results(args, net, history, result, layers, ranks):
    """The files asked for: the model (--save), the learning curves (--plot), the history (--json).
    Returns the lines to print."""
    lines = []
    if args.save:
        net.save(args.save)
        lines.append(f"model saved to {args.save}")
    if args.plot:
        from .plotting import plot_learning_curves
        plot_learning_curves(history, args.plot, title=(
            f"{args.dataset}: {'-'.join(map(str, layers))} {args.activation}, {args.optimizer}, "
            f"dropout {args.dropout}, test accuracy {result.accuracy:.4f}"
            + (f", {ranks} ranks" if ranks > 1 else "")))
        lines.append(f"learning curves drawn to {args.plot}")
    if args.json:
        text = json.dumps(history_record(history, result), indent=1)
        if args.json == "-":
            lines.append(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return lines


def _image_shape(args, n_features):
    """The image shape of a sample for --plot-weights: a square, for the image data sets."""
    if not args.plot_weights:
        return None
    side = math.isqrt(n_features)
    if (args.dataset == "digits" or args.dataset.startswith("mnist:")) and side * side == n_features:
        return side, side
    raise ValueError(f"--plot-weights draws the first layer's weights as images, for image data "
                     f"sets (digits, mnist:DIR); {args.dataset} has {n_features} features per "
                     f"sample, of no known image shape")


def _write_pictures(args, c, net, X_test, y_test, classes, shape):
    """The pictures asked for: the first layer's weights (--plot-weights) and the test set's
    confusion matrix (--plot-confusion; counted on every rank, summed, drawn by rank 0). Returns
    the lines to print."""
    from . import plotting
    lines = []
    if args.plot_confusion:
        predicted = net.predict(X_test) if len(X_test) else np.zeros(0, np.int64)
        counts = sum(c.allgather(plotting.confusion_matrix(y_test, predicted, max(len(classes), 2))))
        if c.rank == 0:
            plotting.plot_confusion_matrix(counts, args.plot_confusion, classes, title=(
                f"{args.dataset}: confusion matrix of the {counts.sum()} test samples, accuracy "
                f"{np.trace(counts) / max(counts.sum(), 1):.4f}"))
            lines.append(f"confusion matrix drawn to {args.plot_confusion}")
    if args.plot_weights and c.rank == 0:
        plotting.plot_weights(net, args.plot_weights, shape, title=(
            f"{args.dataset}: {'-'.join(map(str, net.layer_sizes))} {args.activation}\n"
            f"first-layer weights (red positive, blue negative)"))
        lines.append(f"first-layer weights drawn to {args.plot_weights}")
    return lines


def trace(args):
    """``fastbp trace``: one backpropagation of one sample (of --dataset, or random) through a
    small network, printed in the course's notation; small matrices are printed whole."""
    rng = np.random.default_rng(args.seed)
    if args.dataset is None:
        if args.sample is not None:
            raise ValueError("--sample K picks a sample of --dataset: give --dataset too")
        layers = args.layers or [2, 3, 2]
        x = rng.random(layers[0])
        y = int(rng.integers(layers[-1])) if layers[-1] > 1 else float(rng.integers(2))
        source = f"a random sample (--seed {args.seed})"
    else:
        X, labels = datasets.load(args.dataset)
        classes, labels = np.unique(labels, return_inverse=True)
        layers = args.layers or [X.shape[1], 3, len(classes)]
        if layers[0] != X.shape[1]:
            raise ValueError(f"--layers starts with {layers[0]} inputs, but {args.dataset} has "
                             f"{X.shape[1]} features per sample")
        k = args.sample if args.sample is not None else int(rng.integers(len(X)))
        if not 0 <= k < len(X):
            raise ValueError(f"--sample {k} is out of range: {args.dataset} has {len(X)} samples "
                             f"(0..{len(X) - 1})")
        x, y = X[k], int(labels[k])
        source = f"sample {k} of {args.dataset}, class {classes[y]} (label {y})"
    net = Network(layers, args.activation, args.output_activation, args.loss, args.dtype,
                  "numpy", seed=args.seed)
    result = net.trace(x, y, lr=args.lr)
    with np.printoptions(precision=4, suppress=True, linewidth=100):
        print(f"fastbp trace: {source}\n{result.format(whole=100)}")
    return 0


def info(args):
    print(f"fastbp {__version__}")
    for name, facts in backends.available_backends(details=True).items():
        if facts["available"]:
            extra = "" if "openmp" not in facts else f" (OpenMP {'on' if facts['openmp'] else 'off'})"
            print(f"  {name:7s} available{extra}")
        else:
            print(f"  {name:7s} unavailable: {facts['reason']}")
    print(f"  threads: {backends.default_threads()}")
    return 0


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return {"train": train, "info": info, "trace": trace}[args.command](args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"fastbp: error: {error}", file=sys.stderr)
        return 2
