"""A closed loop over a 20 ms round trip (docs/LAB.md, littles-law)."""

import harness as H
import lablib as L

NAME = "littles-law"
TITLE = "Little's law: connections / round trip caps a closed loop"
QUESTION = "How many requests a second can C connections make over a 20 ms round trip?"
NEEDS = ["server-epoll", "world-link"]

RTT_MS = 20


def run(lab):
    conns = (16, 64)
    res = {}
    with L.world() as w:
        client, server = w.host("client"), w.host("server")
        link = w.link(client, server, rtt=f"{RTT_MS}ms")
        for h in (client, server):
            L.favour(h)  # the round trip, not the machine's other jobs
        with L.HostServer(server, "epoll") as srv:
            for c in conns:
                # The warm-up opens the connections (a handshake is a round
                # trip too) before the measured 2 s.
                r = L.host_loadgen(client, ["-c", c, "--warmup", "0.5s", "-d", "2s", srv.url], srv)
                f = H.figures(r)
                res[c] = {"rps": f["rps"], "expected_rps": c * 1000 / RTT_MS,
                          "mean_ms": round(r["latency_us"]["mean"] / 1000, 3),
                          "p99_ms": (f["p99_us"] or 0) / 1000, "errors": f["errors"],
                          "server_cpu_per_req_us": f.get("server_cpu_per_req_us")}
                lab.did(f"in host client: loadgen -c {c} --warmup 0.5s -d 2s http://{server.addr}:8080/ "
                        f"(bin/server-epoll in host server; link RTT {RTT_MS} ms)")
        st = link.stats()
    lab.fig(runs={str(c): v for c, v in res.items()}, link_cpu_us_per_packet=st.get("cpu_us_per_packet"))
    for c in conns:
        got, want = res[c]["rps"] or 0, res[c]["expected_rps"]
        lab.fig(**{f"rps_{c}_conns": got, f"ratio_{c}_conns": round(got / want, 3)})
        # C / RTT is a ceiling: the round trip is the link's delay plus the
        # time the emulator, the kernel and both processes take (about 1 ms
        # here, 5% of 20 ms), which only ever adds.
        lab.check(f"{c} connections make at most C / RTT = {want:.0f} req/s, and at least 90% of it "
                  f"({got:.0f})", 0.9 * want <= got <= 1.01 * want and not res[c]["errors"],
                  mark=want)
        # The law itself: throughput = requests in flight / time each spends.
        law = c / (res[c]["mean_ms"] / 1000)
        lab.check(f"{c} connections: req/s = C / mean latency within 2% ({law:.0f})",
                  abs(got - law) <= 0.02 * law)
    lab.bars(f"closed-loop req/s over a {RTT_MS} ms round trip", "req/s",
             {f"{c} conns": res[c]["rps"] for c in conns} | {f"{c}/RTT": res[c]["expected_rps"] for c in conns})
