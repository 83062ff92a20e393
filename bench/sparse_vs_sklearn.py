"""fastbp.MLPClassifier against scikit-learn's MLPClassifier on the same sparse, tf-idf-like X.

The data: a random corpus of --samples training and --test documents over --features words, about
--density of the entries nonzero (0.5 %: ~250 distinct words a document), Zipf-distributed word
frequencies, each of --classes topics with its own 300 favoured words (a fraction --signal of a
document's words come from its topic: the accuracy means something); the counts become tf-idf values (1 + ln tf) idf,
each row scaled to unit length, as scikit-learn's TfidfVectorizer(sublinear_tf=True) does. X is a
scipy CSR matrix, in --input-dtype, and both libraries get that same matrix: scikit-learn's MLP
multiplies it sparse (X @ W, X.T @ delta), fastbp's first layer runs over the nonzeros; neither
densifies it.

Both estimators: one hidden layer of --hidden ReLU units, --solver (adam by default) with minibatches
of --batch-size (auto: 200), --epochs epochs (n_iter_no_change larger: every epoch runs), alpha 1e-4,
learning_rate_init --lr (scikit-learn's 0.001 by default; SGD wants more, e.g. 0.1),
the same random_state (so the same initial weights and minibatches). Each is fitted --repeats times
(fastbp after an untimed warm-up fit that compiles the kernels); the table shows the median fit time,
the test accuracy and scikit-learn's median over fastbp's (the speed-up; with several
--sklearn-blas-threads, the fastest scikit-learn is the reference).

    python bench/sparse_vs_sklearn.py [--samples 20000] [--features 50000] [--density 0.005]
        [--epochs 3] [--repeats 3] [--solver adam] [--lr 0.001] [--input-dtype float32]
        [--threads 0,1] [--backends cython,numba] [--sklearn-blas-threads 0]
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

from mnist_vs_sklearn import _blas_limit  # noqa: E402


def corpus(n, n_features, density, n_classes, signal, seed=0, dtype="float32"):
    """(X, y): n tf-idf rows (CSR, unit L2 norm) of a random topical corpus, and the topics."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    # Zipf word frequencies over a random order of the vocabulary; 300 favoured words a topic
    frequency = 1.0 / (np.arange(n_features) + 10.0)
    frequency = frequency[rng.permutation(n_features)]
    frequency /= frequency.sum()
    topics = rng.integers(0, n_features, (n_classes, 300))
    draws = rng.poisson(density * n_features * 1.15, n).clip(10)  # repeats merge: ~density left
    rows = np.repeat(np.arange(n), draws)
    words = rng.choice(n_features, rows.size, p=frequency)
    topical = rng.random(rows.size) < signal
    words[topical] = topics[y[rows[topical]], rng.integers(0, 300, topical.sum())]
    counts = sp.csr_matrix((np.ones(rows.size), (rows, words)), shape=(n, n_features))
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=n_features)
    idf = np.log((1 + n) / (1 + df)) + 1
    counts.data = (1 + np.log(counts.data)) * idf[counts.indices]
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    X = sp.diags(1 / np.maximum(norms, 1e-12)) @ counts
    return X.tocsr().astype(dtype), y


def timed(make, X, y, repeats):
    """The last fitted estimator and the median of `repeats` fit times."""
    times = []
    for _ in range(repeats):
        estimator = make()
        started = time.perf_counter()
        estimator.fit(X, y)
        times.append(time.perf_counter() - started)
    return estimator, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--features", type=int, default=50000)
    parser.add_argument("--density", type=float, default=0.005)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--signal", type=float, default=0.02,
                        help="the fraction of a document's words drawn from its topic's")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--solver", default="adam", choices=("sgd", "adam"))
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning_rate_init (default: scikit-learn's, 0.001)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input-dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", default="0,1", help="fastbp's n_threads to time (0: all)")
    parser.add_argument("--backends", default="cython,numba")
    parser.add_argument("--sklearn-blas-threads", default="0",
                        help="comma-separated BLAS thread limits for scikit-learn (0: as "
                             "configured; its sparse products do not use BLAS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkClassifier

    import fastbp
    from fastbp import MLPClassifier

    X, y = corpus(args.samples + args.test, args.features, args.density, args.classes, args.signal,
                  args.seed, args.input_dtype)
    X_train, y_train, X_test, y_test = X[:args.samples], y[:args.samples], X[args.samples:], \
        y[args.samples:]
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    same = dict(hidden_layer_sizes=(args.hidden,), solver=args.solver, batch_size=batch,
                max_iter=args.epochs, n_iter_no_change=args.epochs + 1, random_state=args.seed)
    if args.lr is not None:
        same["learning_rate_init"] = args.lr
    print(f"fastbp {fastbp.__version__}, scikit-learn {sklearn.__version__}; {os.cpu_count()} CPUs")
    print(f"X: {X_train.shape[0]} x {X_train.shape[1]} CSR {args.input_dtype}, "
          f"{X_train.nnz / np.prod(X_train.shape):.3%} nonzero ({X_train.nnz / X_train.shape[0]:.0f} "
          f"a row), {args.classes} classes; hidden {args.hidden}, {args.solver}, batch "
          f"{args.batch_size}, {args.epochs} epochs; medians of {args.repeats} fits")
    print(f"{'model':<30}{'accuracy':>9}{'fit s':>9}{'speed-up':>10}")
    reference = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for blas_threads in (int(t) for t in args.sklearn_blas_threads.split(",")):
            with _blas_limit(blas_threads):
                model, seconds = timed(lambda: SkClassifier(**same), X_train, y_train,
                                       args.repeats)
            label = "scikit-learn" + (f" blas {blas_threads}" if blas_threads else "")
            print(f"{label:<30}{model.score(X_test, y_test):>9.4f}{seconds:>9.2f}", flush=True)
            reference = min(reference, seconds)
        for backend in args.backends.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                def make(backend=backend, threads=threads):
                    return MLPClassifier(backend=backend, n_threads=threads or None, **same)
                make().set_params(max_iter=1).fit(X_train[:500], y_train[:500])  # compile
                model, seconds = timed(make, X_train, y_train, args.repeats)
                label = f"fastbp {backend} t={threads or 'all'}"
                print(f"{label:<30}{model.score(X_test, y_test):>9.4f}{seconds:>9.2f}"
                      f"{reference / seconds:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
