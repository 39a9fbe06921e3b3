"""The reactor with 1 and 2 loops, CPU-bound work (docs/LAB.md, cores)."""

import os

import harness as H
import lablib as L

NAME = "cores"
TITLE = "The reactor with 1 and 2 event loops"
QUESTION = "Does a second loop add throughput for CPU-bound requests?"
NEEDS = ["server-reactor"]


def run(lab):
    n = os.cpu_count() or 1
    res = {}
    for loops in (1, 2):
        with L.server("reactor", "--threads", str(loops), "--workers", "1", cpus=None) as s:
            r = L.loadgen(["-t", "1", "-c", "32", "-d", "3s", "--mix", "BURN 200000:1",
                           f"tcp://127.0.0.1:{s.port}"], s)
            res[loops] = H.figures(r)["rps"]
        lab.did(f"bin/server-reactor --threads {loops}: loadgen -c 32 --mix 'BURN 200000:1' -d 3s (BURNs below "
                "the offload size run on the loops)")
    ratio = res[2] / res[1] if res[1] else 0
    lab.fig(rps_1_loop=res[1], rps_2_loops=res[2], ratio=round(ratio, 2), cores=n)
    if n >= 2:
        lab.check("two loops do at least 1.3x the CPU-bound work of one on a 2-core machine", ratio >= 1.3,
                  mark=1.3 * res[1] if res[1] else None)
    else:
        lab.check("one core only: two loops cannot do more (ratio <= 1.2)", ratio <= 1.2,
                  mark=1.2 * res[1] if res[1] else None)
    lab.bars("BURN 200000 requests/s against event loops", "req/s", {"1 loop": res[1], "2 loops": res[2]})
