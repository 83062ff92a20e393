"""The four benchmark workloads, their arithmetic, their data, and fastbp networks for them.

Each workload is one epoch of minibatch gradient descent over MNIST-shaped data (784 inputs, 10
classes), as defined in the shared benchmark README:

    name      layers            hidden   loss (output)           batch  lr    l2    momentum
    nielsen   784-30-10         sigmoid  mse (sigmoid)           10     3.0   0     0
    nielsen2  784-100-10        sigmoid  cross_entropy (sigmoid) 10     0.5   1e-4  0
    mid       784-256-128-10    relu     cross_entropy (softmax) 64     0.05  1e-4  0.9
    wide      784-1024-1024-10  relu     cross_entropy (softmax) 256    0.05  1e-4  0.9

FLOP per sample: forward 2P, weight gradients 2P, and the error terms of every layer but the first
2P_l (P = weights; the first layer's error terms are never needed). Biases, activations and the
update are not counted. The roofline of a workload is ``peak GFLOP/s / FLOP per sample``.

Imported by bench/compare.py, bench/peers.py and the pytest-benchmark suites; it needs numpy only
(and fastbp for ``network``).
"""
from dataclasses import dataclass

import numpy as np

N_INPUTS, N_CLASSES = 784, 10


@dataclass(frozen=True)
class Workload:
    name: str
    layers: tuple          # units per layer, input first
    activation: str        # hidden layers
    loss: str              # "mse" or "cross_entropy"
    output: str            # output activation: "sigmoid" or "softmax"
    batch: int
    lr: float
    l2: float              # gradient += l2 * W, weights only
    momentum: float        # torch.optim.SGD: v = mu v + g, theta -= lr v

    @property
    def shapes(self):
        """(n_in, n_out) of every layer, input layer first."""
        return list(zip(self.layers[:-1], self.layers[1:]))

    @property
    def weights(self):
        """P: the number of weights (biases not counted)."""
        return sum(n_in * n_out for n_in, n_out in self.shapes)

    @property
    def flop_per_sample(self):
        """Forward 2P + weight gradients 2P + error terms 2P_l of every layer but the first."""
        backward = sum(2 * n_in * n_out for n_in, n_out in self.shapes[1:])
        return 4 * self.weights + backward

    def roofline(self, gflops):
        """Samples/s the arithmetic would allow at `gflops` GFLOP/s."""
        return gflops * 1e9 / self.flop_per_sample

    def batches(self, n):
        """Minibatches in an epoch of n samples (the last one may be partial)."""
        return -(-n // self.batch)

    def fit_kwargs(self):
        """The keyword arguments of fastbp's Network.fit for one epoch of this workload."""
        return dict(epochs=1, batch_size=self.batch, lr=self.lr, l2=self.l2, momentum=self.momentum)

    def network_kwargs(self):
        """The keyword arguments of fastbp.Network for this workload (without backend/dtype/threads)."""
        return dict(layer_sizes=list(self.layers), activation=self.activation,
                    output_activation=self.output, loss=self.loss)


WORKLOADS = {
    w.name: w for w in (
        Workload("nielsen", (784, 30, 10), "sigmoid", "mse", "sigmoid", 10, 3.0, 0.0, 0.0),
        Workload("nielsen2", (784, 100, 10), "sigmoid", "cross_entropy", "sigmoid", 10, 0.5, 1e-4, 0.0),
        Workload("mid", (784, 256, 128, 10), "relu", "cross_entropy", "softmax", 64, 0.05, 1e-4, 0.9),
        Workload("wide", (784, 1024, 1024, 10), "relu", "cross_entropy", "softmax", 256, 0.05, 1e-4, 0.9),
    )
}
NAMES = tuple(WORKLOADS)


def get(name):
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(NAMES)}") from None


def data(workload, n, dtype="float32", seed=0):
    """Random inputs X (n, 784) uniform in [0, 1) of `dtype`, drawn directly in that dtype (no
    float64 temporary for float32), and integer labels y (n,) in 0..9."""
    workload = get(workload) if isinstance(workload, str) else workload
    rng = np.random.default_rng(seed)
    X = rng.random((n, workload.layers[0]), dtype=np.dtype(dtype).type)
    y = rng.integers(0, workload.layers[-1], n)
    return X, y


def network(workload, backend="numba", dtype="float32", n_threads=None, seed=0):
    """A fastbp.Network for `workload` (default initialization: He for ReLU, scaled normal for
    sigmoid)."""
    import fastbp
    workload = get(workload) if isinstance(workload, str) else workload
    return fastbp.Network(**workload.network_kwargs(), dtype=dtype, backend=backend,
                          n_threads=n_threads, seed=seed)


def fastbp_epoch(workload, X, y, backend="numba", dtype="float32", n_threads=None, seed=0):
    """A callable running one epoch of `workload` on (X, y) through Network.fit (what users get)."""
    workload = get(workload) if isinstance(workload, str) else workload
    net = network(workload, backend, dtype, n_threads, seed)
    kwargs = workload.fit_kwargs()

    def epoch():
        return net.fit(X, y, **kwargs)

    epoch.network = net
    return epoch


def table():
    """The workloads as a markdown table (for reports)."""
    lines = ["| name | layers | hidden | loss (output) | batch | lr | l2 | momentum | weights | FLOP/sample |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in WORKLOADS.values():
        lines.append(f"| {w.name} | {'-'.join(map(str, w.layers))} | {w.activation} | {w.loss} "
                     f"({w.output}) | {w.batch} | {w.lr:g} | {w.l2:g} | {w.momentum:g} | "
                     f"{w.weights:,} | {w.flop_per_sample / 1e3:,.1f} k |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
