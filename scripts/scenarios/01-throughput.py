"""GET / closed loop against connections, measured side by side.

Every design's server, and nginx when the anchors scenario runs, is up at
once, idle but for the one measured; each point goes through all of them in
turn, --repeat rounds (3, or 1 with --quick) in alternating order, of 1.5 s
runs (--duration), and each keeps its median run. On a shared machine, a
design measured minutes after another can differ by a third for reasons not
its own. Its c64 figure is the rate scenario's reference.
"""

import contextlib

import harness as H

NAME = "throughput"
ABOUT = "GET / closed loop: req/s and latency against connections (and 16-deep pipelining)"
QUICK = True
TITLE = "throughput: GET / closed loop"
COLUMNS = [
    ("success rate c64", "c64", "success_rate"), ("req/s c1", "c1", "rps"), ("req/s c8", "c8", "rps"),
    ("req/s c64", "c64", "rps"), ("req/s c256", "c256", "rps"), ("req/s pipe16", "c64-pipe16", "rps"),
    ("p50 us c64", "c64", "p50_us"), ("p99 us c64", "c64", "p99_us"), ("p99.9 us c64", "c64", "p999_us"),
    ("usr us/req", "c64", "server_user_per_req_us"), ("sys us/req", "c64", "server_system_per_req_us"),
    ("ctxsw/req", "c64", "ctxsw_per_req"), ("peak RSS KB", "c64", "peak_rss_kb"),
]
BEST = (4, "max")


def points(bench):
    """(point, loadgen options) of a throughput run, without the target."""
    pts = [(f"c{c}", bench.base(c, dur=bench.tp_dur))
           for c in ([64] if bench.quick else [1, 8, 64, 256])]
    return pts + [("c64-pipe16", bench.base(64, ["--pipeline", "16"], dur=bench.tp_dur))]


def side_by_side(bench, designs, with_nginx):
    """The points on every design at once (see the head of this file).
    nginx's runs are the anchors scenario's."""
    with contextlib.ExitStack() as stack:
        servers = {}  # name -> (server, scenario)
        for d in designs:
            if not (H.BIN / f"server-{d}").exists():
                bench.record(d, NAME, "-", reason=f"bin/server-{d} is not built")
                continue
            try:
                srv = stack.enter_context(bench.server(bench.server_argv(d)))
                servers[d] = (srv, NAME)
            except H.HarnessError as e:
                bench.record(d, NAME, "-", reason=str(e))
        if with_nginx and bench.world:
            bench.record("nginx", "anchors", "-", reason="nginx runs on loopback only, not in a world")
            bench.nginx_done = True
        elif with_nginx:
            ngx = H.nginx_server(H.free_port(), bench.scpu, bench.tmp / "nginx")
            if ngx is None:
                bench.record("nginx", "anchors", "-", reason="nginx is not installed")
            else:
                try:
                    servers["nginx"] = (stack.enter_context(ngx), "anchors")
                except H.HarnessError as e:
                    bench.record("nginx", "anchors", "-", reason=str(e))
            bench.nginx_done = True

        def job(name, point, args):
            srv = servers[name][0]

            def run(rnd):
                h = bench.tmp / f"{name}-{point}-{rnd}.hgrm" if point == "c64" else None
                return bench.loadgen(args + [bench.url(srv)], srv, budget=bench.tp_dur * 3 + 40,
                                     hgrm=h), h
            return run
        for point, args in points(bench):
            got = bench.alternate({name: job(name, point, args) for name in servers})
            for name, tries in got.items():
                bench.keep_median(name, servers[name][1], point, tries)


def run(bench, designs):
    if bench.world:
        # The server host's limits are one cgroup's: designs up at once
        # would share them. One at a time there.
        for d in designs:
            side_by_side(bench, [d], with_nginx=False)
        return
    side_by_side(bench, designs, with_nginx="anchors" in bench.scenarios)
