"""Medians over several `compare.py --json` runs, next to the targets of the performance issue.

    python bench/compare.py --json run1.json     # three times, one after the other
    python bench/medians.py run1.json run2.json run3.json

Every ratio is taken within one run (its own GEMM peak, its own JAX), then the median over the runs is
printed, with the value of each run beside it and whether the median meets the target. Prints markdown.
"""
import argparse
import json
import statistics

import workloads

# workload: (share of the roofline, speed over JAX), for the faster compiled backend, float32, all threads
TARGETS = {"nielsen": (0.40, 4.0), "nielsen2": (0.45, 3.0), "mid": (0.70, 1.7), "wide": (0.85, 1.15)}
F64_OVER_F32 = 0.5      # float64 samples/s over float32, same backend and threads
TWO_OVER_ONE = 1.7      # 2 threads over 1 thread, same backend and dtype
BACKENDS_WITHIN = 1.5   # the two compiled backends' samples/s, either way round
COLD_START = 5.0        # seconds to the end of the first Numba epoch with an empty cache
BACKENDS = ("numba", "cython")


class Run:
    """One compare.py JSON file: best samples/s by measurement, the GEMM peak."""

    def __init__(self, path):
        with open(path) as f:
            self.data = json.load(f)
        self.path = path
        self.peak = {}
        for m in self.data["measurements"]:
            if m["spec"]["kind"] == "gemm" and "error" not in m["result"]:
                for dtype in ("float32", "float64"):
                    self.peak[dtype] = max(self.peak.get(dtype, 0.0), m["result"][dtype]["gflops"])

    def find(self, **where):
        for m in self.data["measurements"]:
            if all(m["spec"].get(k) == v for k, v in where.items()):
                return m["result"]
        return {}

    def rate(self, **where):
        """Best samples/s of a measurement (None when missing or failed)."""
        result = self.find(**where)
        times = result.get("seconds")
        return result["samples"] / min(times) if times else None

    def fastbp(self, workload, backend, dtype, threads):
        return self.rate(kind="fastbp", workload=workload, backend=backend, dtype=dtype, threads=threads)

    def better(self, workload, threads):
        rates = [r for r in (self.fastbp(workload, b, "float32", threads) for b in BACKENDS) if r]
        return max(rates, default=None)

    def startup(self, backend, cache):
        result = self.find(kind="startup", backend=backend, cache=cache)
        return result.get("total")


def ratio(a, b):
    return a / b if a is not None and b else None


def median_row(label, values, target, fmt, at_least=True):
    """A markdown row: the median, each run's value, the target and whether the median meets it."""
    known = [v for v in values if v is not None]
    if not known:
        return f"| {label} | – | {' / '.join('–' for _ in values)} | {fmt(target)} | – |"
    mid = statistics.median(known)
    met = mid >= target if at_least else mid <= target
    runs = " / ".join("–" if v is None else fmt(v) for v in values)
    return f"| {label} | **{fmt(mid)}** | {runs} | {'≥' if at_least else '≤'} {fmt(target)} | " \
           f"{'met' if met else 'missed'} |"


def pct(v):
    return f"{100 * v:.0f}%"


def times(v):
    return f"{v:.2f}×"


def seconds(v):
    return f"{v:.1f} s"


def report(runs):
    top = max(max(r.data["options"]["threads"]) for r in runs)
    head = ["| target | median | each run | target | |", "|---|---|---|---|---|"]
    out = [f"Medians of {len(runs)} runs ({', '.join(r.path for r in runs)}); float32 with {top} threads "
           "unless said; *better* is the faster compiled backend of each run.", ""] + head
    for name, (share, over_jax) in TARGETS.items():
        w = workloads.get(name)
        shares = [ratio(r.better(name, top), w.roofline(r.peak["float32"]) if "float32" in r.peak else None)
                  for r in runs]
        jax = [ratio(r.better(name, top), r.rate(kind="peer", workload=name, peer="jax")) for r in runs]
        out.append(median_row(f"{name}: better / roofline", shares, share, pct))
        out.append(median_row(f"{name}: better / JAX", jax, over_jax, times))
    for name in TARGETS:
        for backend in BACKENDS:
            for threads in sorted({1, top}):
                out.append(median_row(
                    f"{name} {backend} {threads}t: float64 / float32",
                    [ratio(r.fastbp(name, backend, "float64", threads), r.fastbp(name, backend, "float32", threads))
                     for r in runs], F64_OVER_F32, times))
            if top > 1:
                for dtype in ("float32", "float64"):
                    out.append(median_row(
                        f"{name} {backend} {dtype}: {top}t / 1t",
                        [ratio(r.fastbp(name, backend, dtype, top), r.fastbp(name, backend, dtype, 1)) for r in runs],
                        TWO_OVER_ONE, times))
        for dtype in ("float32", "float64"):
            for threads in sorted({1, top}):
                spread = []
                for r in runs:
                    a, b = (r.fastbp(name, backend, dtype, threads) for backend in BACKENDS)
                    spread.append(max(a / b, b / a) if a and b else None)
                out.append(median_row(f"{name} {dtype} {threads}t: faster / slower backend", spread,
                                      BACKENDS_WITHIN, times, at_least=False))
    out.append(median_row("first Numba epoch, empty cache (nielsen, from process start)",
                          [r.startup("numba", "empty") for r in runs], COLD_START, seconds, at_least=False))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="compare.py --json files")
    args = parser.parse_args(argv)
    print(report([Run(path) for path in args.runs]))


if __name__ == "__main__":
    main()
