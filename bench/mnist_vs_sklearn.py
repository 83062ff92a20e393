"""fastbp.MLPClassifier against scikit-learn's MLPClassifier, at the same settings, on MNIST and the digits.

Both estimators get the same parameters: by default one hidden layer of 100 ReLU units, solver "sgd"
with minibatches of 10, 30 epochs, scikit-learn's defaults otherwise (learning_rate_init 0.001,
Nesterov momentum 0.9, alpha 1e-4), the same random_state, and n_iter_no_change larger than the epochs
so that both run all of them (--solver adam or lbfgs, --batch-size auto, --hidden, --epochs change
them; for lbfgs --epochs is max_iter). fastbp's estimator starts from scikit-learn's initial weights
and visits the samples in scikit-learn's order, so in float64 the two follow the same trajectory up to
rounding.

--input-dtype float32 feeds both libraries float32 inputs: scikit-learn's MLP then computes in float32,
and so does fastbp's estimator with dtype=None ("auto" in --dtypes; the default dtypes force float32
and float64 whatever the input).

Data: the MNIST directory given (the IDX files of t10k; first 8,000 images to train, last 2,000 to
test), and scikit-learn's 8x8 digits (fastbp.datasets.train_test_split, 20 % test, seed 0).

For each data set it fits scikit-learn's MLPClassifier, then fastbp.MLPClassifier with each compiled
backend in float32 and float64, with every CPU (t=all) and with one thread (t=1), and prints the
test accuracy, the fit time (the best of --repeats fits; a fit of fastbp is preceded by an untimed
warm-up fit, so that compiling kernels is not counted), the accuracy difference from scikit-learn in
points and the time ratio. scikit-learn is timed with its BLAS as configured and with one BLAS
thread (threadpoolctl); the faster is the reference.

    python bench/mnist_vs_sklearn.py ../shared/data/mnist-t10k [--epochs 30] [--repeats 1]
        [--threads 0,1] [--sklearn-blas-threads 0,1] [--backends numba,cython] [--skip-digits]
        [--solver sgd] [--batch-size 10|auto] [--hidden 100] [--input-dtype float64|float32]
        [--dtypes float32,float64,auto]
"""
import argparse
import os
import sys
import time
import warnings

if __name__ == "__main__":  # before numpy loads: the project's clean BLAS environment (bench/)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import benchenv
        benchenv.reexec_clean()
    except ImportError:
        pass

import numpy as np  # noqa: E402


def settings(args):
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    return dict(hidden_layer_sizes=(args.hidden,), solver=args.solver, batch_size=batch_size,
                max_iter=args.epochs, n_iter_no_change=args.epochs + 1, random_state=args.seed)


def _blas_limit(threads):
    """A context limiting the BLAS threads to `threads` (0: leave them as they are)."""
    import contextlib
    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads, user_api="blas")


def timed_fit(make, X, y, repeats):
    """The fitted estimator of the last of `repeats` fits and the best fit time."""
    best = np.inf
    for _ in range(repeats):
        estimator = make()
        started = time.perf_counter()
        estimator.fit(X, y)
        best = min(best, time.perf_counter() - started)
    return estimator, best


def compare(name, X_train, y_train, X_test, y_test, args):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkClassifier

    from fastbp.estimators import MLPClassifier

    X_train, X_test = (X.astype(args.input_dtype) for X in (X_train, X_test))
    epochs = "iterations at most" if args.solver == "lbfgs" else "epochs"
    print(f"\n{name}: {len(X_train)} training, {len(X_test)} test samples, {X_train.shape[1]} "
          f"features ({args.input_dtype}); hidden {args.hidden}, {args.solver}, batch "
          f"{args.batch_size}, {args.epochs} {epochs}")
    print(f"{'model':<30}{'accuracy':>9}{'fit s':>9}{'Δ points':>10}{'time ratio':>12}")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # scikit-learn with its BLAS as configured, and with one BLAS thread (often faster for
        # minibatches of 10); the ratios are taken against the faster of the two
        ref_time, ref_accuracy = np.inf, None
        for blas_threads in args.sklearn_blas_threads:
            with _blas_limit(blas_threads):
                ref, seconds = timed_fit(lambda: SkClassifier(**settings(args)), X_train,
                                         y_train, args.repeats)
            accuracy = ref.score(X_test, y_test)
            label = "scikit-learn" + (f" blas {blas_threads}" if blas_threads else "")
            print(f"{label:<30}{accuracy:>9.4f}{seconds:>9.2f}", flush=True)
            if seconds < ref_time:
                ref_time, ref_accuracy = seconds, accuracy
        for backend in args.backends:
            for dtype in args.dtypes:
                for threads in args.threads:
                    def make(backend=backend, dtype=dtype, threads=threads):
                        return MLPClassifier(backend=backend,
                                             dtype=None if dtype == "auto" else dtype,
                                             n_threads=threads or None, **settings(args))
                    make().set_params(max_iter=1).fit(X_train[:200], y_train[:200])  # warm-up
                    model, seconds = timed_fit(make, X_train, y_train, args.repeats)
                    accuracy = model.score(X_test, y_test)
                    rows.append((backend, dtype, threads, accuracy, seconds))
                    label = f"fastbp {backend} {dtype} t={threads or 'all'}"
                    print(f"{label:<30}{accuracy:>9.4f}{seconds:>9.2f}"
                          f"{100 * (accuracy - ref_accuracy):>+10.2f}"
                          f"{f'1/{ref_time / seconds:.1f}':>12}", flush=True)
    return ref_accuracy, ref_time, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mnist", help="directory of the MNIST t10k IDX files (raw or .gz)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", default="10", help="an int, or auto: min(200, n)")
    parser.add_argument("--solver", default="sgd", choices=("sgd", "adam", "lbfgs"))
    parser.add_argument("--input-dtype", default="float64", choices=("float64", "float32"),
                        help="the inputs both libraries are fed")
    parser.add_argument("--dtypes", default="float32,float64",
                        help="fastbp's dtype settings to time (auto: dtype=None, the input's)")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="fits per model; the best time")
    parser.add_argument("--threads", default="0,1",
                        help="comma-separated n_threads to time fastbp with (0: every CPU)")
    parser.add_argument("--backends", default="numba,cython")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--sklearn-blas-threads", default="0,1",
                        help="comma-separated BLAS thread limits to time scikit-learn with "
                             "(0: as configured); the fastest is the reference")
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    args.sklearn_blas_threads = [int(t) for t in args.sklearn_blas_threads.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    args.dtypes = args.dtypes.split(",")

    import sklearn

    import fastbp
    from fastbp import datasets

    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{p['internal_api']} {p['num_threads']} threads"
                         for p in threadpool_info() if p["user_api"] == "blas")
    except ImportError:
        blas = "threadpoolctl not installed"
    print(f"fastbp {fastbp.__version__}, scikit-learn {sklearn.__version__}, numpy "
          f"{np.__version__} (BLAS: {blas}); {os.cpu_count()} CPUs")

    X, y = datasets.load_mnist(args.mnist, kind="t10k")
    if len(X) < 10000:
        raise SystemExit(f"{args.mnist}: expected the 10,000 t10k images, found {len(X)}")
    compare("MNIST t10k", X[:8000], y[:8000], X[-2000:], y[-2000:], args)
    if not args.skip_digits:
        X, y = datasets.load_digits()
        X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, 0.2, seed=0)
        compare("digits", X_train, y_train, X_test, y_test, args)


if __name__ == "__main__":
    main()
