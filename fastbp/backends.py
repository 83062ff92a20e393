"""The backends by name: which module does the arithmetic, imported on first use.

Each backend module exports the drivers of ``kernels/codes.py`` (``forward``, ``gradients``,
``train_epoch``) with the same arguments; the compiled ones also export the primitive kernels.
"""
import importlib
import os

MODULES = {
    "numpy": "fastbp.reference",
    "numba": "fastbp.kernels.nb_train",
    "cython": "fastbp.kernels.cy_train",
}
BACKENDS = tuple(MODULES)
KERNEL_MODULES = {"numba": "fastbp.kernels.nb_kernels", "cython": "fastbp.kernels.cy_kernels"}


class BackendUnavailable(ImportError):
    """The backend exists but cannot be used here (not built, or a dependency is missing)."""


def resolve(name):
    """`name`, or for ``auto`` the fastest backend built here: cython, else numba."""
    if name != "auto":
        return name
    try:
        get("cython")
        return "cython"
    except BackendUnavailable:
        return "numba"


def get(name):
    """The driver module of backend `name`."""
    try:
        module = importlib.import_module(MODULES[name])
    except (KeyError, TypeError):
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or "
                         f"auto") from None
    except ImportError as error:
        raise BackendUnavailable(f"the {name} backend is not available: {error}") from error
    built_from = getattr(module, "CODES", None)
    if built_from is not None:
        from .kernels import codes
        if built_from != codes.source_hash():
            raise BackendUnavailable(f"the {name} backend was built from another version of "
                                     f"kernels/codes.py: rebuild it (pip install .)")
    return module


def kernels(name):
    """The primitive-kernel module of compiled backend `name` (numba or cython)."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"backend {name!r} has no compiled kernels; choose one of "
                         f"{', '.join(KERNEL_MODULES)}")
    get(name)  # the same checks
    try:
        return importlib.import_module(KERNEL_MODULES[name])
    except ImportError as error:
        raise BackendUnavailable(f"the {name} backend is not available: {error}") from error


def available_backends(details=False):
    """The backends that work here, fastest first.

    With ``details=True``, a dict from every backend name to a dict of facts: ``available`` and, when
    not, ``reason``; ``openmp`` for the Cython build.
    """
    info = {}
    for name in ("cython", "numba", "numpy"):
        try:
            module = get(name)
        except BackendUnavailable as error:
            info[name] = {"available": False, "reason": str(error.__cause__ or error)}
            continue
        info[name] = {"available": True}
        if hasattr(module, "OPENMP"):
            info[name]["openmp"] = bool(module.OPENMP)
    if details:
        return info
    return [name for name, facts in info.items() if facts["available"]]


def default_threads():
    """The threads a process may use: the CPUs it is allowed to run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
