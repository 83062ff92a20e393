"""The backends by name: which module does the arithmetic, imported on first use.

Each backend module exports the drivers of ``kernels/codes.py`` (``codes.DRIVERS``) with the same
arguments; the compiled ones also export the primitive kernels. The compiled backends are looked up
(and a Cython build from other codes refused) by ``fastbp.kernels.loader``; this adds the numpy
reference.
"""
import importlib
import os

from .kernels import loader
from .kernels.loader import BackendUnavailable

REFERENCE = "fastbp.reference"
BACKENDS = ("numpy",) + loader.COMPILED


def resolve(name):
    """`name`, or for ``auto`` the fastest backend built here: cython, else numba."""
    return loader.resolve(name, get)


def get(name):
    """The driver module of backend `name`."""
    if name == "numpy":
        return importlib.import_module(REFERENCE)
    if name not in loader.COMPILED:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or "
                         f"auto")
    return loader.drivers(name)


def kernels(name):
    """The primitive-kernel module of compiled backend `name` (numba or cython)."""
    return loader.kernels(name)


def available_backends(details=False):
    """The backends that work here, fastest first.

    With ``details=True``, a dict from every backend name to a dict of facts: ``available`` and, when
    not, ``reason``; for the Cython build ``openmp``, ``variant`` (the build of the twin in use:
    ``native`` for a local build, ``baseline`` or ``avx2`` for a wheel's), ``choice`` (FASTBP_CPU,
    ``auto`` by default: the most demanding variant this CPU runs), ``variants`` (those built),
    ``flags`` (the compiler flags of the variant in use, None if unrecorded), ``cpu`` (this CPU's
    x86-64 level, None if unknown), ``build`` (FASTBP_ARCH of the build: ``native``, ``dist``, a -march
    value) and ``compiler``.
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
        if name == "cython":
            info[name].update(_cython_build())
    if details:
        return info
    return [name for name, facts in info.items() if facts["available"]]


def _cython_build():
    """How the Cython kernels in use were built, and for which CPU."""
    variant, build = loader.cython_variant(), loader.build_info()
    return {"variant": variant["name"], "choice": loader.cpu_choice(),
            "variants": [v["name"] for v in build["variants"]], "flags": variant["flags"],
            "cpu": loader.cpu_level(loader.cpu_features()), "build": build["arch"],
            "compiler": build["compiler"]}


def cpus():
    """The CPUs this process is allowed to run on (a set of their numbers)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def default_threads():
    """The threads a process may use: the CPUs it is allowed to run on."""
    return len(cpus())
