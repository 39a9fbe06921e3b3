"""The incrementor scaled out (issue 15): web nodes (bin/incrementor
--queue) behind one Redis and one writer (--consume), one node against two,
each node limited to 0.4 CPU. Buffered mode, POST /increment over 10,000
keys, 64 connections in all (one loadgen per node, merged exactly by
`loadgen merge`), --flush-ms 100.

Where things run: the nodes are local hosts of scripts/world.py (cgroups
alone: a quota and a CPU, on loopback, since links would need an emulator
busier than the nodes), node i on the i-th CPU (two nodes on two cores:
one each), Redis (AOF, appendfsync always) and the writer in one more,
unlimited, and loadgen, both on any CPU. Pinned as other scenarios are
(the nodes and the store on the server CPUs, loadgen on its own), the
store took the nodes' core on two cores: two nodes got 0.42 to 0.57 of
their 0.8, and the scenario measured the store's share of that core
rather than the nodes. So the scheduler places the store and loadgen
wherever there is room, and `machine_busy` (the share of every CPU that
was busy over the run's window, from loadgen's /proc/stat sample) says
when there was none: near 1, the machine, not the nodes' quotas, was the
limit. loadgen-bound then means loadgen's own CPU alone (bench.unpinned).

Each round starts everything afresh (so the writer's lag histogram is the
run's), runs the load, reads the writer's lag, stops the nodes (they hand
over their last window), and reads the database until it holds the
acknowledged sums (H.exactness), for up to SETTLE_S while the writer
applies what Redis holds: what it holds then is the verdict. Rounds
alternate one and two nodes, --repeat of them; the median run of each is
kept. Figures: req/s, `to_one_node` (two nodes' req/s over one's, the
issue's goal at least 1.8), `node_cpu` (the nodes' CPU over the window, in
cores: at their quota when they are the limit), `lag_p99_ms` and
`max_lag_ms` (acknowledgement to commit, per increment, from the writer's
/stats: the goal keeps the p99 under the flush interval plus 50 ms),
`store_cpu`, `machine_busy`, `exact`.

What the lag includes: the window (up to --flush-ms), the node's Redis
script, then the writer's commit; and the quota's own stalls. The quota is
enforced over the kernel's (and Kubernetes') default periods of 100 ms, so
a node at its 0.4 runs 40 ms and then waits up to 60 ms, and a window
closing then waits to be handed over. Measured on two cores, one node's lag
p99 was 143 and 145 ms with 10 ms periods against 169 and 198 ms with 100
ms periods, alternating. The scenario keeps the default: it is how limits
run in production. The topology's `throttled` counts each host's stalls.

Needs root and cgroups (scripts/world.py), redis-server and an
incrementor with --queue; without them the points are results with the
reason."""

import contextlib
import json
import os
import shutil
import threading
import time

import agents
import harness as H
import world as W

NAME = "incrementor-nodes"
ABOUT = "incrementor web nodes (0.4 CPU each) behind Redis and one writer: one node against two, lag"
QUICK = False
TITLE = "incrementor-nodes: POST /increment through web nodes of 0.4 CPU, Redis and one writer"
COLUMNS = [
    ("req/s", "*", "rps"), ("to one node", "*", "to_one_node"), ("node CPU", "*", "node_cpu"),
    ("Redis+writer CPU", "*", "store_cpu"), ("machine busy", "*", "machine_busy"),
    ("p99 us", "*", "p99_us"), ("lag p99 ms", "*", "lag_p99_ms"), ("lag max ms", "*", "max_lag_ms"),
    ("exact", "*", "exact"),
]
BEST = (1, "max")
NODES = (1, 2)
QUOTA = 0.4
KEYS = 10000
FLUSH_MS = 100
CONNS = 64
SETTLE_S = 10.0  # the writer's time to apply what Redis holds after the load (it lags 1 s at worst)


def row(run):
    return run["design"]


def why_not():
    """Why this scenario cannot run here, or None."""
    exe = H.BIN / "incrementor"
    if not exe.exists():
        return "bin/incrementor is not built"
    if not shutil.which("redis-server"):
        return "skipped: no redis-server (scripts/deps.sh installs it)"
    why = W.why_not()
    if why:
        return f"skipped: {why}"
    return None


def run(bench, designs):
    why = why_not()
    if not why and bench.wants_world:
        why = "runs without the world flags (this scenario makes its own limits)"
    if why:
        for n in NODES:
            bench.record(design(n), NAME, "buffered", reason=why)
        return
    recs = {}
    with bench.unpinned():
        got = bench.alternate({design(n): (lambda rnd, n=n: (one_round(bench, n, rnd), None)) for n in NODES})
        for name, tries in got.items():
            # A round whose database lost or doubled an increment fails the
            # point (bench.keep_median).
            recs[name] = bench.keep_median(name, NAME, "buffered", tries)
    one, two = recs.get(design(1)), recs.get(design(2))
    if one and two and one["figures"].get("rps") and two["figures"].get("rps"):
        two["figures"]["to_one_node"] = two["figures"]["rps"] / one["figures"]["rps"]


def design(n):
    return f"{n} node" + ("s" if n > 1 else "")


def one_round(bench, nodes, rnd):
    """One run through `nodes` web nodes: the merged loadgen JSON with this
    scenario's figures under "scenario_figures" (keep_median records them).
    Raises HarnessError."""
    exe = str(H.BIN / "incrementor")
    work = bench.tmp / f"{NAME}-{nodes}-{rnd}"
    work.mkdir()
    db = work / "counters.db"
    with contextlib.ExitStack() as stack:
        w = bench.make_world()
        tag = f"in{nodes}r{rnd}"
        cpus = sorted(os.sched_getaffinity(0))
        store = w.host(tag + "s", local=True)
        hosts = [w.host(f"{tag}n{i}", cpus=str(cpus[i % len(cpus)]), cpu_quota=QUOTA, local=True)
                 for i in range(nodes)]
        rport = H.free_port()
        (work / "redis").mkdir()
        redis = H.AnchorServer([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1",
                                "--dir", str(work / "redis"), "--appendonly", "yes", "--appendfsync", "always",
                                "--save", "", "--daemonize", "no"], rport, None, host=store)
        stack.enter_context(redis)
        url = f"redis://127.0.0.1:{rport}"
        writer = stack.enter_context(H.Server([exe, "--consume", url, "--db", str(db), "--port", "0", "--threads", "1"],
                                              log_dir=work, host=store))
        webs = [stack.enter_context(H.Server([exe, "--queue", url, "--port", "0", "--threads", "1",
                                              "--ack", "buffered", "--flush-ms", str(FLUSH_MS)],
                                             log_dir=work, host=h)) for h in hosts]
        cpu0 = [h.cpu_seconds() for h in hosts + [store]]
        run = load(bench, webs, work)
        used = [h.cpu_seconds() - c for h, c in zip(hosts + [store], cpu0)]
        lag = stats(bench, writer).get("lag_ms") or {}
        for web in webs:  # each hands its last window to Redis
            web.stop()
        exact = settle(db, run)
        writer.stop()
    dur = run.get("duration_s")
    extra = {"mode": "buffered", "nodes": nodes, "node_cpu": sum(used[:-1]) / dur if dur else None,
             "store_cpu": used[-1] / dur if dur else None, "machine_busy": H.cpus_busy(run),
             "lag_p99_ms": lag.get("p99"),
             "max_lag_ms": lag.get("max")}
    extra.update(exact)
    run["scenario_figures"] = extra
    return run


def load(bench, webs, work):
    """A loadgen per node at once, CONNS connections split among them;
    their JSONs merged (exact: histograms added, sums of increments too)."""
    outs, errs = [None] * len(webs), [None] * len(webs)
    conns = CONNS // len(webs)

    def one(i):
        try:
            outs[i] = bench.loadgen(bench.base(conns, ["--increment", str(KEYS)]) + [bench.url(webs[i], "/increment")],
                                    webs[i], client=None)
        except H.HarnessError as e:
            errs[i] = e
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(webs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errs:
        if e:
            raise e
    if len(outs) == 1:
        return outs[0]
    files = [work / f"node{i}.json" for i in range(len(outs))]
    for f, o in zip(files, outs):
        f.write_text(json.dumps(o))
    run = agents.merge(files, work / "merged.json")
    # The nodes' CPU, summed (merge keeps no server figures: they are per process).
    run["server"] = {k: sum((o.get("server") or {}).get(k) or 0 for o in outs) for k in ("user_s", "system_s")}
    req = run.get("requests") or 0
    run["server"]["cpu_per_request_us"] = (run["server"]["user_s"] + run["server"]["system_s"]) * 1e6 / req \
        if req else None
    return run


def stats(bench, srv):
    try:
        return json.loads(bench.http_get(srv, "/stats"))
    except (OSError, ValueError):
        return {}


def settle(db, run):
    """The database against the acknowledged sums (H.exactness) once the
    writer has applied what Redis holds: read again until they match, or
    SETTLE_S has passed (then the last reading is the verdict)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        got = H.exactness(db, run)
        if got["exact"] or time.monotonic() >= deadline:
            return got
        time.sleep(0.2)
