"""The pictures: learning curves (one colour per data set; the gradient norms panel), the first
layer's weights as images, the confusion matrix; and the train options that draw them."""
import numpy as np
import pytest
from support import problem
from test_datasets import write_mnist

import fastbp
from fastbp.cli import main

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fastbp import plotting

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return path.read_bytes()[:8] == PNG


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def history(layers=0, epochs=5):
    h = fastbp.History()
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        h.add(loss=1 / (epoch + 1), lr=0.1, seconds=0.01, train_loss=0.9 / (epoch + 1),
              val_loss=1.1 / (epoch + 1), train_accuracy=0.5 + 0.05 * epoch,
              val_accuracy=0.45 + 0.05 * epoch,
              **{f"gradient_norm_{m}": rng.random() * 10.0 ** -m for m in range(1, layers + 1)})
    return h


def colours(axis):
    return {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in axis.lines}


# ----------------------------------------------------------------------------- learning curves

def test_one_colour_per_set_in_every_panel():
    figure = plotting.plot_learning_curves(history())
    cost, accuracy = figure.axes
    cost, accuracy = colours(cost), colours(accuracy)
    assert cost["training"] == accuracy["training"] == cost["training (during the epoch)"]
    assert cost["validation"] == accuracy["validation"] != accuracy["training"]


def test_gradient_norms_panel(tmp_path):
    h = history(layers=11)
    figure = plotting.plot_learning_curves(h)
    assert len(figure.axes) == 3
    norms = figure.axes[2]
    assert norms.get_yscale() == "log"
    assert [line.get_label() for line in norms.lines] == [f"layer {m}" for m in range(1, 12)]
    np.testing.assert_array_equal(norms.lines[10].get_ydata(), h["gradient_norm_11"])
    path = tmp_path / "curves.png"
    plotting.plot_learning_curves(h, path)
    assert is_png(path)
    assert len(plotting.plot_learning_curves(history()).axes) == 2
    assert plotting.gradient_norm_layers({"gradient_norm_2": [1.0], "gradient_norm_10": [1.0],
                                          "gradient_norm_x": [1.0], "loss": [1.0]}) == [2, 10]


# ----------------------------------------------------------------------------- weights as images

def test_first_layer_weights(tmp_path):
    net = fastbp.Network([64, 5, 3], backend="numpy", seed=0)
    path = tmp_path / "weights.png"
    plotting.plot_weights(net, path, shape=(8, 8))
    assert is_png(path)
    figure = plotting.plot_weights(net, None, (4, 16), units=[4, 0])
    mosaic = figure.axes[0].images[0].get_array()
    expected = net.weights[0][4].reshape(4, 16)
    np.testing.assert_allclose(mosaic[:4, :16], expected / np.abs(expected).max())
    image = figure.axes[0].images[0]
    assert image.get_clim() == (-1, 1)  # centred at 0
    assert plotting.plot_weights(net, None, (8, 8), units=2).axes[0].images[0].get_array().shape \
        == (8, 17)


@pytest.mark.parametrize("kwargs,message", [
    ({}, (r"shape \(28, 28\) has 784 pixels, but the network's first layer takes 64 inputs; "
          r"shape=\(8, 8\) would fit")),
    ({"shape": (8, 7)}, "56 pixels"),
    ({"shape": (64,)}, "an image's .rows, columns."),
    ({"shape": (8, 8), "units": 6}, "units=6, but the first layer has 5 units"),
    ({"shape": (8, 8), "units": [0, 5]}, r"indices of the first layer's 5 units \(0..4\)"),
])
def test_bad_weight_pictures_are_refused(tmp_path, kwargs, message):
    net = fastbp.Network([64, 5, 3], backend="numpy", seed=0)
    with pytest.raises(ValueError, match=message):
        plotting.plot_weights(net, tmp_path / "weights.png", **kwargs)
    assert not (tmp_path / "weights.png").exists()


# ----------------------------------------------------------------------------- confusion matrix

def test_confusion_matrix(tmp_path):
    X, y = problem([6, 8, 3], 40, seed=1)
    net = fastbp.Network([6, 8, 3], "tanh", loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X, y, epochs=5, batch_size=8, lr=0.5)
    predicted = net.predict(X)
    counts = plotting.confusion_matrix(y, predicted, 3)
    expected = np.zeros((3, 3), int)
    for t, p in zip(y, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(counts, expected)
    path = tmp_path / "confusion.png"
    figure = plotting.plot_confusion(net, X, y, path, labels=["cat", "dog", "eel"])
    assert is_png(path)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["cat", "dog", "eel"]
    texts = sorted(int(t.get_text()) for t in figure.axes[0].texts)
    assert texts == sorted(expected.ravel()) and f"accuracy {np.mean(predicted == y):.4f}" in \
        figure.texts[0].get_text()
    with pytest.raises(ValueError, match="a label per class"):
        plotting.plot_confusion(net, X, y, None, labels=["cat", "dog"])
    with pytest.raises(ValueError, match="labels from 0 to 3"):
        plotting.plot_confusion(net, X, np.r_[y[:-1], 3], None)


# ----------------------------------------------------------------------------- fastbp train

def test_train_draws_the_weights_and_the_confusion_matrix(tmp_path, capsys):
    write_mnist(tmp_path, "t10k", 50)
    weights, confusion = tmp_path / "weights.png", tmp_path / "confusion.png"
    status = main(["train", "--dataset", f"mnist:{tmp_path}", "--layers", "784,4,10", "--epochs",
                   "1", "--backend", "numpy", "--quiet", "--plot-weights", str(weights),
                   "--plot-confusion", str(confusion)])
    out = capsys.readouterr().out
    assert status == 0 and is_png(weights) and is_png(confusion)
    assert f"first-layer weights drawn to {weights}" in out
    assert f"confusion matrix drawn to {confusion}" in out


def test_train_refuses_weights_of_other_data(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.random((30, 16)), y=np.arange(30) % 2)
    status = main(["train", "--dataset", str(tmp_path / "data.npz"), "--epochs", "1", "--quiet",
                   "--plot-weights", str(tmp_path / "weights.png")])
    assert status == 2 and not (tmp_path / "weights.png").exists()
    err = capsys.readouterr().err
    assert "--plot-weights draws the first layer's weights as images, for image data sets" in err
    assert "16 features" in err
