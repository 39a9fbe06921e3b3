"""Head-of-line blocking by CPU (docs/LAB.md, burn-hol)."""

import time

import harness as H
import lablib as L

NAME = "burn-hol"
TITLE = "A long BURN delays everyone on epoll, not on the reactor"
QUESTION = "What happens to PINGs while the server computes?"
NEEDS = ["server-epoll", "server-reactor"]


def pings_beside_burns(d, flags, lab):
    """PING for 2 s on bin/server-d while 2 clients BURN back to back."""
    with L.server(d, *flags) as s:
        target = f"tcp://127.0.0.1:{s.port}"
        with H.Background(["-t", "1", "-c", "2", "-d", "6s", "--timeout", "30s", "--mix", "BURN 100000000:1",
                           target], cpus=L.GCPU):
            time.sleep(0.3)
            r = L.loadgen(["-t", "1", "-c", "1", "-d", "2s", "--mix", "PING:1", target], s)
    lab.did(f"bin/server-{d} {' '.join(flags)}: 2 clients BURN 100000000 back to back; "
            "loadgen -c 1 PING for 2 s")
    return H.figures(r)


def run(lab):
    e = pings_beside_burns("epoll", [], lab)
    r = pings_beside_burns("reactor", ["--threads", "1", "--workers", "1"], lab)
    lab.fig(epoll_ping_p99_ms=(e["p99_us"] or 0) / 1000, reactor_ping_p99_ms=(r["p99_us"] or 0) / 1000,
            epoll_pings_per_s=e["rps"], reactor_pings_per_s=r["rps"])
    lab.check("on epoll a PING waits behind a BURN (p99 >= 20 ms)", (e["p99_us"] or 1e9) >= 20000, mark=20)
    lab.check("on the reactor PINGs stay fast (p99 < 10 ms) and are 10x more than on epoll",
              (r["p99_us"] or 1e9) < 10000 and (r["rps"] or 0) > 10 * max(e["rps"] or 0, 1), mark=10)
    lab.bars("PING p99 beside two long BURNs", "ms",
             {"epoll": (e["p99_us"] or 0) / 1000, "reactor": (r["p99_us"] or 0) / 1000})
