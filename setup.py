"""Builds fastbp: the Python packages (kernels/ installed as fastbp.kernels) and the Cython kernels.

The Cython sources are staged under build/cython/fastbp/kernels/ so that Cython sees them in the
package they are installed in (fastbp.kernels: cy_train cimports cy_kernels), together with
cy_codes.pxi, generated from kernels/codes.py: the kernels' integer codes (and the dropout hash's
constants) have one source, and the build records their fingerprint (codes.source_hash).

Compiler flags (one place): -O3, the fast-math subset that matches the Numba kernels'
(reassociation, contraction, no signed zeros, reciprocals, no errno; never finite-math-only),
register-pressure aware scheduling, an architecture (FASTBP_ARCH below), and OpenMP when the compiler
supports it; without it the build is serial, with a warning.

FASTBP_ARCH says which processors the build is for:

- unset or ``native``: this machine's (-march=native), the fastest here: what ``pip install .`` does;
- ``dist``: any processor of its kind, for wheels given to other machines (the cibuildwheel
  configuration in pyproject.toml sets it). On x86-64 the Cython twin is compiled twice from the same
  sources: a baseline (-march=x86-64-v2) as fastbp.kernels.cy_kernels / cy_train, and an AVX2 build
  (-march=x86-64-v3: AVX2, FMA, BMI) as fastbp.kernels.avx2.cy_kernels / cy_train; kernels/loader.py
  chooses at import by the CPU's features (fastbp.kernels._cpu, cpuid), FASTBP_CPU=baseline|avx2
  overrides. Elsewhere (arm64) one build without -march;
- another value: that -march (FASTBP_ARCH=haswell), or ``none`` to leave -march out.

The build writes what it did into fastbp/kernels/_build_info.py (variants, flags, the CPU features each
needs), which the loader, ``fastbp info`` and ``fastbp.available_backends(details=True)`` report.
"""
import importlib.util
import os
import re
import shlex
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
STAGE = Path("build") / "cython"
MODULES = ("cy_kernels", "cy_train")
# -fno-math-errno: sqrt need not set errno (LLVM's, in the Numba twin, never does); with errno, gcc
# guards each sqrt with a branch to the libm call, which keeps the Adam and RMSprop loops scalar.
FAST_MATH = ["-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-freciprocal-math",
             "-ffp-contract=fast", "-fno-math-errno"]
# Scheduling before register allocation, minding register pressure, and loop-aware register
# allocation: without them gcc folds the loads of W into the multiply-adds of the register tiles,
# loading each value twice (measured on one Zen 3 core: 42 vs 77 GFLOP/s without the first two; the
# forward tile inside the module 43 vs 55 GFLOP/s without -fira-loop-pressure).
SCHEDULING = ["-fschedule-insns", "-fsched-pressure", "-fira-loop-pressure"]
# The gradient tile writes 2 rows of G while reading 5 rows of A: 11 pairs of pointers that may
# overlap, which gcc checks at run time before the vector loop only up to 10 of them by default
# (beyond, the loop stays scalar: 11 against 47 GFLOP/s on nielsen's shapes).
ALIAS_CHECKS = ["--param=vect-max-version-for-alias-checks=32"]

ARCH = os.environ.get("FASTBP_ARCH", "native").strip() or "native"
# The variants of a distributable x86-64 build, least demanding first: (name, subpackage of
# fastbp.kernels, -march choices (the first the compiler accepts; the second for compilers that do not
# know the x86-64 levels), the CPU features the variant needs, as fastbp.kernels._cpu names them).
X86_64_V2 = ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16", "lahf"]
X86_64_V3 = X86_64_V2 + ["avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "lzcnt", "movbe"]
X86_VARIANTS = [
    ("baseline", "", [["-march=x86-64-v2"],
                      ["-march=x86-64", "-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt", "-mcx16",
                       "-msahf"]], X86_64_V2),
    ("avx2", "avx2", [["-march=x86-64-v3"],
                      ["-march=x86-64", "-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt", "-mcx16",
                       "-msahf", "-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mlzcnt",
                       "-mmovbe"]], X86_64_V3),
]


def targets_x86_64():
    """Whether this build makes x86-64 code only (not arm64, not a universal2 macOS build)."""
    platform = sysconfig.get_platform()
    archs = re.findall(r"-arch\s+(\S+)", os.environ.get("ARCHFLAGS", ""))
    return platform.endswith(("x86_64", "amd64")) and all(arch == "x86_64" for arch in archs)


def variants():
    """[(name, subpackage, -march choices, features needed)] of this build."""
    if ARCH == "dist":
        if targets_x86_64():
            return X86_VARIANTS
        return [("baseline", "", [[]], [])]
    if ARCH == "none":
        return [("native", "", [[]], [])]
    return [("native", "", [[f"-march={ARCH}"]], [])]


def codes_pxi():
    """cy_codes.pxi: the Cython declarations of what kernels/codes.py exports to the compiled code,
    with their fingerprint (codes.cython_declarations; the loader checks the same fingerprint)."""
    spec = importlib.util.spec_from_file_location("fastbp_codes", HERE / "kernels" / "codes.py")
    codes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codes)
    return codes.cython_declarations()


CIMPORT = re.compile(r"\bfastbp\.kernels(?=[\s.])")
VARIANT_OF = {}  # extension module name -> the variant it belongs to (None: built without -march)
SIBLINGS = set()  # what the Cython sources import from their package (``from . import codes``)


def stage_sources(subpackage=""):
    """Copies the Cython sources into build/cython/fastbp/kernels[/subpackage]/. A variant's copy
    cimports its own kernels: ``fastbp.kernels`` becomes ``fastbp.kernels.<subpackage>`` in the
    cimport statements (relative cimports need nothing). One copy of the sources; only the build
    differs."""
    package = STAGE / "fastbp" / "kernels"
    package.mkdir(parents=True, exist_ok=True)
    for init in (STAGE / "fastbp" / "__init__.py", package / "__init__.py"):
        init.touch()
    if subpackage:
        package = package / subpackage
        package.mkdir(exist_ok=True)
        (package / "__init__.py").touch()
    for path in (HERE / "kernels").glob("cy_*.p*"):
        if path.suffix not in (".pyx", ".pxd", ".pxi"):
            continue
        text = path.read_text()
        for names in re.findall(r"^from \. import ([\w, ]+)$", text, re.MULTILINE):
            SIBLINGS.update(name.strip() for name in names.split(","))
        if subpackage:
            text = "".join(CIMPORT.sub(f"fastbp.kernels.{subpackage}", line) if "cimport" in line else line
                           for line in text.splitlines(keepends=True))
        write_if_changed(package / path.name, text)
    write_if_changed(package / "cy_codes.pxi", codes_pxi())
    return package


def write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def extensions():
    from Cython.Build import cythonize
    modules = []
    for name, subpackage, _, _ in variants():
        package = stage_sources(subpackage)
        for module in MODULES:
            full = f"{package_of(subpackage)}.{module}"
            VARIANT_OF[full] = name
            modules.append(Extension(full, [str(package / f"{module}.pyx")]))
    modules = cythonize(modules, include_path=[str(STAGE)], language_level=3, quiet=True)
    VARIANT_OF["fastbp.kernels._cpu"] = None  # no -march: it must run on any processor of its kind
    return modules + [Extension("fastbp.kernels._cpu", ["kernels/_cpu.c"])]


def package_of(subpackage):
    return "fastbp.kernels" + (f".{subpackage}" if subpackage else "")


class BuildExt(build_ext):
    """Adds the flags this compiler accepts: optimization, fast-math subset, -march, OpenMP; builds
    the variants of a distributable build (FASTBP_ARCH=dist) and records them in _build_info.py."""

    def _accepts(self, compile_flags, link_flags=(), code="int main(void) { return 0; }\n"):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(code)
            try:
                objects = self.compiler.compile([source], output_dir=tmp,
                                                extra_postargs=list(compile_flags))
                # the linker of executables does not read LDFLAGS (the extensions' linker does)
                self.compiler.link_executable(objects, os.path.join(tmp, "probe"),
                                              extra_postargs=list(link_flags)
                                              + shlex.split(os.environ.get("LDFLAGS", "")))
                return True
            except Exception:
                return False

    def _march(self, choices):
        """The first of the flag choices this compiler accepts; for the x86-64 variants of a
        distributable build, making x86-64 code. None when it accepts none of them."""
        code = "int main(void) { return 0; }\n"
        if ARCH == "dist":
            code = "#if !defined(__x86_64__) && !defined(_M_X64)\n#error not x86-64\n#endif\n" + code
        for flags in choices:
            if not flags or self._accepts(flags, code=code):
                return flags
        return None

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            common, link_flags = ["/O2", "/fp:fast"], []
            openmp = (["/openmp"], []) if self._accepts(["/openmp"]) else None
            marches = {variants()[0][0]: []}  # no variants: one build for any processor
        else:
            common = [flag for flag in ["-O3"] + FAST_MATH + SCHEDULING + ALIAS_CHECKS if self._accepts([flag])]
            openmp = None
            for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp"]):
                for libs in ([], ["-lomp"]):
                    code = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
                    if openmp is None and self._accepts(flags, flags + libs, code):
                        openmp = (flags, flags + libs)
            link_flags = []
            marches = {}
            for index, (name, _, choices, _) in enumerate(variants()):
                march = self._march(choices)
                if march is None and index > 0:
                    print(f"WARNING: fastbp: the compiler accepts none of {choices}: no {name} variant of the "
                          f"Cython kernels", file=sys.stderr)
                    continue
                if march is None and ARCH == "dist":
                    print(f"WARNING: fastbp: the compiler accepts none of {choices}: the Cython kernels are "
                          f"built without them", file=sys.stderr)
                marches[name] = march or []
        if openmp:
            common += openmp[0]
            link_flags += openmp[1]
        else:
            print("WARNING: fastbp: this compiler does not support OpenMP; the Cython backend is built "
                  "serial (one thread). fastbp.available_backends(details=True) reports it.",
                  file=sys.stderr)
        self.extensions = [ext for ext in self.extensions
                           if VARIANT_OF[ext.name] is None or VARIANT_OF[ext.name] in marches]
        for ext in self.extensions:
            variant = VARIANT_OF[ext.name]
            flags = common + marches[variant] if variant else common[:1]
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
            if variant:
                ext.extra_link_args = link_flags + list(ext.extra_link_args or [])
        # setuptools rebuilds a module only when its sources are newer than it: after a change of
        # flags (here or in the environment: FASTBP_ARCH, the compiler) everything is rebuilt
        stamp = STAGE / "flags"
        flags = repr(sorted((ext.name, ext.extra_compile_args, ext.extra_link_args)
                            for ext in self.extensions) + [getattr(self.compiler, "compiler_so", None)])
        if not stamp.exists() or stamp.read_text() != flags:
            self.force = True
        super().build_extensions()
        stamp.write_text(flags)
        self._write_record([{"name": name, "package": package_of(subpackage), "flags": common + marches[name],
                             "requires": needs}
                            for name, subpackage, _, needs in variants() if name in marches])

    def _write_record(self, built):
        """fastbp/kernels/_build_info.py, and each variant subpackage's __init__.py."""
        kernels = Path(self.get_ext_fullpath("fastbp.kernels._cpu")).parent
        compiler = getattr(self.compiler, "compiler_so", None) or ["msvc"]
        lines = ['"""How the Cython kernels of this installation were built (written by setup.py)."""',
                 f"ARCH = {ARCH!r}", f"COMPILER = {os.path.basename(compiler[0])!r}",
                 "# least demanding first; requires: the CPU features (fastbp.kernels._cpu) a variant needs",
                 "VARIANTS = ["]
        lines += [f"    {variant!r}," for variant in built]
        (kernels / "_build_info.py").write_text("\n".join(lines + ["]", ""]))
        for variant in built:
            if variant["package"] == "fastbp.kernels":
                continue
            folder = kernels / variant["package"].rsplit(".", 1)[1]
            folder.mkdir(exist_ok=True)
            text = [f'"""{variant["package"]}: the Cython kernels built with {" ".join(variant["flags"])}',
                    "", "fastbp.kernels.loader chooses among the variants. Written by setup.py.", '"""']
            if SIBLINGS:
                text.append(f"from fastbp.kernels import {', '.join(sorted(SIBLINGS))}  # noqa: F401 (the "
                            "drivers import them from their package)")
            (folder / "__init__.py").write_text("\n".join(text) + "\n")


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
