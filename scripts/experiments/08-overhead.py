"""Framework overhead: echo against the full epoll server (docs/LAB.md,
overhead)."""

import lablib as L

NAME = "overhead"
TITLE = "Framework overhead: echo against the full epoll server"
QUESTION = "What does parsing and routing cost per request, next to the kernel?"
NEEDS = ["server-echo", "server-epoll"]


def run(lab):
    # Requests with the dozen or so headers a browser sends: the full server
    # parses each line, echo only looks for the blank one. On a bare GET /
    # the difference is a few hundredths of a microsecond, below what the
    # user/system split from /proc (a sample at each clock tick) resolves in
    # a 3 s run: the check then came out either way.
    headers = [a for i in range(16) for a in ("-H", f"X-Lab-{i}: a value as long as a typical header's")]
    args = ["-t", "1", "-c", "64", "-d", "3s", *headers]
    shown = "-t 1 -c 64 -d 3s -H 'X-Lab-0: ...' (16 headers)"
    e = L.cpu_per_req("echo", [], lab, args, shown)
    f = L.cpu_per_req("epoll", [], lab, args, shown)
    lab.fig(echo_cpu_us_per_req=e["server_cpu_per_req_us"], epoll_cpu_us_per_req=f["server_cpu_per_req_us"],
            echo_user_us=e["server_user_per_req_us"], epoll_user_us=f["server_user_per_req_us"],
            echo_sys_us=e["server_system_per_req_us"], epoll_sys_us=f["server_system_per_req_us"],
            echo_rps=e["rps"], epoll_rps=f["rps"])
    eu, fu = e["server_user_per_req_us"] or 0, f["server_user_per_req_us"] or 0
    es, fs = e["server_system_per_req_us"] or 0, f["server_system_per_req_us"] or 0
    lab.check("the full server's user time per request exceeds echo's (parsing, routing, metrics)", fu > eu)
    lab.check("for both, the kernel (system time) is most of the cost per request", fs > fu and es > eu)
    lab.bars("server CPU per request (us)", "us", {"echo user": eu, "echo system": es,
                                                    "epoll user": fu, "epoll system": fs})
