"""Fixtures: one suite for every backend and dtype; tolerances; small random problems.

Set FASTBP_REQUIRE_BACKENDS=all (as .ci/run does) to fail, rather than skip, when a backend is missing.
"""
import os

import pytest

import fastbp
from fastbp import backends

COMPILED = ("numba", "cython")
ALL = ("numpy",) + COMPILED


def _require(name):
    if name not in fastbp.available_backends():
        reason = backends.available_backends(details=True)[name].get("reason", "")
        if os.environ.get("FASTBP_REQUIRE_BACKENDS") == "all":
            pytest.fail(f"backend {name} is required here but unavailable: {reason}")
        pytest.skip(f"backend {name} unavailable: {reason}")
    return name


@pytest.fixture(autouse=True)
def every_thread_works(monkeypatch):
    """Every thread count a test asks for runs that many workers, however small its problem (by
    default a call runs one worker per planner.MIN_WORKER_WORK multiply-adds it has, at least one)."""
    from fastbp.kernels import planner
    monkeypatch.setattr(planner, "MIN_WORKER_WORK", 0)


@pytest.fixture(params=ALL)
def backend(request):
    """Every backend, the numpy reference included."""
    return _require(request.param)


@pytest.fixture(params=COMPILED)
def compiled(request):
    """Each compiled backend."""
    return _require(request.param)


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return request.param

