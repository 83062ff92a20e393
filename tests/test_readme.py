"""README.md's examples run as written: every ```python block, in order, in one namespace (the README
says they continue one another, as one session), in a fresh process and an empty folder. The prelude
gives what the README says comes from elsewhere: the `train.npz` its MPI example reads (written by the
reader with `np.savez`). And the README's own training loop on the kernels, with Adam, ends where
`Network.fit` does."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp.kernels import codes

README = Path(__file__).resolve().parents[1] / "README.md"
PRELUDE = """
import numpy as np
rng = np.random.default_rng(0)
np.savez("train.npz", X=rng.random((64, 784)), y=rng.integers(0, 10, 64))  # the MPI example's data
"""
HARNESS = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
exec(compile(blocks.pop(0)[1], "prelude", "exec"), namespace)
for line, code in blocks:
    try:
        exec(compile(code, f"README.md, the block at line {line}", "exec"), namespace)
    except Exception:
        traceback.print_exc()
        sys.exit(f"README.md's block at line {line} failed")
print("ran", len(blocks), "blocks")
"""


def python_blocks():
    """(line, code) of every ```python block of README.md."""
    text = README.read_text()
    return [(text[:match.start()].count("\n") + 2, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


pytestmark = pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")


def test_every_python_example_of_the_readme_runs(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    pytest.importorskip("mpi4py")
    blocks = python_blocks()
    assert len(blocks) >= 8
    (tmp_path / "blocks.json").write_text(json.dumps([(0, PRELUDE)] + blocks))
    (tmp_path / "harness.py").write_text(HARNESS)
    done = subprocess.run([sys.executable, "harness.py", "blocks.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"ran {len(blocks)} blocks" in done.stdout


def test_the_readme_kernel_loop_with_adam_equals_network_fit(compiled):
    """The README's own loop (K.hyperparameters made once, K.update_parameters with "adam" at every
    minibatch) trains as Network.fit does: the same parameters after 5 epochs."""
    block = next(code for _, code in python_blocks() if "K.update_parameters(" in code)
    block = block.replace('activation="sigmoid")', f'activation="sigmoid", backend="{compiled}")')
    namespace = {}
    exec(compile(block, "README.md's kernel loop", "exec"), namespace)
    net = fastbp.Network([64, 32, 10], "sigmoid", loss="cross_entropy", dtype="float32",
                         backend=compiled, seed=0)
    rng = np.random.default_rng(0)  # the README's initial weights, in the same layout
    net.parameters[:] = 0
    net.weights[0][:] = rng.normal(0, 64 ** -0.5, (32, 64))
    net.weights[1][:] = rng.normal(0, 32 ** -0.5, (10, 32))
    net.fit(namespace["X"], namespace["labels"], epochs=5, batch_size=32, lr=0.01, l2=1e-4,
            optimizer="adam", shuffle=False)
    assert net.optimizer_state["step"] == namespace["hyper"][codes.H_STEP]  # every step counted
    np.testing.assert_allclose(namespace["params"], net.parameters, rtol=0, atol=2e-4)
