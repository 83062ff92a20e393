"""The first Numba compilation on a machine is announced on stderr, once; a warm cache says nothing.

One test, in subprocesses with a fresh NUMBA_CACHE_DIR: it compiles the Numba kernels once (about
15 s on one core).
"""
import os
import subprocess
import sys

import pytest

import fastbp

FIT = ("import numpy as np, fastbp; X = np.random.default_rng(0).random((20, 3)); "
       "fastbp.Network([3, 4, 2], backend='numba', n_threads=1).fit(X, np.arange(20) % 2, epochs=1)")
MESSAGE = "fastbp: compiling the Numba kernels for this machine"


def test_the_first_numba_compilation_says_so_once(tmp_path):
    if "numba" not in fastbp.available_backends():
        pytest.skip("numba unavailable")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    seen = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", FIT], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        seen.append(run.stderr.count(MESSAGE))
    assert seen == [1, 0], seen
