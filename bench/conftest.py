"""pytest setup for the benchmark suites in bench/.

* Puts bench/ on sys.path, so the suites import ``workloads``, ``peers`` and ``benchenv`` (pyproject's
  pytest settings use ``--import-mode=importlib`` and put only tests/ on the pythonpath; the
  repository root is not needed: fastbp is the installed one).
* Removes OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the environment. OpenBLAS reads them when numpy
  loads; if numpy was loaded before this file ran (another conftest, a plugin), the header says so:
  run ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/ ...`` to be sure.
* Gives the kernel benchmarks a short time budget per benchmark (FASTBP_BENCH_MAX_TIME seconds,
  default 0.2; pytest-benchmark's default is 1.0), unless --benchmark-max-time or
  --benchmark-min-rounds is given on the command line.

Sizes and threads of the epoch benchmarks come from the environment: FASTBP_BENCH_N (samples per
epoch, default 2000), FASTBP_BENCH_WIDE_N (for wide, default 512), FASTBP_BENCH_ROUNDS (timed epochs,
default 5), FASTBP_BENCH_THREADS (default: every CPU), FASTBP_BENCH_DTYPES (fastbp's dtypes, default
float32; e.g. "float32,float64").
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import benchenv  # noqa: E402

_BLAS_SET_AT_LOAD = benchenv.blas_variables_set() if "numpy" in sys.modules else []
for _name in benchenv.BLAS_VARIABLES:
    os.environ.pop(_name, None)

KERNEL_MAX_TIME = float(os.environ.get("FASTBP_BENCH_MAX_TIME", "0.2"))


def pytest_report_header(config):
    lines = [f"bench: {benchenv.cpus()} CPUs; OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE removed from the "
             f"environment"]
    if _BLAS_SET_AT_LOAD:
        lines.append(f"bench: WARNING {', '.join(_BLAS_SET_AT_LOAD)} were set when numpy was loaded "
                     f"(before bench/conftest.py): OpenBLAS uses them; run under "
                     f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest ...`")
    return lines


def pytest_collection_modifyitems(config, items):
    given = " ".join(map(str, config.invocation_params.args))
    if "--benchmark-max-time" in given or "--benchmark-min-rounds" in given:
        return
    for item in items:
        if os.path.basename(str(item.fspath)) == "test_kernels.py" and os.path.dirname(
                str(item.fspath)) == HERE:
            if item.get_closest_marker("benchmark") is None:
                item.add_marker(pytest.mark.benchmark(max_time=KERNEL_MAX_TIME, min_rounds=5))
