"""The optimizers, as the kernels take them: each checks its own settings and fills its own slots of the
hyperparameter array (``codes.H_*``); ``update_parameters`` applies the rule of its ``code``.

The update rules are torch.optim's, with L2 added to the weights' gradient (torch's ``weight_decay``):

- ``SGD(momentum, nesterov)``: ``v = momentum*v + g``, ``theta -= lr*v`` (Nesterov: ``theta -= lr*(g +
  momentum*v)``); plain ``theta -= lr*g`` without momentum.
- ``Adam(beta1, beta2, eps)``: bias-corrected first and second moments.
- ``RMSprop(rho, eps)``: ``theta -= lr*g / (sqrt(s) + eps)`` with ``s`` the square average (smoothing rho).

They live here, under the public ``fastbp.optimizers``, so that ``Network.fit``, the distributed
stepper and the kernel API (``fastbp.kernels.hyperparameters``) share one copy of the checks.
"""
from . import codes
from .checks import real

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get"]


class Optimizer:
    """An optimizer's settings. ``name`` and ``code`` say which rule; ``fill(hyper)`` writes them."""

    name = code = None
    _slots = {}  # setting -> hyperparameter index

    def fill(self, hyper):
        """Write this optimizer's settings into the hyperparameter array `hyper`; returns it."""
        for setting, index in self._slots.items():
            hyper[index] = float(getattr(self, setting))
        return hyper

    @property
    def kind(self):
        """What the optimizer state belongs to: the state carries over to a fit of the same kind."""
        return (self.name, bool(getattr(self, "nesterov", False)))

    def settings(self):
        return {setting: getattr(self, setting) for setting in self._slots}

    def __eq__(self, other):
        return type(self) is type(other) and self.settings() == other.settings()

    def __hash__(self):
        return hash((type(self), tuple(self.settings().items())))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``."""

    name, code = "sgd", codes.SGD
    _slots = {"momentum": codes.H_MOMENTUM, "nesterov": codes.H_NESTEROV}

    def __init__(self, momentum=0.0, nesterov=False):
        self.momentum = real("momentum", momentum, 0, 1, high_open=True)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs optimizer='sgd' with momentum > 0")


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam``: moments smoothed by beta1 and beta2, eps in the denominator."""

    name, code = "adam", codes.ADAM
    _slots = {"beta1": codes.H_BETA1, "beta2": codes.H_BETA2, "eps": codes.H_EPS}

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1 = real("beta1", beta1, 0, 1, high_open=True)
        self.beta2 = real("beta2", beta2, 0, 1, high_open=True)
        self.eps = real("eps", eps, low=0, low_open=True)


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``: square average smoothed by rho, eps in the denominator."""

    name, code = "rmsprop", codes.RMSPROP
    _slots = {"rho": codes.H_RHO, "eps": codes.H_EPS}

    def __init__(self, rho=0.99, eps=1e-8):
        self.rho = real("rho", rho, 0, 1, high_open=True)
        self.eps = real("eps", eps, low=0, low_open=True)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, RMSprop)}
DEFAULTS = {"momentum": 0.0, "nesterov": False, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
            "rho": 0.99}


def get(optimizer="sgd", **settings):
    """The Optimizer `optimizer` names (``sgd``, ``adam``, ``rmsprop``) with `settings` (``momentum``,
    ``nesterov``, ``beta1``, ``beta2``, ``eps``, ``rho``: each optimizer takes its own and the others'
    are checked but unused), or `optimizer` itself when it is an Optimizer (then no settings)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown optimizer settings {sorted(unknown)}")
    if isinstance(optimizer, Optimizer):
        given = {k: v for k, v in settings.items() if v != DEFAULTS[k]}
        if given:
            raise ValueError(f"pass {', '.join(sorted(given))} to the optimizer object "
                             f"({type(optimizer).__name__}(...)), not beside it")
        return optimizer
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} "
                         f"or pass an optimizer object (fastbp.optimizers)")
    values = dict(DEFAULTS, **settings)
    if values["nesterov"] and optimizer != "sgd":
        raise ValueError("nesterov needs optimizer='sgd' with momentum > 0")
    chosen = None
    for name, cls in OPTIMIZERS.items():  # every setting is checked, whichever optimizer uses it
        own = {k: values[k] for k in cls._slots}
        if name != optimizer:
            own.pop("nesterov", None)
        built = cls(**own)
        if name == optimizer:
            chosen = built
    return chosen
