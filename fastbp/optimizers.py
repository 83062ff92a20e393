"""Optimizers, for ``Network.fit(optimizer=...)`` (as ``schedules`` are for ``schedule=``).

``fit(optimizer="adam", beta2=0.99)`` and ``fit(optimizer=Adam(beta2=0.99))`` train alike. Each
optimizer checks its own settings; the update rules are torch.optim's (see ``fastbp.kernels.optimizers``,
where they live so that the kernel API shares the same checks).
"""
from .kernels.optimizers import OPTIMIZERS, SGD, Adam, Optimizer, RMSprop, get

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get", "OPTIMIZERS"]
