"""scripts/world.py and bin/world-link end to end: the round trip, the
bandwidth and the loss of emulated links, and the TUN devices' queue and its
drops; the CPU quota and the memory limit of hosts; nothing left behind, also
after the runner is SIGKILLed; bad flags.
Run by scripts/test (python3 -m unittest). Skipped, with the reason, where
the machine has no network namespaces or TUN, or we are not root.

The machine is shared (2 cores, other jobs): the emulator runs on CPU 1, and
each figure is a median or an average over seconds. The round trip is judged
above the floor a link with no delay shows (the probes are Python: about
0.2 ms of theirs and of the kernel's each way)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import world as W  # noqa: E402

BIN = Path(os.environ.get("BIN", ROOT / "bin"))
LINK = BIN / "world-link"
PROBE = ["python3", str(ROOT / "scripts" / "world.py")]
WHY = W.why_not() if LINK.exists() else f"{LINK} is not built"
LINK_CPU = 1 if os.cpu_count() and os.cpu_count() > 1 else None


class BadFlags(unittest.TestCase):
    @unittest.skipUnless(LINK.exists(), f"{LINK} is not built")
    def test_bad_values_are_one_line_and_exit_2(self):
        ends = ["--a", "-:x", "--b", "-:y"]
        for args in (["--delay", "-1ms"], ["--loss", "101%"], ["--loss", "1.5"],
                     ["--rate", "10mbps"], ["--rate", "10"], ["--jitter", "5parsecs"],
                     ["--jitter-dist", "pareto"], ["--queue", "-3"], ["--delay", "1ms/2ms/3ms"],
                     ["--a", "nocolon"], ["--nope"]):
            r = subprocess.run([str(LINK), *ends, *args], capture_output=True, text=True,
                               timeout=5)
            self.assertEqual(r.returncode, 2, args)
            self.assertEqual(len(r.stderr.splitlines()), 1, (args, r.stderr))
            self.assertTrue(r.stderr.startswith("world-link: "), r.stderr)
        r = subprocess.run([str(LINK), "--delay", "1ms"], capture_output=True, text=True)
        self.assertEqual((r.returncode, len(r.stderr.splitlines())), (2, 1))

    def test_python_side_refuses_bad_values(self):
        for bad in ("-1ms", "10 parsecs", -1):
            with self.assertRaises(W.WorldError):
                W.parse_duration_ms(bad)
        with self.assertRaises(W.WorldError):
            W.parse_size("64Q")
        self.assertEqual(W.parse_size("64M"), 64 << 20)


@unittest.skipIf(WHY, WHY)
class Links(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.w = W.World(link_cpu=LINK_CPU)
        cls.pairs = 0

    @classmethod
    def tearDownClass(cls):
        cls.w.close()

    def pair(self, **link):
        """Two new hosts joined by a link with these settings."""
        n = type(self).pairs = type(self).pairs + 1
        a, b = self.w.host(f"c{n}"), self.w.host(f"s{n}")
        return a, b, self.w.link(a, b, **link)

    def rtt_ms(self, a, b, n, port=9000):
        """The samples (ms) of n round trips from a to b, sorted."""
        echo = b.popen([*PROBE, "udp-echo", port], stdout=subprocess.PIPE, text=True)
        self.assertEqual(echo.stdout.readline().strip(), "listening")
        r = a.run([*PROBE, "rtt", b.addr, port, n], timeout=60)
        echo.kill()
        echo.wait()
        echo.stdout.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        return sorted(json.loads(r.stdout)["samples_ms"])

    def test_round_trip(self):
        # Two measures. The link's own: how late the emulator let each packet
        # leave against its due time (its stats), which the machine's other
        # jobs barely move. End to end: the median round trip of a probe
        # over the link less the median over a link with no delay (the
        # floor: the probes' own time), measured again before each try since
        # the machine's load moves it. On this shared VM a CPU idle for a
        # millisecond wakes later than one idle for 0.3 ms, so the floor's
        # own spread (its interquartile range) is allowed on top of the
        # 5% or 100 us the emulator promises.
        a0, b0, _ = self.pair(rtt="0ms")
        seen = {}
        for rtt, n in ((1, 30), (20, 20), (200, 6)):
            a, b, lk = self.pair(rtt=f"{rtt}ms")
            # Up to 3 tries: a run the shared machine delayed is tried again
            # (the link's delay is not what varies: it is never early).
            for _ in range(3):
                s = self.rtt_ms(a0, b0, 40)
                floor, spread = s[len(s) // 2], s[3 * len(s) // 4] - s[len(s) // 4]
                s = self.rtt_ms(a, b, n)
                got = s[len(s) // 2]
                seen.setdefault(rtt, []).append(round(got, 3))
                self.assertGreaterEqual(s[0], rtt * 0.99, seen)
                if abs(got - floor - rtt) <= max(0.05 * rtt, 0.1) + spread:
                    break
            else:
                self.fail(f"set {rtt} ms, medians {seen[rtt]} ms, floor {floor:.3f} ms "
                          f"(spread {spread:.3f} ms)")
            st = lk.stats()
            # Half the round trip's allowance each way.
            for d in ("ab", "ba"):
                self.assertLessEqual(st[d]["late_p50_us"], max(50, rtt * 25), (rtt, st))
        print(f"\nround trip (floor {floor:.3f} ms): {seen}; departures late by "
              f"p50 {st['ab']['late_p50_us']} us, p99 {st['ab']['late_p99_us']} us",
              file=sys.stderr)

    def bulk_mbit(self, a, b, lk):
        """One TCP connection from a to b for 2.5 s: the rate the link carried
        after the first 0.5 s, in Mbit/s of IP packets; the emulator's stats."""
        sink = b.popen([*PROBE, "sink", 5001, 2.5], stdout=subprocess.PIPE, text=True)
        self.assertEqual(sink.stdout.readline().strip(), "listening")
        send = a.popen([*PROBE, "send", b.addr, 5001, 4])
        out = json.loads(sink.stdout.readline())
        sink.wait()
        sink.stdout.close()
        send.kill()
        send.wait()
        # The link counts IP packets: 52 bytes of IP and TCP headers
        # (timestamps on) ride with each MSS of data.
        return out["bytes"] * (out["mss"] + 52) / out["mss"] * 8 / out["seconds"] / 1e6

    def test_bandwidth(self):
        for rate in (10, 100):
            a, b, lk = self.pair(rtt="2ms", rate=f"{rate}mbit")
            # The link never exceeds its rate, and on a quiet machine it
            # carries it within 5% (100.0 of 100 here). Python endpoints
            # starved by a neighbour fall short: CI's sanitizer pass once saw
            # 91-94 of 100 in three tries. So up to 4 tries stop at the first
            # within 5%; failing that the best must still reach 85%, which a
            # missing, doubled or halved rate does not (its arithmetic is
            # exact in tests/unit/test_world_link.c).
            seen = []
            for _ in range(4):
                seen.append(round(self.bulk_mbit(a, b, lk), 2))
                self.assertLess(seen[-1], rate * 1.05, seen)
                if abs(seen[-1] - rate) / rate < 0.05:
                    break
            else:
                self.assertGreater(max(seen), rate * 0.85, f"{rate} mbit: measured {seen}")
                print(f"\n{rate} Mbit/s: short in every try {seen}: a starved machine",
                      file=sys.stderr)
            st = lk.stats()
            print(f"\n{rate} Mbit/s: {seen} measured, emulator "
                  f"{st['cpu_us_per_packet']:.1f} us CPU a packet", file=sys.stderr)

    def test_loss(self):
        a, b, lk = self.pair(loss="10%", seed=7)
        count = b.popen([*PROBE, "udp-count", 9100, 1.0], stdout=subprocess.PIPE, text=True)
        self.assertEqual(count.stdout.readline().strip(), "listening")
        r = a.run([*PROBE, "udp-send", b.addr, 9100, 2000], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(count.stdout.readline())["received"]
        count.wait()
        count.stdout.close()
        st = lk.stats()["ab"]
        self.assertEqual(st["in"], 2000)  # nothing else crossed, nothing lost before
        self.assertEqual(got, st["out"])
        # Binomial(2000, 0.9): mean 1800, standard deviation 13.4; 4 of them.
        self.assertLess(abs(got - 1800), 4 * 13.42, got)

    def test_tun_queue_and_its_drops(self):
        # A TUN device holds W.TUN_QUEUE packets for the emulator; what
        # overflows it is loss nobody set, and stats() must show it. With the
        # emulator stopped, n > TUN_QUEUE datagrams: exactly TUN_QUEUE wait,
        # the rest are counted as tun_drop, and the waiting ones cross once
        # it goes on.
        a, b, lk = self.pair()
        n = W.TUN_QUEUE + 500
        # The receiver only keeps b from answering "port unreachable"; it
        # may overflow its own socket, so what it got is not checked.
        count = b.popen([*PROBE, "udp-count", 9100, 30.0], stdout=subprocess.PIPE, text=True)
        self.addCleanup(count.stdout.close)
        self.addCleanup(count.wait)
        self.addCleanup(count.kill)
        self.assertEqual(count.stdout.readline().strip(), "listening")
        lk.proc.send_signal(signal.SIGSTOP)
        try:
            r = a.run([*PROBE, "udp-send", b.addr, 9100, n, n, 0], timeout=30)
        finally:
            lk.proc.send_signal(signal.SIGCONT)
        self.assertEqual(r.returncode, 0, r.stderr)
        deadline = time.monotonic() + 10  # the emulator drains what waited
        while (st := lk.stats())["ab"]["out"] < W.TUN_QUEUE and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(st["ab"]["tun_drop"], 500)
        self.assertEqual(st["ab"]["in"], W.TUN_QUEUE)
        self.assertEqual(st["ab"]["out"], W.TUN_QUEUE)
        self.assertEqual(st["ba"]["tun_drop"], 0)


@unittest.skipIf(WHY, WHY)
class Limits(unittest.TestCase):
    def test_cpu_quota(self):
        with W.World() as w:
            h = w.host("busy", cpu_quota=0.5)
            c0, t0 = h.cpu_seconds(), time.monotonic()
            r = h.run(["python3", "-c",
                       "import time\ne=time.monotonic()+2\nwhile time.monotonic()<e: pass"],
                      timeout=20)
            used = (h.cpu_seconds() - c0) / (time.monotonic() - t0)
            self.assertEqual(r.returncode, 0, r.stderr)
            # At most the quota (and a period's rounding), and the quota is
            # what held it: throttled periods. How much below 0.5 it stays
            # depends on the shared machine's other jobs (0.3 under make
            # test's nice 5 and a busy neighbour), so there is no floor.
            self.assertLess(used, 0.55, used)
            self.assertGreater(h.throttled(), 0, used)
            print(f"\nquota 0.5: {used:.3f} CPU, {h.throttled()} periods throttled",
                  file=sys.stderr)

    def test_local_host_is_limits_on_loopback(self):
        # A local host: the quota holds, its processes reach loopback (the
        # runner's network: a server here answers them), it takes no link,
        # and closing removes its cgroups.
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            with W.World() as w:
                h = w.host("node", cpu_quota=0.3, local=True)
                self.assertEqual(h.addr, "127.0.0.1")
                self.assertIsNone(h.ns)
                with self.assertRaises(W.WorldError):
                    w.link(h, w.host("far"))
                run_id = w.run_id
                c0, t0 = h.cpu_seconds(), time.monotonic()
                code = ("import socket, sys, time\n"
                        "socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5).close()\n"
                        "e = time.monotonic() + 1.5\nwhile time.monotonic() < e: pass")
                r = h.run(["python3", "-c", code, str(srv.getsockname()[1])], timeout=20)
                used = (h.cpu_seconds() - c0) / (time.monotonic() - t0)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertLess(used, 0.35, used)
                self.assertGreater(h.throttled(), 0, used)
                self.assertTrue(any("node" in n for n in W.leftovers(run_id)))
            self.assertEqual(W.leftovers(run_id), [])

    def test_memory_limit_kill_is_reported(self):
        with W.World() as w:
            h = w.host("hog", mem_limit="64M")
            r = h.run(["python3", "-c",
                       "x = []\nfor i in range(256): x.append(bytearray(1 << 20))"], timeout=30)
            self.assertEqual(r.returncode, -signal.SIGKILL, r.stderr)
            self.assertGreaterEqual(h.oom_kills(), 1)
            self.assertGreaterEqual(w.describe()["hosts"][0]["oom_kills"], 1)


RUNNER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import world as W
w = W.World(clean_stale=False)
a, b = w.host("a"), w.host("b")
lk = w.link(a, b, rtt="1ms")
p = b.popen(["sleep", "60"])
print(w.run_id, lk.proc.pid, p.pid, flush=True)
time.sleep(60)
"""


@unittest.skipIf(WHY, WHY)
class Cleanup(unittest.TestCase):
    def test_close_leaves_nothing(self):
        with W.World() as w:
            a, b = w.host("a", cpus="0"), w.host("b", mem_limit="32M")
            lk = w.link(a, b, rtt="1ms")
            p = b.popen(["sleep", "60"])
            run_id = w.run_id
            self.assertTrue(W.leftovers(run_id))
        self.assertEqual(W.leftovers(run_id), [])
        self.assertIsNotNone(lk.proc.poll())
        self.assertIsNotNone(p.poll())

    def test_killed_runner_is_cleaned_by_the_next(self):
        r = subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT / "scripts")],
                             stdout=subprocess.PIPE, text=True)
        run_id, link_pid, sleep_pid = r.stdout.readline().split()
        r.kill()
        r.wait()
        r.stdout.close()
        self.assertTrue(W.leftovers(run_id))
        # The link and the host's process die with the runner.
        for pid in (int(link_pid), int(sleep_pid)):
            deadline = time.monotonic() + 5
            while W._start_time(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertIsNone(W._start_time(pid), f"pid {pid} outlived its runner")
        removed = W.cleanup_stale()
        self.assertTrue(any(run_id in x for x in removed), removed)
        self.assertEqual(W.leftovers(run_id), [])

    def test_live_runs_are_left_alone(self):
        with W.World() as w:
            w.host("a")
            W.cleanup_stale()
            self.assertTrue(W.leftovers(w.run_id))


if __name__ == "__main__":
    unittest.main()
