"""Same-run A/B of a tiling constant of kernels/planner.py (an int or a float): epochs with each
value, interleaved.

    python bench/ab_codes.py BLAS_TILES 2,4 [--workloads mid,wide] [--backends numba,cython]
                             [--threads 1,2] [--dtype float32] [--reps 7]
    python bench/ab_codes.py FORWARD_MIN_BATCH 128,32 --workloads mid --dtype float64

The drivers read the planner's constants (BLAS_TILES, MIN_TILE_WORK, TILE_ROWS, TILE_COLUMNS, SPINS,
FORWARD_MIN_BATCH, ...) at every call (the programs it keeps are keyed by their values), so one
process can switch between values from one epoch to the next: each repetition runs one epoch per
value, in turn. The report gives the median (and best) samples/s of each value and, for each value
after the first, the median (and quartiles) over the repetitions of its speed-up against the first
in the same repetition: on a noisy machine these paired ratios are the stable answer (the medians of
two compare.py runs, or of alternating processes, move by 15-25%). The compiled kernels do not
change; results stay the same whatever the tiling.
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
    parser.add_argument("name", help="a number constant of fastbp.kernels.planner, e.g. BLAS_TILES")
    parser.add_argument("values", help="comma-separated values of its type, e.g. 2,4 or 0,1.5")
    parser.add_argument("--workloads", default="mid,wide")
    parser.add_argument("--backends", default="numba,cython")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    from fastbp.kernels import planner
    owner, key = vars(planner), args.name
    kind = type(owner.get(key))
    if kind not in (int, float):
        parser.error(f"planner.{args.name} is not a number constant")
    values = [kind(v) for v in args.values.split(",")]
    original = owner[key]
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
                try:
                    for _ in range(args.reps):
                        for value in values:
                            owner[key] = value
                            started = time.perf_counter()
                            epoch()
                            rates[value].append(len(X) / (time.perf_counter() - started))
                finally:
                    owner[key] = original
                cells = "  ".join(f"{value}: {statistics.median(r) / 1e3:.1f}k ({max(r) / 1e3:.1f}k)"
                                  for value, r in rates.items())
                first = rates[values[0]]
                for value in values[1:]:  # paired: each repetition's ratio to the first value
                    q1, q2, q3 = statistics.quantiles([a / b for a, b in zip(rates[value], first)], n=4)
                    cells += f"  {value}/{values[0]}: {q2:.3f} ({q1:.3f}-{q3:.3f})"
                print(f"{name:9s} {backend:7s} {threads}t  {cells}", flush=True)


if __name__ == "__main__":
    main()
