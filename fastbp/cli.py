"""The command line: ``fastbp train`` (handwritten digits by default, or --dataset), ``fastbp info``,
``fastbp evaluate`` / ``fastbp predict`` (a saved model on a dataset) and ``fastbp trace`` (one
backpropagation, printed in the course's notation)."""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from . import (backends, checkpoints, datasets, distributed, initializers, modelfile,
               schedules, training)
from .kernels import codes
from .version import __version__
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
    fit.add_argument("--momentum", type=float, default=None, help="sgd only; default 0.9")
    fit.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    fit.add_argument("--l2", type=float, default=1e-4)
    fit.add_argument("--schedule", default="constant", choices=tuple(schedules.SCHEDULES),
                     help="learning rate per epoch")
    fit.add_argument("--dropout", type=float, default=0.0, help="dropout rate of the hidden layers")
    fit.add_argument("--early-stopping", action="store_true",
                     help="stop when the validation loss stops improving; keep the best epoch")
    fit.add_argument("--patience", type=int, default=None,
                     help="with --early-stopping: epochs without improvement; default 10")
    fit.add_argument("--gradient-norms", action="store_true",
                     help="record each layer's gradient norm |dW| per epoch (printed, in --json, "
                          "and a panel of --plot): vanishing gradients show here")
    data = train.add_argument_group("data and output")
    data.add_argument("--dataset", "--data", default="digits", metavar="SPEC",
                      help="digits (bundled), mnist:DIR (IDX files), FILE.npz (arrays X, y and "
                           "optionally a test set X_test, y_test), a directory of X.npy and y.npy "
                           "(and optionally X_test.npy, y_test.npy), or FILE.csv (the label in the "
                           "last column unless --label-column says otherwise); with --distributed "
                           "each rank reads only its rows of an .npz archive or a directory")
    data.add_argument("--label-column", metavar="COLUMN", default=None,
                      help="CSV only: the label's column: an index (negative from the end), "
                           "first, last or a header name; default last")
    data.add_argument("--test-fraction", type=float, default=None,
                      help="share of the data held out to test on, once, at the end; default 0.2 "
                           "(not for a dataset with its own test set)")
    data.add_argument("--validation-fraction", type=float, default=0.1,
                      help="share of the training data held out to validate on after each epoch "
                           "(what --early-stopping and --schedule plateau watch); 0 for none")
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
    data.add_argument("--checkpoint", metavar="PATH", default=None,
                      help="after every --checkpoint-every epochs write all that training needs to "
                           "continue; rerunning the same command (after a crash, Ctrl-C or kill) "
                           "resumes from it and ends with the same model")
    data.add_argument("--checkpoint-every", metavar="K", type=int, default=None,
                      help="with --checkpoint: epochs between checkpoints; default 1")
    data.add_argument("--fresh", action="store_true",
                      help="with --checkpoint: start afresh, overwriting the checkpoint")
    data.add_argument("--quiet", action="store_true", help="print only the final result")
    mpi = train.add_argument_group("training on many processes (MPI; see README)")
    mpi.add_argument("--distributed", action="store_true",
                     help="train data-parallel over MPI, each rank on its shard of the data: "
                          "mpiexec -n N fastbp train --distributed (--batch-size is the global "
                          "minibatch; rank 0 alone prints and writes files)")
    mpi.add_argument("--allreduce-every", metavar="K", type=int, default=1,
                     help="with --distributed: one Allreduce and update per K minibatches")
    mpi.add_argument("--global-shuffle", action="store_true",
                     help="with --distributed: every rank reads all the data and trains on the "
                          "minibatches one process would (the same model as without MPI, for any "
                          "number of ranks), each split among the ranks")
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
    _model_commands(commands)
    return p


LABELS_HELP = ("labels are taken as the sorted distinct values of the dataset's labels: the "
               "smallest is class 0 of the model, the next class 1, and so on (as train numbers "
               "them)")


def _model_commands(commands):
    """The parsers of ``fastbp evaluate`` and ``fastbp predict`` (a saved model on a dataset)."""
    for name, text in (("evaluate", ("the mean cost, the accuracy and a per-class table of a "
                                     "saved model on a dataset")),
                       ("predict", ("write a saved model's predicted labels (or its outputs) for "
                                    "every sample of a dataset, as CSV"))):
        command = commands.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}; "
                                      f"{LABELS_HELP}.")
        command.add_argument("model", metavar="MODEL", help="a model file (fastbp train --save, "
                             "Network.save)")
        command.add_argument("--dataset", "--data", required=True, metavar="SPEC",
                             help="digits, mnist:DIR, FILE.npz or FILE.csv (see fastbp train); "
                                  "the whole dataset is used")
        command.add_argument("--backend", default="auto", choices=("auto",) + backends.BACKENDS,
                             help="default: auto (cython when built, else numba)")
        command.add_argument("--threads", type=int, default=None, metavar="N",
                             help="default: every CPU")
        if name == "predict":
            command.add_argument("--output", "-o", default="-", metavar="FILE.csv",
                                 help="where to write: one line per sample in the data's order, "
                                      "after a header; default '-': stdout")
            command.add_argument("--proba", action="store_true",
                                 help="write the output activations (p0,p1,... for sigmoid and "
                                      "softmax outputs, else output0,...) instead of labels")
            command.add_argument("--indices", action="store_true",
                                 help="write the predicted class index 0..n-1 instead of the "
                                      "dataset's label it stands for")


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
        if args.allreduce_every != 1 or args.global_shuffle:
            raise ValueError("--allreduce-every and --global-shuffle need --distributed")
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("--distributed needs mpi4py and an MPI library: pip install "
                          "'fastbp[mpi]'") from None
    return MPI.COMM_WORLD


def _data(args, c):
    """(X, y, X_test, y_test, where they come from) of this rank. The test set is the dataset's own
    (X_test, y_test) when it has one, else a --test-fraction share held out. Over MPI an .npz archive
    or a directory of .npy files is read rank by rank (its rows only; without a test set a share of
    each shard is held out); any other dataset is read whole and split, and each rank takes its block
    of rows."""
    spec = args.dataset
    own_test = datasets.has_arrays(spec, datasets.TEST_KEYS)
    if own_test and args.test_fraction is not None:
        raise ValueError(f"--test-fraction: {spec} has its own test set (X_test, y_test)")
    fraction = 0.2 if args.test_fraction is None else args.test_fraction
    held_out = f"{fraction:g} held out for testing"
    whole = c.size == 1 or args.global_shuffle  # every rank reads every row
    if not whole and (os.path.isdir(spec) or spec.lower().endswith(".npz")):
        X, y = distributed.load_shard(spec, c.rank, c.size)
        if own_test:
            X_test, y_test = distributed.load_shard(spec, c.rank, c.size, datasets.TEST_KEYS)
            return X, y, X_test, y_test, f"{spec} (with its test set)"
        X, X_test, y, y_test = datasets.train_test_split(X, y, fraction, [args.seed, c.rank])
        return X, y, X_test, y_test, f"{spec} ({held_out} from each shard)"
    X, y = datasets.load(spec, label_column=args.label_column)
    if own_test:
        (X_test, y_test), source = datasets.load_npz(spec, datasets.TEST_KEYS), f"{spec} (with its test set)"
    else:
        X, X_test, y, y_test = datasets.train_test_split(X, y, fraction, args.seed)
        source = f"{spec} ({held_out})"
    if args.label_column is not None:
        source += f", labels in column {args.label_column}"
    if not whole:
        (X, y), (X_test, y_test) = (
            tuple(a[slice(*distributed.shard_range(len(Xs), c.rank, c.size))] for a in (Xs, ys))
            for Xs, ys in ((X, y), (X_test, y_test)))
    return X, y, X_test, y_test, source


MAX_CLASSES = 256  # more distinct labels than this (or than half the samples) are not class labels


def _classes(args, *label_sets):
    """The sorted distinct labels of every set: the classes (label k is output unit k). Refuses
    labels that do not look like classes (fractional numbers, or about one class per sample), which
    is what a wrong label column gives."""
    labels = np.concatenate([np.asarray(y) for y in label_sets])
    classes = np.unique(labels)
    fractional = labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))
    if fractional or len(classes) > MAX_CLASSES or len(classes) > max(10, len(labels) // 2):
        what = (f"fractional values such as {labels[labels != np.round(labels)][0]!r}" if fractional
                else f"{len(classes)} distinct values in {len(labels)} samples")
        hint = ("; choose the label's column with --label-column (an index, first, last or a header "
                "name)" if str(args.dataset).lower().endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz"))
                else "")
        raise ValueError(f"the labels of {args.dataset} do not look like class labels ({what}){hint}")
    return classes


def _check_options(args):
    """Options that would be silently ignored are refused (exit 2)."""
    if args.optimizer != "sgd" and (args.momentum is not None or args.nesterov):
        raise ValueError(f"--momentum and --nesterov apply to --optimizer sgd, not {args.optimizer}")
    if args.patience is not None and not args.early_stopping:
        raise ValueError("--patience applies to --early-stopping")
    if (args.checkpoint_every is not None or args.fresh) and args.checkpoint is None:
        raise ValueError("--checkpoint-every and --fresh apply to --checkpoint")
    if not 0 <= args.validation_fraction < 1:
        raise ValueError(f"--validation-fraction must be in [0, 1), got {args.validation_fraction}")
    if args.validation_fraction == 0 and (args.early_stopping or args.schedule == "plateau"):
        raise ValueError("--early-stopping and --schedule plateau watch the validation set: give "
                         "--validation-fraction > 0 (the test set stays unseen until the end)")


def train(args):
    """``fastbp train``, in one process or (--distributed) on every MPI rank: rank 0 alone prints
    and writes files. Returns the exit status (the same on every rank).

    Three sets: the network trains on the training set; after each epoch it is measured on the
    validation set (--validation-fraction of the training data), which early stopping and the
    plateau schedule watch; the test set is used once, for the final report."""
    _check_options(args)
    comm = _communicator(args)
    c = distributed.Comm(comm)
    lead = c.rank == 0

    def say(text):
        if lead and not args.quiet:
            _echo(text)

    try:
        X, y, X_test, y_test, source = distributed.agree(c, "reading the data",
                                                         lambda: _data(args, c))
        X_val, y_val = X[:0], y[:0]
        if args.validation_fraction > 0:
            split = [args.seed, 0 if args.global_shuffle else c.rank, 1]
            X, X_val, y, y_val = distributed.agree(c, "holding out the validation set", lambda: (
                datasets.train_test_split(X, y, args.validation_fraction, split)))
        classes = distributed.agree(c, "reading the labels", lambda: _classes(
            args, *c.allgather(np.concatenate([np.asarray(y), y_val, y_test]))))
        y, y_val, y_test = (np.searchsorted(classes, labels) for labels in (y, y_val, y_test))
        counts = np.sum(c.allgather((len(X), len(X_val), len(X_test))), axis=0)
        if args.global_shuffle:  # every rank holds every row: count them once
            counts //= c.size
        layers = args.layers or [X.shape[1], 64, len(classes)]
        shape = distributed.agree(c, "--plot-weights", lambda: _image_shape(args, X.shape[1]))
        lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 0.001)
        momentum = (0.9 if args.momentum is None else args.momentum) if args.optimizer == "sgd" else 0.0
        net = distributed.agree(c, "building the network", lambda: Network(
            layers, args.activation, args.output_activation, args.loss, args.dtype, args.backend,
            args.threads, args.seed, args.init))
        threads = distributed.default_threads(comm, net.n_threads) if comm else net.threads
        say(f"fastbp {__version__}: {net}")
        shares = "+".join(map(str, distributed.local_batch_sizes(args.batch_size, c.size)))
        say(f"{source}: {counts[0]} training, {counts[1]} validation and {counts[2]} test samples of "
            f"{X.shape[1]} features, {len(classes)} classes; {args.epochs} epochs, minibatches of "
            f"{args.batch_size}" + (f" on {c.size} ranks ({shares} rows each)" if comm else "")
            + f", {args.optimizer} lr {lr}, l2 {args.l2}"
            + (f", momentum {momentum}" if args.optimizer == "sgd" else "")
            + f", {threads} thread{'s' if threads > 1 else ''}{' per rank' if comm else ''}"
            + (f", one Allreduce and update per {args.allreduce_every} minibatches"
               if args.allreduce_every > 1 else ""))
        validation = (X_val, y_val) if counts[1] else None

        # Where a checkpoint resumes is said once fit has accepted it (its fingerprint checked):
        # with the first epoch's line, or after fit when nothing was left to train.
        resuming = []
        if args.checkpoint and not args.fresh:
            found = checkpoints.peek(args.checkpoint) if lead else None
            if found:
                resuming.append(training.resuming_line(*found[:2], args.checkpoint, found[2]))

        def announce():
            while resuming:
                say(resuming.pop())

        def progress(epoch, m):
            announce()
            say(f"epoch {epoch:3d}/{args.epochs}  train loss {m['train_loss']:.4f} acc "
                f"{m['train_accuracy']:.4f}"
                + (f"  val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.4f}" if validation else "")
                + f"  {m['seconds']:.2f}s"
                + (f"  allreduce {100 * m['comm_share']:.1f}%" if "comm_share" in m else "")
                + ("  |dW| " + " ".join(f"{m[f'gradient_norm_{k}']:.2g}" for k in range(1, len(layers)))
                   if args.gradient_norms else ""))

        started = time.perf_counter()
        status, note = 0, ""
        try:
            net.fit(X, y, args.epochs, args.batch_size, lr, args.l2, momentum,
                    validation_data=validation, optimizer=args.optimizer, nesterov=args.nesterov,
                    schedule=args.schedule, dropout=args.dropout,
                    early_stopping=args.early_stopping,
                    patience=10 if args.patience is None else args.patience,
                    metrics=("train_loss", "train_accuracy")
                    + (("val_loss", "val_accuracy") if validation else ())
                    + (("gradient_norms",) if args.gradient_norms else ()),
                    callback=progress, progress=lead and not args.quiet and sys.stderr.isatty(),
                    checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every or 1,
                    resume=not args.fresh, comm=comm, allreduce_every=args.allreduce_every,
                    shuffle="global" if args.global_shuffle else True)
        except TrainingDiverged as error:
            announce()
            if lead:
                print(f"fastbp: {error}", file=sys.stderr)
            status, note = 1, " (diverged)"
        except KeyboardInterrupt:
            status, note = 130, " (interrupted)"
        announce()
        history = net.history
        if history.interrupted is not None:
            epoch, done = history.interrupted
            say(f"interrupted in epoch {epoch} after {done} of its {'updates' if comm else 'minibatches'}"
                f"; {history.epochs} epochs recorded")
        if history.best_epoch is not None:
            say(f"best epoch {history.best_epoch} (by validation loss)" + (
                f", stopped after epoch {history.stopped_epoch}" if history.stopped_epoch else "")
                + "; its parameters are kept")
        if args.global_shuffle:  # each rank measures its block of the test set
            X_test, y_test = (a[slice(*distributed.shard_range(len(X_test), c.rank, c.size))]
                              for a in (X_test, y_test))
        result = distributed.evaluate(net, X_test, y_test, comm, threads) if comm else \
            net.evaluate(X_test, y_test)
        shares = history.get("comm_share", [])
        if lead:
            print(f"test accuracy {result.accuracy:.4f}  test loss {result.loss:.4f}  "
                  f"({time.perf_counter() - started:.2f}s"
                  + (f" on {c.size} ranks" if comm else "")
                  + (f", {100 * np.mean(shares):.1f}% in allreduce" if shares else "") + f"){note}",
                  flush=True)
        sizes = dict(zip(("train", "validation", "test"), map(int, counts)))
        for line in distributed.agree(c, "writing the results", lambda: _write_results(
                args, net, history, result, layers, c.size, sizes) if lead else ()):
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


def history_record(history, result=None, sizes=None):
    """A JSON-ready dict of a History: the per-epoch metrics (``train_*`` on the training set,
    ``val_*`` on the validation set), where an interruption stopped it, the final test result, the
    sets' sizes and, for distributed training, the ranks, threads, seed, shards and each update's
    seconds."""
    record = {"epochs": history.epochs, "best_epoch": history.best_epoch,
              "stopped_epoch": history.stopped_epoch, "history": dict(history),
              "interrupted": None if history.interrupted is None else dict(
                  zip(("epoch", "minibatches_done"), history.interrupted))}
    if result is not None:
        record.update(test_accuracy=result.accuracy, test_loss=result.loss)
    if sizes is not None:
        record["samples"] = sizes
    if getattr(history, "ranks", None) is not None:
        record.update(ranks=history.ranks, threads_per_rank=history.threads, seed=history.seed,
                      shard_sizes=history.shard_sizes, local_batch_sizes=history.local_batch_sizes,
                      update_seconds=[a.tolist() for a in history.batch_seconds],
                      allreduce_seconds=[a.tolist() for a in history.allreduce_seconds])
    return record


def _write_results(args, net, history, result, layers, ranks, sizes):
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
        text = json.dumps(history_record(history, result, sizes), indent=1)
        if args.json == "-":
            lines.append(text)
        else:
            modelfile.write_atomically(args.json, lambda f: f.write((text + "\n").encode()))
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
        if "variant" in facts:
            cpu = f"; this CPU: {facts['cpu']}" if facts["cpu"] else ""
            print(f"          variant {facts['variant']} of {', '.join(facts['variants'])} "
                  f"(FASTBP_CPU={facts['choice']}{cpu})")
            flags = " ".join(facts["flags"]) if facts["flags"] is not None else "not recorded"
            print(f"          compiled by {facts['compiler'] or '?'}, FASTBP_ARCH={facts['build'] or '?'}: "
                  f"{flags}")
    print(f"  threads: {backends.default_threads()}")
    return 0


def _model_on_data(args):
    """The model file and the dataset of ``evaluate`` / ``predict``, checked to fit each other:
    (net, X, dataset labels, their sorted distinct values, the model's number of classes)."""
    from .network import load
    net = load(args.model, args.backend, args.threads)
    X, y = datasets.load(args.dataset)
    if X.shape[1] != net.layer_sizes[0]:
        raise ValueError(f"{args.model} takes {net.layer_sizes[0]} features per sample, but "
                         f"{args.dataset} has {X.shape[1]}")
    n_classes = max(net.layer_sizes[-1], 2)  # one output unit: two classes, output > 0.5
    return net, X, y, np.unique(y), n_classes


def evaluate(args):
    """``fastbp evaluate``: the mean cost, the accuracy and a table per class."""
    net, X, y, classes, n_classes = _model_on_data(args)
    if len(classes) > n_classes:
        raise ValueError(f"{args.dataset} has {len(classes)} distinct labels, but {args.model} "
                         f"tells {n_classes} classes apart")
    if len(classes) < n_classes:
        print(f"fastbp: note: {args.dataset} has {len(classes)} distinct labels and {args.model} "
              f"{n_classes} classes; label i is taken as class i", file=sys.stderr)
    labels = np.searchsorted(classes, y)
    targets = labels if net.layer_sizes[-1] > 1 else labels[:, None].astype(float)
    result = net.evaluate(X, targets)
    predicted = net.predict(X)
    print(f"{args.model} on {args.dataset}: {len(X)} samples, {len(classes)} classes")
    print(f"mean cost {result.loss:.6g}  accuracy {result.accuracy:.4f}")
    width = max(5, *(len(str(c)) for c in classes))
    print(f"{'class':>{width}}  {'samples':>7}  {'accuracy':>8}  {'precision':>9}")
    for index, label in enumerate(classes):
        mine, chosen = labels == index, predicted == index
        hits = int(np.sum(mine & chosen))
        precision = f"{hits / chosen.sum():.4f}" if chosen.any() else "-"
        print(f"{label!s:>{width}}  {int(mine.sum()):7d}  {hits / mine.sum():8.4f}  "
              f"{precision:>9}")
    return 0


def predict(args):
    """``fastbp predict``: a CSV of the predicted labels (or the outputs) of every sample."""
    import contextlib
    import csv
    net, X, _, classes, n_classes = _model_on_data(args)
    if args.proba:
        outputs = net.forward(X)
        prefix = "p" if net.output_activation in ("sigmoid", "softmax") else "output"
        header = [f"{prefix}{i}" for i in range(outputs.shape[1])]
        digits = 9 if outputs.dtype == np.float32 else 17
        rows = ([f"{value:.{digits}g}" for value in row] for row in outputs.tolist())
    else:
        predicted = net.predict(X)
        if not args.indices:
            if len(classes) != n_classes:
                raise ValueError(f"{args.dataset} has {len(classes)} distinct labels but "
                                 f"{args.model} tells {n_classes} classes apart, so which label "
                                 f"each class stands for is unknown; use --indices")
            predicted = classes[predicted]
        header, rows = ["label"], ([value] for value in predicted.tolist())
    with (contextlib.nullcontext(sys.stdout) if args.output == "-" else
          open(args.output, "w", newline="")) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    if args.output != "-":
        print(f"{len(X)} {'outputs' if args.proba else 'labels'} written to {args.output}")
    return 0


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return {"train": train, "info": info, "evaluate": evaluate, "predict": predict,
                "trace": trace}[args.command](args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"fastbp: error: {error}", file=sys.stderr)
        return 2
