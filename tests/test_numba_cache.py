"""The first Numba compilation for a dtype on a machine is announced on stderr, once; a warm cache
says nothing.

The first test runs subprocesses with a fresh NUMBA_CACHE_DIR: it compiles the Numba kernels once
(about 20 s on one core); the second checks how the cache index is read.
"""
import os
import subprocess
import sys

import pytest

import fastbp

FIT = ("import numpy as np, fastbp; X = np.random.default_rng(0).random((20, 3)); "
       "fastbp.Network([3, 4, 2], backend='numba', n_threads=1).fit(X, np.arange(20) % 2, epochs=1)")
MESSAGE = "fastbp: compiling the Numba kernels for float64 on this machine"


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


def test_the_announcement_looks_for_a_worker_of_this_dtype_and_machine():
    if "numba" not in fastbp.available_backends():
        pytest.skip("numba unavailable")
    from numba import types

    from fastbp.kernels import nb_train

    def key(dtype, machine):  # the worker's arguments: params is the sixth
        return (types.int64,) * 5 + (types.Array(dtype, 1, "C"),), machine, ("code", "closure")

    index = {key(types.float32, "here"): "worker-0.nbc"}
    assert nb_train._compiled_for(index, "float32", "here")
    assert not nb_train._compiled_for(index, "float64", "here")
    assert not nb_train._compiled_for(index, "float32", "another machine")
    assert not nb_train._compiled_for({}, "float32", "here")
    assert not nb_train._compiled_for({("not", "a", "key"): "x", (): "y"}, "float32", "here")
