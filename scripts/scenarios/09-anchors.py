"""Anchors from outside the project: nginx (one worker) through the
throughput points, side by side with the designs when the throughput
scenario runs, and wrk against epoll beside loadgen, in alternating rounds
(their ratio is the median of the rounds')."""

import re
import shutil
import statistics
import subprocess

import harness as H

NAME = "anchors"
ABOUT = "nginx (one worker) through the throughput points; wrk against epoll beside loadgen"
QUICK = True
TITLE = "anchors: nginx (one worker) through the throughput points; loadgen against wrk on epoll"
COLUMNS = [
    ("req/s c1", "c1", "rps"), ("req/s c8", "c8", "rps"), ("req/s c64", "c64", "rps"),
    ("req/s c256", "c256", "rps"), ("req/s pipe16", "c64-pipe16", "rps"),
    ("p99 us c64", "c64", "p99_us"), ("usr us/req", "c64", "server_user_per_req_us"),
    ("sys us/req", "c64", "server_system_per_req_us"),
    ("loadgen req/s", "loadgen c64", "rps"), ("wrk req/s", "wrk c64", "rps"),
    ("loadgen/wrk", "loadgen c64", "ratio_to_wrk"),
]
BEST = (3, "max")


def run(bench, designs):
    if bench.world:
        bench.record("nginx", NAME, "-", reason="nginx and wrk run on loopback only, not in a world")
        return
    if not bench.nginx_done:  # the throughput scenario did not run: nginx on its own
        bench.scenario("throughput").side_by_side(bench, [], with_nginx=True)
    if not shutil.which("wrk"):
        bench.record("wrk", NAME, "-", reason="wrk is not installed")
        return
    bench.with_server("epoll", NAME, lambda srv: loadgen_and_wrk(bench, srv))


def loadgen_and_wrk(bench, srv):
    argv = H.pinned(["wrk", f"-t{min(bench.gen_threads, 64)}", "-c64", f"-d{max(1, round(bench.dur))}s",
                     f"http://127.0.0.1:{srv.port}/"], bench.gcpu)

    def wrk(rnd):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=bench.dur + 30).stdout
        except subprocess.TimeoutExpired:
            raise H.HarnessError("wrk did not finish")
        m = re.search(r"Requests/sec:\s*([\d.]+)", out)
        if not m:
            raise H.HarnessError("wrk printed no rate")
        return {"rps": float(m.group(1))}, None
    got = bench.alternate({"loadgen c64": lambda rnd: (bench.loadgen(bench.base(64) + [bench.url(srv)], srv),
                                                       None), "wrk c64": wrk})
    lg = bench.keep_median("epoll", NAME, "loadgen c64", got["loadgen c64"])
    rates = sorted(r["rps"] for r, _ in got["wrk c64"] if isinstance(r, dict))
    if rates:
        bench.record("epoll", NAME, "wrk c64", extra={"rps": rates[len(rates) // 2]})
    else:
        bench.record("epoll", NAME, "wrk c64", reason=str(got["wrk c64"][0][0]))
    rr = [a["rps"] / b["rps"] for (a, _), (b, _) in zip(got["loadgen c64"], got["wrk c64"])
          if isinstance(a, dict) and isinstance(b, dict) and a.get("rps") and b["rps"]]
    if lg and rr:
        lg["figures"]["ratio_to_wrk"] = statistics.median(rr)
