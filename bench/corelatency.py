"""The round trip of a cache line between two CPUs, in nanoseconds: what every wait between fastbp's
worker threads costs (a step's end, a claimed tile, data one core wrote and the other reads).

    python bench/corelatency.py            # CPUs 0 and 1, median of 5 measurements of 100,000 trips

On a virtual machine this is not a property of the processor: the same 2-vCPU machine here measured
50-65 ns for minutes, then 340-361 ns for minutes (presumably its vCPUs placed on cores that share no
cache), and back. In the slow spells every 2-thread epoch lost speed (nielsen 740 k -> 370 k samples/s,
mid 144 k -> 91 k; Cython, float32) while 1-thread epochs kept theirs. compare.py measures this before
and after each multi-thread measurement and marks the ones made in such a spell.

Two threads, each pinned to one CPU (Linux: os.sched_setaffinity on the calling thread), pass a
counter back and forth through one int64 with the atomics of fastbp's Numba drivers (Numba compiles
the loop once; it runs without the GIL).
"""
import os
import statistics
import threading
import time

TRIPS = 100_000  # 5-40 ms: the start of the answering thread counts for little


def _compiled():
    """The two halves of the ping-pong, compiled (cached in Numba's cache like the kernels)."""
    from numba import njit
    from fastbp.kernels.nb_train import _atomic_load, _atomic_set, _pause

    @njit(nogil=True, cache=True)
    def ping(flag, trips):  # sends odd values, waits for the even answer
        for i in range(trips):
            _atomic_set(flag, 0, 2 * i + 1)
            while _atomic_load(flag, 0) != 2 * i + 2:
                _pause()

    @njit(nogil=True, cache=True)
    def pong(flag, trips):
        for i in range(trips):
            while _atomic_load(flag, 0) != 2 * i + 1:
                _pause()
            _atomic_set(flag, 0, 2 * i + 2)

    return ping, pong


def round_trip(cpus=(0, 1), trips=TRIPS, repeats=5):
    """Median over `repeats` of the nanoseconds per round trip between the two CPUs, or None where
    threads cannot be pinned (not Linux) or either CPU is not this process's to use."""
    if not hasattr(os, "sched_setaffinity") or not set(cpus) <= os.sched_getaffinity(0):
        return None
    import numpy as np
    ping, pong = _compiled()
    flag = np.zeros(8, np.int64)  # a line of its own
    ping(flag, 0), pong(flag, 0)  # compiled (or loaded from the cache) before the timing
    allowed = os.sched_getaffinity(0)

    def answer(n):
        os.sched_setaffinity(0, {cpus[1]})
        pong(flag, n)

    results = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        for _ in range(repeats):
            flag.fill(0)
            other = threading.Thread(target=answer, args=(trips,))
            other.start()
            started = time.perf_counter()
            ping(flag, trips)
            results.append((time.perf_counter() - started) / trips * 1e9)
            other.join()
    finally:
        os.sched_setaffinity(0, allowed)
    return statistics.median(results)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=TRIPS, help=f"round trips per measurement ({TRIPS:,})")
    parser.add_argument("--repeats", type=int, default=5, help="measurements, the median counts (5)")
    args = parser.parse_args()
    ns = round_trip(trips=args.trips, repeats=args.repeats)
    print("not measurable here (needs Linux and two CPUs)" if ns is None else
          f"CPU 0 <-> CPU 1 round trip: {ns:.0f} ns")
