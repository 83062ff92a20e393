"""The compiled backends by name: their kernel and driver modules, imported on first use.

A Cython build records the fingerprint of the codes it was compiled from (``cy_train.CODES``); a
build whose fingerprint is not ``codes.source_hash()`` is refused here, rather than misread.
``fastbp.backends`` (the API's registry, which adds the numpy reference) looks compiled backends up
through these functions.
"""
import importlib

from . import codes

MODULES = {"numba": ("nb_kernels", "nb_train"), "cython": ("cy_kernels", "cy_train")}
COMPILED = tuple(MODULES)


class BackendUnavailable(ImportError):
    """The backend exists but cannot be used here (not built, or a dependency is missing)."""


def _import(name, which):
    if name not in MODULES:
        raise ValueError(f"backend {name!r} has no compiled kernels; choose one of "
                         f"{', '.join(COMPILED)}")
    try:
        return importlib.import_module(f"{__package__}.{MODULES[name][which]}")
    except ImportError as error:
        raise BackendUnavailable(f"the {name} backend is not available: {error}") from error


def drivers(name):
    """The driver module of compiled backend `name` (numba or cython), checked."""
    module = _import(name, 1)
    built_from = getattr(module, "CODES", None)
    if built_from is not None and built_from != codes.source_hash():
        raise BackendUnavailable(f"the {name} backend was built from another version of "
                                 f"kernels/codes.py: rebuild it (pip install .)")
    return module


def kernels(name):
    """The primitive-kernel module of compiled backend `name` (numba or cython), checked."""
    drivers(name)  # the same checks
    return _import(name, 0)


def resolve(name, probe=drivers):
    """`name`, or for ``auto`` the fastest backend built here: cython when ``probe("cython")``
    succeeds (it raises BackendUnavailable otherwise), else numba."""
    if name != "auto":
        return name
    try:
        probe("cython")
        return "cython"
    except BackendUnavailable:
        return "numba"
