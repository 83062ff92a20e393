"""Medians over several `compare.py --json` runs, next to the targets of the performance issue.

    python bench/compare.py --json run1.json     # three times, one after the other
    python bench/medians.py run1.json run2.json run3.json

Every ratio is taken within one run (its own GEMM peak, its own JAX), then the median over the runs is
printed, with the value of each run beside it and whether the median meets the target. Prints markdown.
"""
import argparse
import statistics

import compare
import workloads

# workload: (share of the roofline, speed over JAX), for the faster compiled backend, float32, all threads
TARGETS = {"nielsen": (0.40, 4.0), "nielsen2": (0.45, 3.0), "mid": (0.70, 1.7), "wide": (0.85, 1.15)}
F64_OVER_F32 = 0.5      # float64 samples/s over float32, same backend and threads
TWO_OVER_ONE = 1.7      # 2 threads over 1 thread, same backend and dtype
BACKENDS_WITHIN = 1.5   # the two compiled backends' samples/s, either way round
COLD_START = 5.0        # seconds to the end of the first Numba epoch with an empty cache
BACKENDS = ("numba", "cython")  # the order of the backend ratio (either way round)


def load(path):
    """A compare.py run read back from its JSON: compare.Run's own lookups (find, best_compiled,
    peak) over the saved measurements."""
    run = compare.load_run(path)[0]
    run.path = path
    return run


def fastbp(run, workload, backend, dtype, threads):
    """Best samples/s of a fastbp measurement (None when missing or failed)."""
    return compare.rate(run.find(kind="fastbp", workload=workload, backend=backend, dtype=dtype,
                                 threads=threads))[0]


def ratio(a, b):
    return a / b if a is not None and b else None


def median_row(label, values, target, fmt, at_least=True, marks=None):
    """A markdown row: the median, each run's value (‡ where a measurement behind it was made while
    the CPUs' round trip was odd, `marks`), the median of the unmarked values, the target and
    whether the median (of all) meets it."""
    marks = marks or [False] * len(values)
    known = [v for v in values if v is not None]
    sign = '≥' if at_least else '≤'
    if not known:
        return f"| {label} | – | {' / '.join('–' for _ in values)} | – | {sign} {fmt(target)} | – |"
    mid = statistics.median(known)
    met = mid >= target if at_least else mid <= target
    runs = " / ".join("–" if v is None else fmt(v) + ("‡" if m else "") for v, m in zip(values, marks))
    clean = [v for v, m in zip(values, marks) if v is not None and not m]
    clean_mid = fmt(statistics.median(clean)) if clean else "–"
    return f"| {label} | **{fmt(mid)}** | {runs} | {clean_mid} | {sign} {fmt(target)} | " \
           f"{'met' if met else 'missed'} |"


def odd(run, **where):
    """Whether the measurement was marked ‡ by compare.Run.links (an odd CPU round trip)."""
    return bool(where) and bool(run.find(**where).get("odd_link"))


def pct(v):
    return f"{100 * v:.0f}%"


def times(v):
    return f"{v:.2f}×"


def seconds(v):
    return f"{v:.1f} s"


def report(runs):
    top = max(max(r.args.threads) for r in runs)
    head = ["| target | median | each run | median without ‡ | target | |",
            "|---|---|---|---|---|---|"]
    out = [f"Medians of {len(runs)} runs ({', '.join(r.path for r in runs)}); float32 with {top} threads "
           "unless said; *better* is the faster compiled backend of each run; ‡ a run's value that "
           "rests on a measurement made while the CPUs' round trip was odd (see below); met / missed "
           "is the median of all runs'.", ""] + head
    for r in runs:
        r.links()  # marks the measurements with an odd round trip

    def fb(name, backend, dtype, threads):  # where= of a fastbp measurement
        return dict(kind="fastbp", workload=name, backend=backend, dtype=dtype, threads=threads)

    for name, (share, over_jax) in TARGETS.items():
        w = workloads.get(name)
        found = [r.best_compiled(name, "float32", top) for r in runs]
        better = [b for _, b in found]
        marked = [bk is not None and odd(r, **fb(name, bk, "float32", top)) for (bk, _), r in zip(found, runs)]
        peaks = [r.peak()["float32"] for r in runs]
        shares = [ratio(b, w.roofline(p) if p else None) for b, p in zip(better, peaks)]
        jax = [ratio(b, compare.rate(r.find(kind="peer", workload=name, peer="jax"))[0])
               for b, r in zip(better, runs)]
        out.append(median_row(f"{name}: better / roofline", shares, share, pct, marks=marked))
        out.append(median_row(f"{name}: better / JAX", jax, over_jax, times, marks=[
            m or odd(r, kind="peer", workload=name, peer="jax") for m, r in zip(marked, runs)]))
    for name in TARGETS:
        for backend in BACKENDS:
            for threads in sorted({1, top}):
                out.append(median_row(
                    f"{name} {backend} {threads}t: float64 / float32",
                    [ratio(fastbp(r, name, backend, "float64", threads), fastbp(r, name, backend, "float32", threads))
                     for r in runs], F64_OVER_F32, times,
                    marks=[odd(r, **fb(name, backend, "float64", threads))
                           or odd(r, **fb(name, backend, "float32", threads)) for r in runs]))
            if top > 1:
                for dtype in ("float32", "float64"):
                    out.append(median_row(
                        f"{name} {backend} {dtype}: {top}t / 1t",
                        [ratio(fastbp(r, name, backend, dtype, top), fastbp(r, name, backend, dtype, 1)) for r in runs],
                        TWO_OVER_ONE, times, marks=[odd(r, **fb(name, backend, dtype, top)) for r in runs]))
        for dtype in ("float32", "float64"):
            for threads in sorted({1, top}):
                spread = []
                for r in runs:
                    a, b = (fastbp(r, name, backend, dtype, threads) for backend in BACKENDS)
                    spread.append(max(a / b, b / a) if a and b else None)
                out.append(median_row(f"{name} {dtype} {threads}t: faster / slower backend", spread,
                                      BACKENDS_WITHIN, times, at_least=False,
                                      marks=[any(odd(r, **fb(name, bk, dtype, threads)) for bk in BACKENDS)
                                             for r in runs]))
    out.append(median_row("first Numba epoch, empty cache (nielsen, from process start)",
                          [r.find(kind="startup", backend="numba", cache="empty").get("total") for r in runs],
                          COLD_START, seconds, at_least=False))
    out += ["", "CPU-to-CPU round trip of each run (compare.py's ‡: a measurement on more than one "
                "thread made while it was more than compare.ODD_LINK times away from the run's "
                "median):", ""]
    for r in runs:
        out.append(f"- {r.path}: {link_summary(r)}")
    return "\n".join(out)


def link_summary(run):
    """The median, fastest and slowest round trip of a run and the measurements marked ‡ (by
    run.links(), which report() called)."""
    every = run.round_trips()
    if not every:
        return "not measured (a run from before compare.py measured it)"
    trained = [(spec, result) for spec, result in run.results  # the GEMM peaks carry no ‡
               if result.get("round_trip_ns") and spec["kind"] != "gemm"]
    odd = [f"{spec['workload']} {spec.get('backend', spec.get('peer', ''))} {spec.get('dtype', '')} "
            f"{spec.get('threads', '')}t".replace("  ", " ")
           for spec, result in trained if result.get("odd_link")]
    return (f"median {statistics.median(every):.0f} ns ({min(every):.0f}-{max(every):.0f}); "
            f"{len(odd)} of {len(trained)} measurements ‡" + (f" ({', '.join(odd)})" if odd else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="compare.py --json files")
    args = parser.parse_args(argv)
    print(report([load(path) for path in args.runs]))


if __name__ == "__main__":
    main()
