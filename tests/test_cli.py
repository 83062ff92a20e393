"""The command line, run in-process: training on the bundled digits, saving, info."""
import json
import signal
import warnings

import numpy as np
import pytest

import fastbp
from fastbp.cli import main

pytest.importorskip("sklearn")


def test_train_on_digits_and_save(tmp_path, capsys, compiled):
    path = tmp_path / "digits.npz"
    status = main(["train", "--epochs", "8", "--backend", compiled, "--save", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "epoch   8/8" in out and "test accuracy" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9
    net = fastbp.load(path)
    assert net.layer_sizes == [64, 64, 10]


def test_options_reach_the_network(capsys):
    status = main(["train", "--layers", "64,16,10", "--activation", "sigmoid", "--loss", "mse",
                   "--epochs", "2", "--batch-size", "10", "--lr", "2.0", "--l2", "0", "--momentum",
                   "0", "--backend", "numpy", "--threads", "1", "--dtype", "float64", "--seed", "3",
                   "--quiet"])
    out = capsys.readouterr().out
    assert status == 0 and out.startswith("test accuracy")


def test_bad_options_are_reported(capsys):
    assert main(["train", "--layers", "64,16,3", "--epochs", "1", "--quiet"]) == 2
    assert "labels from 0 to 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--layers", "64,x,10"])


def test_info(capsys):
    assert main(["info"]) == 0
    assert "numpy   available" in capsys.readouterr().out


def test_train_on_an_npz_dataset_with_text_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.random((120, 6))
    y = np.where(X[:, 0] > 0.5, "high", "low")
    np.savez(tmp_path / "data.npz", X=X, y=y)
    status = main(["train", "--dataset", str(tmp_path / "data.npz"), "--epochs", "3", "--quiet",
                   "--json", str(tmp_path / "history.json")])
    assert status == 0 and "test accuracy" in capsys.readouterr().out
    record = json.loads((tmp_path / "history.json").read_text())
    assert record["epochs"] == 3 and len(record["history"]["val_loss"]) == 3
    assert main(["train", "--dataset", str(tmp_path / "missing.npz"), "--quiet"]) == 2
    assert "missing.npz" in capsys.readouterr().err


# ----------------------------------------------------------------------------- no silent wrong results

def _digits_csv(path, label_first):
    from fastbp.datasets import load_digits
    X, y = load_digits()  # pixels in [0, 1]: fractional, unlike labels
    columns = [y[:, None], X] if label_first else [X, y[:, None]]
    np.savetxt(path, np.hstack(columns), delimiter=",", fmt="%.6g")


def test_a_csv_with_its_label_first_is_refused_then_read_with_label_column(tmp_path, capsys):
    path = tmp_path / "label_first.csv"
    _digits_csv(path, label_first=True)
    assert main(["train", "--dataset", str(path), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "do not look like class labels" in err and "--label-column" in err
    status = main(["train", "--dataset", str(path), "--label-column", "first", "--epochs", "10",
                   "--json", str(tmp_path / "h.json")])
    out = capsys.readouterr().out
    assert status == 0 and "10 classes" in out and "labels in column first" in out
    assert json.loads((tmp_path / "h.json").read_text())["test_accuracy"] > 0.9


@pytest.mark.parametrize("options, message", [
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum and --nesterov apply to --optimizer sgd"),
    (["--optimizer", "rmsprop", "--nesterov"], "--momentum and --nesterov apply to --optimizer sgd"),
    (["--patience", "3"], "--patience applies to --early-stopping"),
    (["--allreduce-every", "2"], "--allreduce-every and --global-shuffle need --distributed"),
    (["--global-shuffle"], "--allreduce-every and --global-shuffle need --distributed"),
    (["--checkpoint-every", "2"], "--checkpoint-every and --fresh apply to --checkpoint"),
    (["--label-column", "first"], "a label column can be chosen for CSV files only"),
    (["--early-stopping", "--validation-fraction", "0"], "watch the validation set"),
    (["--schedule", "plateau", "--validation-fraction", "0"], "watch the validation set"),
])
def test_options_that_would_be_ignored_are_refused(options, message, capsys):
    assert main(["train", "--epochs", "1", "--quiet"] + options) == 2
    assert message in capsys.readouterr().err


def test_one_data_option_for_both_modes(tmp_path, capsys):
    """--data (the old distributed-only spelling) and --dataset name the same thing; an archive's
    own test set is used, and --test-fraction beside it is refused."""
    rng = np.random.default_rng(1)
    X = rng.random((90, 5))
    y = (X[:, 0] * 3).astype(int)
    np.savez(tmp_path / "train.npz", X=X[:60], y=y[:60], X_test=X[60:], y_test=y[60:])
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "with its test set" in out and "30 test samples of 5 features, 3 classes" in out
    assert "[5, 64, 3]" in out
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--test-fraction", "0.3",
                 "--quiet"]) == 2
    assert "has its own test set" in capsys.readouterr().err


def test_early_stopping_watches_a_validation_split_not_the_test_set(tmp_path, capsys):
    path = tmp_path / "h.json"
    assert main(["train", "--epochs", "40", "--early-stopping", "--patience", "3", "--lr", "0.2",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1294 training, 144 validation and 359 test samples" in out
    assert "val loss" in out and "test loss" not in out.split("test accuracy")[0]
    record = json.loads(path.read_text())
    assert record["samples"] == {"train": 1294, "validation": 144, "test": 359}
    val_loss = record["history"]["val_loss"]
    assert record["best_epoch"] == int(np.argmin(val_loss)) + 1  # chosen on the validation set
    assert "test_loss" in record and "test_loss" not in record["history"]


def test_a_finite_blow_up_is_warned_about():
    from support import problem
    X, y = problem([8, 16, 3], 200, seed=2)
    net = fastbp.Network([8, 16, 3], "relu", loss="cross_entropy", backend="numpy", seed=0)
    with pytest.warns(fastbp.CostGrowthWarning, match="at epoch 1: training is most likely diverging"):
        try:
            net.fit(X, y, epochs=3, batch_size=10, lr=1e6)
        except fastbp.TrainingDiverged:
            pass
    net = fastbp.Network([8, 16, 3], "relu", loss="cross_entropy", backend="numpy", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbp.CostGrowthWarning)
        net.fit(X, y, epochs=3, batch_size=10, lr=0.1)  # ordinary training: no warning


def test_an_interrupted_run_says_so_in_its_json(tmp_path, capsys, monkeypatch):
    from fastbp import training
    run = training.LocalStepper.run

    def interrupted(self, order, first, last):
        if self.history.epochs == 2:
            signal.raise_signal(signal.SIGINT)
        return run(self, order, first, last)
    monkeypatch.setattr(training.LocalStepper, "run", interrupted)
    path = tmp_path / "h.json"
    assert main(["train", "--epochs", "5", "--json", str(path), "--save", str(tmp_path / "m.npz")]) == 130
    out = capsys.readouterr().out
    record = json.loads(path.read_text())
    # the digits' 1294 training samples are one chunk of 81 minibatches: epoch 3 ends, is recorded
    assert record["interrupted"] == {"epoch": 3, "minibatches_done": 81}
    assert record["epochs"] == 3 and len(record["history"]["loss"]) == 3
    assert "interrupted in epoch 3 after 81 of its minibatches; 3 epochs recorded" in out
    saved = fastbp.load(tmp_path / "m.npz")
    assert saved.optimizer_state["step"] == 3 * 81  # the model holds exactly what the record says
