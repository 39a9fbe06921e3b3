"""scripts/check-incrementor: a short real check of the incrementor (durable
exact, buffered within its window), and a fake counter service
(tests/scripts/data/check-incrementor/fake-counter.py) that must pass when
exact and fail (exit 1) when it drops or doubles an acknowledged increment,
with kills. Run by scripts/test (python3 -m unittest)."""

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check-incrementor"
FAKE = ROOT / "tests" / "scripts" / "data" / "check-incrementor" / "fake-counter.py"
sys.path.insert(0, str(ROOT / "scripts"))
import harness as H  # noqa: E402


def load_check():
    loader = importlib.machinery.SourceFileLoader("check_incrementor", str(CHECK))
    spec = importlib.util.spec_from_loader("check_incrementor", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


C = load_check()


def run(*args, timeout=90):
    """Run the command; (exit status, stdout, stderr, its --json verdict or None)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "verdict.json"
        p = subprocess.run([sys.executable, str(CHECK), "--quiet", "--json", str(out), *map(str, args)],
                           capture_output=True, text=True, timeout=timeout)
        v = json.loads(out.read_text()) if out.exists() else None
    return p.returncode, p.stdout, p.stderr, v


class Judge(unittest.TestCase):
    def test_bounds(self):
        acked = {"a": 10, "b": 5, "c": 7}
        unacked = {"b": 3}
        got = {"a": 10, "b": 8, "c": 6, "d": 1}
        lost, dup = C.judge(acked, unacked, got)
        self.assertEqual(lost, {"c": 1})
        self.assertEqual(dup, {"d": 1})
        self.assertEqual(C.judge(acked, unacked, {"a": 10, "b": 5, "c": 7}), ({}, {}))


@unittest.skipUnless((H.BIN / "incrementor").exists() and (H.BIN / "loadgen").exists(), "make first")
class Incrementor(unittest.TestCase):
    def test_durable_exact_under_kills(self):
        rc, out, err, v = run("--rounds", 3, "--round-s", 1.0, "--keys", 200, "-c", 16)
        self.assertEqual(rc, 0, out + err)
        self.assertTrue(v["pass"])
        self.assertEqual(v["kills"], {"incrementor": 3})
        self.assertEqual((v["lost_value"], v["duplicated_value"]), (0, 0))
        self.assertGreater(v["acked_requests"], 1000)
        self.assertIn("verdict                    PASS", out)

    def test_buffered_within_window(self):
        rc, out, err, v = run("--ack", "buffered", "--rounds", 2, "--round-s", 1.0, "--keys", 200)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(v["kills"], {"incrementor": 2})
        self.assertEqual(v["duplicated_value"], 0)
        self.assertLessEqual(v["lost_value"], v["allowed_loss"])
        self.assertGreater(v["allowed_loss"], 0)

    def test_bad_flags_and_unwired(self):
        rc, _, err, _ = run("--rounds", -1)
        self.assertEqual(rc, 2)
        rc, _, err, _ = run("--url", "http://127.0.0.1:1/")
        self.assertEqual(rc, 2)
        self.assertIn("--topology external", err)
        if not C.has_redis_mode(H.BIN / "incrementor"):
            rc, _, err, _ = run("--topology", "redis")
            self.assertEqual(rc, 2)
            self.assertTrue("not wired" in err or "redis-server" in err, err)


@unittest.skipUnless((H.BIN / "incrementor").exists() and (H.BIN / "loadgen").exists(), "make first")
class RedisTopology(unittest.TestCase):
    def test_durable_exact_under_kills(self):
        import shutil
        if not shutil.which("redis-server"):
            self.skipTest("no redis-server (scripts/deps.sh installs it)")
        if not C.has_redis_mode(H.BIN / "incrementor"):
            self.skipTest("bin/incrementor has no --queue/--consume")
        # Seed 7 kills Redis, the writer and a web node in its first rounds.
        rc, out, err, v = run("--topology", "redis", "--rounds", 4, "--round-s", 1.0, "--keys", 200,
                              "-c", 8, "--seed", 7)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(sum(v["kills"].values()), 4)
        self.assertEqual(set(v["kills"]), {"redis", "consumer", "web1", "web2"})
        self.assertEqual((v["lost_value"], v["duplicated_value"]), (0, 0))
        self.assertGreater(v["acked_requests"], 100)


class FakeService(unittest.TestCase):
    """The check pointed at another service: right, it passes; wrong, exit 1."""

    def check(self, mode):
        with tempfile.TemporaryDirectory() as d:
            port = H.free_port()
            cmd = f"exec {sys.executable} {FAKE} {port} {d}/state {mode}"
            return run("--topology", "external", "--url", f"http://127.0.0.1:{port}/", "--start",
                       f"fake={cmd}", "--rounds", 1, "--round-s", 1.5, "--keys", 50, "-c", 4,
                       "--settle-s", 0.5)

    @unittest.skipUnless((H.BIN / "loadgen").exists(), "make first")
    def test_exact_passes(self):
        rc, out, err, v = self.check("exact")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(v["kills"], {"fake": 1})
        self.assertGreater(v["acked_requests"], 100)

    @unittest.skipUnless((H.BIN / "loadgen").exists(), "make first")
    def test_drop_fails(self):
        rc, out, err, v = self.check("drop")
        self.assertEqual(rc, 1, out + err)
        self.assertGreater(v["lost_value"], 0)
        self.assertIn("violation: lost", out)

    @unittest.skipUnless((H.BIN / "loadgen").exists(), "make first")
    def test_double_fails(self):
        rc, out, err, v = self.check("double")
        self.assertEqual(rc, 1, out + err)
        self.assertGreater(v["duplicated_value"], 0)
        self.assertIn("applied twice", out)


if __name__ == "__main__":
    unittest.main()
