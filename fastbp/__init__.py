"""fastbp: fully-connected neural networks trained by backpropagation on the CPU, fast.

>>> import fastbp
>>> net = fastbp.Network([784, 30, 10], backend="numba")
>>> history = net.fit(X, y, epochs=30, batch_size=10, lr=3.0)
"""
__version__ = "0.1.0"

from .backends import available_backends
from .network import Network, load
from .trace import Trace
from .training import Evaluation, History, TrainingDiverged

__all__ = ["Network", "History", "Evaluation", "TrainingDiverged", "Trace", "load",
           "available_backends", "MLPClassifier", "MLPRegressor", "__version__"]


def __getattr__(name):  # the scikit-learn estimators, imported on first use (scikit-learn is optional)
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")
