"""Pipelined clients against a thread per connection and against epoll: the
scheduler's slices in the tail (docs/LAB.md, threads-tail). With --quick,
runs of 1 s instead of 2."""

import os
import threading
import time

import harness as H
import lablib as L

NAME = "threads-tail"
TITLE = "A thread per connection that never blocks: the scheduler's slices in the tail"
QUESTION = ("With 64 clients keeping 16 requests each in flight, why does the threads design answer "
            "most requests sooner than epoll and the slowest ones a hundred times later?")
NEEDS = ["server-threads", "server-epoll"]

PATH = "/stream?n=1024"  # 16 answers of 1 KiB: what the socket takes at once


def schedstat(pid):
    """{thread id: (ns on a CPU, ns waiting for one, slices)} of pid's
    threads now (/proc/PID/task/TID/schedstat); {} without schedstats."""
    got = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return got
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split()[:3])
        except (OSError, ValueError):
            continue  # the thread ended meanwhile, or no schedstats here
        got[tid] = (run, wait, slices)
    return got


def slices(a, b):
    """(us on a CPU per slice, us waiting for a CPU per slice) over the
    threads alive at both samples a and b; (None, None) without slices."""
    run = wait = n = 0
    for tid, (r1, w1, s1) in b.items():
        if tid in a:
            r0, w0, s0 = a[tid]
            run, wait, n = run + r1 - r0, wait + w1 - w0, n + s1 - s0
    return (round(run / n / 1000, 1), round(wait / n / 1000, 1)) if n else (None, None)


def measure(design, dur, lab):
    """loadgen's figures against design, and its threads' slices sampled
    in the middle of the run (the connection threads end with it)."""
    args = ["-t", "1", "-c", "64", "--pipeline", "16", "--warmup", "300ms", "-d", f"{dur}s"]
    with L.server(design) as s:
        out = {}

        def load():
            try:
                out["run"] = L.loadgen(args + [f"http://127.0.0.1:{s.port}{PATH}"], s)
            except H.HarnessError as e:
                out["error"] = str(e)

        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.3 + dur / 4)
        a = schedstat(s.pid)
        time.sleep(dur / 2)
        b = schedstat(s.pid)
        t.join()
    lab.did(f"loadgen {' '.join(args)} GET {PATH} against bin/server-{design}")
    if "run" not in out:
        return {"error": out.get("error")}
    f = H.figures(out["run"])
    run_us, wait_us = slices(a, b)
    return {"rps": f["rps"], "p50_us": f["p50_us"], "p99_us": f["p99_us"],
            "ctxsw_per_req": f.get("ctxsw_per_req"), "run_us_per_slice": run_us, "wait_us_per_slice": wait_us}


def run(lab):
    dur = 1 if lab.quick else 2
    t, e = measure("threads", dur, lab), measure("epoll", dur, lab)
    lab.fig(threads=t, epoll=e)
    p50, p99 = (t.get("p50_us"), e.get("p50_us")), (t.get("p99_us"), e.get("p99_us"))
    lab.check("threads answer the median request sooner than epoll", None not in p50 and p50[0] < p50[1])
    lab.check("threads' p99 is over 5x epoll's", None not in p99 and p99[0] > 5 * p99[1],
              mark=L.ms(5 * (p99[1] or 0) / 1e6))
    lab.check("a connection's thread waits for the CPU over 10x longer than it runs, slice by slice",
              bool(t.get("run_us_per_slice") and t.get("wait_us_per_slice"))
              and t["wait_us_per_slice"] > 10 * t["run_us_per_slice"])
    lab.bars("64 clients x 16 pipelined 1 KiB answers: p99 (ms)", "p99 (ms)",
             {"threads": L.ms((p99[0] or 0) / 1e6), "epoll": L.ms((p99[1] or 0) / 1e6)})
