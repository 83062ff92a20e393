"""Initial weights and biases, by name, drawn from a seeded generator (in float64, then cast, so a
float32 and a float64 network with the same seed start from the same numbers)."""
import numpy as np

SCHEMES = ("auto", "scaled_normal", "normal", "xavier", "he")


def resolve(name, activation):
    """The scheme `auto` stands for: he for ReLU-like hidden layers, else the course's scaled normal."""
    if name != "auto":
        return name
    return "he" if activation in ("relu", "leaky_relu") else "scaled_normal"


def initialize(name, activation, weights, biases, rng):
    """Fill weights[l] (n_out, n_in) and biases[l] in place.

    normal:        W, b ~ N(0, 1)                   (the course's first network)
    scaled_normal: W ~ N(0, 1/n_in), b ~ N(0, 1)    (the course's improved scheme)
    xavier:        W ~ U(+-sqrt(6/(n_in+n_out))), b = 0   (Glorot, as torch.nn.init.xavier_uniform_)
    he:            W ~ N(0, 2/n_in), b = 0          (Kaiming, as torch.nn.init.kaiming_normal_)
    """
    scheme = resolve(name, activation)
    for W, b in zip(weights, biases):
        n_out, n_in = W.shape
        if scheme == "xavier":
            limit = np.sqrt(6.0 / (n_in + n_out))
            W[:] = rng.uniform(-limit, limit, size=W.shape)
        else:
            scale = {"normal": 1.0, "scaled_normal": 1.0 / np.sqrt(n_in), "he": np.sqrt(2.0 / n_in)}[scheme]
            W[:] = scale * rng.standard_normal(W.shape)
        b[:] = rng.standard_normal(b.shape) if scheme in ("normal", "scaled_normal") else 0.0
