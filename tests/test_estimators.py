"""fastbp's scikit-learn estimators: scikit-learn's own checks, agreement with scikit-learn's MLPs step
for step, and their use in pipelines, grid searches and cross-validation."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp.datasets import load_digits  # noqa: E402
from fastbp.estimators import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def small(digits):
    """300 digits: small enough for many fits, real enough to learn something."""
    X, y = digits
    return X[:300], y[:300]


# --------------------------------------------------------------------------- scikit-learn's checks

@parametrize_with_checks([MLPClassifier(max_iter=100, backend="cython", n_threads=1),
                          MLPRegressor(max_iter=100, backend="cython", n_threads=1),
                          MLPClassifier(max_iter=100, backend="numba", solver="sgd", n_threads=1),
                          MLPRegressor(max_iter=100, backend="numba", solver="sgd", n_threads=1),
                          MLPClassifier(max_iter=100, backend="cython", solver="lbfgs", n_threads=1),
                          MLPRegressor(max_iter=100, backend="numba", solver="lbfgs", n_threads=1)])
def test_sklearn_checks(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------- same numbers as sklearn

def _pairs(ours, theirs):
    return list(zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_))


AGREEMENT = {
    "sgd": dict(solver="sgd", batch_size=10),
    "sgd-alpha-partial-batch": dict(solver="sgd", batch_size=13, alpha=0.01),
    "sgd-no-nesterov-relu": dict(solver="sgd", batch_size=16, nesterovs_momentum=False),
    "sgd-no-momentum-logistic": dict(solver="sgd", momentum=0.0, activation="logistic",
                                     learning_rate_init=0.1),
    "invscaling": dict(solver="sgd", batch_size=13, learning_rate="invscaling",
                       learning_rate_init=0.1),
    "adaptive": dict(solver="sgd", batch_size=32, learning_rate="adaptive", tol=1.0,
                     n_iter_no_change=1, max_iter=8),
    "early-stopping": dict(solver="sgd", batch_size=13, early_stopping=True, max_iter=12,
                           n_iter_no_change=2),
    "tol-stop": dict(solver="sgd", batch_size=20, tol=0.5, n_iter_no_change=2, max_iter=20),
    "no-shuffle-tanh-two-layers": dict(solver="sgd", activation="tanh", shuffle=False,
                                       hidden_layer_sizes=(12, 8)),
    "identity-no-hidden-layer": dict(solver="sgd", activation="identity", hidden_layer_sizes=()),
}


# every configuration on multiclass targets; a few also on binary and text labels
CASES = [(name, "multiclass") for name in AGREEMENT] + [
    ("sgd-alpha-partial-batch", "binary"), ("no-shuffle-tanh-two-layers", "binary"),
    ("early-stopping", "strings"), ("invscaling", "strings"), ("identity-no-hidden-layer", "binary")]


@pytest.mark.parametrize("name, target", CASES)
def test_classifier_follows_sklearn(small, compiled, name, target):
    """Same random_state, same parameters: the same weights as scikit-learn's, to rounding."""
    X, y = small
    y = {"multiclass": y, "binary": y > 4, "strings": np.array(["odd", "even"])[y % 2]}[target]
    params = dict(dict(hidden_layer_sizes=(16,), random_state=0, max_iter=4), **AGREEMENT[name])
    ours = MLPClassifier(backend=compiled, **params).fit(X, y)
    theirs = SkClassifier(**params).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    assert ours.out_activation_ == theirs.out_activation_
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    for a, b in _pairs(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
        assert ours.best_loss_ is None and theirs.best_loss_ is None
    else:
        assert ours.validation_scores_ is None
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-4)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-8,
                               atol=1e-10)


@pytest.mark.parametrize("outputs", [1, 2])
def test_regressor_follows_sklearn(small, compiled, outputs):
    X, _ = small
    y = X[:, 20] if outputs == 1 else X[:, [20, 36]] * [1.0, -2.0]
    params = dict(hidden_layer_sizes=(16,), random_state=1, max_iter=5, solver="sgd",
                  batch_size=23, alpha=0.001, learning_rate_init=0.01)
    ours = MLPRegressor(backend=compiled, **params).fit(X, y)
    theirs = SkRegressor(**params).fit(X, y)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    # the reported loss averages over the outputs, as scikit-learn's squared_error does
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-8, atol=1e-10)
    assert ours.predict(X).shape == theirs.predict(X).shape


def test_adam_close_to_sklearn(small):
    """Adam adds epsilon to sqrt(v_hat) (torch) rather than sqrt(v): close, not identical."""
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=10, batch_size=20)
    ours = MLPClassifier(backend="cython", **params).fit(X, y)
    theirs = SkClassifier(**params).fit(X, y)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, atol=0.02)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)
    assert np.mean(ours.predict(X) == theirs.predict(X)) > 0.98


def test_warm_start_and_partial_fit_follow_sklearn(small):
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=3, solver="sgd",
                  batch_size=25, warm_start=True, learning_rate="invscaling",
                  learning_rate_init=0.1)
    ours, theirs = MLPClassifier(backend="cython", **params), SkClassifier(**params)
    for estimator in (ours, theirs):
        estimator.fit(X, y).fit(X, y)          # warm start: fresh optimizer, same weights
        estimator.partial_fit(X[:100], y[:100])  # continues the optimizer
        estimator.partial_fit(X[100:], y[100:])
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert ours.t_ == theirs.t_ and len(ours.loss_curve_) == len(theirs.loss_curve_) == 8


# --------------------------------------------------------------------------- scikit-learn tools

def test_cross_val_score_in_pipeline_on_digits(digits):
    X, y = digits
    model = make_pipeline(StandardScaler(), MLPClassifier(max_iter=15, random_state=0))
    scores = cross_val_score(model, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_grid_search(small):
    X, y = small
    pipeline = Pipeline([("scale", StandardScaler()),
                         ("mlp", MLPClassifier(hidden_layer_sizes=(16,), max_iter=10,
                                               solver="sgd", batch_size=10,
                                               learning_rate_init=0.02, random_state=0,
                                               backend="cython"))])
    search = GridSearchCV(pipeline, {"mlp__alpha": [1e-4, 1e-1],
                                     "mlp__hidden_layer_sizes": [(8,), (16,)]}, cv=2)
    search.fit(X, y)
    assert set(search.best_params_) == {"mlp__alpha", "mlp__hidden_layer_sizes"}
    assert search.best_estimator_.named_steps["mlp"].network_.layer_sizes[0] == 64
    assert search.score(X, y) > 0.8


# --------------------------------------------------------------------------- the attributes

def test_coefs_are_transposed_views_of_the_network(small):
    X, y = small
    clf = MLPClassifier(hidden_layer_sizes=(16, 12), max_iter=2, random_state=0,
                        backend="cython").fit(X, y)
    net = clf.network_
    assert [c.shape for c in clf.coefs_] == [(64, 16), (16, 12), (12, 10)]
    for coef, intercept, W, b in zip(clf.coefs_, clf.intercepts_, net.weights, net.biases):
        np.testing.assert_array_equal(coef, W.T)
        np.testing.assert_array_equal(intercept, b)
        assert np.shares_memory(coef, W) and np.shares_memory(intercept, b)
    before = clf.predict_proba(X)
    clf.coefs_[-1][:] = 0.0                      # writing into a view changes the network
    clf.intercepts_[-1][:] = 0.0
    np.testing.assert_allclose(clf.predict_proba(X), 0.1)
    new = [np.ones_like(c) for c in clf.coefs_]  # assigning copies into the network
    clf.coefs_ = new
    np.testing.assert_array_equal(net.weights[0], 1.0)
    assert not np.shares_memory(net.weights[0], new[0])
    with pytest.raises(ValueError, match="shape"):
        clf.coefs_ = [np.ones((3, 3))] * 3
    with pytest.raises(ValueError, match="needs 3 arrays"):
        clf.intercepts_ = clf.intercepts_[:1]
    assert not np.allclose(before, clf.predict_proba(X))


def test_fitted_attributes(small):
    X, y = small
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, solver="sgd",
                        random_state=0).fit(X, y)
    assert clf.n_features_in_ == 64 and clf.n_layers_ == 3 and clf.n_outputs_ == 10
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3 and clf.t_ == 3 * len(X)
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert not hasattr(MLPClassifier(), "coefs_")


def test_predict_proba(small):
    X, y = small
    multi = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    proba = multi.predict_proba(X)
    assert proba.shape == (len(X), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(multi.classes_[proba.argmax(axis=1)], multi.predict(X))
    np.testing.assert_allclose(np.exp(multi.predict_log_proba(X)), proba, rtol=1e-12)

    binary = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y > 4)
    proba = binary.predict_proba(X)
    assert proba.shape == (len(X), 2) and binary.out_activation_ == "logistic"
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(binary.predict(X), proba[:, 1] > 0.5)

    labels = np.c_[y % 2 == 0, y > 4, y == 3].astype(int)   # multilabel: independent sigmoids
    multilabel = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, labels)
    proba = multilabel.predict_proba(X)
    assert proba.shape == (len(X), 3) and multilabel.out_activation_ == "logistic"
    assert ((proba > 0) & (proba < 1)).all()
    np.testing.assert_array_equal(multilabel.predict(X), (proba > 0.5).astype(int))


def test_string_labels(small):
    X, y = small
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=20, solver="sgd", batch_size=10,
                        learning_rate_init=0.02, random_state=0).fit(X, names[y])
    np.testing.assert_array_equal(clf.classes_, np.sort(names))
    predicted = clf.predict(X)
    assert predicted.dtype.kind == "U" and set(predicted) <= set(names)
    assert clf.score(X, names[y]) > 0.8


# --------------------------------------------------------------------------- training behaviour

def test_partial_fit(small):
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, solver="sgd", shuffle=False,
                  backend="cython")
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier(**params).partial_fit(X, y)
    incremental = MLPClassifier(**params)
    for _ in range(3):
        incremental.partial_fit(X, y, classes=np.arange(10))
    assert incremental.n_iter_ == 1 and len(incremental.loss_curve_) == 3
    whole = MLPClassifier(max_iter=3, **params).fit(X, y)   # three epochs in order: the same
    for a, b in _pairs(incremental, whole):
        np.testing.assert_array_equal(a, b)
    # classes absent from a batch are fine; unknown ones are not
    MLPClassifier(**params).partial_fit(X[y < 5], y[y < 5], classes=np.arange(10))
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        incremental.partial_fit(X, y + 10)
    with pytest.raises(ValueError, match="not the same"):
        incremental.partial_fit(X, y, classes=np.arange(11))
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True, **params).partial_fit(X, y, classes=np.arange(10))
    regressor = MLPRegressor(**params)
    regressor.partial_fit(X, X[:, 20]).partial_fit(X, X[:, 20])
    assert len(regressor.loss_curve_) == 2 and regressor.loss_curve_[1] < regressor.loss_curve_[0]


def test_warm_start(small):
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=2, solver="sgd")
    warm = MLPClassifier(warm_start=True, **params).fit(X, y)
    first = [c.copy() for c in warm.coefs_]
    net = warm.network_
    warm.fit(X, y)
    assert warm.network_ is net and len(warm.loss_curve_) == 4
    assert not np.allclose(first[0], warm.coefs_[0])
    cold = MLPClassifier(**params).fit(X, y).fit(X, y)   # without warm start: a fresh start
    np.testing.assert_array_equal(cold.coefs_[0], first[0])
    with pytest.raises(ValueError, match="same classes"):
        warm.fit(X[y < 5], y[y < 5])
    warm.set_params(hidden_layer_sizes=(8,))
    with pytest.raises(ValueError, match="layer sizes"):
        warm.fit(X, y)


def test_warm_start_follows_a_change_of_backend(small):
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=2, solver="sgd",
                  warm_start=True)
    a = MLPClassifier(backend="cython", **params).fit(X, y)
    a.set_params(backend="numba", n_threads=1).fit(X, y)
    assert a.network_.backend == "numba" and a.network_.n_threads == 1
    b = MLPClassifier(backend="cython", **params).fit(X, y).fit(X, y)
    for p, q in _pairs(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12)


def test_early_stopping_restores_the_best(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, n_iter_no_change=3,
                        max_iter=60, solver="sgd", learning_rate_init=0.5, momentum=0.9,
                        random_state=0, backend="cython").fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ < 60 and clf.best_validation_score_ == max(scores)
    assert clf.best_loss_ is None
    # the returned parameters are those of the best epoch: refit that many epochs without stopping
    best_epoch = int(np.argmax(scores)) + 1
    again = clone(clf).set_params(max_iter=best_epoch, n_iter_no_change=1000).fit(X, y)
    for a, b in _pairs(clf, again):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_schedules(small, capsys):
    X, y = small
    adaptive = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate="adaptive",
                             tol=10.0, n_iter_no_change=1, max_iter=50, random_state=0,
                             verbose=True).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Setting learning rate to 0.000200" in out
    assert "Learning rate too small. Stopping." in out and adaptive.n_iter_ < 50
    # learning rates 0.001 / 5**k: the run stops once it falls to 1e-6, after 5 divisions
    assert adaptive._lr == pytest.approx(0.001 / 5 ** 5)
    inv = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate="invscaling",
                        power_t=0.5, max_iter=3, random_state=0).fit(X, y)
    assert inv._lr == pytest.approx(0.001 / (3 * len(X) + 1) ** 0.5)
    constant = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", tol=10.0,
                             n_iter_no_change=2, max_iter=50, random_state=0).fit(X, y)
    # the first epoch improves on best_loss_ = inf; then n_iter_no_change + 1 epochs without
    # progress by tol stop it
    assert constant.n_iter_ == 4


def test_float32(small, compiled):
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=10, solver="sgd")
    single = MLPClassifier(dtype="float32", backend=compiled, **params).fit(X, y)
    double = MLPClassifier(backend=compiled, **params).fit(X, y)
    assert single.coefs_[0].dtype == np.float32 and single.predict_proba(X).dtype == np.float32
    assert double.network_.dtype == np.float64   # float64 input, dtype=None: float64
    for a, b in _pairs(single, double):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_float32_input_stays_float32(small, solver):
    """dtype=None: float32 X trains a float32 network, as scikit-learn's MLP keeps float32; the
    same training as float64 to float32's precision; predictions float32 too."""
    X, y = small
    X32 = X.astype(np.float32)
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=10, solver=solver,
                  backend="cython")
    single = MLPClassifier(**params).fit(X32, y)
    double = MLPClassifier(**params).fit(X, y)
    assert single.network_.dtype == np.float32 and double.network_.dtype == np.float64
    assert all(a.dtype == np.float32 for a in single.coefs_ + single.intercepts_)
    proba = single.predict_proba(X32)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba, double.predict_proba(X), atol=2e-3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert single.predict_proba(X).dtype == np.float32   # the network's dtype, whatever X's
    assert np.mean(single.predict(X32) == double.predict(X)) > 0.98
    theirs = SkClassifier(**{k: v for k, v in params.items() if k != "backend"}).fit(X32, y)
    if solver == "sgd":  # scikit-learn's lbfgs leaves float64 coefs_ (scipy's), ours float32
        assert theirs.coefs_[0].dtype == np.float32
    for a, b in _pairs(single, theirs):
        np.testing.assert_allclose(a, b, atol=2e-3)

    target = X[:, 20]
    regressor = MLPRegressor(**params).fit(X32, target.astype(np.float32))
    assert regressor.network_.dtype == np.float32
    assert regressor.predict(X32).dtype == np.float32 and regressor.predict(X32).shape == (len(X),)


def test_dtype_of_other_inputs(small):
    X, y = small
    params = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=2, solver="sgd")
    for X_in in (X.astype(np.int64), X.astype(np.float16), X.astype(np.int32)):
        clf = MLPClassifier(**params).fit(X_in, y)
        assert clf.network_.dtype == np.float64 and clf.predict_proba(X_in).dtype == np.float64
    forced = MLPClassifier(dtype="float64", **params).fit(X.astype(np.float32), y)
    assert forced.network_.dtype == np.float64
    forced = MLPClassifier(dtype="float32", **params).fit(X.astype(np.int64), y)
    assert forced.network_.dtype == np.float32


def test_warm_start_and_partial_fit_keep_the_dtype(small):
    X, y = small
    params = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=2, solver="sgd")
    warm = MLPClassifier(warm_start=True, **params).fit(X.astype(np.float32), y)
    net = warm.network_
    warm.fit(X, y)                        # float64 input: the fitted float32 network goes on
    assert warm.network_ is net and net.dtype == np.float32
    warm.partial_fit(X, y)
    assert warm.network_ is net
    warm.set_params(dtype="float64").fit(X, y)   # unless dtype is given
    assert warm.network_.dtype == np.float64 and len(warm.loss_curve_) == 7
    incremental = MLPRegressor(**params).partial_fit(X.astype(np.float32), X[:, 20])
    incremental.partial_fit(X, X[:, 20])
    assert incremental.network_.dtype == np.float32


def test_pickle_keeps_the_optimizer(small):
    X, y = small
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, max_iter=2, solver="sgd",
                        shuffle=False, backend="cython").fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    assert copy.network_ is not clf.network_
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    clf.partial_fit(X, y)
    copy.partial_fit(X, y)            # momentum carried over: the same step
    for a, b in _pairs(copy, clf):
        np.testing.assert_array_equal(a, b)


def test_unsupported_and_invalid(small):
    X, y = small
    with pytest.raises(ValueError, match="solver"):
        MLPClassifier(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="max_fun"):
        MLPClassifier(solver="lbfgs", max_fun=0).fit(X, y)
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, X[:, 0])
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(activation="softplus").fit(X, y)
    with pytest.raises(ValueError, match="momentum"):
        MLPClassifier(solver="sgd", momentum=1.0).fit(X, y)
    with pytest.raises(ValueError, match="dtype"):
        MLPClassifier(dtype="float16").fit(X, y)
    with pytest.raises(ValueError, match="backend"):
        MLPClassifier(backend="fortran", max_iter=1).fit(X, y)
    with pytest.raises(TypeError, match="hidden_layer_sizes"):
        MLPClassifier(hidden_layer_sizes="100").fit(X, y)


def test_divergence_is_a_value_error(small):
    X, _ = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(ValueError, match="diverged"):
            MLPRegressor(hidden_layer_sizes=(), solver="sgd", learning_rate_init=10.0,
                         momentum=0.0, n_iter_no_change=1000, max_iter=200,
                         random_state=0).fit(X, 1e6 * X[:, 20])


# --------------------------------------------------------------------------- sample and class weights

WEIGHTED = {
    "sgd": dict(solver="sgd", batch_size=10),
    "sgd-alpha-partial-batch": dict(solver="sgd", batch_size=13, alpha=0.01),
    "early-stopping": dict(solver="sgd", batch_size=13, early_stopping=True, max_iter=12,
                           n_iter_no_change=2),
    "no-shuffle-invscaling": dict(solver="sgd", batch_size=16, shuffle=False,
                                  learning_rate="invscaling", learning_rate_init=0.1),
}


def _weights(n, seed=0):
    return np.random.default_rng(seed).random(n) * 2 + 0.1


@pytest.mark.parametrize("name", WEIGHTED)
def test_weighted_classifier_follows_sklearn(small, compiled, name):
    X, y = small
    w = _weights(len(y))
    params = dict(dict(hidden_layer_sizes=(16,), random_state=0, max_iter=4), **WEIGHTED[name])
    ours = MLPClassifier(backend=compiled, **params).fit(X, y, sample_weight=w)
    theirs = SkClassifier(**params).fit(X, y, sample_weight=w)
    assert ours.n_iter_ == theirs.n_iter_
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
    assert ours.score(X, y, sample_weight=w) == pytest.approx(theirs.score(X, y, sample_weight=w))


def test_weighted_regressor_and_partial_fit_follow_sklearn(small, compiled):
    X, _ = small
    y = X[:, [20, 36]] * [1.0, -2.0]
    w = np.random.default_rng(1).integers(1, 4, len(y)).astype(float)  # many equal batch sums
    params = dict(hidden_layer_sizes=(16,), random_state=1, max_iter=5, solver="sgd",
                  batch_size=23, alpha=0.001, learning_rate_init=0.01)
    ours = MLPRegressor(backend=compiled, **params).fit(X, y, sample_weight=w)
    theirs = SkRegressor(**params).fit(X, y, sample_weight=w)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4)
    for _ in range(2):
        ours.partial_fit(X, y, sample_weight=w)
        theirs.partial_fit(X, y, sample_weight=w)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert ours.score(X, y, w) == pytest.approx(theirs.score(X, y, w), rel=1e-9)


@pytest.mark.parametrize("estimator", ["classifier", "regressor"])
def test_weighted_lbfgs_follows_sklearn(small, estimator):
    X, y = small
    w = _weights(len(y), 2)
    if estimator == "regressor":
        y = X[:, 20]
    ours, theirs = {"classifier": (MLPClassifier, SkClassifier),
                    "regressor": (MLPRegressor, SkRegressor)}[estimator]
    params = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=15, solver="lbfgs", alpha=0.01)
    ours = ours(backend="cython", **params).fit(X, y, sample_weight=w)
    theirs = theirs(**params).fit(X, y, sample_weight=w)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-6)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 1: 0.5, 7: 2.0}])
def test_class_weight_multiplies_the_sample_weights(small, class_weight):
    from sklearn.utils.class_weight import compute_class_weight
    X, y = small
    w = _weights(len(y), 3)
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=3, solver="sgd", batch_size=20,
                  backend="numba")
    ours = MLPClassifier(class_weight=class_weight, **params).fit(X, y, sample_weight=w)
    classes = np.unique(y)
    factors = compute_class_weight(class_weight, classes=classes, y=y, sample_weight=w)
    plain = MLPClassifier(**params).fit(X, y, sample_weight=w * factors[np.searchsorted(classes, y)])
    for a, b in zip(ours.coefs_ + ours.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_class_weight_refusals(small):
    X, y = small
    clf = MLPClassifier(class_weight="balanced", solver="sgd", max_iter=1, backend="numba")
    with pytest.raises(ValueError, match="partial_fit"):
        clf.partial_fit(X, y, classes=np.unique(y))
    multilabel = np.stack([y > 4, y % 2 == 0], axis=1)
    with pytest.raises(ValueError, match="multilabel"):
        MLPClassifier(class_weight={0: 2.0}, max_iter=1, backend="numba").fit(X, multilabel)
    with pytest.raises(ValueError):
        MLPClassifier(max_iter=1, backend="numba").fit(X, y, sample_weight=-np.ones(len(y)))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # numpy's cast
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_a_float64_x_that_overflows_float32_is_refused(compiled, solver, weighted):
    """scikit-learn checks X in float64; cast to a float32 network, 1e39 becomes inf, and the fit
    says so (it does not report a divergence)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 4)), rng.integers(0, 2, 40)
    X[8, 2] = 1e39
    clf = MLPClassifier(hidden_layer_sizes=(5,), solver=solver, dtype="float32", backend=compiled,
                        max_iter=2, random_state=0)
    with pytest.raises(ValueError, match=r"X must be finite; X\[\d+, 2\] is inf"):
        clf.fit(X, y, sample_weight=np.ones(40) if weighted else None)

