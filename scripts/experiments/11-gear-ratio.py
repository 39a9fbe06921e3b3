"""The incrementor's gear ratio: flush interval against writes and lag
(docs/LAB.md, gear-ratio)."""

import json
import tempfile
import urllib.request
from pathlib import Path

import harness as H
import lablib as L

NAME = "gear-ratio"
TITLE = "The incrementor's gear ratio: flush interval against writes and lag"
QUESTION = "How does the flush interval trade database writes for lag, and do the sums stay exact?"
NEEDS = ["incrementor"]


def incrementor_run(lab, flush_ms, mode, rate=5000):
    """3 s of increments at `rate` against a fresh incrementor, stopped with
    SIGTERM; its figures, the database checked against loadgen's sums."""
    db = Path(tempfile.mkdtemp(prefix="lab-incr-")) / "numbers.db"
    argv = [str(H.BIN / "incrementor"), "--db", str(db), "--port", "0", "--threads", "1",
            "--flush-ms", str(flush_ms), "--ack", mode]
    with H.Server(argv, cpus=L.SCPU) as s:
        r = L.loadgen(["-t", "1", "-c", "32", "-d", "3s", "-R", str(rate), "--increment", "1000",
                       f"http://127.0.0.1:{s.port}/increment"], s)
        with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/stats", timeout=5) as f:
            stats = json.load(f)
        s.stop()
    lab.did(f"incrementor --flush-ms {flush_ms} --ack {mode}; loadgen -R {rate} --increment 1000 for 3 s; SIGTERM")
    rows = stats.get("rows_written")
    lag = stats.get("durable_wait_ms" if mode == "durable" else "lag_ms") or {}
    return {"rps": r.get("rps"), "exact": H.exactness(db, r)["exact"], "flushes": stats.get("flushes"),
            "rows_written": rows, "writes_per_s": (rows / 3.0) if rows else None, "max_lag_ms": lag.get("max"),
            "lag_p99_ms": lag.get("p99"), "requests": r.get("requests")}


def run(lab):
    res = {}
    for flush in (10, 100, 1000):
        res[f"buffered {flush} ms"] = incrementor_run(lab, flush, "buffered")
    res["durable 100 ms"] = incrementor_run(lab, 100, "durable")
    lab.fig(runs=res)
    lab.check("the database equals the acknowledged sums in every run", all(v["exact"] for v in res.values()))
    w = [res[f"buffered {f} ms"]["writes_per_s"] or 0 for f in (10, 100, 1000)]
    lab.check("longer flush intervals mean fewer database writes per second (the gear ratio)",
              w[0] > w[1] > w[2] > 0)
    lag = [res[f"buffered {f} ms"]["max_lag_ms"] for f in (10, 100, 1000)]
    lab.check("... and a longer lag between acknowledgement and commit", all(x is not None for x in lag)
              and lag[0] < lag[2])
    lab.bars("database rows written per second at 5,000 increments/s", "rows/s",
             {k: v["writes_per_s"] or 0 for k, v in res.items()})
