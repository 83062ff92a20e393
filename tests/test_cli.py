"""The command line, run in-process: training on the bundled digits, saving, info."""
import json

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
