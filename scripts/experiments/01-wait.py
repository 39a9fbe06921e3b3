"""A WAIT on one connection, a PING on another (docs/LAB.md, wait)."""

import socket
import time

import lablib as L

NAME = "wait"
TITLE = "A WAIT paralyses the iterative server, not epoll"
QUESTION = "Does one client's WAIT delay another client's PING?"
NEEDS = ["server-iterative", "server-epoll"]


def run(lab, design="iterative", other="epoll"):
    res = {}
    for d in (design, other):
        with L.server(d) as s:
            hog = L.connect(s.port)
            hog.sendall(b"WAIT 1500\n")
            hog.shutdown(socket.SHUT_WR)  # nothing more: the server may close it after DONE
            time.sleep(0.1)
            res[d] = L.ask(s.port, b"PING\n", timeout=4, expect=b"PONG")
            hog.close()
        lab.did(f"bin/server-{d}: client A sends WAIT 1500, then client B sends PING")
    lab.fig(**{f"{d}_ping_ms": L.ms(v) for d, v in res.items()})
    lab.check(f"on {design} the PING waits for the WAIT (>= 1000 ms)", res[design] and res[design] >= 1.0,
              mark=1000)
    lab.check(f"on {other} the PING is answered at once (< 100 ms)", res[other] is not None and res[other] < 0.1,
              mark=100)
    lab.bars("PING latency while another client WAITs 1500 ms", "ms",
             {d: L.ms(v) if v is not None else 4000 for d, v in res.items()})
