"""net.trace: one backpropagation in the course's notation, checked against the course's equations
written out here one sample at a time (column vectors), against net.gradients on every backend, and
for what it must not do (change the network, accept bad input); and `fastbp trace`."""
import numpy as np
import pytest
from support import close, problem

import fastbp
from fastbp.cli import main
from fastbp.kernels import codes

HIDDEN = codes.HIDDEN_ACTIVATIONS
OUTPUTS = (("sigmoid", "cross_entropy"), ("softmax", "cross_entropy"), ("softmax", "mse"),
           ("sigmoid", "mse"), ("identity", "mse"), ("tanh", "mse"))
SIZES = [3, 4, 5, 3]


# ----------------------------------------------------------------------------- the course, by hand

def f(name, z):
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "softmax":
        return np.exp(z) / np.exp(z).sum()
    return z


def f_prime(name, z):  # on z, as the course writes it
    if name == "sigmoid":
        return f("sigmoid", z) * (1 - f("sigmoid", z))
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(float)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, 0.01)
    return np.ones_like(z)


def course(net, x, y):
    """a, z, delta, dW, db (lists indexed by layer) and C for one sample x, target column y."""
    L = len(net.weights)
    W = [None] + [w.astype(float) for w in net.weights]
    b = [None] + [v.astype(float) for v in net.biases]
    acts = [None] + [net.activation] * (L - 1) + [net.output_activation]
    a, z = [x], [None]
    for m in range(1, L + 1):
        z.append(W[m] @ a[m - 1] + b[m])
        a.append(f(acts[m], z[m]))
    aL = a[L]
    if net.loss == "mse":
        C = 0.5 * np.sum((aL - y) ** 2)
        if acts[L] == "softmax":
            jacobian = np.diag(aL) - np.outer(aL, aL)
            dL = jacobian @ (aL - y)
        else:
            dL = f_prime(acts[L], z[L]) * (aL - y)
    else:
        C = (-np.sum(y * np.log(aL)) if acts[L] == "softmax"
             else -np.sum(y * np.log(aL) + (1 - y) * np.log(1 - aL)))
        dL = aL - y
    delta = [None] * (L + 1)
    delta[L] = dL
    for m in range(L - 1, 0, -1):
        delta[m] = f_prime(acts[m], z[m]) * (W[m + 1].T @ delta[m + 1])
    dW = [None] + [np.outer(delta[m], a[m - 1]) for m in range(1, L + 1)]
    db = [None] + [delta[m] for m in range(1, L + 1)]
    return a, z, delta, dW, db, C


def one_hot(label, n):
    y = np.zeros(n)
    y[label] = 1
    return y


def network(hidden, output, loss, sizes=SIZES, dtype="float64", backend="numpy", seed=0):
    return fastbp.Network(sizes, hidden, output, loss, dtype, backend, seed=seed)


def targets(loss, output, n, seed):
    """Labels for cross-entropy with several outputs (and softmax), else target rows."""
    rng = np.random.default_rng(seed)
    if loss == "cross_entropy" or output == "softmax":
        return rng.integers(0, SIZES[-1], n)
    return rng.random((n, SIZES[-1]))


# ----------------------------------------------------------------------------- the equations

@pytest.mark.parametrize("output,loss", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_one_sample_follows_the_course(hidden, output, loss):
    net = network(hidden, output, loss, seed=1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=SIZES[0])
    y = targets(loss, output, 1, 3)[0]
    t = net.trace(x, y)
    column = one_hot(y, SIZES[-1]) if np.ndim(y) == 0 else y
    a, z, delta, dW, db, C = course(net, x, column)
    L = len(SIZES) - 1
    assert len(t.a) == len(t.z) == len(t.delta) == len(t.dW) == len(t.db) == L + 1
    assert t.z[0] is None and t.delta[0] is None and t.dW[0] is None and t.db[0] is None
    assert t.W[0] is None and t.b[0] is None
    np.testing.assert_array_equal(t.a[0], x)
    np.testing.assert_array_equal(t.y, column)
    for m in range(1, L + 1):
        assert t.z[m].shape == t.a[m].shape == t.delta[m].shape == (SIZES[m],)
        np.testing.assert_array_equal(t.W[m], net.weights[m - 1])
        np.testing.assert_array_equal(t.b[m], net.biases[m - 1])
        for got, expected in ((t.z, z), (t.a, a), (t.delta, delta), (t.dW, dW), (t.db, db)):
            close(got[m], expected[m], "float64")
    assert t.C == pytest.approx(C, rel=1e-12)
    assert t.f == [None, hidden, hidden, output] and t.loss == loss
    assert (t.note is not None) == ((output, loss) in {("sigmoid", "cross_entropy"),
                                                       ("softmax", "cross_entropy"),
                                                       ("softmax", "mse")})


@pytest.mark.parametrize("output,loss", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_batch_follows_the_course(hidden, output, loss):
    net = network(hidden, output, loss, seed=4)
    X = np.random.default_rng(5).normal(size=(6, SIZES[0]))
    y = targets(loss, output, 6, 6)
    t = net.trace(X, y)
    samples = [course(net, X[i], one_hot(y[i], SIZES[-1]) if y.ndim == 1 else y[i])
               for i in range(len(X))]
    for m in range(1, len(SIZES)):
        for k, got in ((0, t.a), (1, t.z), (2, t.delta)):
            assert got[m].shape == (6, SIZES[m])
            close(got[m], np.stack([s[k][m] for s in samples]), "float64")
        close(t.dW[m], np.mean([s[3][m] for s in samples], axis=0), "float64")
        close(t.db[m], np.mean([s[4][m] for s in samples], axis=0), "float64")
    assert t.a[0].shape == (6, SIZES[0]) and t.y.shape == (6, SIZES[-1])
    assert t.C == pytest.approx(np.mean([s[5] for s in samples]), rel=1e-12)


def test_one_output_unit_takes_a_number():
    net = fastbp.Network([2, 3, 1], "tanh", "sigmoid", "cross_entropy", backend="numpy", seed=0)
    x = np.array([0.3, -0.7])
    t = net.trace(x, 1)
    _, _, delta, dW, _, C = course(net, x, np.array([1.0]))
    close(t.delta[2], delta[2], "float64")
    close(t.dW[1], dW[1], "float64")
    assert t.C == pytest.approx(C, rel=1e-12)
    np.testing.assert_array_equal(net.trace(x, [1.0]).dW[1], t.dW[1])  # a target row


def test_the_step_and_the_cost_after_it():
    net = network("sigmoid", "softmax", "cross_entropy", seed=7)
    X, y = problem(SIZES, 5, seed=8)
    t = net.trace(X, y, lr=0.3)
    assert t.lr == 0.3
    step = net.copy()
    for m in range(1, len(SIZES)):
        expected_W, expected_b = net.weights[m - 1] - 0.3 * t.dW[m], net.biases[m - 1] - 0.3 * t.db[m]
        np.testing.assert_array_equal(t.W_after[m], expected_W)
        np.testing.assert_array_equal(t.b_after[m], expected_b)
        step.weights[m - 1][:] = expected_W
        step.biases[m - 1][:] = expected_b
    assert t.cost_after == pytest.approx(step.evaluate(X, y).loss, rel=1e-12)
    assert t.cost_after < t.C  # a small step downhill
    assert net.trace(X, y).cost_after is None


# ----------------------------------------------------------------------------- the gradients

@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "mse"),
                                         ("softmax", "mse")])
def test_gradients_match_the_backend(backend, dtype, output, loss):
    net = network("tanh", output, loss, dtype=dtype, backend=backend, seed=9)
    X, y = problem(SIZES, 7, seed=10, dtype=dtype)
    t = net.trace(X, y)
    dW, db = net.gradients(X, y)
    for m in range(1, len(SIZES)):
        assert t.dW[m].dtype == t.a[m].dtype == np.dtype(dtype)
        close(t.dW[m], dW[m - 1], dtype, factor=0.5)  # 1e-12 in float64, 1e-5 in float32
        close(t.db[m], db[m - 1], dtype, factor=0.5)
    one = net.trace(X[2], y[2])
    dW, db = net.gradients(X[2:3], y[2:3])
    close(one.dW[1], dW[0], dtype, factor=0.5)
    close(one.db[3], db[2], dtype, factor=0.5)


# ----------------------------------------------------------------------------- nothing changes

def snapshot(net):
    state = net.optimizer_state
    return (net.parameters.tobytes(), state["slots"].tobytes(), state["step"], state["optimizer"],
            str(net.rng.bit_generator.state))


def test_nothing_changes(compiled):
    net = network("relu", "softmax", "cross_entropy", backend=compiled, seed=11)
    X, y = problem(SIZES, 20, seed=12)
    net.fit(X, y, epochs=1, batch_size=5, lr=0.1, momentum=0.9)
    before = snapshot(net)
    net.trace(X, y, lr=0.5)
    net.trace(X[0], y[0], lr=0.5)
    with pytest.raises(ValueError):
        net.trace(X[0], 7, lr=0.5)
    assert snapshot(net) == before
    t = net.trace(X, y)
    t.W[1][:] = 0  # the trace holds copies
    assert snapshot(net) == before


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("x,y,lr,error,message", [
    (np.zeros(5), 0, None, ValueError, "x has 5 features per sample; the network's input layer has 3"),
    (np.zeros((2, 4)), [0, 1], None, ValueError, "x has 4 features"),
    (np.zeros(3), 3, None, ValueError, r"labels from 3 to 3.*3 output units \(labels 0..2\)"),
    (np.zeros(3), -1, None, ValueError, "labels from -1"),
    (np.array([0.0, np.nan, 1.0]), 0, None, ValueError, r"x must be finite; x\[1\] is nan"),
    (np.array([[0.0, 1, 2], [0, 1, np.inf]]), [0, 1], None, ValueError, r"x\[1, 2\] is inf"),
    (np.zeros(3), [0.2, np.nan, 0.1], None, ValueError, "y must be finite"),
    (np.zeros(3), [0.2, 0.1], None, ValueError, "y has 2 columns; the network has 3 outputs"),
    (np.zeros((2, 3)), [0, 1, 2], None, ValueError, "y has 3 samples"),
    (np.zeros((2, 2, 3)), 0, None, ValueError, "one sample .1-D"),
    (np.zeros(()), 0, None, ValueError, "one sample .1-D"),
    (np.array(["a", "b", "c"]), 0, None, TypeError, "x must hold real numbers"),
    (np.zeros(3), 0, 0.0, ValueError, "lr must be > 0"),
    (np.zeros(3), 0, np.nan, ValueError, "lr must be finite"),
])
def test_bad_input_is_named(x, y, lr, error, message):
    net = network("sigmoid", "softmax", "cross_entropy", seed=0)
    before = snapshot(net)
    with pytest.raises(error, match=message):
        net.trace(x, y, lr=lr)
    assert snapshot(net) == before


# ----------------------------------------------------------------------------- the text

def test_str_writes_the_equations():
    net = fastbp.Network([4, 10, 3], "relu", "softmax", "cross_entropy", backend="numpy", seed=0)
    t = net.trace(np.linspace(0, 1, 4), 2, lr=0.25)
    text = str(t)
    for line in ("a^0 = x: (4,)", "z^1 = W^1 a^0 + b^1: (10,) = (10, 4)(4,) + (10,)",
                 "a^1 = relu(z^1): (10,)", "z^2 = W^2 a^1 + b^2: (3,) = (3, 10)(10,) + (3,)",
                 "a^2 = softmax(z^2): (3,)", "C = −Σ y ln a^2 = ", "δ^2 = a^2 − y: (3,)",
                 "note: softmax with cross-entropy", "f' cancels",
                 "δ^1 = relu'(z^1) ⊙ (W^2)ᵀ δ^2: (10,) = (10,) ⊙ (10, 3)(3,)",
                 "∂C/∂W^2 = δ^2 (a^1)ᵀ: (3, 10) = (3,)(10,)ᵀ", "∂C/∂b^1 = δ^1: (10,)",
                 "α = 0.25", "W^m(k+1) = W^m(k) − α δ^m (a^(m-1))ᵀ",
                 "W^2(k+1) = W^2(k) − 0.25 δ^2 (a^1)ᵀ: (3, 10)",
                 f"C = {t.C:.6g} before the step, {t.cost_after:.6g} after"):
        assert line in text, line
    assert "(the first 6 of 40 values)" in text  # W^1 in part
    assert "[[" not in t.format(whole=0).split("W^1: (10, 4)")[1].split("b^1: ")[0]
    assert "[[" in t.format(whole=100).split("W^1: (10, 4)")[1].split("b^1: ")[0]  # whole
    assert repr(t).startswith("<fastbp.Trace of one sample")
    assert isinstance(t, fastbp.Trace)


@pytest.mark.parametrize("output,loss,line", [
    ("sigmoid", "mse", "δ^2 = sigmoid'(z^2) ⊙ ∂C/∂a^2 = sigmoid'(z^2) ⊙ (a^2 − y): (3,) = (3,) ⊙ (3,)"),
    ("softmax", "mse", "δ^2 = (diag(a^2) − a^2 (a^2)ᵀ)(a^2 − y): (3,) = (3, 3)(3,)"),
    ("sigmoid", "cross_entropy", "δ^2 = a^2 − y: (3,)"),
])
def test_str_of_the_output_error(output, loss, line):
    net = fastbp.Network([2, 4, 3], "tanh", output, loss, backend="numpy", seed=0)
    X, y = problem([2, 4, 3], 4)
    text = str(net.trace(X, y))
    assert line in text and "a batch of 4 samples" in text and "mean of δ^1 (a^0)ᵀ" in text
    assert ("note:" in text) == ((output, loss) != ("sigmoid", "mse"))


# ----------------------------------------------------------------------------- fastbp trace

def test_the_command(capsys):
    assert main(["trace", "--lr", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "a random sample" in out and "Network([2, 3, 2], activation='sigmoid'" in out
    assert "z^1 = W^1 a^0 + b^1: (3,) = (3, 2)(2,) + (3,)" in out
    assert "C = " in out and " after" in out
    assert "[[" in out  # small matrices whole
    assert main(["trace", "--layers", "3,5,4,1", "--activation", "leaky_relu",
                 "--output-activation", "sigmoid", "--loss", "cross_entropy", "--dtype",
                 "float32", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "dtype='float32'" in out and "δ^3 = a^3 − y: (1,)" in out and "δ^1 = leaky_relu'" in out


def test_the_command_on_a_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.random((12, 4)), y=np.array(["b", "a", "c"] * 4))
    data = str(tmp_path / "data.npz")
    assert main(["trace", "--dataset", data, "--sample", "2"]) == 0
    out = capsys.readouterr().out
    assert f"sample 2 of {data}, class c (label 2)" in out and "Network([4, 3, 3]" in out
    assert "[0. 0. 1.]" in out
    assert main(["trace", "--dataset", data, "--layers", "4,2,3", "--loss", "cross_entropy"]) == 0
    assert "Network([4, 2, 3]" in capsys.readouterr().out
    for argv, message in ((["--dataset", data, "--layers", "3,2,3"],
                           f"--layers starts with 3 inputs, but {data} has 4 features"),
                          (["--dataset", data, "--sample", "12"], "--sample 12 is out of range"),
                          (["--sample", "1"], "give --dataset too"),
                          (["--dataset", data, "--layers", "4,2,2", "--sample", "2"], "labels from 2 to 2"),
                          (["--lr", "-1"], "lr must be > 0")):
        assert main(["trace"] + argv) == 2
        assert message in capsys.readouterr().err
