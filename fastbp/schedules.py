"""Learning-rate schedules, applied per epoch (as torch.optim.lr_scheduler does them).

A schedule maps the epoch index (0 for the first epoch) and the base learning rate to the learning
rate of that epoch; ``ReduceOnPlateau`` also watches a metric after each epoch. Pass one to
``Network.fit(schedule=...)``, or its name for the defaults: ``"constant"``, ``"step"``,
``"exponential"``, ``"inverse"``, ``"cosine"``, ``"plateau"``.
"""
import math

from . import validation


class Schedule:
    """The constant schedule: every epoch uses the base learning rate."""

    def lr(self, epoch, base_lr):
        """The learning rate of epoch `epoch` (0-based)."""
        return base_lr

    def observe(self, value):
        """Called after each epoch with the monitored metric (used by ReduceOnPlateau)."""

    def reset(self, epochs):
        """Called when fit starts, with the number of epochs it will run."""

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


Constant = Schedule


class StepDecay(Schedule):
    """lr * gamma ** (epoch // step_size), as torch.optim.lr_scheduler.StepLR."""

    def __init__(self, step_size=10, gamma=0.1):
        self.step_size = validation.integer("step_size", step_size, 1)
        self.gamma = validation.real("gamma", gamma, low=0, low_open=True)

    def lr(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class Exponential(Schedule):
    """lr * gamma ** epoch, as torch.optim.lr_scheduler.ExponentialLR."""

    def __init__(self, gamma=0.95):
        self.gamma = validation.real("gamma", gamma, low=0, low_open=True)

    def lr(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch


class InverseScaling(Schedule):
    """lr / (epoch + 1) ** power (scikit-learn's 'invscaling', counted in epochs)."""

    def __init__(self, power=0.5):
        self.power = validation.real("power", power, low=0)

    def lr(self, epoch, base_lr):
        return base_lr / (epoch + 1) ** self.power


class Cosine(Schedule):
    """min_lr + (lr - min_lr) (1 + cos(pi epoch / T)) / 2 over T epochs (default: the whole fit), as
    torch.optim.lr_scheduler.CosineAnnealingLR."""

    def __init__(self, period=None, min_lr=0.0):
        self.period = None if period is None else validation.integer("period", period, 1)
        self.min_lr = validation.real("min_lr", min_lr, low=0)
        self._period = period

    def reset(self, epochs):
        self._period = self.period or max(epochs, 1)

    def lr(self, epoch, base_lr):
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * epoch / self._period)) / 2


class ReduceOnPlateau(Schedule):
    """Multiply the learning rate by `factor` when the monitored metric (validation loss by default)
    has not improved by more than a relative `threshold` for `patience` epochs, as
    torch.optim.lr_scheduler.ReduceLROnPlateau (mode 'min', threshold_mode 'rel')."""

    def __init__(self, factor=0.1, patience=10, threshold=1e-4, min_lr=0.0):
        self.factor = validation.real("factor", factor, 0, 1, low_open=True, high_open=True)
        self.patience = validation.integer("patience", patience, 0)
        self.threshold = validation.real("threshold", threshold, low=0)
        self.min_lr = validation.real("min_lr", min_lr, low=0)
        self.reset(0)

    def reset(self, epochs):
        self._scale, self._best, self._bad = 1.0, math.inf, 0

    def observe(self, value):
        if value < self._best * (1 - self.threshold):
            self._best, self._bad = value, 0
        else:
            self._bad += 1
            if self._bad > self.patience:
                self._scale *= self.factor
                self._bad = 0

    def lr(self, epoch, base_lr):
        return max(base_lr * self._scale, self.min_lr)


SCHEDULES = {"constant": Constant, "step": StepDecay, "exponential": Exponential,
             "inverse": InverseScaling, "cosine": Cosine, "plateau": ReduceOnPlateau}


def get(schedule):
    """A Schedule from a name (its defaults), a Schedule, or None (constant)."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    return validation.choice("schedule", schedule, SCHEDULES)()
