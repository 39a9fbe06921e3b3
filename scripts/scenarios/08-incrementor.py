"""bin/incrementor under POST /increment over 10,000 keys, buffered and
durable: req/s, the lag from acknowledgement to commit, and the database
checked against loadgen's acknowledged sums (H.exactness)."""

import json
from pathlib import Path

import harness as H

NAME = "incrementor"
ABOUT = "POST /increment: req/s, ack-to-commit lag, exactness (buffered, durable)"
QUICK = True
TITLE = "incrementor: POST /increment over 10,000 keys at -c64"
COLUMNS = [
    ("req/s", "*", "rps"), ("exact", "*", "exact"), ("p99 us", "*", "p99_us"),
    ("ack-commit lag max ms", "*", "max_lag_ms"), ("lag p99 ms", "*", "lag_p99_ms"),
    ("flushes", "*", "flushes"), ("rows written", "*", "rows_written"),
]
BEST = (1, "max")


def row(run):
    """A row per mode (the point: buffered, durable)."""
    return f"{run['design']} {run['point']}"


def run(bench, designs):
    exe = H.BIN / "incrementor"
    if not exe.exists():
        bench.record("incrementor", NAME, "-", reason="bin/incrementor is not built")
        return
    for mode in ["buffered", "durable"]:
        db = bench.tmp / f"numbers-{mode}.db"
        for p in [db, Path(str(db) + "-wal"), Path(str(db) + "-shm")]:
            if p.exists():
                p.unlink()
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
                    pass
                status = srv.stop()
            extra = {"mode": mode, "exit_status": status}
            extra.update(H.exactness(db, run))
            lag = stats.get("durable_wait_ms" if mode == "durable" else "lag_ms") or {}
            extra.update(max_lag_ms=lag.get("max"), lag_p99_ms=lag.get("p99"),
                         flushes=stats.get("flushes"), rows_written=stats.get("rows_written"))
            reason = None if extra.get("exact") else f"database differs from acknowledged sums: {extra.get('mismatch')}"
            rec = bench.record("incrementor", NAME, mode, run, reason=reason, extra=extra)
            rec["figures"].update(extra)
        except H.HarnessError as e:
            bench.record("incrementor", NAME, mode, reason=str(e))
