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

    def test_a_skipped_experiment_says_why_and_is_not_a_failure(self):
        # An experiment over an emulated network, where the machine has none.
        def skip(lab):
            raise self.lab.L.Skip("no emulated network here: no /dev/net/tun")

        r = self.lab.run_one("loss", "t", "q?", skip)
        self.assertFalse(r["held"])
        self.assertEqual(r["skipped"], "no emulated network here: no /dev/net/tun")
        saved = json.loads((self.out / "loss" / "result.json").read_text())
        self.assertEqual(saved["skipped"], r["skipped"])
        self.assertIsNone(self.lab.run_one("wait", "t", "q?", lambda lab: lab.check("x", True))["skipped"])

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

    def test_proxy_counts_per_upstream(self):
        # The proxy experiments tell the upstreams apart by these (loadgen
        # --metrics: each series' increase over the run).
        import lablib as L
        run = {"metrics_delta": {
            'proxy_upstream_connections_opened_total{upstream="10.77.0.2:8080"}': 8.0,
            'proxy_upstream_connections_reused_total{upstream="10.77.0.2:8080"}': 992.0,
            'proxy_upstream_responses_total{upstream="10.77.0.2:8080",code="200"}': 990.0,
            'proxy_upstream_responses_total{upstream="10.77.0.2:8080",code="502"}': 10.0,
            'proxy_upstream_responses_total{upstream="10.77.0.3:8080",code="200"}': 1000.0,
            'proxy_pool_idle{upstream="10.77.0.2:8080"}': 3.0,
            'requests_total{cmd="metrics",status="200"}': 1.0}}
        c = L.upstream_counts(run)
        self.assertEqual(c["10.77.0.2:8080"], {"opened": 8, "reused": 992, "responses": 1000})
        self.assertEqual(c["10.77.0.3:8080"], {"responses": 1000})
        with self.assertRaises(H.HarnessError):  # not a proxy's page
            L.upstream_counts({"metrics_delta": {'requests_total{cmd="hello",status="200"}': 5.0}})

    def test_lowest_samples_of_a_histogram(self):
        import lablib as L
        counts = {10: 3, 20: 5, 300: 4}
        self.assertEqual(L.lowest(counts, 6), {10: 3, 20: 3})
        self.assertEqual(L.lowest(counts, 12), counts)
        self.assertEqual(L.lowest(counts, 0), {})

    def test_index_shows_recorded_results(self):
        self.lab.run_one("wait", "A WAIT paralyses", "q?", lambda lab: lab.check("it held", True))
        self.lab.index()
        page = (self.out / "index.html").read_text()
        self.assertIn("A WAIT paralyses", page)
        self.assertIn("it held: held", page)


class Discovery(unittest.TestCase):
    """Experiments and scenarios are files NN-NAME.py found in their folder."""

    def folder(self, files):
        d = Path(tempfile.mkdtemp(prefix="discover-"))
        self.addCleanup(shutil.rmtree, d)
        for name, text in files.items():
            (d / name).write_text(text)
        return d

    def test_file_name_order_and_names(self):
        d = self.folder({"02-b.py": 'NAME = "b"\nrun = 1\n', "01-a.py": 'NAME = "a"\nrun = 1\n',
                         "_helper.py": "raise SystemExit\n"})
        self.assertEqual([m.NAME for m in H.discover(d, "test", ("run",))], ["a", "b"])

    def test_wrong_files_are_errors_that_name_the_file(self):
        for files, says in (({"a.py": 'NAME = "a"\n'}, "NN-NAME.py"),
                            ({"01-a.py": 'NAME = "b"\n'}, "NAME must be 'a'"),
                            ({"01-a.py": 'NAME = "a"\n'}, "sets run"),
                            ({"01-a.py": "1/0\n"}, "ZeroDivisionError")):
            with self.assertRaises(H.HarnessError) as e:
                H.discover(self.folder(files), "test", ("run",))
            self.assertIn(says, str(e.exception))

    def test_the_lab_order_is_its_files(self):
        names = [p.name.split("-", 1)[1][:-3] for p in sorted((ROOT / "scripts" / "experiments").glob("[0-9]*.py"))]
        self.assertEqual([e.NAME for e in self.lab_module().EXPERIMENTS], names)
        self.assertEqual(names[0], "wait")

    def lab_module(self):
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        return load_lab(out)


class Command(unittest.TestCase):
    def test_list_names_every_experiment(self):
        p = subprocess.run([str(LAB), "--list"], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(len(p.stdout.strip().splitlines()), 23)

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

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists(), "not built")
    def test_loadgen_histogram_decoded(self):
        # The experiments over an emulated network add agents' histograms
        # and count the requests past a threshold from loadgen's JSON.
        import lablib as L
        with L.server("epoll", cpus=None) as s:
            r = H.run_loadgen(["-c", 4, "-n", 500, f"http://127.0.0.1:{s.port}/"])
        h = L.hist_counts(r)
        lat = r["latency_us"]
        self.assertEqual(sum(h.values()), lat["count"])
        for pct, key in ((50, "p50"), (99, "p99")):
            # loadgen reports a bucket's highest value, we its lowest.
            self.assertLessEqual(L.percentile_us(h, pct), lat[key])
            self.assertGreaterEqual(L.percentile_us(h, pct), lat[key] * 0.99 - 1)
        self.assertEqual(L.fraction_at_least(h, 0), 1.0)
        self.assertEqual(sum(L.merge_counts(h, h).values()), 2 * lat["count"])

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
