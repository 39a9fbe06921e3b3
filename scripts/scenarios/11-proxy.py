"""Reverse proxies side by side (issue 14): GET straight to the upstream
(direct), through server-proxy with its upstream pool (proxy) and without it
(proxy-nopool: --upstream-keepalive 0, a new upstream connection per
request), through nginx and through HAProxy (scripts/anchors.py: one event
loop each, a pool of 64), all in front of one bin/server-epoll.

Every proxy is pinned to the same CPU, the first of the server CPUs, and
runs one loop (server-proxy --threads 1); the upstream runs on the other
server CPUs, or on loadgen's when there are none (a 2-core machine: then
the upstream and loadgen share a core, which may cap req/s for all of the
variants alike: such a run is marked loadgen-bound, its client's CPUs over
90% busy, and its req/s ranks what each proxy leaves to that core, not the
proxies). What a proxy leaves there is the clients' cost of its answers
and the upstream's sending: a proxy slower than the upstream takes that
sending onto its own core, in its own CPU per request, as its reads open
the upstream's window (at 1 MiB, the upstream's sockets were window-limited
42-91% of the time behind HAProxy, 1-2% behind server-proxy).
A part's servers are all up at once, each point runs through them in turn,
--repeat rounds (3, 1 with --quick) in alternating order, of --duration
(1.5 s, 1 s with --quick) after 0.2 s of warm-up, and keeps each one's
median run. Server CPU per request is the measured process's: the proxy's
alone, or the upstream's for direct.

A point is PART-BODY-SHAPE. BODY: GET / (`hello`, 13 bytes), or
/stream?n=N of 1 KiB, 64 KiB, 1 MiB (`1k`, `64k`, `1m`). SHAPE: 64
connections closed loop (`c64`) or 16 requests in flight on each (`pipe16`),
or open loop at one rate for all (`rate`, hello only, right after each
part's hello-c64): 0.6 of the lowest req/s server-proxy, nginx and HAProxy
had there (`target_rps`): a rate each of them holds, and which leaves
room on the core loadgen shares with the upstream (at 0.8, on loopback,
that core was full, and its queue made the p99s). Its p99 is the one that
compares latency: in a closed loop a faster proxy answers more requests a
second, and the cores it shares with loadgen, the upstream and the links
queue more of them; and latencies are measured from each intended send
(loadgen's -R), so a proxy that stalls is not excused by the requests it
held back. (q0.5, GET /, 4-6 alternating rounds: server-proxy's
closed-loop p99 3.2-3.7 ms against HAProxy's 2.6-3.8, at 36k req/s against
31-33k; open loop, at 16.7k 0.54 ms against 1.2 (nginx 1.9), at 25k 1.7
against 4.4, at 30k 2.9 against 30, HAProxy no longer holding that rate.)
PART:
  0ms   on loopback: every body, both shapes
  20ms  hosts (scripts/world.py) client, proxy and upstream: client to proxy
        over a link of 0 ms, proxy to upstream and client to upstream (direct)
        over links of 20 ms round trip: hello, 1k and 64k at c64, hello
        pipelined. Not 1m: 64 answers of 1 MiB at a time keep the link
        emulator busy (0.7 to 0.9 of a core), which then decides the figures,
        and a 1 s run may see no answer at all.
  q0.5  the same over links of 0 ms, the proxy host under a 0.5-CPU quota
        (periods of 100 ms). Each proxy's run says in how many periods the
        quota stopped it (`throttled_periods`): on 2 cores, few or none at
        c64, the emulators, the upstream and loadgen filling the machine
        before a proxy reaches its half core (the host at 0.42 of a core
        behind server-proxy, 0.43-0.44 behind HAProxy, for GET /): those
        points compare proxies that share their CPU with a link's emulator.
Every part also has hello-rate. --quick: hello only, 0ms at c64 and
pipelined, 20ms and q0.5 at c64: about 45 s. Without --quick, 19 points:
about 9 minutes with server-proxy built (3 rounds).

At 20 ms, c64 points sit at the links' ceiling (64 requests per round
trip), and what moved them between runs was where the emulator of the 0 ms
client link ran (bin/world-link, SCHED_FIFO, placed by the scheduler). On
the proxies' CPU, each answer a proxy writes wakes it at once, and a burst
of 64 answers took server-proxy 1.3 ms; the clients' next requests waited
for the burst's end and left together, keeping the clients in lockstep:
p50 21.5-22.4 ms against HAProxy's 20.4-20.7 (nginx was like ours). Since
server-proxy serves a new request within a burst (servers/proxy.c's
catch_up), 20.5-20.9 ms there, as HAProxy. Pinning every link off the
proxies' CPU raised each proxy's CPU per request on this VM, whose idle CPUs
halt (server-proxy's for GET /: 19-26 us against 9-15), so the links stay
where the scheduler puts them.

The world parts need root, network namespaces and TUN; without them, and
without bin/server-proxy, nginx or haproxy, the variants are results with
the reason. --loss and --rate apply to the links to the upstream; the
other world flags make the bench's own world, in which the loopback part
does not run (a result with the reason). --designs does not apply.
The rows of proxy and proxy-nopool add their req/s over the best anchor's
and their CPU per request over the best anchor's at the same point (the
issue's goals: at least 1 and at most 0.8), and their p99 over the best
anchor's (the goal: at most 1, at the rate points); CPU per request and
p99 are each the median of the variant's rounds. Their floor (`CPU
floor/best anchor`) is the variant's system CPU per request alone over the
best anchor's CPU per request: the CPU ratio it would read with no time in
user space. A request's kernel work (its system calls, TCP segments, and
the wake-ups of the processes it is sent to) is the same behind every
proxy, and on a 2-core VM with retpolines it is most of a small request's
cost: for GET /, 10-13 us of server-proxy's 11-15 against the best
anchor's 13-17 at c64, and 16-19 us of its 18-21 against 20-25 at the rate
points, where every proxy sleeps and is woken between requests. A floor
near 0.8 puts that goal beyond what user-space work can win.
summary.json's anchor_configs holds the exact configuration of every
anchor (and server-proxy's command line) by part.
"""

import contextlib
import statistics

import anchors
import harness as H
import world as W

NAME = "proxy"
ABOUT = "direct, server-proxy with and without its pool, nginx, HAProxy: RTT 0/20 ms, 0.5-CPU quota, bodies"
QUICK = True
TITLE = "proxy: reverse proxies on one CPU in front of server-epoll (point variant)"
COLUMNS = [
    ("req/s", "*", "rps"), ("CPU us/req", "*", "server_cpu_per_req_us"), ("p50 us", "*", "p50_us"),
    ("p99 us", "*", "p99_us"), ("errors", "*", "errors"),
    ("CPU/best anchor", "*", "cpu_to_best_anchor"), ("req/s / best anchor", "*", "rps_to_best_anchor"),
    ("p99/best anchor", "*", "p99_to_best_anchor"),
    ("link CPU", "*", "link_cpu"), ("quota stops", "*", "throttled_periods"),
    ("target req/s", "*", "target_rps"), ("CPU floor/best anchor", "*", "cpu_floor_to_best_anchor"),
]
BEST = (6, "min")  # the point where server-proxy's CPU per request is furthest below the anchors'
VARIANTS = ("direct", "proxy", "proxy-nopool", "nginx", "haproxy")
BODIES = {"hello": "/", "1k": "/stream?n=1024", "64k": "/stream?n=65536", "1m": "/stream?n=1048576"}
PIPELINE = 16
RATE_SHARE = 0.6  # the rate points' open-loop rate: this share of the slowest proxy's hello-c64 req/s
RTT_MS = 20
QUOTA = 0.5


def row(run):
    """A row per point and variant: a point's variants are side by side
    (a variant that ran nowhere: its name)."""
    return run["design"] if run["point"] == "-" else f"{run['point']} {run['design']}"


def parts(bench):
    """(name, link round trip in ms or None for loopback, proxy host's CPU
    quota, [(body, shape)]) of this run."""
    if bench.quick:
        return [("0ms", None, None, [("hello", "c64"), ("hello", "pipe16")]),
                (f"{RTT_MS}ms", RTT_MS, None, [("hello", "c64")]),
                (f"q{QUOTA}", 0, QUOTA, [("hello", "c64")])]
    every = [(body, shape) for shape in ("c64", "pipe16") for body in BODIES]
    linked = [(body, "c64") for body in ("hello", "1k", "64k")] + [("hello", "pipe16")]
    return [("0ms", None, None, every), (f"{RTT_MS}ms", RTT_MS, None, linked),
            (f"q{QUOTA}", 0, QUOTA, linked)]


def cpus(bench):
    """(every proxy's CPU, the upstream's CPUs); (None, None) on one CPU."""
    if not bench.scpu:
        return None, None
    first, *rest = bench.scpu.split(",")
    return first, ",".join(rest) or bench.gcpu


def run(bench, designs):
    variants = list(VARIANTS)
    if not (H.BIN / "server-proxy").exists():
        for v in ("proxy", "proxy-nopool"):
            bench.record(v, NAME, "-", reason="bin/server-proxy is not built: its variants are skipped")
            variants.remove(v)
    for kind in anchors.KINDS:
        if anchors.executable(kind) is None:
            bench.record(kind, NAME, "-", reason=f"{kind} is not installed (scripts/deps.sh bench)")
            variants.remove(kind)
    why_no_world = W.why_not()
    for part, rtt, quota, points in parts(bench):
        if rtt is None and bench.wants_world:
            why = "the loopback points run without the world flags (this scenario makes its own links)"
        elif rtt is not None and why_no_world:
            why = f"skipped: {why_no_world}"
        else:
            why = None
        if why:
            for v in variants:
                bench.record(v, NAME, part, reason=why)
            continue
        with contextlib.ExitStack() as stack:
            try:
                client, proxy_host, upstream_host = hosts(bench, part, rtt, quota)
            except W.WorldError as e:
                for v in variants:
                    bench.record(v, NAME, part, reason=f"no world: {e}")
                continue
            servers = start(bench, stack, part, variants, proxy_host, upstream_host)
            for body, shape in points:
                recs = side_by_side(bench, servers, f"{part}-{body}-{shape}", BODIES[body], shape, client,
                                    hgrm=(body, shape) == ("hello", "c64"))
                rate = equal_rate(recs) if (body, shape) == ("hello", "c64") else None
                if rate:
                    side_by_side(bench, servers, f"{part}-hello-rate", BODIES["hello"], "rate", client,
                                 hgrm=False, rate=rate)


def hosts(bench, part, rtt, quota):
    """(client, proxy, upstream) hosts of a part, joined by links; three
    Nones on loopback. Raises WorldError."""
    if rtt is None:
        return None, None, None
    proxy_cpu, upstream_cpus = cpus(bench)
    w = bench.make_world()
    tag = "px" + part.replace("ms", "").replace(".", "")
    client = w.host(tag + "c", cpus=bench.gcpu)
    proxy = w.host(tag + "p", cpus=proxy_cpu, cpu_quota=quota)
    upstream = w.host(tag + "u", cpus=upstream_cpus)
    wan = {"rtt": f"{rtt}ms", "loss": bench.link_settings["loss"], "rate": bench.link_settings["rate"]}
    bench.link(client, proxy, rtt="0ms")
    bench.link(proxy, upstream, **wan)
    bench.link(client, upstream, **wan)  # direct
    return client, proxy, upstream


def start(bench, stack, part, variants, proxy_host, upstream_host):
    """The upstream and a server per variant, stopped when the stack closes:
    variant -> server (direct: the upstream). One that does not start is a
    result with the reason."""
    proxy_cpu, upstream_cpus = cpus(bench)
    argv = [str(H.BIN / "server-epoll"), "--port", "0", "--header-timeout-ms", "10000"]
    if upstream_host:
        argv += ["--host", upstream_host.addr]
    try:
        upstream = stack.enter_context(H.Server(argv, cpus=upstream_cpus, log_dir=bench.tmp,
                                                host=upstream_host))
    except H.HarnessError as e:
        for v in variants:
            bench.record(v, NAME, part, reason=f"the upstream: {e}")
        return {}
    target = f"{upstream.addr}:{upstream.port}"
    servers = {}
    for v in variants:
        try:
            if v == "direct":
                srv = upstream
            elif v in ("proxy", "proxy-nopool"):
                argv = [str(H.BIN / "server-proxy"), "--port", "0", "--upstream", target, "--threads", "1",
                        "--header-timeout-ms", "10000"]
                argv += ["--upstream-keepalive", "0"] if v == "proxy-nopool" else []
                argv += ["--host", proxy_host.addr] if proxy_host else []
                srv = stack.enter_context(H.Server(argv, cpus=proxy_cpu, log_dir=bench.tmp, host=proxy_host))
                bench.configs[f"{v} {part}"] = " ".join(["server-proxy"] + argv[1:])
            else:
                srv = stack.enter_context(anchors.ReverseProxy(v, [target], cpus=proxy_cpu, host=proxy_host,
                                                               workdir=bench.tmp))
                bench.configs[f"{v} {part}"] = srv.config
        except H.HarnessError as e:
            bench.record(v, NAME, part, reason=str(e))
            continue
        servers[v] = srv
    return servers


def equal_rate(recs):
    """The open-loop rate of a part's rate point: RATE_SHARE of the lowest
    req/s of server-proxy, nginx and HAProxy at hello-c64 (their kept runs),
    a rate each of them holds; None when none of them ran."""
    rates = [recs[v]["figures"].get("rps") for v in ("proxy", *anchors.KINDS) if recs.get(v)]
    rates = [r for r in rates if r]
    return int(RATE_SHARE * min(rates)) if rates else None


def side_by_side(bench, servers, point, path, shape, client, hgrm, rate=None):
    """One point through every variant in alternating rounds, each one's
    median run kept; then server-proxy's figures over the anchors'. With a
    rate, open loop at that rate. Returns variant -> record (None: failed)."""
    extra = ["--warmup", "0.2s", "--timeout", "10s"]
    if shape == "pipe16":
        extra += ["--pipeline", str(PIPELINE)]
    if rate:
        extra += ["-R", str(rate)]
    args = bench.base(64, extra, dur=bench.tp_dur)

    def job(name):
        srv = servers[name]

        def go(rnd):
            h = bench.tmp / f"{NAME}-{name}-{point}-{rnd}.hgrm" if hgrm else None
            quota = srv.host.limits["cpu_quota"] if srv.host else None
            throttled = srv.host.throttled() if quota else None
            run = bench.loadgen(args + [bench.url(srv, path)], srv, budget=bench.tp_dur * 3 + 40, hgrm=h,
                                client=client)
            figures = {"target_rps": rate} if rate else {}
            if quota:  # did the quota bind at all?
                figures["throttled_periods"] = srv.host.throttled() - throttled
            if figures:
                run["scenario_figures"] = figures
            return run, h
        return go
    got = bench.alternate({name: job(name) for name in servers})
    recs = {name: bench.keep_median(name, NAME, point, tries) for name, tries in got.items()}
    to_anchors(recs)
    return recs


def to_anchors(recs):
    """server-proxy's req/s over the best anchor's (the higher), from the
    kept runs (each the median by req/s); its CPU per request and its p99
    over the best anchor's (the lower), each the median of its rounds': the
    kept run's CPU per request and p99 are one round's, which on a shared
    machine swing by half from round to round. And its floor: its system
    CPU per request alone (median of rounds) over the best anchor's CPU per
    request, what the CPU ratio would read if it spent nothing in user
    space."""
    kept = [recs[k]["figures"] for k in anchors.KINDS if recs.get(k)]
    rates = [f["rps"] for f in kept if f.get("rps")]
    costs = [c for c in (median_of_rounds(recs[k], "server_cpu_per_req_us") for k in anchors.KINDS
                         if recs.get(k)) if c]
    tails = [p for p in (median_p99(recs[k]) for k in anchors.KINDS if recs.get(k)) if p]
    for v in ("proxy", "proxy-nopool"):
        if not recs.get(v):
            continue
        f = recs[v]["figures"]
        if rates and f.get("rps"):
            f["rps_to_best_anchor"] = f["rps"] / max(rates)
        cost = median_of_rounds(recs[v], "server_cpu_per_req_us")
        if costs and cost:
            f["cpu_to_best_anchor"] = cost / min(costs)
        kernel = median_of_rounds(recs[v], "server_system_per_req_us")
        if costs and kernel is not None:
            f["cpu_floor_to_best_anchor"] = kernel / min(costs)
        mine = median_p99(recs[v])
        if tails and mine:
            f["p99_to_best_anchor"] = mine / min(tails)


def median_of_rounds(rec, figure):
    """The median of a record's rounds' values of figure (its own with one
    round)."""
    got = [x for x in (rec.get("rounds") or {}).get(figure) or [] if x]
    return statistics.median(got) if got else rec["figures"].get(figure)


def median_p99(rec):
    """The median of a record's rounds' p99s."""
    return median_of_rounds(rec, "p99_us")
