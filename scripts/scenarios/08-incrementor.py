"""bin/incrementor under POST /increment over 10,000 keys at -c64, buffered
and durable, beside server-epoll's GET / (issue 15's yardstick for the cost
of a POST): req/s, the lag from acknowledgement to commit, and the database
checked against loadgen's acknowledged sums (H.exactness).

The three alternate, --repeat rounds of them (bench.alternate), each
incrementor run on a fresh database; the run with the median req/s is
kept. Two ratios are taken round by round, between runs a few seconds
apart, so that the machine's noise, which moves them together, cancels
out; each is the median over the rounds:
- `to_buffered` (durable's row): durable's req/s over buffered's (the
  issue's goal: at least 0.5);
- `cpu_to_get` (both modes): the incrementor's server CPU per POST over
  server-epoll's per GET / (the goal: at most 1.1).
A round whose database differs from the acknowledged sums fails its mode,
whatever the other rounds say."""

import json
import statistics

import harness as H

NAME = "incrementor"
ABOUT = "POST /increment: req/s, ack-to-commit lag, exactness (buffered, durable), CPU against GET /"
QUICK = True
TITLE = "incrementor: POST /increment over 10,000 keys at -c64, and server-epoll's GET /"
COLUMNS = [
    ("req/s", "*", "rps"), ("exact", "*", "exact"), ("p99 us", "*", "p99_us"),
    ("CPU us/req", "*", "server_cpu_per_req_us"), ("CPU to GET", "*", "cpu_to_get"),
    ("to buffered", "*", "to_buffered"),
    ("ack-commit lag max ms", "*", "max_lag_ms"), ("lag p99 ms", "*", "lag_p99_ms"),
    ("flushes", "*", "flushes"), ("rows written", "*", "rows_written"),
]
BEST = (1, "max")
MODES = ("buffered", "durable")
GET = "GET /"


def row(run):
    """A row per mode (the point: buffered, durable), and epoll's GET /."""
    return f"{run['design']} {run['point']}"


def round_ratio(got, a, b, figure):
    """The median over rounds of a's figure over b's, in the rounds where
    both ran and b's is not 0 (got: bench.alternate's, name -> runs in
    round order); None without such a round."""
    ratios = []
    for (ra, _), (rb, _) in zip(got[a], got[b]):
        if isinstance(ra, dict) and isinstance(rb, dict):
            x, y = H.figures(ra).get(figure), H.figures(rb).get(figure)
            if x is not None and y:
                ratios.append(x / y)
    return statistics.median(ratios) if ratios else None


def post_job(bench, exe, mode):
    """One round of a mode: a fresh database, the load, the writer's
    /stats, a clean stop, then the database against the sums."""
    def job(rnd):
        db = bench.tmp / f"numbers-{mode}-{rnd}.db"
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        argv = [str(exe), "--db", str(db), "--port", "0", "--threads", str(H.ncpus(bench.scpu)),
                "--flush-ms", "100", "--ack", mode]
        if bench.server_host:
            argv += ["--host", bench.server_host.addr]
        try:
            with bench.server(argv) as srv:
                run = bench.loadgen(bench.base(64, ["--increment", "10000"]) +
                                    [bench.url(srv, "/increment")], srv)
                stats = {}
                try:
                    stats = json.loads(bench.http_get(srv, "/stats"))
                except (OSError, ValueError):
                    pass  # the figures from it are then missing, not wrong
                status = srv.stop()
            extra = {"mode": mode, "exit_status": status}
            extra.update(H.exactness(db, run))
            lag = stats.get("durable_wait_ms" if mode == "durable" else "lag_ms") or {}
            extra.update(max_lag_ms=lag.get("max"), lag_p99_ms=lag.get("p99"),
                         flushes=stats.get("flushes"), rows_written=stats.get("rows_written"))
            run["scenario_figures"] = extra
            return run, None
        finally:
            for p in files:
                p.unlink(missing_ok=True)
    return job


def get_job(bench):
    def job(rnd):
        with bench.server(bench.server_argv("epoll")) as srv:
            return bench.loadgen(bench.base(64) + [bench.url(srv, "/")], srv), None
    return job


def run(bench, designs):
    exe = H.BIN / "incrementor"
    if not exe.exists():
        bench.record("incrementor", NAME, "-", reason="bin/incrementor is not built")
        return
    jobs = {mode: post_job(bench, exe, mode) for mode in MODES}
    jobs[GET] = get_job(bench)
    got = bench.alternate(jobs)
    # An inexact round fails its mode (bench.keep_median).
    recs = {name: bench.keep_median("epoll" if name == GET else "incrementor", NAME, name, got[name])
            for name in jobs}
    for mode in MODES:
        if recs.get(mode):
            recs[mode]["figures"]["cpu_to_get"] = round_ratio(got, mode, GET, "server_cpu_per_req_us")
    if recs.get("durable"):
        recs["durable"]["figures"]["to_buffered"] = round_ratio(got, "durable", "buffered", "rps")
