"""Full-batch L-BFGS-B training, as scikit-learn's MLPs do it with ``solver="lbfgs"``.

``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` walks over a float64 copy of the Network's
flat parameter buffer. Each evaluation writes the point into the network (rounded, for a float32
network), runs the backend's compiled ``gradients`` driver over the whole training set (blocks of
samples on threads, no Python per sample; it fills the mean gradient and each sample's cost) and adds
the L2 term, weights only:

    f(theta) = cost_scale * mean cost + l2/2 * sum ||W||^2,    grad f = mean gradient + l2 * W

With ``l2 = alpha / n`` this is scikit-learn's ``loss + alpha/(2 n) * sum ||W||^2``. ``cost_scale``
exists for scikit-learn's MLPRegressor, whose loss averages the squared error over the outputs while
its gradient is that of their sum: like scikit-learn, it scales the value and not the gradient (the
two agree with one output, and always with the default 1).

``Network.fit_lbfgs`` is the public entry; the estimators call :func:`fit` for ``cost_scale``.
"""
import time

import numpy as np

from . import validation
from .training import FullBatch, History

__all__ = ["LbfgsHistory", "Objective", "fit"]


class LbfgsHistory(History):
    """What ``fit_lbfgs`` measured: ``loss`` after each iteration (the objective: the mean cost plus
    ``l2/2 * sum(W**2)``) and ``seconds`` per iteration; and scipy's verdict:

    ``n_iter`` (iterations, at most max_iter), ``n_fun`` (evaluations of cost and gradient),
    ``status`` (0 converged, 1 max_iter or max_fun reached, 2 another stop: see ``message``),
    ``message`` (scipy's), ``converged`` (status 0), ``final_loss`` (the objective at the result);
    after Ctrl-C, ``interrupted`` is ``(iterations completed, 0)`` and the network holds the last
    iteration's point.
    """

    n_iter = 0
    n_fun = 0
    status = None
    message = ""
    final_loss = None

    @property
    def converged(self):
        return self.status == 0


class Objective:
    """The function scipy minimizes: ``objective(theta) -> (value, gradient)``, both float64.

    Parameters
    ----------
    net : Network
        Evaluated at its own buffers: calling the objective writes theta into ``net.parameters``.
    X, Y : arrays of the network's dtype, C-contiguous, validated (``Y`` of shape (n, outputs))
    l2 : float
        The L2 penalty per unit of mean cost (``alpha / n`` for scikit-learn's ``alpha``).
    cost_scale : float
        Multiplies the cost in the value only (see the module's docstring).
    """

    def __init__(self, net, X, Y, l2=0.0, cost_scale=1.0, weights=None):
        self.net, self.X, self.Y = net, X, Y
        self.l2, self.cost_scale = float(l2), float(cost_scale)
        self._evaluate = FullBatch(net, X, Y, weights)
        self.calls = 0
        self.last_value = None

    def __call__(self, theta):
        net = self.net
        net.parameters[:] = theta
        cost, grads = self._evaluate()
        self.calls += 1
        grad = grads.astype(np.float64)
        squares = 0.0
        # the L2 term at the point evaluated (theta itself in float64; rounded to the network's dtype)
        for W, G in zip(net.weights, net.views(grad)[0]):
            w = W.astype(np.float64, copy=False)
            squares += float(np.dot(w.ravel(), w.ravel()))
            G += self.l2 * w
        self.last_value = self.cost_scale * cost + 0.5 * self.l2 * squares
        return self.last_value, grad


def _iprint_option(verbose):
    """scipy < 1.15 prints L-BFGS-B's progress with iprint (scikit-learn passes it there only)."""
    import scipy
    major, minor = (int(part) for part in scipy.__version__.split(".")[:2])
    if (major, minor) >= (1, 15):
        return {}
    return {"iprint": 1 if verbose else -1}


def fit(net, X, y, max_iter=200, l2=0.0, tol=1e-4, max_fun=15000, verbose=False, cost_scale=1.0,
        sample_weight=None):
    """Train `net` by full-batch L-BFGS-B; see ``Network.fit_lbfgs``. Returns an LbfgsHistory (also
    kept as ``net.history``); the network holds scipy's result. ``cost_scale``: see the module."""
    from scipy.optimize import OptimizeResult, minimize
    from threadpoolctl import threadpool_limits

    max_iter = validation.integer("max_iter", max_iter, 1)
    max_fun = validation.integer("max_fun", max_fun, 1)
    l2 = validation.real("l2", l2, low=0)
    tol = validation.real("tol", tol, low=0)
    cost_scale = validation.real("cost_scale", cost_scale, low=0, low_open=True)
    with net.exclusive():
        X = validation.features(X, net.layer_sizes[0], net.dtype)
        Y = validation.targets(y, X.shape[0], net.layer_sizes[-1], net.dtype)
        weights = validation.sample_weight(sample_weight, X.shape[0])
        objective = Objective(net, X, Y, l2, cost_scale, weights)
        history = net.history = LbfgsHistory(loss=[], seconds=[])
        accepted = [net.parameters.astype(np.float64), time.perf_counter()]

        def callback(intermediate_result):  # after each iteration, at its accepted point
            if isinstance(intermediate_result, OptimizeResult):
                x, value = intermediate_result.x, intermediate_result.fun
            else:  # scipy < 1.11 passes the point only; the last evaluation was there
                x, value = intermediate_result, objective.last_value
            now = time.perf_counter()
            history.add(loss=value, seconds=now - accepted[1])
            accepted[:] = [np.array(x, dtype=np.float64), now]
            if verbose:
                print("Iteration %d, loss = %.8f" % (history.epochs, value), flush=True)

        options = {"maxfun": max_fun, "maxiter": max_iter, "gtol": tol, **_iprint_option(verbose)}
        accepted[1] = time.perf_counter()
        try:
            # scipy's L-BFGS-B makes small BLAS calls between evaluations: threads only slow them
            with threadpool_limits(limits=1, user_api="blas"):
                result = minimize(objective, accepted[0].copy(), method="L-BFGS-B", jac=True,
                                  options=options, callback=callback)
        except KeyboardInterrupt:  # the network keeps the last iteration's point
            net.parameters[:] = accepted[0]
            history.interrupted = (history.epochs, 0)
            raise
        net.parameters[:] = result.x
        history.n_iter = min(int(result.nit), max_iter)
        history.n_fun = int(result.nfev)
        history.status = int(result.status)
        history.message = str(result.message)
        history.final_loss = float(result.fun)
    return history
