"""The chat: what a broadcast across connections costs each design, and one
slow member in a room of 100 (docs/LAB.md, chat). With --quick, shorter runs."""

import socket
import time

import harness as H
import lablib as L

NAME = "chat"
TITLE = "The chat: broadcast across connections, by design"
QUESTION = ("What does delivering one MSG to one member cost the server in each design (shared state "
            "on one loop, locks and a wake-up per member for threads, an inbox and a switch per member "
            "for coroutines, a post per loop for the reactor), "
            "and does a member that stops reading hold up its room?")
NEEDS = ["server-select", "server-poll", "server-epoll", "server-threads", "server-coro",
         "server-reactor", "server-workers", "server-uring"]

# (label, design, flags): the multi-loop designs with two loops on the server's CPUs.
SERVERS = [("select", "select", []), ("poll", "poll", []), ("epoll", "epoll", []),
           ("threads", "threads", []), ("coro", "coro", []), ("reactor", "reactor", ["--threads", "2"]),
           ("workers", "workers", ["--threads", "2"]), ("uring", "uring", [])]
ROOMS, MEMBERS = 10, 10


def chat(s, rooms, members, secs, pad=0):
    r = L.loadgen(["--chat", f"{rooms}:{members}", "--chat-bytes", str(pad), "-d", secs,
                   f"tcp://127.0.0.1:{s.port}"], s, budget=60)
    return r.get("chat") or {}


def slow_member(port):
    """A member of room0 that never reads, with a small receive window and
    small segments (the server's send buffer is sized from the segment size:
    about 4 MB on loopback otherwise, all taken before its output grows)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.connect(("127.0.0.1", port))
    s.sendall(b"JOIN room0\n")
    return s


def drain(s, timeout=10.0):
    """Everything the server sends s until it closes (or timeout): the tail."""
    s.settimeout(1.0)
    tail, total, end = b"", 0, time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return tail, total, True
        total += len(chunk)
        tail = (tail + chunk)[-64:]
    return tail, total, False


def run(lab):
    secs = "1s" if lab.quick else "3s"
    rounds = 1 if lab.quick else 3
    per, cpu, csw, p99 = {}, {}, {}, {}
    # Fan-out cost: ROOMS rooms of MEMBERS, one SAY at a time per room; the
    # designs in turn, `rounds` times (a shared machine: the median is kept).
    runs = {label: [] for label, _d, _f in SERVERS}
    skipped = {}  # a design this machine cannot run (uring without io_uring): why
    for _ in range(rounds):
        for label, design, flags in SERVERS:
            if label in skipped:
                continue
            try:
                with L.server(design, *flags) as s:
                    runs[label].append(chat(s, ROOMS, MEMBERS, secs))
            except H.Unavailable as e:
                skipped[label] = str(e)
    if skipped:
        lab.fig(skipped=skipped)
    for label, design, flags in SERVERS:
        if label in skipped:
            continue
        lab.did(f"loadgen --chat {ROOMS}:{MEMBERS} -d {secs} against bin/server-{design} "
                f"{' '.join(flags)}, {rounds} round(s)".replace("  ", " "))
        rs = sorted(runs[label], key=lambda c: c.get("fanout_per_s") or 0)
        mid = rs[len(rs) // 2]
        per[label] = mid.get("fanout_per_s")
        cpu[label] = mid.get("server_cpu_us_per_delivery")
        csw[label] = mid.get("ctxsw_per_delivery")
        p99[label] = (mid.get("latency_us") or {}).get("p99")
    complete = all(c.get("deliveries") == c.get("rounds", 0) * MEMBERS and c.get("rounds", 0) > 0
                   and not c.get("timeouts") for rs in runs.values() for c in rs)
    lab.fig(rooms=ROOMS, members=MEMBERS, fanout_per_s=per, server_cpu_us_per_delivery=cpu,
            ctxsw_per_delivery=csw, delivery_p99_us=p99)
    lab.check("every SAY reaches every member of its room, the sender included, in every design",
              complete)
    ep, th = cpu.get("epoll"), cpu.get("threads")
    lab.check("a delivery costs the threads design more CPU than epoll's (a lock, an eventfd write "
              "and a wake-up of the member's thread each)",
              ep is not None and th is not None and th > 1.5 * ep)
    lab.check("threads make about a context switch per delivery (the member's thread wakes), "
              "epoll and coroutines almost none (a coroutine's wake-up is a switch in user space)",
              (csw.get("threads") or 0) > 0.3 and (csw.get("epoll") or 1) < 0.05
              and (csw.get("coro") or 1) < 0.05)
    lab.bars(f"server CPU per delivered MSG ({ROOMS} rooms of {MEMBERS})", "us",
             {k: cpu.get(k) or 0 for k, _d, _f in SERVERS if k not in skipped})

    # One slow member in a room of 100: 99 members from loadgen, one that
    # never reads. Lines of 1 KB, so that its unsent output passes the limit
    # (256 KiB, past what the kernel's buffers take) within the run. It is
    # cut ("ERR slow consumer") and the room goes on.
    slow = {}
    for label, design, flags in [("epoll", "epoll", []), ("coro", "coro", []),
                                 ("reactor", "reactor", ["--threads", "2"])]:
        with L.server(design, *flags) as s:
            base = chat(s, 1, 99, secs, 1000)
            m = slow_member(s.port)
            time.sleep(0.2)
            with_slow = chat(s, 1, 99, secs, 1000)
            tail, total, closed = drain(m)
            m.close()
        lab.did(f"loadgen --chat 1:99 --chat-bytes 1000 -d {secs} against bin/server-{design} {' '.join(flags)}, "
                "alone, then beside a 100th member that never reads".replace("  ", " "))
        slow[label] = {
            "p99_us_alone": (base.get("latency_us") or {}).get("p99"),
            "p99_us_beside_slow": (with_slow.get("latency_us") or {}).get("p99"),
            "fanout_per_s_alone": base.get("fanout_per_s"),
            "fanout_per_s_beside_slow": with_slow.get("fanout_per_s"),
            "timeouts_beside_slow": with_slow.get("timeouts"),
            "slow_member_read_bytes": total,
            "slow_member_cut": closed and tail.endswith(b"ERR slow consumer\n"),
        }
    lab.fig(slow_member=slow)
    lab.check("the member that never reads is cut with \"ERR slow consumer\" (then the connection "
              "ends), in epoll, coro and the reactor",
              all(v["slow_member_cut"] for v in slow.values()))
    lab.check("the room goes on: no round of the 99 others times out beside the slow member",
              all(v["timeouts_beside_slow"] == 0 and (v["fanout_per_s_beside_slow"] or 0) > 0
                  for v in slow.values()))
