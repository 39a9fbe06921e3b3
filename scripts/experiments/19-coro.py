"""The threads design's code at epoll's memory: a coroutine per connection
(docs/LAB.md, coro). With --quick, 500 idle connections instead of 2000."""

import re

import harness as H
import lablib as L

NAME = "coro"
TITLE = "A coroutine per connection: the threads design's code at an event loop's cost"
QUESTION = ("What does an idle connection cost with a thread, a coroutine with a stack of its own, "
            "a coroutine on a shared stack and an epoll session; does a coroutine cost a kernel "
            "context switch per request?")
NEEDS = ["server-threads", "server-coro", "server-epoll"]

# (label, design, flags): the shared stack is the coro design's default.
SERVERS = [("threads", "threads", []), ("coro own stacks", "coro", ["--own-stacks"]),
           ("coro", "coro", []), ("epoll", "epoll", [])]


def serve_body(path):
    """The lines of code of serve() in a design's file, without comments."""
    text = (H.ROOT / path).read_text()
    m = re.search(r"\nstatic void serve\(.*?\n}\n", text, re.S)
    code = re.sub(r"/\*.*?\*/", "", m.group(0), flags=re.S) if m else ""
    return [line.rstrip() for line in code.splitlines() if line.strip()]


def run(lab):
    # The code: serve() of servers/coro.c is servers/threads.c's but for the
    # wait (comments aside), the chat's case included.
    t, c = serve_body("servers/threads.c"), serve_body("servers/coro.c")
    differ = [(a.strip(), b.strip()) for a, b in zip(t, c) if a != b]
    lab.did("serve() of servers/threads.c against serve() of servers/coro.c, line by line, comments aside")
    lab.fig(serve_lines=len(c), serve_lines_differing=[f"{a}  ->  {b}" for a, b in differ])
    lab.check("serve() is the threads design's line for line but for its wait "
              "(server_wait_one -> server_wait_coro)",
              len(t) == len(c) > 20 and len(differ) == 1
              and "server_wait_one" in differ[0][0] and "server_wait_coro" in differ[0][1])

    # Memory: idle connections (connected, nothing sent), RSS growth per connection.
    idle = 500 if lab.quick else 2000
    per_conn, ctxsw, cpu = {}, {}, {}
    for label, design, flags in SERVERS:
        with L.server(design, *flags) as s:
            before = s.rss_kb()
            r = L.loadgen(["-c", "1", "--idle", str(idle), "--warmup", "1s", "-d", "1s",
                           f"tcp://127.0.0.1:{s.port}"], s, budget=90)
            opened = ((r.get("scenarios") or {}).get("idle") or {}).get("open") or 0
            peak = (r.get("server") or {}).get("peak_rss_kb")
            if opened and peak and before:
                per_conn[label] = round((peak - before) * 1024 / opened)
            lab.did(f"loadgen -c 1 --idle {idle} against bin/server-{design} {' '.join(flags)}".strip())
        # A closed loop of 64 connections: kernel context switches per request.
        with L.server(design, *flags) as s:
            r = L.loadgen(["-c", "64", "--warmup", "500ms", "-d", "2s", f"http://127.0.0.1:{s.port}/"], s)
            f = H.figures(r)
            ctxsw[label] = f.get("ctxsw_per_req")
            cpu[label] = f.get("server_cpu_per_req_us")
            lab.did(f"loadgen -c 64 -d 2s GET / against bin/server-{design} {' '.join(flags)}".strip())
    lab.fig(idle_connections=idle, bytes_per_idle_conn=per_conn, ctxsw_per_req=ctxsw,
            server_cpu_per_req_us=cpu)
    co, own, th, ep = (per_conn.get(k) for k in ("coro", "coro own stacks", "threads", "epoll"))
    if co and ep:
        lab.fig(coro_over_epoll=round(co / ep, 2))
    if co and th:
        lab.fig(coro_over_threads=round(co / th, 3))

    lab.check("a coroutine with a stack of its own keeps at least a page (4 KiB) per idle connection",
              own is not None and own >= 4096, mark=4096)
    lab.check("on the shared stack an idle connection costs a quarter of a thread's or less",
              co is not None and th is not None and co * 4 <= th, mark=th / 4 if th else None)
    lab.check("on the shared stack an idle connection costs at most 2 times epoll's "
              "(the session, as epoll's, plus its frames and its record)",
              co is not None and ep is not None and co <= 2 * ep, mark=2 * ep if ep else None)
    lab.check("the coroutine design makes no kernel context switch per request "
              "(under 0.1, as epoll), where threads make several tenths",
              ctxsw.get("coro") is not None and ctxsw["coro"] < 0.1
              and (ctxsw.get("threads") or 0) > 5 * ctxsw["coro"])
    lab.bars(f"memory per idle connection ({idle} idle)", "bytes",
             {k: per_conn.get(k) or 0 for k, _d, _f in SERVERS})
