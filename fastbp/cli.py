"""The command line: ``fastbp train`` (handwritten digits by default, or --dataset) and ``fastbp info``."""
import argparse
import json
import sys
import time

import numpy as np

from . import __version__, backends, datasets, initializers, schedules
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
    data.add_argument("--dataset", default="digits", metavar="SPEC",
                      help="digits (bundled), mnist:DIR (IDX files), FILE.npz (arrays X, y) or "
                           "FILE.csv (the label in the last column)")
    data.add_argument("--test-fraction", type=float, default=0.2,
                      help="share of the data held out to test on")
    data.add_argument("--save", metavar="PATH", default=None,
                      help="write the trained model here (.npz; read it with fastbp.load)")
    data.add_argument("--plot", metavar="PATH", default=None,
                      help="draw the learning curves (cost and accuracy per epoch) to this image")
    data.add_argument("--json", metavar="PATH", default=None,
                      help="write the history (per-epoch metrics) as JSON to PATH ('-': stdout)")
    data.add_argument("--quiet", action="store_true", help="print only the final result")
    mpi = train.add_argument_group("training on many processes (MPI; see README)")
    mpi.add_argument("--distributed", action="store_true",
                     help="train data-parallel over MPI, each rank on its shard of the data: "
                          "mpiexec -n N fastbp train --distributed (--batch-size is the global "
                          "minibatch; rank 0 alone prints and writes files)")
    mpi.add_argument("--data", metavar="PATH", default=None,
                     help="with --distributed: train on this .npz (arrays X, y, and optionally "
                          "X_test, y_test) or directory of X.npy, y.npy; each rank reads only its "
                          "rows. Default: the bundled digits")
    mpi.add_argument("--allreduce-every", metavar="K", type=int, default=1,
                     help="with --distributed: one Allreduce and update per K minibatches")
    commands.add_parser("info", help="the backends available here and how they are built")
    return p


def _echo(text):
    """Print without breaking a progress bar."""
    try:
        from tqdm.auto import tqdm
        tqdm.write(text)
    except ImportError:
        print(text, flush=True)


def train(args):
    if args.distributed:
        from .distributed import train_cli
        return train_cli(args)
    X, y = datasets.load(args.dataset)
    classes, y = np.unique(y, return_inverse=True)  # any labels become 0..n_classes-1
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, args.test_fraction, args.seed)
    n_classes = len(classes)
    layers = args.layers or [X.shape[1], 64, n_classes]
    backend = backends.resolve(args.backend)
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 0.001)
    net = Network(layers, args.activation, args.output_activation, args.loss, args.dtype, backend,
                  args.threads, args.seed, args.init)
    if not args.quiet:
        print(f"fastbp {__version__}: {net}")
        print(f"{args.dataset}: {len(X_train)} training and {len(X_test)} test samples of "
              f"{X.shape[1]} features, {n_classes} classes; {args.epochs} epochs, minibatches of {args.batch_size}, {args.optimizer} lr "
              f"{lr}, l2 {args.l2}" + (f", momentum {args.momentum}" if args.optimizer == "sgd" else "")
              + f", {net._threads()} threads", flush=True)

    def progress(epoch, m):
        if not args.quiet:
            _echo(f"epoch {epoch:3d}/{args.epochs}  train loss {m['train_loss']:.4f} acc "
                  f"{m['train_accuracy']:.4f}  test loss {m['val_loss']:.4f} acc "
                  f"{m['val_accuracy']:.4f}  {m['seconds']:.2f}s")

    started = time.perf_counter()
    status, note = 0, ""
    try:
        net.fit(X_train, y_train, args.epochs, args.batch_size, lr, args.l2,
                args.momentum if args.optimizer == "sgd" else 0.0,
                validation_data=(X_test, y_test), optimizer=args.optimizer,
                nesterov=args.nesterov, schedule=args.schedule, dropout=args.dropout,
                early_stopping=args.early_stopping, patience=args.patience,
                metrics=("train_loss", "train_accuracy", "val_loss", "val_accuracy"),
                callback=progress, progress=not args.quiet and sys.stderr.isatty())
    except TrainingDiverged as error:
        print(f"fastbp: {error}", file=sys.stderr)
        status, note = 1, " (diverged)"
    except KeyboardInterrupt:
        status, note = 130, " (interrupted)"
    history = net.history
    if history.best_epoch is not None and not args.quiet:
        print(f"best epoch {history.best_epoch}" + (
            f" (stopped after epoch {history.stopped_epoch})" if history.stopped_epoch else "")
            + "; its parameters are kept")
    result = net.evaluate(X_test, y_test)
    print(f"test accuracy {result.accuracy:.4f}  test loss {result.loss:.4f}  "
          f"({time.perf_counter() - started:.2f}s){note}")
    if args.save:
        net.save(args.save)
        print(f"model saved to {args.save}")
    if args.plot:
        from .plotting import plot_learning_curves
        plot_learning_curves(history, args.plot, title=(
            f"{args.dataset}: {'-'.join(map(str, layers))} {args.activation}, {args.optimizer}, "
            f"dropout {args.dropout}, test accuracy {result.accuracy:.4f}"))
        print(f"learning curves drawn to {args.plot}")
    if args.json:
        record = {"epochs": history.epochs, "best_epoch": history.best_epoch,
                  "stopped_epoch": history.stopped_epoch, "test_accuracy": result.accuracy,
                  "test_loss": result.loss, "history": dict(history)}
        text = json.dumps(record, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return status


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
        return {"train": train, "info": info}[args.command](args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"fastbp: error: {error}", file=sys.stderr)
        return 2
