"""fastbp: fully-connected neural networks trained by backpropagation on the CPU, fast.

>>> import fastbp
>>> net = fastbp.Network([784, 30, 10])
>>> history = net.fit(X, y, epochs=30, batch_size=10, lr=3.0)
"""

from .backends import available_backends
from .network import Network, from_torch, load
from .trace import Trace
from .training import CostGrowthWarning, Evaluation, History, TrainingDiverged
from .version import __version__

__all__ = ["Network", "History", "Evaluation", "TrainingDiverged", "CostGrowthWarning", "Trace", "load",
           "available_backends", "MLPClassifier", "MLPRegressor", "from_torch", "__version__"]


def __getattr__(name):  # the scikit-learn estimators, imported on first use (scikit-learn is optional)
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")
