"""Where the Numba backend's first epoch goes: the first epoch of a workload with an empty (or a warm)
Numba cache, and Numba's compilation of each function, in fresh processes of one or more installed
fastbp versions, alternating; prints each run and the medians.

    python bench/compile_times.py .venv/bin/python --runs 3                      # cold, nielsen
    python bench/compile_times.py OLD/bin/python NEW/bin/python --runs 3 --warm  # warm cache

Each run is a fresh process with a fresh NUMBA_CACHE_DIR (--warm: one per Python, filled by a run
before the measured ones): ``import fastbp``, a network of the workload (float32) and one epoch of
--n samples, timed from before the network is made to the end of the epoch (wall clock, and the
process's CPU time: on a shared machine the CPU time is the steadier of the two). Numba announces
each compilation (``numba.core.event``, "numba:compile"): a function's *incl* time covers the
functions compiled while it is (typing a call compiles the callee), its *self* time does not; *llvm*
is the part of self spent in LLVM (optimizing the function's module, with the modules of what it
calls linked in and optimized again, and emitting machine code); --passes adds the Numba compiler
passes over 0.2 s. Times of compilation are the compiling thread's CPU time. One function compiled
for two signatures counts twice (n). Standard library only in this process.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchenv  # noqa: E402

CHILD = """
import json, sys, time
started = time.perf_counter()
from collections import defaultdict
from numba.core import codegen, event

stack, pass_stack, passes, llvm = [], [], defaultdict(float), defaultdict(float)
inclusive, nested, count = defaultdict(float), defaultdict(float), defaultdict(int)


class Compiles(event.Listener):
    def on_start(self, e):
        stack.append((e.data["dispatcher"].py_func.__name__, time.thread_time()))

    def on_end(self, e):
        name, since = stack.pop()
        inclusive[name] += time.thread_time() - since
        count[name] += 1
        if stack:
            nested[stack[-1][0]] += time.thread_time() - since


class Passes(event.Listener):  # a pass may compile other functions, and run their passes
    def on_start(self, e):
        pass_stack.append(time.thread_time())

    def on_end(self, e):
        key = e.data["qualname"].split(".")[-1] + ": " + e.data["name"].split(" [")[0]
        passes[key] += time.thread_time() - pass_stack.pop()


def timed(cls, name):  # the LLVM steps of a code library, charged to the function being compiled
    original = getattr(cls, name)

    def run(self, *args, **kwargs):
        since = time.thread_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            if stack:
                llvm[stack[-1][0]] += time.thread_time() - since
    setattr(cls, name, run)


timed(codegen.CPUCodeLibrary, "_optimize_functions")
timed(codegen.CPUCodeLibrary, "_optimize_final_module")
timed(codegen.JITCodeLibrary, "_finalize_specific")
event.register("numba:compile", Compiles())
event.register("numba:run_pass", Passes())
sys.path.insert(0, {here!r})
import workloads
import fastbp
imported = time.perf_counter() - started
w = workloads.get({workload!r})
X, y = workloads.data(w, {n}, "float32")
t, cpu = time.perf_counter(), time.process_time()
epoch = workloads.fastbp_epoch(w, X, y, "numba", "float32", {threads})
epoch()
first, first_cpu = time.perf_counter() - t, time.process_time() - cpu
total = time.perf_counter() - started
t = time.perf_counter()
epoch()
print(json.dumps(dict(
    total=total, imported=imported, first=first, first_cpu=first_cpu,
    second=time.perf_counter() - t, passes=passes,
    functions={{k: [inclusive[k], inclusive[k] - nested[k], llvm[k], count[k]] for k in inclusive}})))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pythons", nargs="+", help="the Python of each environment to measure")
    p.add_argument("--workload", default="nielsen")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=10000, help="samples per epoch")
    p.add_argument("--runs", type=int, default=3, help="processes per Python")
    p.add_argument("--warm", action="store_true", help="a warm cache (filled by a first run)")
    p.add_argument("--passes", action="store_true", help="also the compiler passes over 0.2 s")
    a = p.parse_args()
    code = CHILD.format(here=HERE, workload=a.workload, n=a.n, threads=a.threads)
    env = benchenv.clean_env(a.threads)
    caches = {}

    def run(python):
        cache = caches.get(python) or tempfile.mkdtemp(prefix="fastbp-numba-cache-")
        out = subprocess.run([python, "-c", code], env=dict(env, NUMBA_CACHE_DIR=cache), cwd="/",
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.splitlines()[-1])

    if a.warm:
        for python in a.pythons:
            caches[python] = tempfile.mkdtemp(prefix="fastbp-numba-cache-")
            run(python)
    results = {python: [] for python in a.pythons}
    for i in range(a.runs):
        for python in a.pythons:
            r = run(python)
            results[python].append(r)
            print(f"run {i + 1} {python}: first epoch {r['first']:.2f} s (CPU {r['first_cpu']:.2f} s), "
                  f"from process start {r['total']:.2f} s, import {r['imported']:.2f} s, "
                  f"second epoch {r['second']:.3f} s", flush=True)
    med = statistics.median
    for python, runs in results.items():
        print(f"\n{python}, {a.workload}, {a.threads} threads, {'warm' if a.warm else 'cold'} cache, "
              f"medians of {a.runs}: first epoch {med(r['first'] for r in runs):.2f} s (CPU "
              f"{med(r['first_cpu'] for r in runs):.2f} s), from process start "
              f"{med(r['total'] for r in runs):.2f} s")
        names = {k for r in runs for k in r["functions"]}

        def column(name, i, runs=runs):
            return med(r["functions"].get(name, [0, 0, 0, 0])[i] for r in runs)

        if names:
            print(f"  {'function':24s} {'incl':>6s} {'self':>6s} {'llvm':>6s}  n")
            for name in sorted(names, key=lambda k: -column(k, 0)):
                print(f"  {name:24s} {column(name, 0):6.2f} {column(name, 1):6.2f} "
                      f"{column(name, 2):6.2f} {runs[0]['functions'].get(name, [0, 0, 0, 0])[3]:2d}")
            print(f"  {'all (self)':24s} {'':6s} {sum(column(k, 1) for k in names):6.2f} "
                  f"{sum(column(k, 2) for k in names):6.2f}")
        if a.passes:
            keys = {k for r in runs for k in r["passes"]}
            for key in sorted(keys, key=lambda k: -med(r["passes"].get(k, 0) for r in runs)):
                seconds = med(r["passes"].get(key, 0) for r in runs)
                if seconds > 0.2:
                    print(f"  pass {key:56s} {seconds:6.2f}")


if __name__ == "__main__":
    main()
