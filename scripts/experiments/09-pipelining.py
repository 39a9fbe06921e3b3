"""Answering a pipelined batch with one write, against one per response
(docs/LAB.md, pipelining)."""

import lablib as L

NAME = "pipelining"
TITLE = "One write per pipelined batch against one per answer"
QUESTION = "What does batching the answers of a pipelined batch save?"
NEEDS = ["server-epoll"]


def run(lab):
    args = ["-t", "1", "-c", "16", "-d", "3s", "--pipeline", "16"]
    a = L.cpu_per_req("epoll", [], lab, args)
    b = L.cpu_per_req("epoll", ["--write-each"], lab, args)
    lab.fig(batched_rps=a["rps"], write_each_rps=b["rps"], batched_cpu_us=a["server_cpu_per_req_us"],
            write_each_cpu_us=b["server_cpu_per_req_us"],
            ratio=round((a["rps"] or 0) / max(b["rps"] or 1, 1), 2))
    lab.check("one write per batch serves at least 1.5x the requests of one write per answer",
              (a["rps"] or 0) >= 1.5 * (b["rps"] or 0), mark=1.5 * (b["rps"] or 0))
    lab.bars("16-deep pipelining: req/s", "req/s", {"one write per batch": a["rps"],
                                                    "one write per answer": b["rps"]})
