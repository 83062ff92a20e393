"""The command line: ``fastbp train`` (handwritten digits by default) and ``fastbp info``."""
import argparse
import sys
import time

from . import __version__, backends, datasets
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
    train.add_argument("--layers", type=_layers, default=None,
                       help="units per layer, input first; default: inputs,64,classes")
    train.add_argument("--activation", default="relu", choices=codes.HIDDEN_ACTIVATIONS)
    train.add_argument("--output-activation", default=None, choices=tuple(codes.ACTIVATIONS),
                       help="default: softmax for cross_entropy, else the hidden activation")
    train.add_argument("--loss", default="cross_entropy", choices=tuple(codes.LOSSES))
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--l2", type=float, default=1e-4)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--backend", default="numba", choices=backends.BACKENDS)
    train.add_argument("--threads", type=int, default=None, help="default: every CPU")
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--test-fraction", type=float, default=0.2,
                       help="share of the data held out to test on")
    train.add_argument("--save", metavar="PATH", default=None,
                       help="write the trained model here (.npz; read it with fastbp.load)")
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    commands.add_parser("info", help="the backends available here and how they are built")
    return p


def train(args):
    X, y = datasets.load_digits()
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, args.test_fraction, args.seed)
    n_classes = int(y.max()) + 1
    layers = args.layers or [X.shape[1], 64, n_classes]
    net = Network(layers, args.activation, args.output_activation, args.loss, args.dtype,
                  args.backend, args.threads, args.seed)
    if not args.quiet:
        print(f"fastbp {__version__}: {net}")
        print(f"digits: {len(X_train)} training and {len(X_test)} test images of {X.shape[1]} "
              f"pixels; {args.epochs} epochs, minibatches of {args.batch_size}, lr {args.lr}, "
              f"l2 {args.l2}, momentum {args.momentum}, {net._threads()} threads", flush=True)
    def progress(epoch, m):
        if not args.quiet:
            print(f"epoch {epoch:3d}/{args.epochs}  train loss {m['train_loss']:.4f} acc "
                  f"{m['train_accuracy']:.4f}  test loss {m['val_loss']:.4f} acc "
                  f"{m['val_accuracy']:.4f}  {m['seconds']:.2f}s", flush=True)

    started = time.perf_counter()
    status, note = 0, ""
    try:
        net.fit(X_train, y_train, args.epochs, args.batch_size, args.lr, args.l2, args.momentum,
                validation_data=(X_test, y_test), monitor_training=True, callback=progress)
    except TrainingDiverged as error:
        print(f"fastbp: {error}", file=sys.stderr)
        status, note = 1, " (diverged)"
    except KeyboardInterrupt:
        status, note = 130, " (interrupted)"
    result = net.evaluate(X_test, y_test)
    print(f"test accuracy {result.accuracy:.4f}  test loss {result.loss:.4f}  "
          f"({time.perf_counter() - started:.2f}s){note}")
    if args.save:
        net.save(args.save)
        print(f"model saved to {args.save}")
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
    except (ValueError, TypeError, ImportError) as error:
        print(f"fastbp: error: {error}", file=sys.stderr)
        return 2
