"""A slow sender: one byte every 200 ms (docs/LAB.md, slowloris)."""

import threading
import time

import lablib as L

NAME = "slowloris"
TITLE = "A slow sender blocks the iterative server unless the header timeout cuts it"
QUESTION = "What does a client that sends one byte at a time cost each design?"
NEEDS = ["server-iterative", "server-epoll"]


def run(lab, design="iterative", other="epoll"):
    req = b"GET /ping HTTP/1.1\r\nHost: lab\r\nX-Slow: " + b"x" * 200 + b"\r\n\r\n"
    res, cut = {}, {}
    for d, flags in ((design, ["--header-timeout-ms", "0"]), (other, ["--header-timeout-ms", "0"]),
                     (design + "+timeout", ["--header-timeout-ms", "1000"])):
        base = d.split("+")[0]
        with L.server(base, *flags) as s:
            slow = L.connect(s.port)
            slow.sendall(req[:1])
            t0 = time.monotonic()
            i = 1
            box = {}
            t = threading.Thread(target=lambda: box.setdefault("v", L.ask(s.port, b"PING\n", 3, b"PONG")))
            t.start()
            closed_at = None
            while t.is_alive() or (closed_at is None and time.monotonic() - t0 < 3):
                time.sleep(0.2)
                try:
                    slow.sendall(req[i:i + 1])
                    i += 1
                except OSError:
                    closed_at = closed_at or time.monotonic() - t0
                    if not t.is_alive():
                        break
            t.join()
            slow.close()
            res[d] = box.get("v")
            cut[d] = closed_at
        lab.did(f"bin/server-{base} {' '.join(flags)}: client A sends a request one byte per 200 ms; "
                "client B sends PING")
    lab.fig(**{f"{d}_ping_ms": L.ms(v) for d, v in res.items()},
            **{f"{d}_slow_client_cut_after_ms": L.ms(v) for d, v in cut.items()})
    lab.check(f"{design} with the header timeout off: the PING gets no answer within 3 s", res[design] is None)
    lab.check(f"{other}: the PING is answered at once (< 100 ms)", res[other] is not None and res[other] < 0.1,
              mark=100)
    t = design + "+timeout"
    lab.check(f"{design} with --header-timeout-ms 1000: the slow client is cut and the PING answered within ~1.5 s",
              res[t] is not None and res[t] < 1.6, mark=1600)
    lab.bars("PING latency beside a slowloris client (3000 = no answer)", "ms",
             {d: L.ms(v) if v is not None else 3000 for d, v in res.items()})
