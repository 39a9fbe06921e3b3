"""Thread per connection and epoll under a 64 MB memory limit (docs/LAB.md,
mem-limit)."""

import harness as H
import lablib as L

NAME = "mem-limit"
TITLE = "A memory limit: thread per connection runs out, epoll does not"
QUESTION = "How many clients can each design hold in 64 MB?"
NEEDS = ["server-threads", "server-epoll", "world-link"]

LIMIT = "64M"
COUNTS = (1000, 2000, 3000)


def one(lab, w, client, design, n):
    """bin/server-DESIGN in a new host limited to LIMIT, n idle clients and
    10 busy ones: what became of it."""
    host = w.host(f"{design[0]}{n}", mem_limit=LIMIT)
    w.link(client, host, rtt="1ms")
    with L.HostServer(host, design) as srv:
        base = L.memory_usage(host)
        try:
            r = L.host_loadgen(client, ["-c", 10, "--idle", n, "--warmup", "1s", "-d", "2s", "--timeout", "5s",
                                        srv.url], srv)
            f, err = H.figures(r), None
        except H.HarnessError as e:
            f, err = {}, str(e)
        died = srv.exit_status()
    lab.did(f"bin/server-{design} in a host limited to {LIMIT}; in host client: loadgen -c 10 --idle {n} "
            "--warmup 1s -d 2s")
    peak = host.cg.memory_peak()
    # Of it, the kernel's (v1 counts it apart): a thread's kernel stack and
    # task, a socket's buffers.
    kmem = host.cg.dirs.get("memory")
    kmem = kmem and kmem / "memory.kmem.max_usage_in_bytes"
    kmem = int(kmem.read_text()) if kmem and kmem.exists() else None
    row = {"oom_kills": host.oom_kills(), "died": died, "rps": f.get("rps"), "errors": f.get("errors"),
           "success_rate": f.get("success_rate"), "peak_kb": peak and peak >> 10,
           "kb_per_client": peak and round((peak - base) / 1024 / (n + 10), 1),
           "kernel_kb_per_client": kmem and round(kmem / 1024 / (n + 10), 1), "loadgen_error": err}
    # Served: alive at the end, every request of the busy clients answered.
    row["held"] = died is None and not row["oom_kills"] and not err and (row["success_rate"] or 0) >= 0.99
    return row


def run(lab):
    rows = {}
    with L.world() as w:
        client = w.host("client")
        failed_at = None
        for n in COUNTS:
            rows[f"threads@{n}"] = t = one(lab, w, client, "threads", n)
            if not t["held"]:
                failed_at = n
                break
        top = failed_at or COUNTS[-1]
        for n in sorted({COUNTS[0], top}):
            rows[f"epoll@{n}"] = one(lab, w, client, "epoll", n)
    lab.fig(limit=LIMIT, runs=rows)
    t_failed = rows.get(f"threads@{failed_at}", {})
    how = ("killed by the memory limit (OOM)" if t_failed.get("oom_kills")
           else "refused or failed clients" if t_failed else "held")
    lab.fig(threads_failed_at=failed_at, threads_failure=how,
            threads_kb_per_client=rows[f"threads@{COUNTS[0]}"]["kb_per_client"],
            epoll_kb_per_client=rows[f"epoll@{COUNTS[0]}"]["kb_per_client"])
    lab.check(f"thread per connection fails within {LIMIT} by {COUNTS[-1]} clients "
              f"({how}{f' at {failed_at}' if failed_at else ''})", failed_at is not None)
    e = rows.get(f"epoll@{top}", {})
    lab.check(f"epoll holds the same {top} clients within {LIMIT}, all served, never killed "
              f"(peak {e.get('peak_kb')} KB)", e.get("held"))
    tk, ek = rows[f"threads@{COUNTS[0]}"]["kb_per_client"], rows[f"epoll@{COUNTS[0]}"]["kb_per_client"]
    lab.check(f"a client costs threads at least 5x the memory it costs epoll ({tk} KB against {ek} KB)",
              tk and ek and tk >= 5 * ek, mark=5 * ek if ek else None)
    lab.bars(f"memory (cgroup peak) per client, {COUNTS[0]} clients", "KB per client",
             {"threads": tk or 0, "epoll": ek or 0})
