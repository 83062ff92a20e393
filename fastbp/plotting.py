"""Learning curves: training and test cost and accuracy per epoch, the picture that shows overfitting."""


def plot_learning_curves(history, path=None, title=None):
    """Draw the costs and accuracies recorded in `history` (a History or a dict of per-epoch lists)
    side by side; save to `path` when given. Returns the matplotlib Figure.

    Needs matplotlib (``pip install 'fastbp[plot]'``).
    """
    try:
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("learning curves need matplotlib: pip install 'fastbp[plot]'") from None
    figure, (cost, acc) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"loss": "training (during the epoch)", "train_loss": "training",
              "val_loss": "test", "train_accuracy": "training", "val_accuracy": "test"}
    for name in ("loss", "train_loss", "val_loss"):
        if history.get(name):
            epochs = range(1, len(history[name]) + 1)
            cost.plot(epochs, history[name], label=labels[name],
                      linestyle=":" if name == "loss" else "-")
    for name in ("train_accuracy", "val_accuracy"):
        if history.get(name):
            acc.plot(range(1, len(history[name]) + 1), history[name], label=labels[name])
    best = getattr(history, "best_epoch", None)
    for axis, what in ((cost, "cost"), (acc, "accuracy")):
        if best:
            axis.axvline(best, color="grey", linewidth=0.8, linestyle="--", label="best epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel(what)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    figure.suptitle(title or "learning curves")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return figure
