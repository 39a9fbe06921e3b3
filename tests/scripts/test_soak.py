"""scripts/soak: its judges on made-up sample series (a plateau passes, a
leak fails), its command line, one short real soak that passes and one whose
server is killed under it. Run by scripts/test (python3 -m unittest)."""

import csv
import importlib.machinery
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "scripts" / "soak"
sys.path.insert(0, str(ROOT / "scripts"))
import harness as H  # noqa: E402


def load_soak():
    loader = importlib.machinery.SourceFileLoader("soak", str(SOAK))
    spec = importlib.util.spec_from_loader("soak", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


S = load_soak()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def settle(n, level, ramp=20):
    """A server's RSS: climbing for `ramp` seconds, then flat at `level`."""
    return [level * min(1.0, 0.4 + 0.6 * i / ramp) for i in range(n)]


class Growth(unittest.TestCase):
    def test_windows_of_a_ten_minute_soak(self):
        # The header's words: plateau over seconds 60..119, end over 540..599.
        self.assertEqual(S.growth_windows(600), (60, 120, 540))
        # Two minutes: the warm-up is the first one at least.
        self.assertEqual(S.growth_windows(120), (48, 60, 108))

    def test_a_plateau_passes(self):
        fig, why = S.judge_growth(settle(600, 50_000))
        self.assertIsNone(why)
        self.assertEqual(fig["growth"], 0.0)

    def test_noise_and_spikes_pass(self):
        # The sandboxed server: a floor with arenas touched and given back,
        # RSS jumping by half and more from one second to the next.
        rng = random.Random(7)
        rss = [7000 * (1 + rng.choice([0, 0, rng.uniform(0.2, 1.5)])) + rng.uniform(-50, 50)
               for _ in range(600)]
        self.assertIsNone(S.judge_growth(rss)[1])
        # Allocator noise of 2% around a level, a few 30% spikes.
        rss = [40_000 * (1 + rng.uniform(-0.02, 0.02) + (0.3 if i % 97 == 0 else 0)) for i in range(600)]
        self.assertIsNone(S.judge_growth(rss)[1])

    def test_a_small_growth_passes(self):
        rss = [50_000 * (1 + 0.03 * i / 600) for i in range(600)]
        self.assertIsNone(S.judge_growth(rss)[1])

    def test_a_steady_ten_percent_growth_fails(self):
        rss = settle(120, 50_000) + [50_000 * (1 + 0.10 * i / 480) for i in range(480)]
        fig, why = S.judge_growth(rss)
        self.assertIsNotNone(why)
        self.assertIn("RSS grew", why)
        self.assertGreater(fig["growth"], 0.05)

    def test_a_leak_under_noise_fails(self):
        rng = random.Random(3)
        rss = [7000 * (1 + 0.12 * i / 600) * (1 + rng.choice([0, 0, rng.uniform(0.2, 1.5)])) for i in range(600)]
        self.assertIsNotNone(S.judge_growth(rss)[1])

    def test_a_step_that_stays_fails(self):
        rss = settle(300, 50_000) + [54_000] * 300
        self.assertIsNotNone(S.judge_growth(rss)[1])

    def test_under_two_minutes_is_not_judged_and_says_so(self):
        fig, why = S.judge_growth([1000 + 100 * i for i in range(119)])
        self.assertIsNone(why)
        self.assertIn("under 120 s", fig["not_judged"])
        self.assertIsNotNone(S.judge_growth([1000] * 60 + [1000 + 10 * i for i in range(60)])[1])


class Descriptors(unittest.TestCase):
    def test_back_to_the_baseline_passes(self):
        self.assertIsNone(S.judge_fds(7, [70, 40, 9, 7]))
        self.assertIsNone(S.judge_fds(7, [6]))

    def test_one_left_open_fails(self):
        why = S.judge_fds(7, [70, 12, 8, 8, 8])
        self.assertIn("1 descriptor(s) leaked", why)
        self.assertIn("7 open when idle", why)
        self.assertIsNotNone(S.judge_fds(7, []))


class Exact(unittest.TestCase):
    def test_equal_sums_pass(self):
        fig, why = S.judge_exact({"k0": 5, "k1": -3}, {}, {"k0": 5, "k1": -3, "warm": 0, "rst": 40})
        self.assertIsNone(why)
        self.assertEqual(fig["keys"], 2)

    def test_a_lost_or_doubled_increment_fails(self):
        self.assertIn("k1", S.judge_exact({"k0": 5, "k1": -3}, {}, {"k0": 5, "k1": -2})[1])
        self.assertIsNotNone(S.judge_exact({"k0": 5}, {}, {})[1])
        self.assertIsNotNone(S.judge_exact({}, {}, {"k9": 1})[1])

    def test_unacknowledged_may_or_may_not_count(self):
        self.assertIsNone(S.judge_exact({"k0": 5}, {"k0": 2}, {"k0": 7})[1])
        self.assertIsNone(S.judge_exact({"k0": 5}, {"k0": 2}, {"k0": 5})[1])
        self.assertIsNotNone(S.judge_exact({"k0": 5}, {"k0": 2}, {"k0": 8})[1])


class Command(unittest.TestCase):
    def run_soak(self, *args, env=None, timeout=60):
        return subprocess.run([str(SOAK), *args], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))

    def test_bad_usage_is_one_line_and_exit_2(self):
        for args in (["epoll", "--bogus"], ["nosuch"], ["epoll", "0"], ["epoll", "x"], ["epoll", "1e9"],
                     [], ["epoll", "1", "2"], ["epoll", "--out"], ["echo"]):
            p = self.run_soak(*args)
            self.assertEqual(p.returncode, 2, args)
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, (args, p.stderr))
            self.assertEqual(p.stdout, "", args)

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists(), "not built")
    def test_a_short_soak_on_epoll_passes(self):
        out = Path(tempfile.mkdtemp())
        try:
            p = self.run_soak("epoll", "0.3", "--out", str(out), timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            lines = p.stdout.strip().splitlines()
            self.assertTrue(any(l.startswith("minute   1/1") and "req/s" in l for l in lines), p.stdout)
            self.assertTrue(lines[-1].startswith("soak epoll: PASS: 0.3 min"), p.stdout)
            s = json.loads((out / "summary.json").read_text())
            self.assertEqual(s["verdict"], "pass")
            self.assertIn("not_judged", s["rss_kb"])  # too short for the RSS rule
            self.assertGreater(s["requests"], 1000)
            self.assertLessEqual(s["fds"]["after"], s["fds"]["idle"])
            self.assertGreater(s["rough"].get("resets", 0), 10)
            self.assertGreater(sum(v for k, v in s["rough"].items() if k.startswith("random_")), 10)
            with open(out / "samples.csv") as f:
                rows = list(csv.DictReader(f))
            self.assertGreaterEqual(sum(r["phase"] == "load" for r in rows), 15)
            self.assertTrue(all(int(r["rss_kb"]) > 0 and int(r["fds"]) > 0 for r in rows))
            # Everything it started is stopped, its scratch directory gone.
            for pid in [s["server_pid"]] + s["loadgen_pids"]:
                self.assertFalse(alive(pid), pid)
            self.assertFalse(Path(s["scratch"]).exists())
        finally:
            shutil.rmtree(out)

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists(), "not built")
    def test_a_server_killed_under_load_fails_the_soak(self):
        # A real crash: bin/server-epoll behind a wrapper that has it killed
        # (SIGKILL, its own PID) 5 s after it starts, during the load.
        out = Path(tempfile.mkdtemp())
        try:
            fake = out / "bin"
            fake.mkdir()
            (fake / "loadgen").symlink_to((H.BIN / "loadgen").resolve())
            w = fake / "server-epoll"
            w.write_text(f'#!/bin/sh\n( sleep 5; kill -KILL $$ ) &\nexec "{(H.BIN / "server-epoll").resolve()}" "$@"\n')
            w.chmod(0o755)
            t0 = time.monotonic()
            p = self.run_soak("epoll", "0.5", "--out", str(out / "res"), env={"BIN": str(fake)}, timeout=120)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn("crash: the server exited (killed by signal 9)", p.stderr)
            self.assertIn("soak epoll: FAIL", p.stdout)
            self.assertLess(time.monotonic() - t0, 28)  # it stops at the crash, not after 30 s of load
            s = json.loads((out / "res" / "summary.json").read_text())
            self.assertEqual(s["verdict"], "fail")
            for pid in s["loadgen_pids"]:
                self.assertFalse(alive(pid), pid)
            self.assertFalse(Path(s["scratch"]).exists())
        finally:
            shutil.rmtree(out)


if __name__ == "__main__":
    unittest.main()
