"""1% packet loss and the tail (docs/LAB.md, loss)."""

import harness as H
import lablib as L

NAME = "loss"
TITLE = "1% packet loss puts requests at the retransmission timeout"
QUESTION = "What does 1% packet loss do to the latency of requests?"
NEEDS = ["server-epoll", "world-link"]

RTT_MS = 10
RTO_MS = 200  # Linux's minimum retransmission timeout (TCP_RTO_MIN)


def run(lab):
    res = {}
    with L.world() as w:
        client = w.host("client")
        L.favour(client)
        for loss in (None, "1%"):
            name = "lossy" if loss else "clean"
            server = w.host(name)
            L.favour(server)
            link = w.link(client, server, rtt=f"{RTT_MS}ms", loss=loss, seed=13)
            with L.HostServer(server, "epoll") as srv:
                r = L.host_loadgen(client, ["-c", 16, "--warmup", "0.5s", "-d", "4s", srv.url], srv)
            st = link.stats()
            f, h = H.figures(r), L.hist_counts(r)
            res[name] = {"loss": loss or "0%", "rps": f["rps"], "requests": f["requests"], "errors": f["errors"],
                         "p50_ms": f["p50_us"] / 1000, "p99_ms": f["p99_us"] / 1000, "max_ms": f["max_us"] / 1000,
                         "at_least_rto": sum(n for i, n in h.items() if L.bucket_low(i) >= RTO_MS * 1000),
                         "fraction_at_least_rto": round(L.fraction_at_least(h, RTO_MS * 1000), 5),
                         "packets_lost": st["ab"]["lost"] + st["ba"]["lost"],
                         "packets": st["ab"]["in"] + st["ba"]["in"]}
            lab.did(f"in host client: loadgen -c 16 --warmup 0.5s -d 4s http://{server.addr}:8080/ "
                    f"(bin/server-epoll in host {name}; link RTT {RTT_MS} ms, loss {loss or 0})")
    lab.fig(runs=res)
    lossy, clean = res["lossy"], res["clean"]
    lab.fig(pct_at_least_200ms_lossy=round(lossy["fraction_at_least_rto"] * 100, 2),
            pct_at_least_200ms_clean=round(clean["fraction_at_least_rto"] * 100, 2))
    lab.check(f"the link lost packets (about 1%: {lossy['packets_lost']} of {lossy['packets']})",
              0.005 <= lossy["packets_lost"] / max(lossy["packets"], 1) <= 0.02)
    # A request carries two data segments (the request, the answer), each
    # lost with p = 1%: about 2% of requests wait out a retransmission.
    lab.check(f"with 1% loss, at least 0.5% of requests take >= {RTO_MS} ms "
              f"({lossy['fraction_at_least_rto'] * 100:.2f}%)", lossy["fraction_at_least_rto"] >= 0.005, mark=0.5)
    lab.check(f"without loss, under 0.1% do ({clean['fraction_at_least_rto'] * 100:.2f}%)",
              clean["fraction_at_least_rto"] < 0.001, mark=0.1)
    lab.check(f"with 1% loss the p99 is at least {RTO_MS} ms ({lossy['p99_ms']:.0f} ms), "
              f"without it under {RTO_MS} ms ({clean['p99_ms']:.0f} ms)",
              lossy["p99_ms"] >= RTO_MS and clean["p99_ms"] < RTO_MS)
    lab.bars(f"requests taking >= {RTO_MS} ms, RTT {RTT_MS} ms", "% of requests",
             {"no loss": clean["fraction_at_least_rto"] * 100, "1% loss": lossy["fraction_at_least_rto"] * 100})
