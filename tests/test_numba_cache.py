"""The first Numba compilation for a dtype on a machine is announced on stderr, once; a warm cache
says nothing; the cache is never stale.

The first test runs subprocesses with a fresh NUMBA_CACHE_DIR: it compiles the Numba kernels once
(about 20 s on one core); the second checks how the cache index is read; the third that the files
compiled from others carry those others' fingerprints.
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


def test_the_cached_numba_code_follows_the_files_it_is_compiled_from():
    """Numba keys its cache of a function on the text of that function's file alone. The kernels
    carry the codes' fingerprint and the drivers the kernels' file's, so that a change of either
    changes the text of every file compiled from it: else a cached worker keeps running the kernels
    it was compiled with (seen: a new nb_kernels.py, an unchanged nb_train.py, the old kernels)."""
    if "numba" not in fastbp.available_backends():
        pytest.skip("numba unavailable")
    import hashlib
    from pathlib import Path

    from fastbp.kernels import codes, nb_kernels, nb_train

    kernels = hashlib.sha256(Path(nb_kernels.__file__).read_bytes()).hexdigest()[:16]
    assert nb_kernels.CODES == codes.source_hash(), (
        f"the codes changed: set CODES = {codes.source_hash()!r} in nb_kernels.py")
    assert nb_train.KERNELS == kernels, (
        f"nb_kernels.py changed: set KERNELS = {kernels!r} in nb_train.py")
