"""The benchmark folder's report tools on the runs committed in bench/results: compare.py prints a saved
run's report again (with the CPU-to-CPU round trips and their ‡ marks), medians.py puts the runs next
to the performance issue's targets, and corelatency.py measures the round trip it is all about. Each
runs as its README says, in a fresh process from the repository root."""
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted((ROOT / "bench" / "results").glob("compare-run*.json"))


def run(*args, cwd=ROOT):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not RUNS, reason="no committed compare.py runs")
def test_report_of_a_saved_run_marks_the_odd_round_trips():
    data = json.loads(RUNS[0].read_text())
    trips = [m["result"]["round_trip_ns"] for m in data["measurements"]
             if m["result"].get("round_trip_ns")]
    report = run("bench/compare.py", "--report", RUNS[0])
    assert report.startswith("# fastbp benchmark report")
    median = statistics.median(ns for pair in trips for ns in pair)
    odd = sum(any(not median / 2 <= ns <= 2 * median for ns in pair) for pair in trips)
    assert f"{odd} of {len(trips)} measurements had a round trip" in report
    rows = [line for line in report.splitlines() if line.startswith("| fastbp ")]
    assert sum("‡" in line for line in rows) <= odd  # the raw table marks the odd fastbp ones
    assert "## Throughput" in report and "## Peak memory" in report


@pytest.mark.skipif(len(RUNS) < 3, reason="fewer than three committed compare.py runs")
def test_medians_of_the_committed_runs():
    out = run(ROOT / "bench" / "medians.py", *[path.name for path in RUNS], cwd=ROOT / "bench" / "results")
    rows = [line for line in out.splitlines() if line.startswith("| nielsen: better / roofline")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert re.fullmatch(r"\*\*\d+%\*\*", cells[1])  # the median
    assert len(cells[2].split(" / ")) == len(RUNS)  # each run's value
    assert cells[-1] in ("met", "missed")
    assert out.count("median ") >= len(RUNS)  # each run's round trips


def test_corelatency_measures_a_round_trip():
    out = run("bench/corelatency.py", "--trips", 10_000, "--repeats", 3).strip()
    if not hasattr(os, "sched_setaffinity") or not {0, 1} <= set(os.sched_getaffinity(0)):
        assert out.startswith("not measurable"), out
        return
    found = re.fullmatch(r"CPU 0 <-> CPU 1 round trip: (\d+) ns", out)
    assert found, out
    assert 0 < int(found.group(1)) < 1_000_000  # nanoseconds: a cache line, not a scheduler tick
