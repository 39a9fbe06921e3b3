"""A client asks for a large STREAM and does not read it (docs/LAB.md,
slow-reader)."""

import socket
import time

import lablib as L

NAME = "slow-reader"
TITLE = "A slow reader of a large STREAM blocks the iterative server, not epoll"
QUESTION = "Does a client that stops reading delay everyone else?"
NEEDS = ["server-iterative", "server-epoll"]


def run(lab, design="iterative", other="epoll"):
    res = {}
    for d in (design, other):
        with L.server(d) as s:
            hog = L.connect(s.port)
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hog.sendall(b"STREAM 1000000000\n")
            time.sleep(0.2)
            res[d] = L.ask(s.port, b"PING\n", timeout=2, expect=b"PONG")
            hog.close()
        lab.did(f"bin/server-{d}: client A sends STREAM 1000000000 and reads nothing; client B sends PING")
    lab.fig(**{f"{d}_ping_ms": L.ms(v) for d, v in res.items()},
            timeout_ms=2000)
    lab.check(f"on {design} the PING gets no answer within 2 s", res[design] is None)
    lab.check(f"on {other} the PING is answered at once (< 100 ms)", res[other] is not None and res[other] < 0.1,
              mark=100)
    lab.bars("PING latency beside a slow reader (2000 = no answer)", "ms",
             {d: L.ms(v) if v is not None else 2000 for d, v in res.items()})
