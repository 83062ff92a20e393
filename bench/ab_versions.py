"""Same-run A/B of two installed fastbp versions: epochs of one workload measured in fresh processes,
the two Pythons (two environments, each with its own fastbp installed) alternating, so that a slow
spell of a shared machine hits both alike; prints each run and the medians.

    python bench/ab_versions.py OLD/bin/python NEW/bin/python --workload mid --backend cython \\
        --threads 2 --runs 8

Each process: a warm-up epoch (compilation or cache load), then the best of --epochs epochs of
``Network.fit`` on the workload's random data (bench/workloads.py), in --dtype (float32 by default).
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed and the thread variables set (benchenv), as
compare.py does. Standard library only in this process.
"""
import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchenv  # noqa: E402

CHILD = """
import sys, time
sys.path.insert(0, {here!r})
import workloads
w = workloads.get({workload!r})
X, y = workloads.data(w, {n}, {dtype!r})
epoch = workloads.fastbp_epoch(w, X, y, {backend!r}, {dtype!r}, {threads})
epoch()
times = []
for _ in range({epochs}):
    started = time.perf_counter()
    epoch()
    times.append(time.perf_counter() - started)
print({n} / min(times))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old"), p.add_argument("new")
    p.add_argument("--workload", default="nielsen")
    p.add_argument("--backend", default="cython")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--n", type=int, default=4000, help="samples per epoch")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per process (the best counts)")
    p.add_argument("--runs", type=int, default=5, help="processes per version")
    a = p.parse_args()
    code = CHILD.format(here=HERE, workload=a.workload, n=a.n, backend=a.backend,
                        threads=a.threads, epochs=a.epochs, dtype=a.dtype)
    env = benchenv.clean_env(a.threads)
    rates = {"old": [], "new": []}
    for run in range(a.runs):
        for name in ("old", "new"):
            out = subprocess.run([getattr(a, name), "-c", code], env=env, cwd="/", check=True,
                                 capture_output=True, text=True).stdout
            rates[name].append(float(out.split()[-1]))
        print(f"run {run + 1}: old {rates['old'][-1] / 1e3:.1f}k  new {rates['new'][-1] / 1e3:.1f}k",
              flush=True)
    old, new = (statistics.median(rates[name]) for name in ("old", "new"))
    print(f"{a.workload} {a.backend} {a.dtype} {a.threads}t, median of {a.runs}: old {old / 1e3:.1f}k, "
          f"new {new / 1e3:.1f}k samples/s, new/old {new / old:.2f}")


if __name__ == "__main__":
    main()
