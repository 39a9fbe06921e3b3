"""Thread per connection against epoll as clients grow (docs/LAB.md,
threads-scale). With --quick, 100 and 1000 clients only."""

import harness as H
import lablib as L

NAME = "threads-scale"
TITLE = "Thread per connection against epoll as clients grow"
QUESTION = "How do memory, threads and context switches grow with the number of clients?"
NEEDS = ["server-threads", "server-epoll"]


def run(lab):
    counts = [100, 1000] if lab.quick else [100, 1000, 5000]
    rows = {}
    for d in ("threads", "epoll"):
        for n in counts:
            with L.server(d) as s:
                base = s.rss_kb()
                try:
                    # The warm-up lets every connection be accepted first:
                    # with a thousand busy threads, the accepting thread
                    # gets a thousandth of the CPU (a lesson in itself).
                    r = L.loadgen(["-t", "1", "-c", str(n), "--warmup", "1s", "-d", "2s", "--timeout", "5s",
                                   "--mix", "BURN 1000:1",
                                   f"tcp://127.0.0.1:{s.port}"], s, budget=90)
                except H.HarnessError as e:
                    rows[(d, n)] = {"error": str(e)}
                    continue
                f = H.figures(r)
                rows[(d, n)] = {"rps": f["rps"], "p99_ms": (f["p99_us"] or 0) / 1000,
                                "rss_kb": (r.get("server") or {}).get("peak_rss_kb"), "rss_start_kb": base,
                                "threads": f.get("threads_max"), "ctxsw_per_req": f.get("ctxsw_per_req"),
                                "success_rate": f["success_rate"]}
            lab.did(f"loadgen -c {n} --warmup 1s -d 2s --mix 'BURN 1000:1' against bin/server-{d}")
    lab.fig(runs={f"{d}@{n}": v for (d, n), v in rows.items()})
    big, small = counts[-1], counts[0]
    t_big, t_small = rows.get(("threads", big), {}), rows.get(("threads", small), {})
    e_big = rows.get(("epoll", big), {})

    def per_client(r, clients):
        # Memory a client costs: growth over the idle server, per client
        # actually served (a thread per accepted connection for threads).
        if not r.get("rss_kb") or not r.get("rss_start_kb") or not clients:
            return None
        return (r["rss_kb"] - r["rss_start_kb"]) / clients

    t_kb = per_client(t_big, t_big.get("threads") and t_big["threads"] - 1)
    e_kb = per_client(e_big, big)
    lab.fig(threads_kb_per_client=t_kb, epoll_kb_per_client=e_kb,
            threads_seen_at_largest=t_big.get("threads"))
    lab.check("threads run one thread per client (at least 100 threads for 100 clients)",
              (t_small.get("threads") or 0) >= small)
    lab.check("a client costs the threads design more memory than epoll (a stack and a task each)",
              t_kb is not None and e_kb is not None and t_kb > 1.5 * e_kb)
    lab.check("threads pay more context switches per request than epoll at the largest count",
              (t_big.get("ctxsw_per_req") or 0) > (e_big.get("ctxsw_per_req") or 0))
    # Unusable: most clients never got a thread (they wait in the backlog,
    # unanswered), or the ones served wait too long or fail.
    unusable = [n for n in counts
                if (rows.get(("threads", n), {}).get("threads") or 0) < 0.9 * n
                or rows.get(("threads", n), {}).get("p99_ms", 0) > 100
                or rows.get(("threads", n), {}).get("success_rate", 1) < 0.99]
    lab.fig(threads_unusable_from=unusable[0] if unusable else None)
    lab.lines("server memory against clients", "clients", "peak RSS (KB)",
              {d: [(n, rows.get((d, n), {}).get("rss_kb")) for n in counts] for d in ("threads", "epoll")},
              logx=True)
