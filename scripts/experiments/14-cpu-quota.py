"""A server under half a CPU, at 40% of it on average (docs/LAB.md,
cpu-quota)."""

import json
import os
import subprocess
import tempfile
import time

import harness as H
import lablib as L

NAME = "cpu-quota"
TITLE = "A CPU quota's period in the tail at 40% load"
QUESTION = "Does a server limited to 0.5 CPU, busy 40% of it on average, answer within one quota period?"
NEEDS = ["server-epoll", "world-link"]

QUOTA = 0.5  # cores: 50 ms of CPU in each 100 ms period (the cgroup default)
PERIOD_MS = 100
LOAD = 0.4  # of the quota, on average
AGENTS = 8  # requests in a burst: one per agent, all at the same instants
# A burst every 0.338 s: 100 ms x (1 - the golden ratio's fraction) apart in the
# period (38 ms), so the bursts fall at phases spread evenly over it.
EVERY_S = 0.3382
SECONDS = 8


def burst_run(lab, client, srv, burn, label):
    """AGENTS loadgens (-c 1 each, open loop) started at one instant: a burst
    of AGENTS BURNs every EVERY_S. Their latency histograms, added."""
    start_ms = int(time.time() * 1000) + 600
    outs, procs = [], []
    for i in range(AGENTS):
        fd, out = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        outs.append(out)
        procs.append(client.popen([str(H.BIN / "loadgen"), "--quiet", "--json", out, "--start-at", start_ms,
                                   "-c", 1, "-R", round(1 / EVERY_S, 4), "-d", f"{SECONDS}s", "--timeout", "5s",
                                   "--mix", f"BURN {burn}:1", srv.tcp],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    runs = []
    try:
        for p, out in zip(procs, outs):
            try:
                _, err = p.communicate(timeout=SECONDS + 15)
            except subprocess.TimeoutExpired:
                p.kill()
                raise H.HarnessError("a loadgen agent did not finish in time")
            if p.returncode != 0:
                raise H.HarnessError(f"loadgen: {err.strip()[-300:]}")
            with open(out) as f:
                runs.append(json.load(f))
    finally:
        for out in outs:
            os.unlink(out)
    lab.did(f"{AGENTS} x in host client: loadgen --start-at T -c 1 -R {1 / EVERY_S:.3f} -d {SECONDS}s "
            f"--mix 'BURN {burn}:1' {srv.tcp} ({label})")
    return L.merge_counts(*(L.hist_counts(r) for r in runs)), runs


def run(lab):
    res = {}
    with L.world() as w:
        client = w.host("client")
        quota = w.host("quota", cpu_quota=QUOTA)
        free = w.host("free")
        for h in (client, quota, free):
            L.favour(h)  # the quota, not the machine's other jobs, decides
        w.link(client, quota, rtt="1ms")
        w.link(client, free, rtt="1ms")
        # What a BURN costs here: CPU per request of BURN 1000000 (no quota).
        with L.HostServer(free, "epoll") as srv:
            r = L.host_loadgen(client, ["-c", 1, "-d", "1s", "--mix", "BURN 1000000:1", srv.tcp], srv)
        us_per_m = H.figures(r)["server_cpu_per_req_us"]
        lab.did(f"in host client: loadgen -c 1 -d 1s --mix 'BURN 1000000:1' {srv.tcp} (calibration)")
        # A burst's work: LOAD of the quota on average, so LOAD x QUOTA x
        # EVERY_S of CPU in each burst (72 ms: more than the 50 ms a period
        # allows), shared by its AGENTS requests.
        burst_ms = LOAD * QUOTA * EVERY_S * 1000
        burn = int(burst_ms / AGENTS * 1000 / us_per_m * 1e6)
        lab.fig(burn_1m_cpu_us=round(us_per_m), burst_cpu_ms=round(burst_ms, 1), burn=burn)
        for name, host in (("quota", quota), ("free", free)):
            with L.HostServer(host, "epoll") as srv:
                cpu0, thr0, t0 = host.cpu_seconds(), host.throttled(), time.monotonic()
                counts, runs = burst_run(lab, client, srv, burn, "0.5 CPU" if name == "quota" else "no quota")
                cpu = host.cpu_seconds() - cpu0
                wall = sum(r.get("duration_s") or SECONDS for r in runs) / len(runs)
            res[name] = {"p50_ms": L.percentile_us(counts, 50) / 1000, "p99_ms": L.percentile_us(counts, 99) / 1000,
                         "max_ms": L.percentile_us(counts, 100) / 1000,
                         "pct_at_least_period": round(L.fraction_at_least(counts, PERIOD_MS * 1000) * 100, 1),
                         "requests": sum(counts.values()),
                         "errors": sum(H.figures(r)["errors"] for r in runs),
                         "cpu_cores": round(cpu / wall, 3), "throttled_periods": host.throttled() - thr0,
                         "elapsed_s": round(time.monotonic() - t0, 1)}
    q, f = res["quota"], res["free"]
    lab.fig(runs=res, p99_ms_quota=q["p99_ms"], p99_ms_no_quota=f["p99_ms"],
            load_of_quota=round(q["cpu_cores"] / QUOTA, 2))
    lab.check(f"the server was busy {LOAD:.0%} of its quota on average, within 30-50% "
              f"({q['cpu_cores'] / QUOTA:.0%})", 0.3 <= q["cpu_cores"] / QUOTA <= 0.5)
    lab.check(f"under the quota, the p99 is at least one period ({PERIOD_MS} ms): {q['p99_ms']:.0f} ms, "
              f"and the quota throttled ({q['throttled_periods']} periods)",
              q["p99_ms"] >= PERIOD_MS and q["throttled_periods"] > 0, mark=PERIOD_MS)
    lab.check(f"without it, the same load's p99 is under one period: {f['p99_ms']:.0f} ms", f["p99_ms"] < PERIOD_MS)
    lab.check("every request was answered", not q["errors"] and not f["errors"] and q["requests"] and f["requests"])
    lab.bars(f"bursts of {AGENTS} BURNs at {LOAD:.0%} of 0.5 CPU: p50 and p99", "ms",
             {"p50 0.5 CPU": q["p50_ms"], "p99 0.5 CPU": q["p99_ms"], "p50 no quota": f["p50_ms"],
              "p99 no quota": f["p99_ms"]})
