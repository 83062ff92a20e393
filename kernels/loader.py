"""The compiled backends by name: their kernel and driver modules, imported on first use.

A Cython build records the fingerprint of the codes it was compiled from (``cy_train.CODES``); a
build whose fingerprint is not ``codes.source_hash()`` is refused here, rather than misread.
``fastbp.backends`` (the API's registry, which adds the numpy reference) looks compiled backends up
through these functions.

A build may hold the Cython twin more than once, compiled for different processors (setup.py,
``FASTBP_ARCH=dist``): a *variant* is one such build, recorded in ``_build_info.py`` with its package,
compiler flags and the CPU features it needs. At first use the loader takes the most demanding
variant this CPU runs (its features from ``_cpu``, read with cpuid); ``FASTBP_CPU=<variant>``
(``baseline``, ``avx2``; ``auto`` by default) chooses one, and a choice this CPU or build cannot
honour makes the cython backend unavailable, with the reason. A local build (``pip install .``) has
one variant, ``native``.
"""
import functools
import importlib
import os

from . import codes

MODULES = {"numba": ("nb_kernels", "nb_train"), "cython": ("cy_kernels", "cy_train")}
COMPILED = tuple(MODULES)
# The x86-64 microarchitecture levels, by the features _cpu reports (each level includes the last).
LEVELS = (("x86-64-v2", ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16", "lahf")),
          ("x86-64-v3", ("avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "lzcnt", "movbe")),
          ("x86-64-v4", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")))


class BackendUnavailable(ImportError):
    """The backend exists but cannot be used here (not built, or a dependency is missing)."""


def build_info():
    """How this installation's Cython kernels were built: ``arch`` (FASTBP_ARCH: ``native``, ``dist``,
    a -march value; None if unrecorded), ``compiler`` and ``variants``, least demanding first: dicts
    with ``name``, ``package``, ``flags`` (the compiler's) and ``requires`` (CPU features). A build that
    predates the record counts as one ``native`` variant with unknown flags."""
    try:
        from . import _build_info
    except ImportError:
        return {"arch": None, "compiler": None,
                "variants": [{"name": "native", "package": __package__, "flags": None, "requires": []}]}
    return {"arch": _build_info.ARCH, "compiler": _build_info.COMPILER,
            "variants": [dict(variant) for variant in _build_info.VARIANTS]}


def cpu_features():
    """The instruction-set extensions of this CPU (and OS), as a frozenset of names, or None where
    they are unknown (a processor other than x86-64, or a build without the probe)."""
    try:
        from . import _cpu
    except ImportError:
        return None
    found = _cpu.features()
    return None if found is None else frozenset(found)


def cpu_level(features):
    """The x86-64 microarchitecture level of `features` (``x86-64-v3``...), or None."""
    if features is None:
        return None
    level, needed = "x86-64", set()
    for name, added in LEVELS:
        needed.update(added)
        if not needed <= features:
            break
        level = name
    return level


def choose_variant(variants, features, wanted="auto"):
    """The variant to load: for ``auto``, the last (most demanding) of `variants` whose requirements
    `features` meets; else the one named `wanted`. Raises BackendUnavailable when there is none (a
    CPU below the build's baseline, an unknown name, a variant this CPU cannot run). With unknown
    features (None), only the least demanding variant is taken, as it is."""
    names = [variant["name"] for variant in variants]

    def runs(variant):
        if features is None:
            return variant is variants[0]
        return set(variant["requires"]) <= features

    if wanted == "auto":
        usable = [variant for variant in variants if runs(variant)]
        if usable:
            return usable[-1]
        missing = sorted(set(variants[0]["requires"]) - (features or set()))
        raise BackendUnavailable(f"this CPU lacks {' '.join(missing)}, which even the {names[0]} build of "
                                 f"the Cython kernels needs: build fastbp from source here (pip install .)")
    if wanted not in names:
        raise BackendUnavailable(f"FASTBP_CPU={wanted}, but this build of the Cython kernels has "
                                 f"{', '.join(names)} (the variants come with FASTBP_ARCH=dist builds); "
                                 f"choose one of {', '.join(names)} or auto")
    variant = variants[names.index(wanted)]
    if not runs(variant):
        missing = sorted(set(variant["requires"]) - (features or set()))
        raise BackendUnavailable(f"FASTBP_CPU={wanted}, but this CPU lacks "
                                 f"{' '.join(missing) or 'the features to check it'}")
    return variant


@functools.lru_cache(maxsize=None)
def _chosen(wanted):
    return choose_variant(build_info()["variants"], cpu_features(), wanted)


def cpu_choice():
    """FASTBP_CPU: the name of a variant, or ``auto``."""
    return os.environ.get("FASTBP_CPU", "").strip().lower() or "auto"


def cython_variant():
    """The Cython variant in use: chosen once per value of FASTBP_CPU (see the module's docstring)."""
    return _chosen(cpu_choice())


def _import(name, which):
    if name not in MODULES:
        raise ValueError(f"backend {name!r} has no compiled kernels; choose one of "
                         f"{', '.join(COMPILED)}")
    try:
        package = cython_variant()["package"] if name == "cython" else __package__
        return importlib.import_module(f"{package}.{MODULES[name][which]}")
    except ImportError as error:  # BackendUnavailable too: no variant of the build runs here
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
