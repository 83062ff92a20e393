"""Optimizers, number for number against PyTorch's (float64) when torch is installed, and against the
numpy reference otherwise; weight decay on the weights only."""
import numpy as np
import pytest
from support import problem

import fastbp

CASES = [
    ("sgd", dict(momentum=0.0)),
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True)),
    ("adam", dict()),
    ("adam", dict(beta1=0.8, beta2=0.99, eps=1e-6)),
    ("rmsprop", dict()),
    ("rmsprop", dict(rho=0.9, eps=1e-6)),
]
IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in options.items())}" for name, options in CASES]
SIZES = [7, 6, 5, 3]


def torch_training(net, X, y, optimizer, options, lr, l2, epochs, batch_size):
    """The same network, data and batches trained by torch.optim in float64."""
    torch = pytest.importorskip("torch")
    layers = []
    for W, b in zip(net.weights, net.biases):
        linear = torch.nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.astype(np.float64)))
            linear.bias.copy_(torch.from_numpy(b.astype(np.float64)))
        layers += [linear, torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1])
    groups = [{"params": [m.weight for m in model if isinstance(m, torch.nn.Linear)], "weight_decay": l2},
              {"params": [m.bias for m in model if isinstance(m, torch.nn.Linear)], "weight_decay": 0.0}]
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=options.get("momentum", 0.0),
                              nesterov=options.get("nesterov", False))
    elif optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=(options.get("beta1", 0.9), options.get("beta2", 0.999)),
                               eps=options.get("eps", 1e-8))
    else:
        opt = torch.optim.RMSprop(groups, lr=lr, alpha=options.get("rho", 0.99), eps=options.get("eps", 1e-8))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(epochs):
        for start in range(0, len(X), batch_size):
            loss = torch.nn.functional.cross_entropy(model(Xt[start:start + batch_size]),
                                                     yt[start:start + batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [p.detach().numpy() for m in model if isinstance(m, torch.nn.Linear) for p in (m.weight, m.bias)]


@pytest.mark.parametrize("optimizer,options", CASES, ids=IDS)
def test_optimizer_matches_pytorch(backend, optimizer, options):
    X, y = problem(SIZES, 45, seed=3)
    net = fastbp.Network(SIZES, "tanh", loss="cross_entropy", backend=backend, seed=1)
    lr = 0.05 if optimizer == "sgd" else 0.01
    expected = torch_training(net, X, y, optimizer, options, lr, 0.01, epochs=3, batch_size=8)
    net.fit(X, y, epochs=3, batch_size=8, lr=lr, l2=0.01, shuffle=False, optimizer=optimizer, **options)
    actual = [a for W, b in zip(net.weights, net.biases) for a in (W, b)]
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("optimizer,options", CASES, ids=IDS)
def test_optimizer_matches_the_reference(compiled, optimizer, options):
    X, y = problem(SIZES, 45, seed=3)
    nets = [fastbp.Network(SIZES, "tanh", loss="cross_entropy", backend=b, seed=1)
            for b in ("numpy", compiled)]
    for net in nets:
        net.fit(X, y, epochs=3, batch_size=8, lr=0.01, l2=0.01, optimizer=optimizer, **options)
    np.testing.assert_allclose(nets[1].parameters, nets[0].parameters, rtol=1e-10, atol=1e-13)


def test_optimizer_state_carries_over_between_fits(compiled):
    """Two fits of one epoch equal one fit of two epochs (warm start), shuffling included."""
    X, y = problem(SIZES, 40, seed=4)
    one = fastbp.Network(SIZES, "tanh", loss="cross_entropy", backend=compiled, seed=2)
    two = fastbp.Network(SIZES, "tanh", loss="cross_entropy", backend=compiled, seed=2)
    one.fit(X, y, epochs=2, batch_size=8, lr=0.01, optimizer="adam", shuffle=False)
    two.fit(X, y, epochs=1, batch_size=8, lr=0.01, optimizer="adam", shuffle=False)
    two.fit(X, y, epochs=1, batch_size=8, lr=0.01, optimizer="adam", shuffle=False)
    assert np.array_equal(one.parameters, two.parameters)
    three = fastbp.Network(SIZES, "tanh", loss="cross_entropy", backend=compiled, seed=2)
    three.fit(X, y, epochs=1, batch_size=8, lr=0.01, optimizer="adam", shuffle=False)
    three.fit(X, y, epochs=1, batch_size=8, lr=0.01, optimizer="rmsprop", shuffle=False)
    assert not np.array_equal(one.parameters, three.parameters)  # a new optimizer starts afresh
