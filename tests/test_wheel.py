"""Installing without a compiler: the Cython variants of a build, the loader's choice among them, and
(with FASTBP_TEST_WHEEL=1) a wheel built with FASTBP_ARCH=dist, installed into a fresh environment with
no compiler, that trains.

The choice is tested on made-up CPUs; the installed build (whatever it is: one ``native`` variant
after ``pip install .``, ``baseline`` and ``avx2`` from a distributable wheel) is tested through
``FASTBP_CPU`` in subprocesses, each variant training the same network.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import venv
from importlib import metadata, util
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp.kernels import loader

ROOT = Path(__file__).resolve().parents[1]
V2 = ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16", "lahf"]
V3 = V2 + ["avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "lzcnt", "movbe"]
DIST = [{"name": "baseline", "package": "fastbp.kernels", "flags": ["-march=x86-64-v2"], "requires": V2},
        {"name": "avx2", "package": "fastbp.kernels.avx2", "flags": ["-march=x86-64-v3"], "requires": V3}]
# /proc/cpuinfo's names for the features fastbp.kernels._cpu reports
PROC_NAMES = {"sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "lahf": "lahf_lm", "lzcnt": "abm"}
DEPENDENCIES = ("numpy", "numba", "llvmlite", "scipy", "threadpoolctl", "tqdm")


def test_auto_takes_the_most_demanding_variant_the_cpu_runs():
    assert loader.choose_variant(DIST, frozenset(V3 + ["avx512f"]))["name"] == "avx2"
    assert loader.choose_variant(DIST, frozenset(V2 + ["avx", "avx2"]))["name"] == "baseline"  # no FMA
    assert loader.choose_variant(DIST, None)["name"] == "baseline"  # features unknown: the baseline
    native = [{"name": "native", "package": "fastbp.kernels", "flags": None, "requires": []}]
    assert loader.choose_variant(native, None)["name"] == "native"
    assert loader.choose_variant(native, frozenset())["name"] == "native"


def test_a_cpu_below_the_baseline_gets_a_reason():
    with pytest.raises(loader.BackendUnavailable, match="this CPU lacks popcnt sse4.2.*pip install"):
        loader.choose_variant(DIST, frozenset(set(V2) - {"sse4.2", "popcnt"}))


def test_fastbp_cpu_chooses_and_is_checked():
    v3 = frozenset(V3)
    assert loader.choose_variant(DIST, v3, "baseline")["name"] == "baseline"
    assert loader.choose_variant(DIST, v3, "avx2")["name"] == "avx2"
    with pytest.raises(loader.BackendUnavailable, match="FASTBP_CPU=avx2, but this CPU lacks avx2 bmi2 fma"):
        loader.choose_variant(DIST, frozenset(V2 + ["avx", "bmi1", "f16c", "lzcnt", "movbe"]), "avx2")
    with pytest.raises(loader.BackendUnavailable, match="has baseline, avx2.*choose one of baseline, avx2 or auto"):
        loader.choose_variant(DIST, v3, "avx512")


def test_cpu_levels():
    assert loader.cpu_level(None) is None
    assert loader.cpu_level(frozenset()) == "x86-64"
    assert loader.cpu_level(frozenset(V2 + ["avx2"])) == "x86-64-v2"
    assert loader.cpu_level(frozenset(V3)) == "x86-64-v3"


def test_the_cpu_probe_agrees_with_the_kernel():
    features = loader.cpu_features()
    if features is None:
        pytest.skip("no x86-64 CPU probe in this build (another processor, or built before the probe)")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags to compare with")
    for name in V3 + ["avx512f", "avx512bw", "avx512vl"]:
        assert (name in features) == (PROC_NAMES.get(name, name) in flags), name


def test_the_build_is_reported():
    facts = fastbp.available_backends(details=True)["cython"]
    if not facts["available"]:
        pytest.skip(f"cython unavailable: {facts['reason']}")
    built = loader.build_info()
    assert facts["variants"] == [variant["name"] for variant in built["variants"]]
    assert facts["variant"] == loader.cython_variant()["name"] and facts["choice"] == loader.cpu_choice()
    assert facts["build"] == built["arch"]
    if built["arch"] == "dist":
        assert not any("-march=native" in variant["flags"] for variant in built["variants"])
        if platform.machine().lower() in ("x86_64", "amd64"):
            assert facts["variants"] == ["baseline", "avx2"]


TRAIN = """
import json, sys, numpy as np, fastbp
rng = np.random.default_rng(0)
X = rng.random((240, 12)); y = (X[:, :4].sum(axis=1) > 2).astype(int) + (X[:, 4] > 0.5)
net = fastbp.Network([12, 16, 3], activation="tanh", output_activation="softmax", loss="cross_entropy",
                     backend="cython", seed=0, n_threads=2)
history = net.fit(X, y, epochs=4, batch_size=8, lr=0.1, momentum=0.9)
facts = fastbp.available_backends(details=True)["cython"]
print(json.dumps({"variant": facts["variant"], "loss": list(history["loss"]),
                  "parameters": net.parameters.tolist()}))
"""


def _run(code, cwd, env=None):
    """Runs `code` in a new interpreter (from `cwd`, away from the sources: the installed fastbp)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_variant_trains_alike(tmp_path):
    """Every variant built that this CPU runs, chosen with FASTBP_CPU, trains the same network to the
    same numbers (to rounding: the variants' compilers vectorize differently)."""
    if "cython" not in fastbp.available_backends():
        pytest.skip("cython unavailable")
    features = loader.cpu_features()
    runs = {}
    for variant in loader.build_info()["variants"]:
        if features is not None and not set(variant["requires"]) <= features:
            continue
        runs[variant["name"]] = json.loads(_run(TRAIN, tmp_path, {"FASTBP_CPU": variant["name"]}))
        assert runs[variant["name"]]["variant"] == variant["name"]
    first = next(iter(runs.values()))
    assert first["loss"][-1] < first["loss"][0]
    for result in runs.values():
        np.testing.assert_allclose(result["parameters"], first["parameters"], rtol=1e-9, atol=1e-12)


def test_an_impossible_choice_makes_cython_unavailable_with_the_reason(tmp_path):
    out = _run("import fastbp; print(fastbp.available_backends(details=True)['cython'])", tmp_path,
               {"FASTBP_CPU": "pentium"})
    assert "'available': False" in out and "FASTBP_CPU=pentium" in out and "choose one of" in out


# ---------------------------------------------------------------------------------------------------
# The wheel: built once (sdist, then the wheel from it, FASTBP_ARCH=dist), installed with no compiler.

def _wheel_wanted():
    if os.environ.get("FASTBP_TEST_WHEEL") != "1":
        pytest.skip("building and installing a wheel takes minutes: set FASTBP_TEST_WHEEL=1"
                    + ("" if util.find_spec("build") else " (and pip install build)"))
    if util.find_spec("build") is None:
        pytest.fail("FASTBP_TEST_WHEEL=1 but the `build` package is missing: pip install build")
    if not (ROOT / "setup.py").exists():
        pytest.fail(f"FASTBP_TEST_WHEEL=1 but {ROOT} holds no fastbp sources to build")


def _build_requirements_met():
    """Whether this environment has pyproject.toml's build requirements (then no isolated build
    environment, with its downloads, is needed)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]:
        requirement = Requirement(line)
        try:
            if metadata.version(requirement.name) not in requirement.specifier:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist and the wheel, built by `python -m build` with FASTBP_ARCH=dist."""
    _wheel_wanted()
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source") / "fastbp"
    # a copy of the sources, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", "dist", ".git", ".venv", "__pycache__", "*.so", "*.egg-info", ".benchmarks"))
    command = [sys.executable, "-m", "build", "--outdir", str(out), str(source)]
    if _build_requirements_met():
        command.insert(3, "--no-isolation")
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "FASTBP_ARCH": "dist"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sdists, wheels = sorted(out.glob("fastbp-*.tar.gz")), sorted(out.glob("fastbp-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(out.iterdir())
    return sdists[0], wheels[0]


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """A fresh virtual environment (no system site-packages) with the wheel installed by pip with no
    compiler on the PATH; its dependencies are this environment's, linked in one by one (numpy, numba,
    llvmlite, scipy, threadpoolctl, tqdm: nothing else of this environment, fastbp least of all).
    Returns the environment variables to run it with."""
    home = tmp_path_factory.mktemp("env")
    venv.create(home / "venv", with_pip=True, symlinks=True)
    bin_dir = home / "venv" / "bin"
    site = Path(subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = home / "dependencies"
    deps.mkdir()
    for name in DEPENDENCIES:
        distribution = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in distribution.files or () if not str(f).startswith("..")}:
            origin = Path(distribution.locate_file(top))
            if origin.exists() and not (deps / top).exists():
                (deps / top).symlink_to(origin)
    (site / "fastbp_test_dependencies.pth").write_text(f"{deps}\n")
    env = {"PATH": str(bin_dir), "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false",
           "HOME": str(home), "TMPDIR": str(home), "PYTHONNOUSERSITE": "1"}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    for compiler in ("cc", "gcc", "clang", "c++", "g++"):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    result = subprocess.run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index",
                             "--no-cache-dir", str(built[1])], capture_output=True, text=True, env=env, cwd=home)
    assert result.returncode == 0, result.stdout + result.stderr
    return env, home


def _in_venv(installed, *args, extra=None):
    env, home = installed
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=home,
                            env={**env, **(extra or {})})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_sdist_holds_what_a_build_needs(built):
    import tarfile
    with tarfile.open(built[0]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "kernels/_cpu.c",
                   "kernels/cy_kernels.pyx", "kernels/cy_kernels.pxd", "kernels/cy_train.pyx",
                   "kernels/codes.py", "fastbp/__init__.py"):
        assert needed in names, needed
    assert not any(name.startswith("build/") or name.endswith(".so") for name in names)


def test_the_wheel_installs_without_a_compiler_and_trains(installed, tmp_path):
    env, home = installed
    info = _in_venv(installed, Path(env["PATH"]) / "fastbp", "info")
    assert "cython  available" in info, info
    facts = json.loads(_in_venv(installed, "python", "-c", "import json, fastbp; print(json.dumps("
                                "fastbp.available_backends(details=True)['cython']))"))
    assert facts["build"] == "dist", facts
    features = loader.cpu_features()  # this process's probe, checked against /proc/cpuinfo above
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    expected = "avx2" if on_x86 and features is not None and set(V3) <= features else "baseline"
    assert facts["variant"] == expected, facts
    assert f"variant {expected} of" in info
    assert facts["variants"] == (["baseline", "avx2"] if on_x86 else ["baseline"])
    location = _in_venv(installed, "python", "-c", "import fastbp; print(fastbp.__file__)")
    assert location.startswith(str(home)), location  # the wheel's fastbp, not this environment's
    rng = np.random.default_rng(1)
    X = rng.random((300, 10))
    np.savez(tmp_path / "data.npz", X=X, y=(X[:, 0] + X[:, 1] > 1).astype(int))
    losses = {}
    for variant in facts["variants"]:
        if variant == "avx2" and expected != "avx2":
            continue
        out = tmp_path / f"{variant}.json"
        _in_venv(installed, "fastbp", "train", "--dataset", tmp_path / "data.npz", "--backend", "cython",
                 "--epochs", "4", "--dtype", "float64", "--quiet", "--json", out, extra={"FASTBP_CPU": variant})
        losses[variant] = json.loads(out.read_text())["history"]["loss"]
        assert losses[variant][-1] < losses[variant][0]
    for loss in losses.values():
        np.testing.assert_allclose(loss, losses["baseline"], rtol=1e-9)


def test_the_baseline_has_no_avx_instructions(installed):
    """The baseline's machine code uses no AVX registers (it runs on any x86-64-v2 CPU); the AVX2
    variant's does."""
    objdump = shutil.which("objdump")
    if objdump is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("needs objdump and an x86-64 build")
    env, home = installed
    package = Path(_in_venv(installed, "python", "-c", "import os, fastbp.kernels as k; "
                            "print(os.path.dirname(k.__file__))").strip())

    def uses_ymm(path):
        listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True,
                                 text=True, check=True).stdout
        return "%ymm" in listing

    for module in ("cy_kernels", "cy_train"):
        assert not uses_ymm(next(package.glob(f"{module}.*.so"))), module
        assert uses_ymm(next((package / "avx2").glob(f"{module}.*.so"))), module
