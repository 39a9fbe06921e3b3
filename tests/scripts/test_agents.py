"""scripts/agents.py: loadgen agents started together and merged. Three
agents in three world hosts against a server host give the total rate, and
the merged histogram is, bucket by bucket, the sum of theirs; the command
template path (`sh -c {cmd}`, here) gives the same. Run by scripts/test
(python3 -m unittest); the hosts' test is skipped, with the reason, without
root, namespaces or TUN."""

import base64
import os
import struct
import subprocess
import sys
import unittest
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import agents as A  # noqa: E402
import harness as H  # noqa: E402
import world as W  # noqa: E402

BUILT = all((H.BIN / b).exists() for b in ("loadgen", "server-epoll", "world-link"))
WHY = W.why_not() if BUILT else "loadgen, server-epoll or world-link is not built"


def decode(hist):
    """An HdrHistogram V2 compressed histogram (base64) -> {bucket: count}."""
    raw = base64.b64decode(hist)
    cookie, n = struct.unpack(">II", raw[:8])
    assert cookie == 0x1C849314, hex(cookie)
    body = zlib.decompress(raw[8:8 + n])
    cookie, length = struct.unpack(">II", body[:8])
    assert cookie & ~0xF0 == 0x1C849303, hex(cookie)  # its word-size bits set
    payload, pos, idx, counts = body[40:40 + length], 0, 0, {}
    while pos < len(payload):
        z, shift = 0, 0
        for i in range(9):
            b = payload[pos]
            pos += 1
            if i == 8:
                z |= b << 56
                break
            z |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        v = (z >> 1) ^ -(z & 1)
        if v < 0:
            idx -= v  # a run of -v empty buckets
        else:
            if v:
                counts[idx] = v
            idx += 1
    return counts


def added(hists):
    total = {}
    for h in hists:
        for k, v in decode(h).items():
            total[k] = total.get(k, 0) + v
    return total


class Split(unittest.TestCase):
    def test_shares_add_up(self):
        self.assertEqual(A.split(3000, 3), [1000, 1000, 1000])
        self.assertEqual(A.split(10, 3), [4, 3, 3])

    def test_template_quotes_the_command_as_one_word(self):
        argv = A.template_argv("ssh -o BatchMode=yes {host} {cmd}", "m1",
                               ["bin/loadgen", "--mix", "PING:1, WAIT 1:1", "tcp://x:1"])
        self.assertEqual(argv[:3], ["ssh", "-o", "BatchMode=yes"])
        self.assertEqual(argv[3], "m1")
        self.assertEqual(argv[4], "bin/loadgen --mix 'PING:1, WAIT 1:1' tcp://x:1")
        with self.assertRaises(ValueError):
            A.template_argv("ssh {host}", "m1", ["x"])

    def test_bad_flags_are_one_line_and_exit_2(self):
        for args in (["--out", "x", "--", "t"], ["--agents", "2", "--hosts", "a", "--out", "x", "--", "t"],
                     ["--hosts", "a,b", "--out", "x", "--", "t"],
                     ["--hosts", "a", "--agent-cmd", "ssh {host}", "--out", "x", "--", "t"],
                     ["--agents", "0", "--out", "x", "--", "t"], ["--agents", "2", "--bogus"]):
            p = subprocess.run([sys.executable, str(ROOT / "scripts" / "agents.py"), *args],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertEqual(len(p.stderr.splitlines()), 1, (args, p.stderr))


class Merge(unittest.TestCase):
    def check(self, merged, runs, rate, seconds):
        self.assertEqual(merged["merged"]["agents"], len(runs))
        self.assertEqual(merged["requests"], sum(r["requests"] for r in runs))
        self.assertEqual(merged["latency_us"]["count"], sum(r["latency_us"]["count"] for r in runs))
        self.assertEqual(decode(merged["latency_us"]["histogram"]),
                         added(r["latency_us"]["histogram"] for r in runs))
        # Started together: their windows agree to well within a second.
        starts = [r["window_start_ms"] for r in runs]
        self.assertLess(max(starts) - min(starts), 200, starts)
        self.assertLess(abs(merged["rps"] - rate) / rate, 0.05, (merged["rps"], [r["rps"] for r in runs]))
        self.assertLess(abs(merged["duration_s"] - seconds), 0.25)

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists(), "not built")
    def test_command_template(self):
        with H.Server([str(H.BIN / "server-epoll"), "--port", "0"]) as srv:
            merged, runs = A.run_agents(f"http://127.0.0.1:{srv.port}/", ["a", "b", "c"],
                                        ["-d", "1.5s", "--timeout", "5s"], rate=900, connections=6,
                                        agent_cmd="sh -c {cmd}", start_in_s=1.0)
        self.assertEqual([r["config"]["rate"] for r in runs], [300, 300, 300])
        self.check(merged, runs, 900, 1.5)

    @unittest.skipIf(WHY, WHY)
    def test_three_hosts_against_a_server_host(self):
        with W.World(link_cpu=1 if (os.cpu_count() or 1) > 1 else None) as w:
            srv_host = w.host("server")
            clients = [w.host(f"agent{i}") for i in range(3)]
            for c in clients:
                w.link(c, srv_host, rtt="2ms")
            with H.Server([str(H.BIN / "server-epoll"), "--port", "0", "--host", srv_host.addr],
                          host=srv_host) as srv:
                target = f"http://{srv.addr}:{srv.port}/"
                merged, runs = A.run_agents(target, clients, ["-d", "2s", "--timeout", "5s"],
                                            rate=3000, connections=24)
                one, _ = A.run_agents(target, clients[:1], ["-d", "2s", "--timeout", "5s"],
                                      rate=3000, connections=24)
        self.check(merged, runs, 3000, 2.0)
        f = lambda r: (round(r["rps"], 1), r["latency_us"]["p50"], r["latency_us"]["p99"])  # noqa: E731
        print(f"\nthree agents at 1000 req/s: {f(merged)} (req/s, p50 us, p99 us; each "
              f"{[f(r) for r in runs]}); one agent at 3000: {f(one)}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
