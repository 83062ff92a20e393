"""The environment a measurement runs in: BLAS variables removed, thread counts pinned.

If your environment sets OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE (some machines set them because old
OpenBLAS builds misbehave on their CPUs), they slow a current OpenBLAS (numpy's and scipy's BLAS), so
every benchmark process runs without both. OpenBLAS reads them when it is loaded
(at ``import numpy``), so they must be gone from the environment *before* the process starts:
compare.py launches its measurements with ``clean_env``; the command-line tools re-execute themselves
with ``reexec_clean``; under pytest, run ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest ...``
(bench/conftest.py warns otherwise).

Standard library only: importing this module must not load numpy.
"""
import os
import sys

BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_env(threads):
    """Variables that limit the common thread pools (OpenMP, BLAS, XLA) to `threads`."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    if threads == 1:  # XLA's CPU client has no thread-count setting but this switch
        env["XLA_FLAGS"] = XLA_ONE_THREAD
    return env


def clean_env(threads=None, base=None, **extra):
    """A copy of the environment without the BLAS variables, with thread counts set (when given)
    and `extra` variables added."""
    env = dict(os.environ if base is None else base)
    for name in BLAS_VARIABLES:
        env.pop(name, None)
    if threads is not None:
        env.update(thread_env(threads))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def blas_variables_set():
    return [name for name in BLAS_VARIABLES if name in os.environ]


def reexec_clean():
    """Re-execute this script without the BLAS variables if they are set (call before numpy loads)."""
    if blas_variables_set():
        os.execve(sys.executable, [sys.executable] + sys.argv, clean_env())
