"""Full-batch L-BFGS-B (fastbp.lbfgs, Network.fit_lbfgs, the estimators' solver="lbfgs"): the function
handed to scipy against finite differences, the same numbers as scikit-learn's lbfgs, its stopping
rules and warnings."""
import re
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbp
from fastbp import lbfgs

sklearn = pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

from fastbp.datasets import load_digits, train_test_split  # noqa: E402
from fastbp.estimators import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(scope="module")
def small():
    """The first 300 digits."""
    X, y = load_digits()
    return X[:300], y[:300]


def _pairs(ours, theirs):
    return list(zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_))


def _quiet(fit, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(*args)


# --------------------------------------------------------------------------- the objective

PROBLEMS = {  # output activation, loss, targets
    "softmax": ("softmax", "cross_entropy", lambda rng, n: rng.integers(0, 3, n)),
    "sigmoid-multilabel": ("sigmoid", "cross_entropy",
                           lambda rng, n: (rng.random((n, 3)) < 0.4).astype(float)),
    "identity-mse": ("identity", "mse", lambda rng, n: rng.normal(size=(n, 3))),
}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_gradient_is_central_finite_differences(backend, problem, l2):
    """The gradient handed to scipy is the derivative of the value handed to it (float64)."""
    output, loss, targets = PROBLEMS[problem]
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(23, 4)), targets(rng, 23)
    net = fastbp.Network([4, 5, 3], activation="tanh", output_activation=output, loss=loss,
                         backend=backend, n_threads=1, seed=0)
    objective = lbfgs.Objective(net, net._X(X), net._Y(y, 23), l2=l2)
    theta = net.parameters.astype(np.float64)
    value, grad = objective(theta)
    assert grad.dtype == np.float64 and grad.shape == theta.shape
    h = 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        numeric[i] = (objective(theta + step)[0] - objective(theta - step)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    # the value: the network's mean cost plus l2/2 * sum(W**2), weights only
    net.parameters[:] = theta
    cost = net.evaluate(X, y).loss
    assert value == pytest.approx(cost + 0.5 * l2 * net.squared_weights(), rel=1e-12)


def test_cost_scale_scales_the_value_only():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    net = fastbp.Network([3, 4, 2], activation="relu", output_activation="identity", loss="mse",
                         backend="numpy", seed=0)
    theta = net.parameters.copy()
    plain = lbfgs.Objective(net, X, Y, l2=0.1)(theta)
    halved = lbfgs.Objective(net, X, Y, l2=0.1, cost_scale=0.5)(theta)
    np.testing.assert_array_equal(plain[1], halved[1])
    penalty = 0.05 * net.squared_weights()
    assert halved[0] - penalty == pytest.approx(0.5 * (plain[0] - penalty), rel=1e-12)


# --------------------------------------------------------------------------- Network.fit_lbfgs

def test_network_fit_lbfgs(small, compiled):
    X, y = small
    X = X / 16.0
    net = fastbp.Network([64, 20, 10], activation="tanh", loss="cross_entropy", backend=compiled,
                         seed=0)
    before = net.evaluate(X, y).loss
    history = net.fit_lbfgs(X, y, max_iter=60, l2=1e-3)
    assert isinstance(history, lbfgs.LbfgsHistory) and isinstance(history, fastbp.History)
    assert net.history is history
    assert history.epochs == history.n_iter == 60 and len(history["seconds"]) == 60
    assert not history.converged and history.status == 1 and "ITERATIONS" in history.message
    assert history.n_fun >= 60
    assert np.all(np.diff(history["loss"]) < 0)      # L-BFGS accepts only decreasing points
    after = net.evaluate(X, y)
    assert history.final_loss == pytest.approx(
        after.loss + 0.5e-3 * net.squared_weights(), rel=1e-12)
    assert history["loss"][-1] == history.final_loss
    assert after.loss < before / 5 and after.accuracy > 0.95
    with pytest.raises(ValueError, match="max_iter"):
        net.fit_lbfgs(X, y, max_iter=0)
    with pytest.raises(ValueError, match="l2"):
        net.fit_lbfgs(X, y, l2=-1)
    with pytest.raises(ValueError, match="features"):
        net.fit_lbfgs(X[:, :5], y)


def test_fit_lbfgs_converges_and_does_not_depend_on_threads(compiled):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    Y = np.c_[X[:, 0] * X[:, 1], np.sin(X[:, 2])]
    results = []
    for threads in (1, 2, 3):
        net = fastbp.Network([3, 8, 2], activation="tanh", output_activation="identity",
                             loss="mse", backend=compiled, n_threads=threads, seed=0)
        net.fit_lbfgs(X, Y, max_iter=40)
        results.append(net.parameters.copy())
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    history = net.fit_lbfgs(X, Y, max_iter=1000, tol=1e-3)   # continues from there
    assert history.converged and history.n_iter < 1000 and "CONVERGENCE" in history.message


def test_fit_lbfgs_float32():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    net = fastbp.Network([4, 6, 2], activation="tanh", loss="cross_entropy", dtype="float32",
                         backend="cython", seed=0)
    history = net.fit_lbfgs(X, y, max_iter=50)
    assert net.parameters.dtype == np.float32 and net.evaluate(X, y).accuracy > 0.95
    assert history["loss"][-1] < history["loss"][0] / 4


def test_interrupt_keeps_the_last_iteration(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    net = fastbp.Network([3, 4, 2], activation="tanh", loss="cross_entropy", backend="numba",
                         seed=0)
    evaluate = lbfgs.Objective.__call__

    def interrupted(self, theta):
        if self.calls == 6:
            raise KeyboardInterrupt
        return evaluate(self, theta)

    monkeypatch.setattr(lbfgs.Objective, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        net.fit_lbfgs(X, y)
    history = net.history
    assert 0 < history.epochs < 6 and history.interrupted == (history.epochs, 0)
    assert net.evaluate(X, y).loss == pytest.approx(history["loss"][-1], rel=1e-12)


# --------------------------------------------------------------------------- the estimators

def test_digits_accuracy_as_sklearn():
    """Hidden (50,), max_iter 100, the same random_state: scikit-learn's test accuracy, within
    a point."""
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, 0.25, seed=0)
    params = dict(hidden_layer_sizes=(50,), solver="lbfgs", max_iter=100, random_state=0)
    ours = _quiet(MLPClassifier(backend="cython", **params).fit, X_train, y_train)
    with threadpool_limits(limits=1, user_api="blas"):  # faster for these small products
        theirs = _quiet(SkClassifier(**params).fit, X_train, y_train)
    assert abs(ours.score(X_test, y_test) - theirs.score(X_test, y_test)) <= 0.01
    assert ours.score(X_test, y_test) > 0.93
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=0.1, abs=1e-3)


CASES = {
    "multiclass": dict(),
    "binary": dict(target="binary", activation="logistic"),
    "multilabel": dict(target="multilabel", alpha=0.1, hidden_layer_sizes=(8, 6)),
    "identity-no-hidden": dict(activation="identity", hidden_layer_sizes=()),
}


@pytest.mark.parametrize("case", CASES)
def test_classifier_follows_sklearn(small, compiled, case):
    """The same loss and gradient handed to the same minimizer: scikit-learn's weights, to
    rounding (over a few iterations: L-BFGS magnifies rounding later on)."""
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=8, solver="lbfgs")
    params.update(CASES[case])
    target = params.pop("target", "multiclass")
    y = {"multiclass": y, "binary": y > 4,
         "multilabel": np.c_[y % 2 == 0, y > 4, y == 3].astype(int)}[target]
    ours = _quiet(MLPClassifier(backend=compiled, **params).fit, X, y)
    theirs = _quiet(SkClassifier(**params).fit, X, y)
    assert ours.n_iter_ == theirs.n_iter_ == 8 and ours.t_ == theirs.t_ == 0
    assert ours.out_activation_ == theirs.out_activation_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-8)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-7,
                               atol=1e-9)
    # as scikit-learn: no stochastic records for lbfgs
    for name in ("loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_"):
        assert not hasattr(ours, name) and not hasattr(theirs, name)
    assert ours.network_.history.n_iter == ours.n_iter_


@pytest.mark.parametrize("outputs", [1, 2])
def test_regressor_follows_sklearn(small, outputs):
    """With several outputs scikit-learn hands scipy the loss averaged over them and the gradient
    of their sum: fastbp does the same, and reaches the same weights."""
    X, _ = small
    y = X[:, 20] if outputs == 1 else X[:, [20, 36]] * [1.0, -2.0]
    params = dict(hidden_layer_sizes=(16,), random_state=1, max_iter=10, solver="lbfgs",
                  alpha=0.01)
    ours = _quiet(MLPRegressor(backend="numba", **params).fit, X, y)
    theirs = _quiet(SkRegressor(**params).fit, X, y)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-8)
    for a, b in _pairs(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    assert ours.predict(X).shape == theirs.predict(X).shape
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-7, atol=1e-9)


def _convergence_warnings(fit, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(*args)
    return [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("limit", [dict(max_iter=3), dict(max_fun=5), dict(max_fun=1)])
def test_max_iter_and_max_fun_stop_with_sklearns_warning(small, limit):
    X, y = small
    params = dict(hidden_layer_sizes=(16,), random_state=0, solver="lbfgs", **limit)
    ours = MLPClassifier(backend="cython", **params)
    theirs = SkClassifier(**params)
    messages = _convergence_warnings(ours.fit, X, y)
    assert messages == _convergence_warnings(theirs.fit, X, y) and len(messages) == 1
    assert ours.n_iter_ == theirs.n_iter_
    if "max_iter" in limit:
        assert ours.n_iter_ == 3
        assert "Increase the number of iterations" in messages[0]
        assert "(max_iter=3)" in messages[0]
    else:  # max_fun is checked after each iteration: the iteration that passes it ends the run
        assert ours.network_.history.n_fun > limit["max_fun"]
        assert re.search(r"F,G EVALUATIONS EXCEEDS LIMIT", messages[0])
        assert ours.n_iter_ < 15000


def test_converged_fit_warns_nothing(small):
    X, y = small
    messages = _convergence_warnings(
        MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", tol=1e-2, max_iter=500,
                     random_state=0).fit, X / 16, X[:, 20] / 16)
    assert messages == []


def test_lbfgs_estimator_behaviour(small, capsys):
    X, y = small
    clf = MLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=5, random_state=0,
                        verbose=True)
    assert not hasattr(clf, "partial_fit")       # as scikit-learn's: stochastic solvers only
    with pytest.raises(AttributeError, match="partial_fit") as error:
        clf.partial_fit(X, y, classes=np.arange(10))
    assert "lbfgs is not stochastic" in str(error.value.__cause__)
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    _quiet(clf.fit, X, y)
    assert "Iteration 5, loss = " in capsys.readouterr().out
    first = clf.loss_
    # warm start: L-BFGS again from the fitted weights (a fresh curvature memory)
    clf.set_params(warm_start=True, verbose=False)
    net = clf.network_
    _quiet(clf.fit, X, y)
    assert clf.network_ is net and clf.loss_ < first
    # then a stochastic solver on the same network: its records start there
    clf.set_params(solver="sgd", max_iter=2)
    _quiet(clf.fit, X, y)
    assert clf.network_ is net and len(clf.loss_curve_) == 2 and clf.t_ == 2 * len(X)
    clf.partial_fit(X, y)
    assert len(clf.loss_curve_) == 3
    # a new lbfgs fit keeps none of the stochastic records
    clf.set_params(solver="lbfgs", warm_start=False)
    _quiet(clf.fit, X, y)
    assert not hasattr(clf, "loss_curve_") and not hasattr(clf, "best_loss_")
    assert clf.n_iter_ == 2 and clf.t_ == 0
