"""Helpers shared by the tests (importable because pyproject puts tests/ on pytest's pythonpath)."""
import numpy as np

# Relative tolerances against the numpy reference (float32 rounds at ~6e-8 per operation).
RTOL = {"float64": 1e-12, "float32": 2e-5}


def close(actual, expected, dtype, factor=1.0):
    """Assert agreement to the dtype's relative tolerance, measured against the largest magnitude."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    error = np.abs(actual - expected).max(initial=0.0) / scale
    assert error <= RTOL[str(np.dtype(dtype))] * factor, f"relative error {error:.3g}"


def problem(sizes, n, seed=0, dtype="float64", labels=True):
    """Random inputs in [0, 1) and targets: integer labels, or one-hot-free random targets."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, sizes[0])).astype(dtype)
    if labels:
        return X, rng.integers(0, sizes[-1], n)
    return X, rng.random((n, sizes[-1])).astype(dtype)
