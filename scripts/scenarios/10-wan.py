"""Every design over an emulated link of round trip 0, 1, 20 and 100 ms
(bin/world-link; RTT 0 is a link with no delay, so that the emulator's own
cost is in every point), open loop at one target rate, with the connections
Little's law says that rate needs: a connection carries at most one request
per round trip, so R requests/s at round trip T need R*T connections; 1.5
times that leaves room for the server's own time. The table shows which
designs hold the rate at 100 ms, and what each connection costs them in
memory and context switches.

Needs root, network namespaces and TUN (scripts/world.py): without them
every design is a result with the reason. --loss and --rate, when given,
apply to these links too; --cpu-quota and --mem-limit to the server hosts.
Not in --quick (about 3 s a point, 32 points: 2 minutes).
"""

import json
import math

import world as W

NAME = "wan"
ABOUT = "every design at RTT 0, 1, 20, 100 ms, open loop at 2,000 req/s, connections by Little's law"
QUICK = False
TARGET = 2000  # req/s: within every design's reach on loopback, not the emulator's limit
RTTS = [0, 1, 20, 100]  # ms
HEADROOM = 1.5
MIN_CONNS = 8  # RTT 0: the server's and the emulator's own time still needs a few
MAX_CONNS = 1000  # select's FD_SETSIZE (1024) less the listener and spares
DURATION = 1.5  # s a point (0.5 s of warm-up before it), unless --duration
TITLE = (f"wan: open loop at {TARGET:,} req/s over an emulated link; connections = "
         f"rate x RTT x {HEADROOM} (min {MIN_CONNS}, max {MAX_CONNS})")
COLUMNS = [("conns 100ms", "100ms", "connections")]
COLUMNS += [(f"req/s {r}ms", f"{r}ms", "rps") for r in RTTS]
COLUMNS += [(f"p99 us {r}ms", f"{r}ms", "p99_us") for r in RTTS]
COLUMNS += [(f"KB/conn {r}ms", f"{r}ms", "kb_per_conn") for r in (20, 100)]
COLUMNS += [("ctxsw/conn/s 100ms", "100ms", "ctxsw_per_conn_s"), ("holds 100ms", "100ms", "holds_rate"),
            ("link CPU 100ms", "100ms", "link_cpu")]
BEST = (1 + 1 + RTTS.index(100), "max")  # req/s at 100 ms


def connections(rtt_ms):
    return max(MIN_CONNS, min(MAX_CONNS, math.ceil(TARGET * rtt_ms / 1000 * HEADROOM)))


def run(bench, designs):
    why = W.why_not()
    if why:
        for design in designs:
            bench.record(design, NAME, "-", reason=f"skipped: {why}")
        return
    for rtt in RTTS:
        try:
            client = bench.host(f"wan{rtt}c")
            server = bench.host(f"wan{rtt}s", server=True)
            bench.link(client, server, rtt=f"{rtt}ms", loss=bench.link_settings["loss"],
                       rate=bench.link_settings["rate"])
        except W.WorldError as e:
            for design in designs:
                bench.record(design, NAME, f"{rtt}ms", reason=f"no world: {e}")
            continue
        conns = connections(rtt)
        for design in designs:
            bench.with_server(design, NAME, lambda srv: point(bench, design, rtt, conns, srv, client),
                              host=server)


def point(bench, design, rtt, conns, srv, client):
    before = srv.rss_kb()
    args = ["-t", str(min(bench.gen_threads, conns)), "-c", str(conns), "-R", str(TARGET),
            "-d", f"{DURATION if bench.args.duration is None else bench.dur}s", "--warmup", "0.5s",
            "--timeout", "5s", bench.url(srv)]
    extra = {"connections": conns, "target_rps": TARGET, "rtt_set_ms": rtt}
    rec = bench.measure(design, NAME, f"{rtt}ms", srv, args, budget=bench.dur * 3 + 60, extra=extra,
                        client=client)
    f = rec["figures"]  # link_cpu: bench.measure's, the emulator's share of a core
    if not rec["ok"] or not rec["file"]:
        return
    with open(bench.out / rec["file"]) as fh:
        run = json.load(fh)
    server = run.get("server") or {}
    dur = run.get("duration_s") or 0
    if server.get("peak_rss_kb") and before:
        f["kb_per_conn"] = (server["peak_rss_kb"] - before) / conns
    switches = (server.get("voluntary_ctxt_switches") or 0) + (server.get("nonvoluntary_ctxt_switches") or 0)
    if server and dur:
        f["ctxsw_per_conn_s"] = switches / conns / dur
    f["holds_rate"] = (f.get("rps") or 0) >= 0.95 * TARGET
