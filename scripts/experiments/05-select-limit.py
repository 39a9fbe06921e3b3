"""select cannot go past FD_SETSIZE (docs/LAB.md, select-limit)."""

import harness as H
import lablib as L

NAME = "select-limit"
TITLE = "select cannot go past FD_SETSIZE descriptors; poll and epoll can"
QUESTION = "How many connections can each multiplexer hold?"
NEEDS = ["server-select", "server-poll", "server-epoll"]


def run(lab, n=1500):
    held = {}
    for d in ("select", "poll", "epoll"):
        with L.server(d) as s:
            try:
                r = L.loadgen(["-t", "1", "-c", "2", "-d", "1s", "--idle", str(n), f"http://127.0.0.1:{s.port}/"], s)
                held[d] = ((r.get("scenarios") or {}).get("idle") or {}).get("open")
            except H.HarnessError as e:
                held[d] = None
                lab.fig(**{f"{d}_error": str(e)})
        lab.did(f"loadgen --idle {n} -c 2 against bin/server-{d}")
    lab.fig(**{f"{d}_idle_held": v for d, v in held.items()}, asked=n)
    lab.check("select holds fewer than 1024 connections (the rest are refused with 503)",
              held["select"] is not None and held["select"] < 1024, mark=1024)
    lab.check(f"poll and epoll hold all {n}", held["poll"] == n and held["epoll"] == n)
    lab.bars(f"idle connections held out of {n}", "connections", {d: held[d] or 0 for d in held})
