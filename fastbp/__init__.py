"""fastbp: fully-connected neural networks trained by backpropagation on the CPU, fast.

>>> import fastbp
>>> net = fastbp.Network([784, 30, 10], backend="numba")
>>> history = net.fit(X, y, epochs=30, batch_size=10, lr=3.0)
"""
__version__ = "0.1.0"

from .backends import available_backends
from .modelfile import load
from .network import Evaluation, History, Network, TrainingDiverged

__all__ = ["Network", "History", "Evaluation", "TrainingDiverged", "load", "available_backends",
           "__version__"]
