"""A proxy 20 ms from its upstream, with and without its keep-alive pool
(docs/LAB.md, proxy-keepalive).

Host `edge` runs bin/server-proxy and the load generator next to it (the
client's hop is local: no delay); host `origin` runs bin/server-epoll, 20 ms
of round trip away. The same closed loop runs through the proxy with its
pool (the default) and with `--upstream-keepalive 0` (a new upstream
connection per request, "Connection: close"). The proxy's /metrics, scraped
before and after each loadgen run (warm-up included), counts the upstream
connections it opened and reused and the answers it forwarded.

The thresholds, and why they are floors rather than tendencies: the link
delivers no packet before its delay, so a request that reuses a connection
takes at least one round trip (the request out, the answer back), and one
that opens a connection at least two (SYN and SYN-ACK first; the request
then leaves with the handshake's last ACK). Without the pool the median
request must therefore take >= 2 x RTT. With it, the median must take
>= 1 x RTT and < 1.5 x RTT: a handshake would add a whole round trip, so a
median under 1.5 x RTT has none, and the half round trip of margin is for
the machine (the proxy's and the server's work is tens of microseconds).
"""

import harness as H
import lablib as L

NAME = "proxy-keepalive"
TITLE = "A proxy's keep-alive pool saves a round trip per request across a WAN"
QUESTION = "What does a new upstream connection per request cost when the upstream is 20 ms away?"
NEEDS = ["server-epoll", "server-proxy", "world-link"]

RTT_MS = 20
CONNS = 8  # the client's connections: at most 8 requests to the upstream at once
RUNS = {"pool": [], "no_pool": ["--upstream-keepalive", "0"]}


def run(lab):
    if not (H.BIN / "server-proxy").exists():
        raise L.Skip(f"{H.BIN}/server-proxy is not built (servers/proxy.c, issue 14; make)")
    res = {}
    with L.world() as w:
        edge, origin = w.host("edge"), w.host("origin")
        for h in (edge, origin):
            L.favour(h)  # the round trips, not the machine's other jobs
        link = w.link(edge, origin, rtt=f"{RTT_MS}ms")
        with L.HostServer(origin, "epoll") as up:
            upstream = f"{origin.addr}:{up.port}"
            for name, flags in RUNS.items():
                # One event loop: its pool is the one pool to the upstream.
                proxy_flags = ["--upstream", upstream, "--threads", "1", *flags]
                with L.HostServer(edge, "proxy", *proxy_flags) as px:
                    r = L.host_loadgen(edge, ["-c", CONNS, "--warmup", "0.5s", "-d", "3s",
                                              "--metrics", f"{px.url}metrics", px.url], px)
                f, c = H.figures(r), L.upstream_counts(r).get(upstream, {})
                res[name] = {"rps": f["rps"], "requests": f["requests"], "errors": f["errors"],
                             "p50_ms": f["p50_us"] / 1000, "p99_ms": f["p99_us"] / 1000,
                             "mean_ms": round(r["latency_us"]["mean"] / 1000, 3),
                             "proxy_cpu_per_req_us": f.get("server_cpu_per_req_us"),
                             "forwarded": c.get("responses", 0), "opened": c.get("opened", 0),
                             "reused": c.get("reused", 0), "failed": c.get("failed", 0)}
                lab.did(f"in host edge: loadgen -c {CONNS} --warmup 0.5s -d 3s --metrics {px.url}metrics {px.url} "
                        f"(bin/server-proxy {' '.join(proxy_flags)} in host edge; bin/server-epoll in host "
                        f"origin; link RTT {RTT_MS} ms)")
        st = link.stats()
    pool, nopool = res["pool"], res["no_pool"]
    lab.fig(runs=res, link_cpu_us_per_packet=st.get("cpu_us_per_packet"),
            p50_ms_pool=pool["p50_ms"], p50_ms_no_pool=nopool["p50_ms"],
            saved_ms_per_request=round(nopool["p50_ms"] - pool["p50_ms"], 1),
            opened_pool=pool["opened"], opened_no_pool=nopool["opened"])
    lab.check("every request was answered, with and without the pool "
              f"({pool['errors']} and {nopool['errors']} errors)",
              pool["requests"] and nopool["requests"] and not pool["errors"] and not nopool["errors"])
    lab.check(f"without the pool the median request takes at least 2 x RTT = {2 * RTT_MS} ms "
              f"({nopool['p50_ms']:.1f} ms)", nopool["p50_ms"] >= 2 * RTT_MS, mark=2 * RTT_MS)
    lab.check(f"with the pool it takes about 1 x RTT: at least {RTT_MS} ms and under 1.5 x RTT = "
              f"{1.5 * RTT_MS:.0f} ms ({pool['p50_ms']:.1f} ms)", RTT_MS <= pool["p50_ms"] < 1.5 * RTT_MS,
              mark=1.5 * RTT_MS)
    lab.check(f"without the pool the proxy opened an upstream connection for every answer it forwarded "
              f"({nopool['opened']} for {nopool['forwarded']}, {nopool['reused']} reused)",
              nopool["forwarded"] and nopool["opened"] >= nopool["forwarded"] and not nopool["reused"])
    # At most CONNS requests are at the upstream at once: the pool needs no
    # more connections than that, whatever the number of requests.
    lab.check(f"with the pool it opened at most {CONNS} (one per request in flight) and reused them for "
              f"the rest ({pool['opened']} opened, {pool['reused']} reused, {pool['forwarded']} forwarded)",
              pool["forwarded"] and pool["opened"] <= CONNS and pool["opened"] + pool["reused"] >= pool["forwarded"])
    lab.bars(f"median latency through the proxy, upstream RTT {RTT_MS} ms", "p50 ms",
             {"pool": pool["p50_ms"], "no pool": nopool["p50_ms"], "RTT": RTT_MS, "2 x RTT": 2 * RTT_MS})
