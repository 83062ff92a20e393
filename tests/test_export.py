"""Taking a model elsewhere: ONNX (run with onnxruntime), PyTorch both ways, and the evaluate and
predict commands, all against Network.forward."""
import csv
import io

import numpy as np
import pytest

import fastbp
from fastbp.cli import main
from fastbp.kernels import codes

HIDDEN = codes.HIDDEN_ACTIVATIONS
OUTPUTS = tuple(codes.ACTIVATIONS)
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def _network(hidden, output, dtype, sizes=(5, 7, 6, 3), seed=0):
    loss = "cross_entropy" if output in ("sigmoid", "softmax") else "mse"
    return fastbp.Network(list(sizes), hidden, output, loss, dtype, seed=seed)


def _inputs(n, width=5, seed=1):
    return np.random.default_rng(seed).normal(0, 2, (n, width))  # both sides of relu's kink


def _close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


# --------------------------------------------------------------------------- ONNX

@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _run_onnx(ort, path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": X})[0]


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_onnx_gives_forward(ort, tmp_path, hidden, output, dtype):
    net = _network(hidden, output, dtype)
    net.to_onnx(tmp_path / "net.onnx")
    X = _inputs(7).astype(dtype)
    result = _run_onnx(ort, tmp_path / "net.onnx", X)
    assert result.dtype == np.dtype(dtype) and result.shape == (7, 3)
    _close(result, net.forward(X), dtype)


def test_onnx_graph_names_and_dynamic_batch(ort, tmp_path, dtype):
    import onnx
    net = _network("leaky_relu", "softmax", dtype, sizes=(5, 4, 4, 3))
    model = net.to_onnx(tmp_path / "net.onnx")
    graph = onnx.load(tmp_path / "net.onnx").graph
    assert model.graph == graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["output"]
    batch, width = graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and not batch.HasField("dim_value") and width.dim_value == 5
    leaky = "LeakyRelu" if dtype == "float32" else "PRelu"  # alpha is a float32 attribute
    assert [node.op_type for node in graph.node] == ["Gemm", leaky] * 2 + ["Gemm", "Softmax"]
    attributes = {node.op_type: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                  for node in graph.node}
    assert attributes["Gemm"] == {"transB": 1}
    if dtype == "float32":
        assert attributes["LeakyRelu"]["alpha"] == np.float32(codes.LEAKY_SLOPE)
    else:
        slope = {t.name: t for t in graph.initializer}[graph.node[1].input[1]]
        assert onnx.numpy_helper.to_array(slope).tolist() == [codes.LEAKY_SLOPE]
    assert attributes["Softmax"] == {"axis": -1}
    for n in (1, 7):
        X = _inputs(n).astype(dtype)
        _close(_run_onnx(ort, tmp_path / "net.onnx", X), net.forward(X), dtype)


def test_onnx_identity_is_no_node(ort, tmp_path):
    import onnx
    net = _network("identity", "identity", "float64", sizes=(5, 3, 2))
    net.to_onnx(tmp_path / "net.onnx")
    assert [n.op_type for n in onnx.load(tmp_path / "net.onnx").graph.node] == ["Gemm", "Gemm"]
    X = _inputs(4)
    _close(_run_onnx(ort, tmp_path / "net.onnx", X), net.forward(X), "float64")


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")  # 3 iterations: not converged
def test_an_estimator_exports_through_its_network(ort, tmp_path):
    pytest.importorskip("sklearn")
    X = _inputs(60)
    y = np.digitize(X[:, 0] + X[:, 1], [-1, 1])  # three classes
    model = fastbp.MLPClassifier((6,), max_iter=3, random_state=0).fit(X, y)
    model.network_.to_onnx(tmp_path / "model.onnx")
    _close(_run_onnx(ort, tmp_path / "model.onnx", X), model.predict_proba(X), "float64")


# --------------------------------------------------------------------------- PyTorch

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_torch_gives_forward_and_comes_back(torch, hidden, output, dtype):
    net = _network(hidden, output, dtype)
    module = net.to_torch()
    expected = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
                "leaky_relu": torch.nn.LeakyReLU, "softmax": torch.nn.Softmax}
    kinds = [type(m) for m in module]
    layer = [torch.nn.Linear] + ([expected[hidden]] if hidden != "identity" else [])
    last = [torch.nn.Linear] + ([expected[output]] if output != "identity" else [])
    assert kinds == layer * 2 + last
    assert all(p.dtype == getattr(torch, dtype) for p in module.parameters())
    X = _inputs(7).astype(dtype)
    with torch.no_grad():
        result = module(torch.from_numpy(X)).numpy()
    _close(result, net.forward(X), dtype)

    back = fastbp.from_torch(module, loss=net.loss)
    assert back.config() == net.config()
    np.testing.assert_array_equal(back.parameters, net.parameters)


def test_from_torch_reads_a_torch_model(torch):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Identity(),
                                 torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4),
                                 torch.nn.Softmax(dim=1))
    net = fastbp.from_torch(module, backend="numpy")
    assert (net.layer_sizes, net.activation, net.output_activation, net.loss, net.dtype.name) == \
        ([5, 8, 8, 4], "tanh", "softmax", "cross_entropy", "float32")
    X = _inputs(9).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(X)).numpy()
    _close(net.forward(X), expected, "float32")
    single = fastbp.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 1).double()))
    assert (single.layer_sizes, single.output_activation, single.loss, single.dtype.name) == \
        ([3, 1], "identity", "mse", "float64")


def _refusals(nn):
    yield "Conv1d", "layer 1 (Conv1d)", nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 1))
    yield "Dropout", "layer 2 (Dropout)", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(),
                                                        nn.Linear(4, 2))
    yield "nested", "layer 0 (Sequential)", nn.Sequential(nn.Sequential(nn.Linear(4, 2)))
    yield "no bias", "layer 2 (Linear) has no bias", nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    yield "two hidden", "layer 3 (Tanh) makes hidden layer 2 tanh", nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    yield "identity hidden", ("layer 2 (Linear, with no activation after it) makes hidden layer "
                              "2 identity"), nn.Sequential(nn.Linear(4, 4), nn.ReLU(),
                                                           nn.Linear(4, 4), nn.Linear(4, 2))
    yield "slope", "layer 1 (LeakyReLU) has negative_slope=0.2", nn.Sequential(
        nn.Linear(4, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2))
    yield "softmax dim", "layer 1 (Softmax) has dim=0", nn.Sequential(nn.Linear(4, 2),
                                                                       nn.Softmax(dim=0))
    yield "softmax hidden", "layer 1 (Softmax) is on hidden layer 1", nn.Sequential(
        nn.Linear(4, 4), nn.Softmax(dim=-1), nn.Linear(4, 2))
    yield "two activations", "layer 2 (Sigmoid) follows another activation (layer 1)", \
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sigmoid(), nn.Linear(4, 2))
    yield "activation first", "layer 0 (ReLU) comes before any Linear", nn.Sequential(
        nn.ReLU(), nn.Linear(4, 2))
    yield "widths", "layer 1 (Linear) takes 3 inputs, but the layer before gives 4", \
        nn.Sequential(nn.Linear(4, 4), nn.Linear(3, 2))
    yield "float16", "float16", nn.Sequential(nn.Linear(4, 2).half())
    yield "mixed", "torch.float32, torch.float64", nn.Sequential(
        nn.Linear(4, 4), nn.Linear(4, 2).double())
    yield "empty", "no Linear layer", nn.Sequential()


def test_from_torch_names_what_it_cannot_represent(torch):
    for what, message, module in _refusals(torch.nn):
        with pytest.raises(ValueError) as error:
            fastbp.from_torch(module)
        assert message in str(error.value), what
    with pytest.raises(TypeError, match="torch.nn.Sequential.*got Linear"):
        fastbp.from_torch(torch.nn.Linear(4, 2))


# --------------------------------------------------------------------------- evaluate and predict

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for one epoch on a small npz with text labels, and the data."""
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = rng.random((90, 4))
    y = np.array(["cat", "dog", "eel"])[np.digitize(X[:, 0] + X[:, 1], [0.7, 1.3])]
    np.savez(folder / "data.npz", X=X, y=y)
    assert main(["train", "--dataset", str(folder / "data.npz"), "--layers", "4,8,3", "--epochs",
                 "1", "--quiet", "--save", str(folder / "model.npz"), "--backend", "numpy"]) == 0
    np.savez(folder / "wide.npz", X=np.hstack([X, X]), y=y)
    return folder, X, y


def test_evaluate_prints_cost_accuracy_and_classes(trained, capsys):
    folder, X, y = trained
    capsys.readouterr()
    assert main(["evaluate", str(folder / "model.npz"), "--dataset", str(folder / "data.npz"),
                 "--backend", "numba", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    net = fastbp.load(folder / "model.npz", backend="numba")
    labels = np.searchsorted(np.unique(y), y)
    result, predicted = net.evaluate(X, labels), net.predict(X)
    assert lines[0].endswith("90 samples, 3 classes")
    assert lines[1] == f"mean cost {result.loss:.6g}  accuracy {result.accuracy:.4f}"
    assert lines[2].split() == ["class", "samples", "accuracy", "precision"]
    for index, (line, name) in enumerate(zip(lines[3:], ["cat", "dog", "eel"])):
        mine, chosen = labels == index, predicted == index
        hits = np.sum(mine & chosen)
        precision = f"{hits / chosen.sum():.4f}" if chosen.any() else "-"
        assert line.split() == [name, str(mine.sum()), f"{hits / mine.sum():.4f}", precision]
    assert len(lines) == 6


def test_predict_writes_labels_and_outputs(trained, capsys):
    folder, X, y = trained
    net = fastbp.load(folder / "model.npz")
    model, data = str(folder / "model.npz"), str(folder / "data.npz")
    capsys.readouterr()
    assert main(["predict", model, "--dataset", data, "--output", str(folder / "labels.csv")]) == 0
    assert "90 labels written" in capsys.readouterr().out
    rows = list(csv.reader((folder / "labels.csv").read_text().splitlines()))
    assert rows[0] == ["label"]
    assert [row[0] for row in rows[1:]] == list(np.unique(y)[net.predict(X)])

    assert main(["predict", model, "--dataset", data, "--output", "-", "--indices"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["label"] and [int(r[0]) for r in rows[1:]] == net.predict(X).tolist()

    assert main(["predict", model, "--dataset", data, "--proba", "-o", "-"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["p0", "p1", "p2"] and len(rows) == 91
    np.testing.assert_array_equal(np.array(rows[1:], dtype=np.float32), net.forward(X))


def test_predict_outputs_header_without_probabilities(tmp_path, capsys):
    net = fastbp.Network([4, 3, 2], "tanh", "identity", dtype="float64", seed=0)
    net.save(tmp_path / "model.npz")
    X = _inputs(5, width=4)
    np.savez(tmp_path / "data.npz", X=X, y=np.zeros(5, int))
    assert main(["predict", str(tmp_path / "model.npz"), "--dataset", str(tmp_path / "data.npz"),
                 "--proba"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["output0", "output1"]
    np.testing.assert_array_equal(np.array(rows[1:], dtype=float), net.forward(X))


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_bad_model_or_data_exit_2(trained, capsys, command):
    folder = trained[0]
    capsys.readouterr()
    for model, data, message in (
            ("model.npz", "wide.npz", "takes 4 features per sample, but"),
            ("missing.npz", "data.npz", "missing.npz"),
            ("model.npz", "missing.npz", "missing.npz")):
        assert main([command, str(folder / model), "--dataset", str(folder / data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastbp: error: ") and message in err and err.count("\n") == 1


def test_label_count_must_fit_the_model(trained, tmp_path, capsys):
    folder, X, _ = trained
    model = str(folder / "model.npz")
    np.savez(tmp_path / "four.npz", X=X, y=np.arange(90) % 4)
    np.savez(tmp_path / "two.npz", X=X, y=np.arange(90) % 2)
    capsys.readouterr()
    assert main(["evaluate", model, "--dataset", str(tmp_path / "four.npz")]) == 2
    assert "4 distinct labels" in capsys.readouterr().err
    assert main(["evaluate", model, "--dataset", str(tmp_path / "two.npz")]) == 0
    assert "note: " in capsys.readouterr().err
    assert main(["predict", model, "--dataset", str(tmp_path / "two.npz")]) == 2
    assert "use --indices" in capsys.readouterr().err
    assert main(["predict", model, "--dataset", str(tmp_path / "two.npz"), "--indices"]) == 0


def test_help_says_how_labels_are_taken(capsys):
    for command in ("evaluate", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "sorted distinct values" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- optional packages

def test_onnx_and_torch_stay_optional(tmp_path, monkeypatch):
    import subprocess
    import sys
    code = "import sys, fastbp; print(sorted({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
    net = _network("relu", "softmax", "float32")
    for module, call in (("onnx", lambda: net.to_onnx(tmp_path / "net.onnx")),
                         ("torch", net.to_torch), ("torch", lambda: fastbp.from_torch(None))):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        with pytest.raises(ImportError, match=rf"pip install 'fastbp\[{module}\]'"):
            call()
        monkeypatch.undo()
