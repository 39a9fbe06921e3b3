"""Epoll workers on one shared listening socket against the reactor's
socket per loop: how connections spread over the threads, and the
thundering herd with and without EPOLLEXCLUSIVE (docs/LAB.md, workers).
With --quick, one round instead of three."""

import http.client
import os
import re
import resource
import socket
import statistics
import time

import harness as H
import lablib as L

NAME = "workers"
TITLE = "Threads sharing one listening socket: the spread, and the thundering herd"
QUESTION = ("When threads share one listening socket, which of them takes a connection, and how many of them "
            "does each connection wake, with and without EPOLLEXCLUSIVE?")
NEEDS = ["server-workers", "server-reactor"]

THREADS = 4     # loops, all on the server's CPU: one connection can wake them all
BURST = 1000    # connects as fast as one client makes them
PACED = 200     # connects one at a time, each finding every thread asleep
# s between paced connects: far longer than an accept takes, and than a woken
# thread may wait for the CPU on a busy machine (a scheduler slice, a few ms):
# at 0.5 to 2 ms, half the threads were still awake from the last connect.
GAP = 0.005
MODES = {       # label: (design, flags)
    "exclusive": ("workers", []),
    "no-exclusive": ("workers", ["--no-exclusive"]),
    "reuseport": ("reactor", ["--workers", "1"]),
}


def sleeps(pid):
    """Each thread's voluntary context switches so far, by thread name and
    id: the times it blocked (in epoll_wait), each ended by a wake-up, the
    kernel's count, including wake-ups after which epoll_wait slept again
    without returning."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = f.read()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # a thread that ended
        out[(name, tid)] = int(re.search(r"\nvoluntary_ctxt_switches:\s+(\d+)", st).group(1))
    return out


def loop_counts(conn):
    """The per-loop counters of /metrics, {name: [loop 0, loop 1, ...]},
    asked on a connection opened before the measure (no accept of its own)."""
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out = {}
    for name, loop, v in re.findall(r'^loop_(\w+)_total\{loop="(\d+)"\} (\d+)$', text, re.M):
        out.setdefault(name, {})[int(loop)] = int(v)
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def connects(port, n, gap):
    """n connections to port, one every gap seconds (0: back to back), from
    the load generator's CPUs; left open (the caller closes them)."""
    socks = []
    pace = time.perf_counter()
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        socks.append(s)
        pace += gap
        while time.perf_counter() < pace:
            pass  # a busy wait: time.sleep overshoots
    return socks


def measure(mode, n, gap):
    """One server of MODES[mode], n connects with gap: its per-thread
    accepted, listener wake-ups, wasted ones, and kernel wake-ups."""
    design, flags = MODES[mode]
    with L.server(design, "--threads", str(THREADS), *flags) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        m0 = loop_counts(conn)
        # The server says it listens before its threads run: wait until
        # each has named itself a loop in /metrics.
        deadline = time.monotonic() + 5
        while len(m0.get("connections_accepted", [])) < THREADS and time.monotonic() < deadline:
            time.sleep(0.05)
            m0 = loop_counts(conn)
        time.sleep(0.05)  # the scrape's thread back asleep: its sleep counted before
        z0 = sleeps(s.pid)
        socks = connects(s.port, n, gap)
        try:
            # Until every connection is accepted (each poll wakes one
            # thread once: a few in hundreds).
            deadline = time.monotonic() + 5
            while True:
                time.sleep(0.2)
                z1 = sleeps(s.pid)
                m1 = loop_counts(conn)
                if sum(m1["connections_accepted"]) - sum(m0["connections_accepted"]) >= n or \
                        time.monotonic() > deadline:
                    break
        finally:
            for k in socks:
                k.close()
            conn.close()
    d = {k: [b - a for a, b in zip(m0[k], m1[k])] for k in m1}
    woke = [z1[t] - z0.get(t, 0) for t in sorted(z1)]
    return {"accepted": d["connections_accepted"], "listener_wakeups": d["listener_wakeups"],
            "wasted": sum(d["listener_wakeups_wasted"]), "kernel_wakeups": sum(woke),
            "kernel_wakeups_by_thread": {t[0]: z1[t] - z0.get(t, 0) for t in sorted(z1)
                                         if t[0].startswith("workers-")}}


def run(lab):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < BURST + 256 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (BURST + 256, hard))
    mine = os.sched_getaffinity(0)
    if L.GCPU:
        os.sched_setaffinity(0, {int(c) for c in L.GCPU.split(",")})
    rounds = 1 if lab.quick else 3
    res = {}  # (mode, "burst" | "paced"): [one record per round]
    try:
        for _ in range(rounds):  # the modes alternate: a passing load hits all alike
            for mode in MODES:
                for kind, n, gap in (("burst", BURST, 0), ("paced", PACED, GAP)):
                    try:
                        res.setdefault((mode, kind), []).append(measure(mode, n, gap))
                    except (H.HarnessError, OSError, KeyError) as e:
                        lab.check(f"{mode} {kind}: the measure runs ({e})", False)
                        return
    finally:
        os.sched_setaffinity(0, mine)
    for mode, (design, flags) in MODES.items():
        lab.did(f"bin/server-{design} --threads {THREADS} {' '.join(flags)}: {BURST} connects back to back, "
                f"then on a new server {PACED} connects {GAP * 1000:g} ms apart, {rounds} round(s), modes "
                "alternating; per-loop counters from /metrics, each thread's voluntary context switches from "
                "/proc/PID/task/TID/status")

    def share(r):  # the busiest thread's share of the connections
        return max(r["accepted"]) / max(1, sum(r["accepted"]))

    def median(mode, kind, f):
        return statistics.median(f(r) for r in res[(mode, kind)])

    per_conn = {m: round(median(m, "paced", lambda r: r["kernel_wakeups"] / PACED), 2) for m in MODES}
    busiest = {f"{m} {k}": round(median(m, k, share), 2) for m in MODES for k in ("burst", "paced")}
    lab.fig(threads=THREADS, rounds=rounds,
            accepted_by_thread={f"{m} {k}": [r["accepted"] for r in res[(m, k)]] for m, k in res},
            listener_wakeups_by_thread={f"{m} {k}": [r["listener_wakeups"] for r in res[(m, k)]]
                                        for m, k in res},
            wasted_wakeups={f"{m} {k}": [r["wasted"] for r in res[(m, k)]] for m, k in res},
            kernel_wakeups={f"{m} {k}": [r["kernel_wakeups"] for r in res[(m, k)]] for m, k in res},
            kernel_wakeups_by_thread_paced={m: res[(m, "paced")][-1]["kernel_wakeups_by_thread"]
                                            for m in ("exclusive", "no-exclusive")},
            kernel_wakeups_per_paced_connect=per_conn, busiest_thread_share=busiest)

    lab.check(f"every connection is accepted once: the loops' counts add up to {BURST} (burst) and {PACED} "
              "(paced) in every run",
              all(sum(r["accepted"]) == (BURST if k == "burst" else PACED) for (m, k), rs in res.items()
                  for r in rs))
    fair = BURST / THREADS
    lab.check(f"SO_REUSEPORT hashes a burst evenly: every reactor loop takes 0.6 to 1.4 times its share "
              f"({fair:g}) in every round (the binomial spread is about {(BURST * 0.25 * 0.75) ** 0.5:.0f})",
              all(0.6 * fair <= a <= 1.4 * fair for r in res[("reuseport", "burst")] for a in r["accepted"]))
    lab.check("EPOLLEXCLUSIVE, connects one at a time: one thread takes more than half of them (the kernel wakes "
              "the first idle waiter in the socket's queue, the same thread each time)",
              busiest["exclusive paced"] > 0.5)
    lab.check("EPOLLEXCLUSIVE, a burst: the busiest thread takes a smaller share than one at a time (while it "
              "accepts, it is no longer waiting, and the kernel wakes the next)",
              busiest["exclusive burst"] < busiest["exclusive paced"])
    lab.check("EPOLLEXCLUSIVE: at most 1.5 kernel wake-ups per paced connect, median of the rounds (one thread "
              "woken per connection)", per_conn["exclusive"] <= 1.5, mark=1.5)
    lab.check(f"without it, the thundering herd: at least 2 kernel wake-ups per paced connect (every idle "
              f"thread wakes: {THREADS} in theory, fewer when a thread was not yet back asleep)",
              per_conn["no-exclusive"] >= 2, mark=2)
    herd = [(r["kernel_wakeups"] - sum(r["listener_wakeups"]), r["wasted"]) for r in res[("no-exclusive", "paced")]]
    lab.fig(herd_wakeups_unseen_vs_counted=herd)
    lab.check("the design's own count of wasted wake-ups (epoll_wait returns that accepted nothing) sees under "
              "a tenth of the herd: a woken epoll_wait finds the socket drained and sleeps again in the kernel, "
              "without returning",
              all(w < 0.1 * max(1, k) for k, w in herd))
    lab.bars(f"kernel wake-ups per connect, {THREADS} threads on one socket", "wake-ups per connect",
             {"EPOLLEXCLUSIVE": per_conn["exclusive"], "--no-exclusive": per_conn["no-exclusive"],
              "reactor (SO_REUSEPORT)": per_conn["reuseport"]})
