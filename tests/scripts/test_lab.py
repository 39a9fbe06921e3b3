"""The lab's own logic on recorded data, and its fastest experiment end to
end. Run by scripts/test (python3 -m unittest)."""

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "scripts" / "lab"
sys.path.insert(0, str(ROOT / "scripts"))
import harness as H  # noqa: E402


def load_lab(out):
    os.environ["LAB_OUT"] = str(out)
    loader = importlib.machinery.SourceFileLoader("lab", str(LAB))
    spec = importlib.util.spec_from_loader("lab", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Logic(unittest.TestCase):
    def setUp(self):
        self.out = Path(tempfile.mkdtemp())
        self.lab = load_lab(self.out)

    def tearDown(self):
        shutil.rmtree(self.out)

    def test_an_experiment_holds_only_if_every_observation_held(self):
        def good(lab):
            lab.did("nothing")
            lab.fig(x=1)
            lab.check("one", True)
            lab.check("two", True)

        def bad(lab):
            lab.check("one", True)
            lab.check("two", False)

        self.assertTrue(self.lab.run_one("wait", "t", "q?", good)["held"])
        r = self.lab.run_one("slow-reader", "t", "q?", bad)
        self.assertFalse(r["held"])
        saved = json.loads((self.out / "slow-reader" / "result.json").read_text())
        self.assertEqual([e["held"] for e in saved["expected"]], [True, False])

    def test_no_observation_is_not_a_success(self):
        self.assertFalse(self.lab.run_one("wait", "t", "q?", lambda lab: None)["held"])

    def test_a_failing_step_is_a_failed_observation_not_a_crash(self):
        def boom(lab):
            raise H.HarnessError("server-x did not start")
        r = self.lab.run_one("wait", "t", "q?", boom)
        self.assertFalse(r["held"])
        self.assertIn("did not start", r["expected"][0]["observation"])

    def test_tenant_metrics_keep_the_second_label(self):
        # The sandbox experiment tells cut (504) from throttled (503) requests
        # by these.
        text = ('sandbox_requests_total{tenant="spin"} 40\n'
                'sandbox_errors_total{tenant="spin",kind="timeout"} 17\n'
                'sandbox_errors_total{tenant="spin",kind="throttled"} 23\n'
                'sandbox_errors_total{tenant="spinner",kind="throttled"} 5\n'
                'sandbox_limit_hits_total{tenant="spin",limit="memory"} 0\n')
        m = H.parse_tenant_metrics(text, "spin")
        self.assertEqual(m, {"requests": 40, "errors_timeout": 17, "errors_throttled": 23, "limit_hits_memory": 0})

    def test_index_shows_recorded_results(self):
        self.lab.run_one("wait", "A WAIT paralyses", "q?", lambda lab: lab.check("it held", True))
        self.lab.index()
        page = (self.out / "index.html").read_text()
        self.assertIn("A WAIT paralyses", page)
        self.assertIn("it held: held", page)


class Command(unittest.TestCase):
    def test_list_names_every_experiment(self):
        p = subprocess.run([str(LAB), "--list"], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(len(p.stdout.strip().splitlines()), 12)

    def test_unknown_experiment_exits_2(self):
        p = subprocess.run([str(LAB), "nosuch"], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no experiment", p.stderr)

    def test_make_lab_builds_what_the_lab_runs(self):
        # A fresh clone: `make lab` must build every binary an experiment runs
        # (it once left out conform's protocol checks). `make -n` into empty
        # directories lists what it would build, and runs nothing.
        out = Path(tempfile.mkdtemp())
        try:
            lab = load_lab(out)
            p = subprocess.run(["make", "-n", "lab", f"BIN={out}/bin", f"BUILD={out}/obj"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            built = set(re.findall(r"-o (\S+)", p.stdout))
            for need in lab.NEEDS:
                self.assertTrue(f"{out}/bin/{need}" in built, f"make lab does not build bin/{need}")
                if need.startswith("server-"):
                    self.assertTrue((ROOT / "servers" / f"{need[7:]}.c").exists(), need)
        finally:
            shutil.rmtree(out)

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-iterative").exists(), "not built")
    def test_fastest_experiment_end_to_end(self):
        out = Path(tempfile.mkdtemp())
        try:
            p = subprocess.run([str(LAB), "wait"], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, LAB_OUT=str(out)))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            r = json.loads((out / "wait" / "result.json").read_text())
            self.assertTrue(r["held"])
            self.assertGreaterEqual(r["figures"]["iterative_ping_ms"], 1000)
            self.assertLess(r["figures"]["epoll_ping_ms"], 100)
            self.assertIn("HELD", p.stdout)
        finally:
            shutil.rmtree(out)


if __name__ == "__main__":
    unittest.main()
