"""Pictures of training (matplotlib, ``pip install 'fastbp[plot]'``): learning curves (the picture that
shows overfitting) with the per-layer gradient norms when recorded, the first layer's weights as
images (what the hidden units learned), and the confusion matrix.

Each function returns the matplotlib Figure and, given a path, saves it there and closes it.
"""
import math
import re

import numpy as np

from . import validation

# One colour per set of data in every panel.
TRAINING, VALIDATION = "tab:blue", "tab:orange"


def _pyplot(path):
    try:
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'fastbp[plot]'") from None
    return plt


def _finish(plt, figure, path, title, dpi=120, placed=False):
    """Title the figure, lay it out (unless its axes were placed by hand) and save it to `path`
    (and close it) when given."""
    figure.suptitle(title, fontsize=10 if placed else None)
    if not placed:
        figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=dpi)
        plt.close(figure)
    return figure


def gradient_norm_layers(history):
    """The layers m whose ``gradient_norm_m`` the history holds, in order (1..L when recorded)."""
    found = (re.fullmatch(r"gradient_norm_(\d+)", name) for name in history)
    return sorted(int(match.group(1)) for match in found if match and history[match.group(0)])


def plot_learning_curves(history, path=None, title=None):
    """Draw the costs and accuracies recorded in `history` (a History or a dict of per-epoch lists)
    side by side, and the per-layer gradient norms on a log scale when the history holds
    ``gradient_norm_1`` .. ``gradient_norm_L``; save to `path` when given. Training is blue and
    validation orange in every panel. Returns the matplotlib Figure.
    """
    plt = _pyplot(path)
    layers = gradient_norm_layers(history)
    figure, axes = plt.subplots(1, 3 if layers else 2, figsize=(15 if layers else 10, 4))
    cost, acc = axes[:2]
    curves = {"loss": (cost, "training (during the epoch)", TRAINING, ":"),
              "train_loss": (cost, "training", TRAINING, "-"), "val_loss": (cost, "validation", VALIDATION, "-"),
              "train_accuracy": (acc, "training", TRAINING, "-"),
              "val_accuracy": (acc, "validation", VALIDATION, "-")}
    for name, (axis, label, colour, style) in curves.items():
        if history.get(name):
            axis.plot(range(1, len(history[name]) + 1), history[name], label=label, color=colour,
                      linestyle=style)
    panels = [(cost, "cost"), (acc, "accuracy")]
    if layers:
        norms = axes[2]
        shades = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
        for m, shade in zip(layers, shades):
            values = history[f"gradient_norm_{m}"]
            norms.plot(range(1, len(values) + 1), values, label=f"layer {m}", color=shade)
        norms.set_yscale("log")
        panels.append((norms, "gradient norm"))
    best = getattr(history, "best_epoch", None)
    for axis, what in panels:
        if best:
            axis.axvline(best, color="grey", linewidth=0.8, linestyle="--", label="best epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel(what)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    return _finish(plt, figure, path, title or "learning curves")


def _units(units, n):
    """The first layer's units to draw: None (the first 100 at most), a count, or indices."""
    if units is None:
        return list(range(min(n, 100)))
    if np.ndim(units) == 0:
        count = validation.integer("units", units, 1)
        if count > n:
            raise ValueError(f"units={count}, but the first layer has {n} units")
        return list(range(count))
    chosen = [validation.integer(f"units[{i}]", u, 0) for i, u in enumerate(units)]
    if not chosen or max(chosen) >= n:
        raise ValueError(f"units must be indices of the first layer's {n} units (0..{n - 1}), "
                         f"got {list(units)}")
    return chosen


def plot_weights(net, path=None, shape=(28, 28), units=None, title=None):
    """Draw each first-layer unit's weights as an image of the input's `shape` (rows, columns): the
    classic picture of what hidden units learned. A grid of images, row by row from unit 0, each
    scaled to its own largest weight on a diverging colormap centred at 0 (red positive, blue
    negative) in a few levels (the file stays small).

    units : None, int or sequence of int
        Which units of the first layer: None the first 100 at most, an int the first that many, or
        their indices.
    """
    W = net.weights[0]
    n_out, n_in = W.shape
    if np.ndim(shape) != 1 or len(shape) != 2:
        raise ValueError(f"shape must be an image's (rows, columns), such as (28, 28), got {shape!r}")
    shape = tuple(validation.integer(f"shape[{i}]", side, 1) for i, side in enumerate(shape))
    if math.prod(shape) != n_in:
        side = math.isqrt(n_in)
        hint = f"; shape=({side}, {side}) would fit" if side * side == n_in else ""
        raise ValueError(f"shape {shape} has {math.prod(shape)} pixels, but the network's first "
                         f"layer takes {n_in} inputs{hint}")
    chosen = _units(units, n_out)
    plt = _pyplot(path)
    columns = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / columns)
    (h, w), gap = shape, max(1, min(shape) // 14)
    mosaic = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for i, unit in enumerate(chosen):
        r, c = divmod(i, columns)
        weights = W[unit].reshape(shape).astype(np.float64)
        mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = \
            weights / (np.abs(weights).max() or 1.0)
    colours = plt.get_cmap("RdBu_r", 11).with_extremes(bad="white")
    pixels = max(1, round(600 / max(mosaic.shape)))  # whole screen pixels per weight: crisp
    width, height = (side * pixels / 100 for side in mosaic.shape[::-1])  # inches at 100 dpi
    inches = (width + 0.2, height + 0.7)  # margins, and room for a title of two lines
    figure = plt.figure(figsize=inches)
    axis = figure.add_axes((0.1 / inches[0], 0.1 / inches[1], width / inches[0], height / inches[1]))
    axis.imshow(mosaic, cmap=colours, vmin=-1, vmax=1, interpolation="nearest")
    axis.axis("off")
    return _finish(plt, figure, path, title or f"first-layer weights of {len(chosen)} of {n_out} "
                   f"units\n(red positive, blue negative)", dpi=100, placed=True)


def confusion_matrix(truth, predicted, n_classes):
    """Counts[i, j]: how many samples of class i were predicted as class j."""
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (np.asarray(truth), np.asarray(predicted)), 1)
    return counts


def plot_confusion(net, X, y, path=None, labels=None, title=None):
    """Draw the confusion matrix of `net` on (X, y): the count of samples of each true class (rows)
    predicted as each class (columns). y: class labels 0..n-1 or target rows; labels: the classes'
    names (default their numbers)."""
    predicted = net.predict(X)
    n_out = net.layer_sizes[-1]
    Y = validation.targets(y, len(predicted), n_out, net.dtype)
    truth = (Y[:, 0] > 0.5).astype(np.int64) if n_out == 1 else Y.argmax(axis=1)
    return plot_confusion_matrix(confusion_matrix(truth, predicted, max(n_out, 2)), path, labels,
                                 title)


def plot_confusion_matrix(counts, path=None, labels=None, title=None):
    """Draw a confusion matrix of counts (true classes in rows, predicted in columns)."""
    counts = np.asarray(counts)
    n = counts.shape[0]
    labels = [str(label) for label in (range(n) if labels is None else labels)]
    if counts.shape != (n, n) or len(labels) != n:
        raise ValueError(f"a confusion matrix is square with a label per class, got counts of "
                         f"shape {counts.shape} and {len(labels)} labels")
    plt = _pyplot(path)
    size = min(3 + 0.45 * n, 12)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    if n <= 30:
        for (i, j), count in np.ndenumerate(counts):
            axis.text(j, i, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > counts.max() / 2 else "black")
    axis.set_xticks(range(n), labels, rotation=90 if max(map(len, labels)) > 3 else 0)
    axis.set_yticks(range(n), labels)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    return _finish(plt, figure, path, title or f"confusion matrix: {total} samples, accuracy "
                   f"{accuracy:.4f}")
