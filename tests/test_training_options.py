"""Schedules, early stopping, dropout, monitoring, initializers and learning curves."""
import math

import numpy as np
import pytest
from support import problem

import fastbp
from fastbp import schedules
from fastbp.kernels import codes

SIZES = [8, 12, 10, 3]


# ----------------------------------------------------------------------------- schedules

def torch_lrs(make_scheduler, epochs, losses=None):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = make_scheduler(torch.optim.lr_scheduler, opt)
    lrs = []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step(*(() if losses is None else (losses[epoch],)))
    return lrs


LOSSES = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.5, 0.6, 0.6, 0.7, 0.8, 0.5, 0.5, 0.5]
SCHEDULES = [
    (schedules.StepDecay(3, 0.5), lambda s, o: s.StepLR(o, 3, 0.5), None),
    (schedules.Exponential(0.8), lambda s, o: s.ExponentialLR(o, 0.8), None),
    (schedules.Cosine(7, 0.01), lambda s, o: s.CosineAnnealingLR(o, 7, 0.01), None),
    (schedules.ReduceOnPlateau(0.5, 2), lambda s, o: s.ReduceLROnPlateau(o, factor=0.5, patience=2), LOSSES),
]


@pytest.mark.parametrize("schedule,torch_scheduler,losses", SCHEDULES,
                         ids=["step", "exponential", "cosine", "plateau"])
def test_schedules_match_pytorch(schedule, torch_scheduler, losses):
    epochs = len(LOSSES)
    expected = torch_lrs(torch_scheduler, epochs, losses)
    schedule.reset(epochs)
    actual = []
    for epoch in range(epochs):
        actual.append(schedule.lr(epoch, 0.5))
        schedule.observe(LOSSES[epoch])
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_inverse_scaling_and_constant():
    assert schedules.InverseScaling(0.5).lr(3, 1.0) == pytest.approx(0.5)
    assert schedules.get(None).lr(5, 0.3) == 0.3
    assert isinstance(schedules.get("cosine"), schedules.Cosine)
    with pytest.raises(ValueError, match="unknown schedule 'linear'; choose one of constant"):
        schedules.get("linear")


def test_fit_applies_the_schedule_per_epoch(backend):
    """The scheduled lr reaches the kernels: a scheduled fit equals one fit per epoch at those lrs."""
    X, y = problem(SIZES, 30, seed=1)
    scheduled = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=backend, seed=0)
    history = scheduled.fit(X, y, epochs=5, batch_size=8, lr=0.2, shuffle=False,
                            schedule=schedules.StepDecay(2, 0.1))
    np.testing.assert_allclose(history["lr"], [0.2, 0.2, 0.02, 0.02, 0.002])
    manual = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=backend, seed=0)
    for lr in history["lr"]:
        manual.fit(X, y, epochs=1, batch_size=8, lr=lr, shuffle=False)
    np.testing.assert_allclose(scheduled.parameters, manual.parameters, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- early stopping

def test_early_stopping_restores_exactly_the_best_epoch(backend):
    X, y = problem(SIZES, 60, seed=2)
    X_val, y_val = problem(SIZES, 20, seed=3)
    net = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=backend, seed=0)
    history = net.fit(X, y, epochs=40, batch_size=4, lr=0.3, momentum=0.9, shuffle=False,
                      validation_data=(X_val, y_val), early_stopping=True, patience=3)
    best = history.best_epoch
    assert history.stopped_epoch is not None and best == history.stopped_epoch - 3
    assert best == 1 + int(np.argmin(history["val_loss"]))
    again = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=backend, seed=0)
    again.fit(X, y, epochs=best, batch_size=4, lr=0.3, momentum=0.9, shuffle=False)
    assert np.array_equal(net.parameters, again.parameters)
    assert net.evaluate(X_val, y_val).loss == pytest.approx(min(history["val_loss"]), rel=1e-12)


def test_early_stopping_on_accuracy_and_min_delta(compiled):
    X, y = problem(SIZES, 60, seed=2)
    net = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=compiled, seed=0)
    history = net.fit(X, y, epochs=30, batch_size=8, lr=0.1, validation_data=(X[:20], y[:20]),
                      early_stopping=True, monitor="val_accuracy", patience=2, min_delta=0.5)
    assert history.best_epoch == 1 and history.stopped_epoch == 3  # nothing beats +0.5 accuracy
    with pytest.raises(ValueError, match="monitoring val_loss needs validation_data"):
        net.fit(X, y, early_stopping=True, monitor="val_loss")


# ----------------------------------------------------------------------------- dropout

def test_dropout_masks():
    keep = codes.dropout_keep(123, 7, 1, np.arange(200)[:, None], np.arange(500), 0.3)
    assert abs(keep.mean() - 0.7) < 0.01
    other = codes.dropout_keep(123, 8, 1, np.arange(200)[:, None], np.arange(500), 0.3)
    assert 0.4 < (keep == other).mean() < 0.7  # another minibatch, other masks
    assert np.array_equal(keep, codes.dropout_keep(123, 7, 1, np.arange(200)[:, None], np.arange(500), 0.3))


def test_dropout_backends_agree(compiled, dtype):
    X, y = problem(SIZES, 50, seed=4, dtype=dtype)
    nets = [fastbp.Network(SIZES, "sigmoid", loss="cross_entropy", dtype=dtype, backend=b, seed=0)
            for b in ("numpy", compiled)]
    for net in nets:
        net.fit(X, y, epochs=2, batch_size=8, lr=0.5, dropout=[0.3, 0.5])
    tolerance = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(nets[1].parameters, nets[0].parameters, rtol=tolerance, atol=tolerance)


def test_dropout_scales_kept_units_and_is_off_when_predicting(compiled):
    X, y = problem(SIZES, 64, seed=5)
    net = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=compiled, seed=0)
    before = net.forward(X)
    reference = fastbp.Network(SIZES, "relu", loss="cross_entropy", backend=compiled, seed=0)
    assert np.array_equal(before, reference.forward(X))
    net.fit(X, y, epochs=1, batch_size=64, lr=1e-9, dropout=0.5)  # a negligible step
    assert np.allclose(net.forward(X), before, rtol=1e-6)  # no dropout when predicting
    assert np.array_equal(net.forward(X), net.forward(X))
    # with a huge rate, training loss is far from the no-dropout loss of the same parameters
    noisy = net.fit(X, y, epochs=1, batch_size=64, lr=1e-9, dropout=0.9)["loss"][0]
    assert abs(noisy - net.evaluate(X, y).loss) > 1e-3


def test_dropout_rates_are_checked():
    net = fastbp.Network(SIZES, backend="numpy")
    X, y = problem(SIZES, 10)
    with pytest.raises(ValueError, match="one rate per hidden layer"):
        net.fit(X, y, dropout=[0.1])
    with pytest.raises(ValueError, match="dropout must be < 1"):
        net.fit(X, y, dropout=1.0)


# ----------------------------------------------------------------------------- monitoring

def test_metrics_are_switchable_and_l2_is_reported_when_asked(backend):
    X, y = problem(SIZES, 30, seed=6)
    net = fastbp.Network(SIZES, "tanh", loss="cross_entropy", backend=backend, seed=0)
    history = net.fit(X, y, epochs=2, batch_size=6, lr=0.1, l2=0.5, metrics=["train_loss"],
                      l2_in_cost=True)
    assert set(history) == {"loss", "lr", "seconds", "train_loss"}
    penalty = 0.25 * sum(float((w ** 2).sum()) for w in net.weights)
    assert history["train_loss"][-1] == pytest.approx(net.evaluate(X, y).loss + penalty, rel=1e-12)
    with pytest.raises(ValueError, match="unknown metrics"):
        net.fit(X, y, metrics=["f1"])


# ----------------------------------------------------------------------------- initializers

@pytest.mark.parametrize("init,weight_std,bias_std", [
    ("normal", lambda n_in, n_out: 1.0, 1.0),
    ("scaled_normal", lambda n_in, n_out: 1 / math.sqrt(n_in), 1.0),
    ("he", lambda n_in, n_out: math.sqrt(2 / n_in), 0.0),
    ("xavier", lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)), 0.0),
])
def test_initializers(init, weight_std, bias_std):
    net = fastbp.Network([400, 300, 200], init=init, backend="numpy", seed=1)
    for W, b in zip(net.weights, net.biases):
        n_out, n_in = W.shape
        assert W.std() == pytest.approx(weight_std(n_in, n_out), rel=0.05)
        assert abs(W.mean()) < 0.05 * weight_std(n_in, n_out) + 0.01
        assert b.std() == pytest.approx(bias_std, abs=0.1)
    again = fastbp.Network([400, 300, 200], init=init, backend="numpy", seed=1)
    assert np.array_equal(net.parameters, again.parameters)
    single = fastbp.Network([400, 300, 200], init=init, dtype="float32", backend="numpy", seed=1)
    np.testing.assert_allclose(single.parameters, net.parameters, rtol=1e-6)


def test_auto_init_is_he_for_relu():
    relu = fastbp.Network([500, 400], "relu", init="auto", backend="numpy", seed=0)
    assert relu.weights[0].std() == pytest.approx(math.sqrt(2 / 500), rel=0.05)


# ----------------------------------------------------------------------------- learning curves

def test_learning_curves_picture(tmp_path):
    pytest.importorskip("matplotlib")
    from fastbp.plotting import plot_learning_curves
    X, y = problem(SIZES, 30, seed=7)
    net = fastbp.Network(SIZES, backend="numpy", seed=0)
    history = net.fit(X, y, epochs=3, batch_size=5, validation_data=(X, y),
                      metrics=["train_loss", "train_accuracy", "val_loss", "val_accuracy"])
    path = tmp_path / "curves.png"
    plot_learning_curves(history, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
