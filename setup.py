"""Builds fastbp: the Python packages (kernels/ installed as fastbp.kernels) and the Cython kernels.

The Cython sources are staged under build/cython/fastbp/kernels/ so that Cython sees them in the
package they are installed in (fastbp.kernels: cy_train cimports cy_kernels), together with
cy_codes.pxi, generated from kernels/codes.py: the kernels' integer codes (and the dropout hash's
constants) have one source, and the build records their fingerprint (codes.source_hash).

Compiler flags (one place): -O3, the fast-math subset that matches the Numba kernels'
(reassociation, contraction, no signed zeros, reciprocals; never finite-math-only), register-pressure
aware scheduling, -march=native
(set FASTBP_ARCH to another -march value, or to "none" to leave it out, when building for other
machines), and OpenMP when the compiler supports it; without it the build is serial, with a warning.
"""
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
STAGE = Path("build") / "cython"
MODULES = ("cy_kernels", "cy_train")
FAST_MATH = ["-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-freciprocal-math",
             "-ffp-contract=fast"]
# Scheduling before register allocation, minding register pressure, and loop-aware register
# allocation: without them gcc folds the loads of W into the multiply-adds of the register tiles,
# loading each value twice (measured on one Zen 3 core: 42 vs 77 GFLOP/s without the first two; the
# forward tile inside the module 43 vs 55 GFLOP/s without -fira-loop-pressure).
SCHEDULING = ["-fschedule-insns", "-fsched-pressure", "-fira-loop-pressure"]


def codes_pxi():
    """cy_codes.pxi: the Cython declarations of what kernels/codes.py exports to the compiled code,
    with their fingerprint (codes.cython_declarations; the loader checks the same fingerprint)."""
    spec = importlib.util.spec_from_file_location("fastbp_codes", HERE / "kernels" / "codes.py")
    codes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codes)
    return codes.cython_declarations()


def stage_sources():
    package = STAGE / "fastbp" / "kernels"
    package.mkdir(parents=True, exist_ok=True)
    for init in (STAGE / "fastbp" / "__init__.py", package / "__init__.py"):
        init.touch()
    for path in (HERE / "kernels").glob("cy_*.p*"):
        if path.suffix in (".pyx", ".pxd", ".pxi"):
            shutil.copy2(path, package / path.name)
    pxi = package / "cy_codes.pxi"
    text = codes_pxi()
    if not pxi.exists() or pxi.read_text() != text:
        pxi.write_text(text)
    return package


def extensions():
    from Cython.Build import cythonize
    package = stage_sources()
    modules = [Extension(f"fastbp.kernels.{name}", [str(package / f"{name}.pyx")]) for name in MODULES]
    return cythonize(modules, include_path=[str(STAGE)], language_level=3, quiet=True)


class BuildExt(build_ext):
    """Adds the flags this compiler accepts: optimization, fast-math subset, -march, OpenMP."""

    def _accepts(self, compile_flags, link_flags=(), code="int main(void) { return 0; }\n"):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(code)
            try:
                objects = self.compiler.compile([source], output_dir=tmp,
                                                extra_postargs=list(compile_flags))
                self.compiler.link_executable(objects, os.path.join(tmp, "probe"),
                                              extra_postargs=list(link_flags))
                return True
            except Exception:
                return False

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            compile_flags, link_flags = ["/O2", "/fp:fast"], []
            openmp = (["/openmp"], []) if self._accepts(["/openmp"]) else None
        else:
            compile_flags = [flag for flag in ["-O3"] + FAST_MATH + SCHEDULING if self._accepts([flag])]
            arch = os.environ.get("FASTBP_ARCH", "native")
            if arch != "none" and self._accepts([f"-march={arch}"]):
                compile_flags.append(f"-march={arch}")
            openmp = None
            for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp"]):
                for libs in ([], ["-lomp"]):
                    code = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
                    if openmp is None and self._accepts(flags, flags + libs, code):
                        openmp = (flags, flags + libs)
            link_flags = []
        if openmp:
            compile_flags += openmp[0]
            link_flags += openmp[1]
        else:
            print("WARNING: fastbp: this compiler does not support OpenMP; the Cython backend is built "
                  "serial (one thread). fastbp.available_backends(details=True) reports it.",
                  file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags + list(ext.extra_compile_args or [])
            ext.extra_link_args = link_flags + list(ext.extra_link_args or [])
        super().build_extensions()


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
