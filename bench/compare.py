"""fastbp against its peers and against the machine, in one run; prints a markdown report.

    python bench/compare.py                 # the full run (5 minutes on 2 idle cores, up to ~20 busy)
    python bench/compare.py --quick         # a smoke run (1-3 minutes)
    python bench/compare.py --workloads nielsen,mid --peers jax,torch --json out.json
    python bench/compare.py --report out.json   # a saved run's report again, with today's rules

Run it as a script path from the repository root (not with -m): then the repository root is not on
sys.path and the *installed* fastbp is measured. Every measurement runs in its own fresh process (this
script, re-executed with ``--measure SPEC``) whose environment has OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE removed and the thread variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, ...) set to
the measurement's thread count. What is measured:

* the GEMM peak: numpy matmul of two n x n matrices (n = 4096), float32 and float64, all threads,
  best of 3 after a warm-up; the roofline of a workload is peak / FLOP per sample;
* for each workload, fastbp through ``Network.fit(..., epochs=1)`` (what users get: input
  validation and one-hot encoding included) with each backend x dtype x thread count, and each peer
  (float32, all threads): a warm-up epoch, then R timed epochs; best and median samples/s. For fastbp
  at float32 on all threads also the epoch through the backend's driver alone (``train_batches``,
  no validation), to show what fit costs on top;
* time to the first epoch on nielsen, from process start (interpreter, ``import fastbp``, network,
  compilation or cache load, one epoch; generating the data is not counted): numba with an empty
  cache (a fresh NUMBA_CACHE_DIR), numba again with that cache filled, cython;
* peak memory (ru_maxrss) of fitting wide on 60,000 float32 samples, against X's size: the target is
  peak RSS - RSS before X <= X's size + 100 MB;
* the CPU-to-CPU round trip (bench/corelatency.py) with each GEMM peak and before and after the timed
  epochs of every measurement on more than one thread: a virtual machine's vCPUs move between cores
  that share a cache and cores that do not, and fastbp's threads feel it (marked ‡ in the report).

Progress goes to stderr, the report to stdout; ``--json PATH`` saves every number.
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import benchenv  # noqa: E402  (standard library only: numpy is not loaded here)

MARK = "@@RESULT@@ "
ALL_PEERS = ("jax", "jax-step", "torch", "numpy", "sklearn")
ALL_WORKLOADS = ("nielsen", "nielsen2", "mid", "wide")
MEMORY_TARGET_MB = 100
QUIET = 0.15  # --quiet-wait: the CPUs count as quiet below this busy fraction
NOISY = 0.10  # a measurement during which other processes took more of the CPUs is marked †
# ‡: a measurement during which the CPU-to-CPU round trip was more than this factor away from the
# run's median, either way (slower: the cores share no cache; faster: they may be one core's two
# hardware threads)
ODD_LINK = 2.0


# =========================================================================== in the child process

def _timed(reps, budget, *epochs):
    """Run each epoch() once to warm up, then up to reps rounds of each in turn (interleaved, so that
    a slow spell of the machine hits them alike), stopping early (after one round) once the timed
    epochs have taken `budget` seconds. Per epoch: {warmup, seconds: [...], cpu_per_wall}."""
    results = []
    for epoch in epochs:
        started = time.perf_counter()
        epoch()
        results.append({"warmup": time.perf_counter() - started, "seconds": [], "cpu": 0.0})
    for _ in range(reps):
        if sum(sum(r["seconds"]) for r in results) > budget and results[0]["seconds"]:
            break
        for epoch, result in zip(epochs, results):
            cpu0 = os.times()
            started = time.perf_counter()
            epoch()
            result["seconds"].append(time.perf_counter() - started)
            cpu1 = os.times()
            result["cpu"] += (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    for result in results:
        result["cpu_per_wall"] = result.pop("cpu") / max(sum(result["seconds"]), 1e-9)
    return results


def _link(threads):
    """The CPU 0 <-> CPU 1 round trip in ns now (bench/corelatency.py), for a measurement on more
    than one thread; None otherwise or where it cannot be measured."""
    if threads < 2:
        return None
    import corelatency
    try:
        return corelatency.round_trip()
    except Exception:  # a diagnostic: never the reason a measurement fails
        return None


def _timed_with_links(threads, reps, budget, *epochs):
    """_timed, with the CPU-to-CPU round trip measured before and after (each result's
    round_trip_ns, when measurable)."""
    before = _link(threads)
    results = _timed(reps, budget, *epochs)
    after = _link(threads)
    if before is not None and after is not None:
        for result in results:
            result["round_trip_ns"] = [before, after]
    return results


def measure_gemm(spec):
    import numpy as np
    from threadpoolctl import threadpool_info
    n, reps = spec["n"], spec["reps"]
    rng = np.random.default_rng(0)
    result = {}
    for dtype in spec["dtypes"]:
        a = rng.random((n, n), dtype=np.dtype(dtype).type)
        b = rng.random((n, n), dtype=np.dtype(dtype).type)
        c = np.empty_like(a)
        np.matmul(a, b, out=c)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - started)
        flop = 2.0 * n ** 3
        result[dtype] = {"seconds": times, "gflops": flop / min(times) / 1e9,
                         "gflops_median": flop / statistics.median(times) / 1e9}
        del a, b, c
    result["blas"] = [{k: info.get(k) for k in ("internal_api", "version", "architecture",
                                                "num_threads", "threading_layer")}
                      for info in threadpool_info() if info.get("user_api") == "blas"]
    link = _link(spec.get("threads", 1))
    if link is not None:
        result["round_trip_ns"] = [link]
    return result


def _driver_epoch(net, workload, X, y):
    """One epoch through the backend's train_batches alone, on the buffers the Network owns (private
    attributes: reported as unavailable if they change)."""
    import numpy as np
    from fastbp import backends
    from fastbp.kernels import codes
    driver = backends.get(net.backend)
    Xc, Y = net._X(X), net._Y(y, X.shape[0])
    n = Xc.shape[0]
    desc, work = net._buffers(min(workload.batch, n), codes.SGD)
    costs = np.zeros(n)
    n_batches = workload.batches(n)
    threads = net.threads
    rng = np.random.default_rng(1)

    def epoch():
        order = rng.permutation(n)
        driver.train_batches(desc, net.parameters, net._grads, net._state, Xc, Y, order, workload.batch,
                           0, n_batches, net._hyper, work, costs, threads)

    return epoch


def measure_fastbp(spec):
    import numpy as np
    import workloads
    w = workloads.get(spec["workload"])
    X, y = workloads.data(w, spec["n"], spec["dtype"])
    epoch = workloads.fastbp_epoch(w, X, y, spec["backend"], spec["dtype"], spec["threads"])
    driver = None
    if spec.get("driver"):
        try:
            driver = _driver_epoch(epoch.network, w, X, y)
        except Exception as error:  # the private buffers changed: not a failure of the run
            driver = f"{type(error).__name__}: {error}"
    timed = (spec["threads"], spec["reps"], spec["budget"])
    if callable(driver):  # fit and the driver alone, interleaved
        try:
            result, result["driver"] = _timed_with_links(*timed, epoch, driver)
        except Exception as error:
            result = _timed_with_links(*timed, epoch)[0]
            result["driver"] = {"error": f"{type(error).__name__}: {error}"}
    else:
        result = _timed_with_links(*timed, epoch)[0]
        if driver is not None:
            result["driver"] = {"error": driver}
    losses = epoch.network.history["loss"]
    result.update(samples=spec["n"], loss=losses[-1])
    if not np.isfinite(losses[-1]):
        result["note"] = "non-finite loss"
    return result


def measure_peer(spec):
    import peers
    import workloads
    w = workloads.get(spec["workload"])
    X, y = workloads.data(w, spec["n"], spec["dtype"])
    epoch = peers.build(spec["peer"], w, X, y, spec["threads"], spec["dtype"])
    result = _timed_with_links(spec["threads"], spec["reps"], spec["budget"], epoch)[0]
    result["samples"] = epoch.samples
    note = peers.PEERS[spec["peer"]].note
    if note and spec["workload"] in note:
        result["note"] = note
    return result


def measure_startup(spec, entered):
    """Time from process launch (the parent's clock, passed in the spec) to the end of the first
    epoch; the data's generation is measured and subtracted."""
    started = time.perf_counter()
    import fastbp
    import_seconds = time.perf_counter() - started
    import workloads
    started = time.perf_counter()
    w = workloads.get(spec["workload"])
    X, y = workloads.data(w, spec["n"], spec["dtype"])
    data_seconds = time.perf_counter() - started
    started = time.perf_counter()
    net = fastbp.Network(**w.network_kwargs(), dtype=spec["dtype"], backend=spec["backend"],
                         n_threads=spec["threads"], seed=0)
    net.fit(X, y, **w.fit_kwargs())
    epoch_seconds = time.perf_counter() - started
    ended = time.time()
    return {"interpreter": entered - spec["launched"], "import": import_seconds,
            "first_epoch": epoch_seconds, "data": data_seconds,
            "total": ended - spec["launched"] - data_seconds,
            "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR")}


def _rss_now():
    """The resident set size of this process now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(spec):
    import gc
    import resource
    import workloads
    w = workloads.get(spec["workload"])
    net = workloads.network(w, spec["backend"], spec["dtype"], spec["threads"], seed=0)
    small_X, small_y = workloads.data(w, 2 * w.batch, spec["dtype"], seed=1)
    net.fit(small_X, small_y, **w.fit_kwargs())  # compile / load the cache; buffers for the batch
    del small_X, small_y
    gc.collect()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = _rss_now()
    X, y = workloads.data(w, spec["n"], spec["dtype"])
    with_data = _rss_now()
    started = time.perf_counter()
    net.fit(X, y, **w.fit_kwargs())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"x_bytes": X.nbytes, "y_bytes": y.nbytes, "rss_before": before,
            "rss_with_data": with_data, "peak_before": peak_before, "peak": peak,
            "growth": peak - before, "overhead": peak - before - X.nbytes, "fit_seconds": seconds,
            "samples": spec["n"]}


def child(spec_text):
    entered = time.time()
    spec = json.loads(spec_text)
    try:
        if spec["kind"] == "startup":
            result = measure_startup(spec, entered)
        else:
            result = {"gemm": measure_gemm, "fastbp": measure_fastbp, "peer": measure_peer,
                      "memory": measure_memory,
                      "link": lambda spec: {"ns": _link(2)}}[spec["kind"]](spec)
    except Exception as error:
        if type(error).__name__ in ("PeerUnavailable", "BackendUnavailable"):
            result = {"skipped": str(error)}
        else:
            result = {"error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=6)}
    print(MARK + json.dumps(result), flush=True)


# =========================================================================== in the parent process

def run_child(spec, threads, timeout, **env_extra):
    """Run one measurement in a fresh process; returns its result dict (with 'error' on failure)."""
    spec = dict(spec, launched=time.time())
    env = benchenv.clean_env(threads, **env_extra)
    command = [sys.executable, os.path.abspath(__file__), "--measure", json.dumps(spec)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    if proc.returncode < 0:
        import signal
        try:
            how = f"killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"killed by signal {-proc.returncode}"
    else:
        how = f"exit status {proc.returncode}"
    return {"error": how + (": " + " | ".join(tail) if tail else "")}


def rate(result, key="seconds", samples=None):
    """(best, median) samples/s of a result, or (None, None)."""
    part = result.get("driver", {}) if key == "driver" else result
    times = part.get("seconds")
    if not times:
        return None, None
    n = samples or result.get("samples")
    return n / min(times), n / statistics.median(times)


def fmt_rate(value):
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.3g} k"
    return f"{value:.3g}"


def fmt_ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def fmt_pct(a, b):
    return "–" if a is None or b is None or b == 0 else f"{100 * a / b:.0f}%"


def fmt_cell(result):
    """Best samples/s of a measurement, 'skipped', 'error', marked † when others disturbed it."""
    if "skipped" in result:
        return "skipped"
    if "error" in result:
        return "error"
    if not result:
        return "–"
    return (fmt_rate(rate(result)[0]) + ("†" if result.get("others", 0) > NOISY else "")
            + ("‡" if result.get("odd_link") else ""))


def fmt_others(result, before="", after=""):
    return "–" if result.get("others") is None else f"{before}{100 * result['others']:.0f}%{after}"


def fmt_trips(result):
    trips = result.get("round_trip_ns")
    return " / ".join(f"{ns:.0f}" for ns in trips) + ("‡" if result.get("odd_link") else "") \
        if trips else "–"


def fmt_mb(value):
    return f"{value / 2 ** 20:,.0f} MB"


def cpu_busy():
    """Seconds of CPU time the whole machine has spent busy (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    """CPU seconds of this process and its finished measurement processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def versions():
    from importlib import metadata
    found = {}
    for name in ("fastbp", "numpy", "numba", "Cython", "scipy", "torch", "jax", "jaxlib",
                 "scikit-learn", "threadpoolctl"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse(argv):
    cpus = benchenv.cpus()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: n=4000 (wide 1000), 2 reps, GEMM n=2048, memory n=20000, "
                        "peers jax and torch (explicit options still win)")
    p.add_argument("--n", type=int, help="samples per epoch (default 20000; quick 4000)")
    p.add_argument("--wide-n", type=int, help="samples per epoch on wide (default 5000; quick 1000)")
    p.add_argument("--reps", type=int, help="timed epochs after the warm-up epoch (default 3; quick 2)")
    p.add_argument("--workloads", help=f"comma-separated (default {','.join(ALL_WORKLOADS)})")
    p.add_argument("--backends", default="numba,cython", help="fastbp backends (default numba,cython)")
    p.add_argument("--dtypes", default="float32,float64", help="fastbp dtypes (default float32,float64)")
    p.add_argument("--threads", default=",".join(map(str, sorted({1, cpus}))),
                   help=f"fastbp thread counts (default 1,{cpus})")
    p.add_argument("--peers", help=f"comma-separated, or 'none' (default {','.join(ALL_PEERS)}; "
                                   f"quick jax,torch)")
    p.add_argument("--peer-threads", type=int, default=cpus, help=f"threads for peers (default {cpus})")
    p.add_argument("--gemm-n", type=int, help="GEMM size for the peak (default 4096; quick 2048)")
    p.add_argument("--memory-n", type=int, help="samples for the memory measurement (default 60000; "
                                                "quick 20000)")
    p.add_argument("--skip", default="", help="parts to leave out: any of gemm,fastbp,peers,startup,"
                                              "memory,driver")
    p.add_argument("--budget", type=float, default=30,
                   help="seconds of timed epochs per measurement after which no further repetition "
                        "starts (default 30; guards the run's length on a busy machine)")
    p.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                   help="before each measurement wait up to this long for the CPUs to be less than "
                        f"{100 * QUIET:.0f}%% busy (default 0: no waiting); for shared machines")
    p.add_argument("--link-below", type=float, default=0, metavar="NS",
                   help="before each measurement on more than one thread wait (up to --quiet-wait "
                        "seconds, at least 10 minutes when that is 0) until the CPU-to-CPU round trip "
                        "is below NS nanoseconds (bench/corelatency.py; default 0: no waiting)")
    p.add_argument("--link-above", type=float, default=0, metavar="NS",
                   help="with --link-below: also wait while the round trip is at or below NS "
                        "nanoseconds (a VM's vCPUs on one core's two hardware threads answer fast "
                        "but share its arithmetic; default 0: no lower bound)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per measurement process")
    p.add_argument("--json", metavar="PATH", help="also save every number as JSON")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("n", 20000, 4000), ("wide_n", 5000, 1000), ("reps", 3, 2),
                              ("gemm_n", 4096, 2048), ("memory_n", 60000, 20000)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.workloads = _names(args.workloads or ",".join(ALL_WORKLOADS), ALL_WORKLOADS, "workload")
    if args.peers is None:
        args.peers = "jax,torch" if quick else ",".join(ALL_PEERS)
    args.peers = [] if args.peers == "none" else _names(args.peers, ALL_PEERS, "peer")
    args.backends = _names(args.backends, ("numba", "cython", "numpy"), "backend")
    args.dtypes = _names(args.dtypes, ("float32", "float64"), "dtype")
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    args.skip = set(_names(args.skip, ("gemm", "fastbp", "peers", "startup", "memory", "driver"),
                           "part")) if args.skip else set()
    return args


def _names(text, allowed, what):
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in allowed:
            raise SystemExit(f"unknown {what} {name!r}; choose from {', '.join(allowed)}")
    return names


class Run:
    """The parent: plans the measurements, runs them one by one, reports."""

    def __init__(self, args):
        self.args = args
        self.results = []    # (spec, result)
        self.count = 0

    def log(self, message):
        print(message, file=sys.stderr, flush=True)

    def wait_for(self, seconds, read, good, describe, pause):
        """Read a condition of the machine (read(): a value, or None when it cannot be read) until
        good(value) or `seconds` have passed, `pause` seconds apart; says on stderr that it waits."""
        deadline = time.time() + seconds
        waited = False
        while True:
            value = read()
            if value is None or good(value) or time.time() >= deadline:
                if waited:
                    self.log(f"      ... {describe(value)}, going on")
                return
            if not waited:
                self.log(f"      waiting: {describe(value)}")
                waited = True
            time.sleep(pause)

    def wait_quiet(self):
        """Wait (up to --quiet-wait seconds) until other processes leave the CPUs mostly idle."""
        def busy():  # the share of the CPUs busy during a second
            b0 = cpu_busy()
            if b0 is None:
                return None
            time.sleep(1.0)
            return (cpu_busy() - b0) / benchenv.cpus()
        self.wait_for(self.args.quiet_wait, busy, lambda b: b < QUIET,
                      lambda b: f"CPUs {100 * (b or 0):.0f}% busy", 0)

    def wait_link(self):
        """Wait until the CPU-to-CPU round trip is below --link-below ns and above --link-above ns
        (a virtual machine's vCPUs move between cores that share a cache, cores that do not, and
        one core's two hardware threads), up to --quiet-wait seconds (10 minutes when that is 0); a
        fresh process measures it every few seconds."""
        self.wait_for(self.args.quiet_wait or 600,
                      lambda: run_child({"kind": "link"}, 2, self.args.timeout).get("ns"),
                      lambda ns: self.args.link_above < ns < self.args.link_below,
                      lambda ns: f"CPU-to-CPU round trip {'?' if ns is None else f'{ns:.0f}'} ns", 5)

    def measure(self, spec, threads, label, **env_extra):
        self.count += 1
        if self.args.quiet_wait > 0:
            self.wait_quiet()
        if self.args.link_below > 0 and threads > 1:
            self.wait_link()
        busy0, own0 = cpu_busy(), own_cpu()
        started = time.perf_counter()
        result = run_child(spec, threads, self.args.timeout, **env_extra)
        elapsed = time.perf_counter() - started
        result["wall"] = elapsed
        if busy0 is not None:  # the CPU time others took while this measurement ran
            others = ((cpu_busy() - busy0) - (own_cpu() - own0)) / (elapsed * benchenv.cpus())
            result["others"] = max(others, 0.0)
        self.results.append((spec, result))
        if "error" in result:
            summary = "ERROR " + result["error"]
        elif "skipped" in result:
            summary = result["skipped"]
        elif "seconds" in result:
            summary = f"{fmt_rate(rate(result)[0])} samples/s"
        else:
            summary = "done"
        self.log(f"[{self.count:3d}] {label}: {summary} ({elapsed:.1f} s)")
        return result

    def find(self, **where):
        for spec, result in self.results:
            if all(spec.get(k) == v for k, v in where.items()):
                return result
        return {}

    def n_for(self, workload):
        return self.args.wide_n if workload == "wide" else self.args.n

    # ------------------------------------------------------------------ plan

    def execute(self):
        a = self.args
        top = max(a.threads)
        gemm = {"kind": "gemm", "n": a.gemm_n, "reps": 3, "dtypes": ["float32", "float64"],
                "threads": a.peer_threads}
        if "gemm" not in a.skip:
            self.measure(dict(gemm, round="start"), a.peer_threads, f"GEMM peak n={a.gemm_n}")
        for workload in a.workloads:
            n = self.n_for(workload)
            if "fastbp" not in a.skip:
                for dtype in a.dtypes:
                    for backend in a.backends:
                        for threads in a.threads:
                            spec = {"kind": "fastbp", "workload": workload, "backend": backend,
                                    "dtype": dtype, "threads": threads, "n": n, "reps": a.reps, "budget": a.budget,
                                    "driver": ("driver" not in a.skip and dtype == "float32"
                                               and threads == top)}
                            self.measure(spec, threads,
                                         f"{workload} fastbp-{backend} {dtype} {threads}t n={n}")
            if "peers" not in a.skip:
                for peer in a.peers:
                    spec = {"kind": "peer", "workload": workload, "peer": peer, "dtype": "float32",
                            "threads": a.peer_threads, "n": n, "reps": a.reps, "budget": a.budget}
                    self.measure(spec, a.peer_threads,
                                 f"{workload} {peer} float32 {a.peer_threads}t n={n}")
        if "startup" not in a.skip:
            with tempfile.TemporaryDirectory(prefix="fastbp-numba-cache-") as cache:
                for backend, cache_state in (("numba", "empty"), ("numba", "filled"), ("cython", "")):
                    if backend not in a.backends:
                        continue
                    spec = {"kind": "startup", "workload": "nielsen", "backend": backend,
                            "dtype": "float32", "threads": top, "n": a.n, "cache": cache_state}
                    extra = {"NUMBA_CACHE_DIR": cache} if backend == "numba" else {}
                    self.measure(spec, top, f"first epoch {backend} {cache_state}".rstrip(), **extra)
        if "memory" not in a.skip:
            for backend in a.backends:
                spec = {"kind": "memory", "workload": "wide", "backend": backend, "dtype": "float32",
                        "threads": top, "n": a.memory_n}
                self.measure(spec, top, f"memory wide {backend} n={a.memory_n}")
        if "gemm" not in a.skip:  # again at the end: the better of the two is the peak
            self.measure(dict(gemm, round="end"), a.peer_threads, f"GEMM peak n={a.gemm_n} again")

    # ------------------------------------------------------------------ report

    def report(self, header):
        import workloads
        a = self.args
        top = max(a.threads)
        out = [header]
        rounds = [(spec["round"], result) for spec, result in self.results if spec["kind"] == "gemm"]
        good = [result for _, result in rounds if "error" not in result]
        peak = self.peak()
        if good:
            blas = "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')}, "
                             f"{b.get('num_threads')} threads)" for b in good[0].get("blas", []))
            out += ["", f"## GEMM peak (numpy matmul, n={a.gemm_n}, {a.peer_threads} threads)", "",
                    "| dtype | **peak** (GFLOP/s) | " + " | ".join(
                        f"{name}: best of 3 / median" for name, r in rounds if "error" not in r) + " |",
                    "|---|---|" + "---|" * len(good)]
            for dt in ("float32", "float64"):
                out.append(f"| {dt} | **{peak[dt]:.1f}** | " + " | ".join(
                    f"{r[dt]['gflops']:.1f} / {r[dt]['gflops_median']:.1f} {fmt_others(r, '(others ', ')')}"
                    for r in good) + " |")
            out += ["", f"Measured at the start and at the end of the run; the peak is the better. BLAS: {blas}"]
        for name, result in rounds:
            if "error" in result:
                out += ["", f"GEMM peak ({name}) failed: {result['error']}"]
        out += self.links()

        if "fastbp" not in a.skip or "peers" not in a.skip:
            out += self.headline(workloads, peak, top)
        if "fastbp" not in a.skip:
            out += self.detail(workloads, peak, top)
        if "startup" not in a.skip:
            out += self.startup()
        if "memory" not in a.skip:
            out += self.memory()
        out += self.raw()
        return "\n".join(out)

    def round_trips(self):
        """Every CPU-to-CPU round trip (ns) the run measured (bench/corelatency.py)."""
        return [ns for _, result in self.results for ns in result.get("round_trip_ns") or ()]

    def links(self):
        """The report's section on the run's round trips; marks each measurement with a round trip
        more than ODD_LINK x away from the run's median (odd_link: ‡ in the tables)."""
        measured = [(result, result["round_trip_ns"]) for _, result in self.results
                    if result.get("round_trip_ns")]
        if not measured:
            return []
        every = self.round_trips()
        typical = statistics.median(every)
        for result, trips in measured:
            result["odd_link"] = any(not typical / ODD_LINK <= ns <= ODD_LINK * typical
                                     for ns in trips)
        odd = sum(result["odd_link"] for result, _ in measured)
        return ["", "## CPU-to-CPU round trip", "",
                f"CPU 0 ↔ CPU 1, before and after each measurement on more than one thread (and with "
                f"each GEMM peak): median {typical:.0f} ns, fastest {min(every):.0f} ns, slowest "
                f"{max(every):.0f} ns. {odd} of {len(measured)} measurements had a round trip more "
                f"than {ODD_LINK:g}× away from the median, marked ‡: on a virtual machine the two vCPUs "
                "can sit for a while on cores that share no cache (slower: the waits between fastbp's "
                "threads and the data they pass cost more) or on one core's two hardware threads "
                "(faster, but the threads then share one core's arithmetic); see bench/README.md."]

    def peak(self):
        """The GEMM peak (GFLOP/s) of each dtype: the best of the run's rounds (None without one)."""
        good = [result for spec, result in self.results if spec["kind"] == "gemm" and "error" not in result]
        return {dt: max((r[dt]["gflops"] for r in good), default=None) for dt in ("float32", "float64")}

    def best_compiled(self, workload, dtype, threads):
        """(backend, best samples/s) of the faster compiled backend."""
        found = []
        for backend in a_compiled(self.args.backends):
            r = rate(self.find(kind="fastbp", workload=workload, backend=backend, dtype=dtype,
                               threads=threads))[0]
            if r is not None:
                found.append((r, backend))
        if not found:
            return None, None
        r, backend = max(found)
        return backend, r

    def headline(self, workloads, peak, top):
        a = self.args
        pt = a.peer_threads
        peers = a.peers if "peers" not in a.skip else []
        backends = a.backends if "fastbp" not in a.skip else []
        out = ["", f"## Throughput: float32, {top} threads for fastbp, {pt} for peers "
                   f"(samples/s, best of {a.reps} epochs after a warm-up epoch)", ""]
        cols = (["workload", "n", "FLOP/sample", "roofline"] + [f"fastbp {b}" for b in backends]
                + ["better / roofline", "better vs jax", "better vs torch"] + list(peers))
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name in a.workloads:
            w = workloads.get(name)
            roof = w.roofline(peak["float32"]) if peak.get("float32") else None
            row = [name, f"{self.n_for(name):,}", f"{w.flop_per_sample / 1e3:,.1f} k", fmt_rate(roof)]
            for backend in backends:
                row.append(fmt_cell(self.find(kind="fastbp", workload=name, backend=backend,
                                              dtype="float32", threads=top)))
            backend, better = self.best_compiled(name, "float32", top)
            jax = rate(self.find(kind="peer", workload=name, peer="jax"))[0]
            torch = rate(self.find(kind="peer", workload=name, peer="torch"))[0]
            row += [fmt_pct(better, roof), fmt_ratio(better, jax), fmt_ratio(better, torch)]
            for peer in peers:
                result = self.find(kind="peer", workload=name, peer=peer)
                row.append(fmt_cell(result) + ("*" if result.get("note") else ""))
            out.append("| " + " | ".join(row) + " |")
        out += ["", "roofline = GEMM peak / FLOP per sample; *better* = the faster compiled fastbp "
                    "backend; ratios > 1 mean fastbp is faster; † other processes took more than "
                    f"{100 * NOISY:.0f}% of the CPUs during that measurement (see *others* below); "
                    f"‡ the CPU-to-CPU round trip was more than {ODD_LINK:g}× away from the run's "
                    "median during that measurement (see above)."]
        if "sklearn" in peers:
            out.append("\\* sklearn on nielsen: sigmoid output with binary cross-entropy (it has no "
                       "mse classifier); every other peer and workload has exactly fastbp's semantics.")
        return out

    def detail(self, workloads, peak, top):
        a = self.args
        th = a.threads
        lo = min(th)
        out = ["", f"## fastbp by backend, dtype and threads (samples/s, best of {a.reps})", ""]
        cols = ["workload", "backend"] + [f"{dt[-2:]} {t}t" for dt in a.dtypes for t in th]
        if len(th) > 1:
            cols += [f"{top}t/{lo}t {dt[-2:]}" for dt in a.dtypes]
        if len(a.dtypes) > 1:
            cols += [f"f64/f32 {t}t" for t in th]
        cols += [f"GFLOP/s {dt[-2:]} {top}t (% of peak)" for dt in a.dtypes]
        if "driver" not in a.skip and "float32" in a.dtypes:
            cols += [f"driver only f32 {top}t", "fit / driver"]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name in a.workloads:
            w = workloads.get(name)
            for backend in a.backends:
                found = {(dt, t): self.find(kind="fastbp", workload=name, backend=backend, dtype=dt,
                                            threads=t) for dt in a.dtypes for t in th}
                r = {key: rate(result)[0] for key, result in found.items()}
                row = [name, backend] + [fmt_cell(found[dt, t]) for dt in a.dtypes for t in th]
                if len(th) > 1:
                    row += [fmt_ratio(r[dt, top], r[dt, lo]) for dt in a.dtypes]
                if len(a.dtypes) > 1:
                    row += [fmt_ratio(r["float64", t], r["float32", t]) for t in th]
                for dt in a.dtypes:
                    gflops = r[dt, top] * w.flop_per_sample / 1e9 if r[dt, top] else None
                    row.append("–" if gflops is None else
                               f"{gflops:.1f} ({fmt_pct(gflops, peak.get(dt))})")
                if "driver" not in a.skip and "float32" in a.dtypes:
                    result = self.find(kind="fastbp", workload=name, backend=backend,
                                       dtype="float32", threads=top)
                    driver = rate(result, "driver")[0]
                    if driver is None and "error" in result.get("driver", {}):
                        row += ["n/a", "–"]
                    else:
                        row += [fmt_rate(driver), fmt_ratio(r["float32", top], driver)]
                out.append("| " + " | ".join(row) + " |")
        compiled = a_compiled(a.backends)
        if len(compiled) == 2:
            one, two = compiled
            out += ["", f"{one}/{two} (samples/s ratio; > 1: {one} faster):", "",
                    "| workload | " + " | ".join(f"{dt[-2:]} {t}t" for dt in a.dtypes for t in th) + " |",
                    "|---|" + "---|" * (len(a.dtypes) * len(th))]
            for name in a.workloads:
                cells = []
                for dt in a.dtypes:
                    for t in th:
                        x = rate(self.find(kind="fastbp", workload=name, backend=one, dtype=dt,
                                           threads=t))[0]
                        y = rate(self.find(kind="fastbp", workload=name, backend=two, dtype=dt,
                                           threads=t))[0]
                        cells.append(fmt_ratio(x, y))
                out.append(f"| {name} | " + " | ".join(cells) + " |")
        notes = []
        if len(th) > 1:
            notes.append(f"{top}t/{lo}t: speedup from {lo} to {top} threads")
        if len(a.dtypes) > 1:
            notes.append("f64/f32: float64 samples/s over float32 (below 1: float64 slower)")
        notes.append("GFLOP/s counts the workload's FLOP per sample; % of peak is against the GEMM "
                     "peak of the same dtype (all threads)")
        if "driver" not in a.skip and "float32" in a.dtypes:
            notes.append("driver only: the backend's train_batches called directly with the network's "
                         "buffers (no input validation, no one-hot encoding, no chunking)")
        notes.append("† and ‡ as above")
        out += ["", "; ".join(notes) + "."]
        return out

    def startup(self):
        rows = [(spec, result) for spec, result in self.results if spec["kind"] == "startup"]
        if not rows:
            return []
        out = ["", f"## Time to the first epoch (nielsen, {self.args.n:,} float32 samples, "
                   f"{rows[0][0]['threads']} threads)", "",
               "| backend | Numba cache | interpreter start | import fastbp | network + first epoch "
               "(incl. compilation) | total from process start | others |", "|---|---|---|---|---|---|---|"]
        for spec, result in rows:
            if "error" in result:
                out.append(f"| {spec['backend']} | {spec['cache'] or '–'} | error: {result['error']} "
                           f"| | | | |")
                continue
            out.append(f"| {spec['backend']} | {spec['cache'] or '–'} | {result['interpreter']:.2f} s | "
                       f"{result['import']:.2f} s | {result['first_epoch']:.2f} s | "
                       f"**{result['total']:.2f} s** | {fmt_others(result)} |")
        out += ["", "From the parent's launch of the process to the end of the first `fit` epoch; "
                    "generating the random data is excluded. *empty*: a fresh NUMBA_CACHE_DIR (every "
                    "kernel compiled); *filled*: the same directory again (compiled code loaded from "
                    "the cache)."]
        return out

    def memory(self):
        rows = [(spec, result) for spec, result in self.results if spec["kind"] == "memory"]
        if not rows:
            return []
        n = rows[0][0]["n"]
        out = ["", f"## Peak memory: fit wide on {n:,} float32 samples, one epoch", "",
               "| backend | X | RSS before X | peak RSS | peak − RSS before X | beyond X "
               f"(target ≤ {MEMORY_TARGET_MB} MB) | | epoch |", "|---|---|---|---|---|---|---|---|"]
        for spec, result in rows:
            if "error" in result:
                out.append(f"| {spec['backend']} | error: {result['error']} | | | | | | |")
                continue
            ok = result["overhead"] <= MEMORY_TARGET_MB * 2 ** 20
            out.append(f"| {spec['backend']} | {fmt_mb(result['x_bytes'])} | "
                       f"{fmt_mb(result['rss_before'])} | {fmt_mb(result['peak'])} | "
                       f"{fmt_mb(result['growth'])} | {fmt_mb(result['overhead'])} | "
                       f"{'meets target' if ok else 'OVER TARGET'} | {result['fit_seconds']:.1f} s |")
        out += ["", "ru_maxrss after the epoch, against the resident size just before X was created (after "
                    "`import fastbp` and a small warm-up fit that compiles the kernels). *beyond X* also "
                    f"holds y and the one-hot targets ({n:,} × 10)."]
        return out

    def raw(self):
        if not any(spec["kind"] in ("fastbp", "peer") for spec, _ in self.results):
            return []
        out = ["", "## Every measurement", "",
               "| what | workload | dtype | threads | samples | warm-up s | epochs | best s | "
               "best samples/s | median samples/s | CPU/wall | others | round trip ns | note |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for spec, result in self.results:
            if spec["kind"] not in ("fastbp", "peer"):
                continue
            what = f"fastbp {spec['backend']}" if spec["kind"] == "fastbp" else spec["peer"]
            base = f"| {what} | {spec['workload']} | {spec['dtype']} | {spec['threads']} |"
            if "seconds" not in result:
                msg = result.get("skipped") or result.get("error", "")
                out.append(f"{base} | | | | | | | | | {msg} |")
                continue
            best, median = rate(result)
            out.append(f"{base} {result['samples']:,} | {result['warmup']:.2f} | "
                       f"{len(result['seconds'])} | {min(result['seconds']):.3f} | "
                       f"{fmt_rate(best)} | {fmt_rate(median)} | {result['cpu_per_wall']:.2f} | "
                       f"{fmt_others(result)} | {fmt_trips(result)} | {result.get('note', '')} |")
            driver = result.get("driver", {})
            if "seconds" in driver:
                best, median = rate(result, "driver")
                out.append(f"| ↳ driver only | {spec['workload']} | {spec['dtype']} | {spec['threads']} "
                           f"| {result['samples']:,} | {driver['warmup']:.2f} | {len(driver['seconds'])} | "
                           f"{min(driver['seconds']):.3f} | "
                           f"{fmt_rate(best)} | {fmt_rate(median)} | {driver['cpu_per_wall']:.2f} | | | |")
            elif "error" in driver:
                out.append(f"| ↳ driver only | {spec['workload']} | {spec['dtype']} | {spec['threads']} "
                           f"| | | | | | | | | | {driver['error']} |")
        out += ["", "epochs: timed epochs after the warm-up (fewer than asked when they exceeded "
                    f"--budget {self.args.budget:g} s); CPU/wall: the process's CPU time over the wall "
                    "time of the timed epochs (threads busy on average, waiting spins included); others: the share "
                    "of the machine's CPU time that other processes used while the measurement's "
                    "process ran (above ~10%, its numbers are disturbed); round trip: CPU 0 ↔ CPU 1 "
                    "before / after the timed epochs (measurements on more than one thread)."]
        return out


def a_compiled(backends):
    return [b for b in backends if b in ("numba", "cython")]


def header_text(command, started, elapsed, load, others, versions_, args):
    """The report's heading: the command, when and where it ran, the versions, the method."""
    a = args
    return "\n".join([
        "# fastbp benchmark report", "",
        "```", f"$ {command}", "```", "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}, "
        f"{elapsed / 60:.1f} minutes" + (f"; working directory {a.cwd}; python {a.python}"
                                          if a.cwd else ""),
        f"- machine: {a.machine}; load average (1 min) {load[0]:.2f} at the start, "
        f"{load[1]:.2f} at the end" + (
            "" if others is None else f"; other processes used {100 * max(others, 0):.0f}% of the "
            f"machine's CPU time during the run" + (" (busy: expect noisy numbers)" if others > 0.1
                                                    else "")),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in versions_.items()),
        f"- each measurement in its own process with {', '.join(benchenv.BLAS_VARIABLES)} unset and "
        f"OMP/OpenBLAS/MKL thread variables set to its thread count; {a.n:,} samples per epoch "
        f"(wide: {a.wide_n:,}), random X uniform in [0, 1), labels 0..9; a warm-up epoch, then "
        f"best (and median) of {a.reps} epochs (fewer once they exceed {a.budget:g} s)",
    ])


def load_run(path):
    """(a Run over the measurements of a saved run (--json), its JSON): the report's lookups and
    rules work on it as on a run just made."""
    with open(path) as f:
        data = json.load(f)
    options = dict(data["options"])
    options.setdefault("cwd", None)  # not recorded (or left out of a published run)
    options.setdefault("python", None)
    options.setdefault("machine", data.get("machine", "?"))
    run = Run(argparse.Namespace(**options))
    run.results = [(m["spec"], m["result"]) for m in data["measurements"]]
    return run, data


def rerender(path):
    """The report of a saved run (--json), printed again with this version's rules (‡, ...)."""
    run, data = load_run(path)
    header = header_text(data["command"], data["started"], data["seconds"], data["load_average"],
                         data.get("others_cpu"), data.get("versions", {}), run.args)
    return run.report(header)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        child(argv[1])
        return 0
    if argv[:1] == ["--report"]:
        print(rerender(argv[1]))
        return 0
    args = parse(argv)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # subprocess.run kills the child
    started, load_start, busy_start, own_start = time.time(), os.getloadavg(), cpu_busy(), own_cpu()
    command = shlex.join(["python"] + [sys.argv[0]] + argv)
    args.cwd, args.python = os.getcwd(), sys.executable
    args.machine = (f"{cpu_model()}, {os.cpu_count()} CPUs ({benchenv.cpus()} usable), "
                    f"{platform.system()} {platform.release()}")
    run = Run(args)
    run.log(f"$ {command}")
    run.execute()
    elapsed = time.time() - started
    others = None
    if busy_start is not None:
        others = ((cpu_busy() - busy_start) - (own_cpu() - own_start)) / (elapsed * benchenv.cpus())
    v = versions()
    load = [load_start[0], os.getloadavg()[0]]
    report = run.report(header_text(command, started, elapsed, load, others, v, args))
    print(report, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "started": started, "seconds": elapsed,
                       "load_average": load, "others_cpu": others,
                       "versions": v,
                       "machine": cpu_model(), "options": {k: sorted(v_) if isinstance(v_, set) else v_
                                                            for k, v_ in vars(args).items()},
                       "measurements": [{"spec": s, "result": r} for s, r in run.results]},
                      f, indent=1)
        run.log(f"saved {args.json}")
    return 1 if any("error" in r for _, r in run.results) else 0


if __name__ == "__main__":
    sys.exit(main())
