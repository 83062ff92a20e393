"""Same-run A/B of a tiling constant of kernels/planner.py: epochs with each value, interleaved.

    python bench/ab_codes.py BLAS_TILES 2,4 [--workloads mid,wide] [--backends numba,cython]
                             [--threads 1,2] [--reps 7]

The drivers read the planner's constants (BLAS_TILES, MIN_TILE_WORK, TILE_ROWS, TILE_COLUMNS, SPINS,
...) when they build a minibatch's program, at every call, so one process can switch between values from
one epoch to the next: each repetition runs one epoch per value, in turn, and the report gives the
median (and best) samples/s of each. On a noisy machine this is a fairer comparison than two runs of
compare.py. The compiled kernels do not change; results stay the same whatever the tiling.
"""
import argparse
import os
import statistics
import sys
import time

if __name__ == "__main__":  # before numpy loads: the project's clean BLAS environment (bench/)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchenv
    benchenv.reexec_clean()

import workloads  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a constant of fastbp.kernels.planner, e.g. BLAS_TILES")
    parser.add_argument("values", help="comma-separated integer values, e.g. 2,4")
    parser.add_argument("--workloads", default="mid,wide")
    parser.add_argument("--backends", default="numba,cython")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    from fastbp.kernels import planner
    if not isinstance(getattr(planner, args.name, None), int):
        parser.error(f"planner.{args.name} is not an integer constant")
    values = [int(v) for v in args.values.split(",")]
    original = getattr(planner, args.name)
    print(f"planner.{args.name}: {', '.join(map(str, values))} (now {original}); median (best) "
          f"samples/s of {args.reps} epochs each, interleaved")
    for name in args.workloads.split(","):
        workload = workloads.get(name)
        X, y = workloads.data(workload, 5000 if name == "wide" else 20000, args.dtype)
        for backend in args.backends.split(","):
            for threads in map(int, args.threads.split(",")):
                epoch = workloads.fastbp_epoch(workload, X, y, backend, args.dtype, threads)
                epoch()  # compiles, warms the caches
                rates = {value: [] for value in values}
                for _ in range(args.reps):
                    for value in values:
                        setattr(planner, args.name, value)
                        started = time.perf_counter()
                        epoch()
                        rates[value].append(len(X) / (time.perf_counter() - started))
                setattr(planner, args.name, original)
                cells = "  ".join(f"{value}: {statistics.median(r) / 1e3:.1f}k ({max(r) / 1e3:.1f}k)"
                                  for value, r in rates.items())
                print(f"{name:9s} {backend:7s} {threads}t  {cells}", flush=True)


if __name__ == "__main__":
    main()
