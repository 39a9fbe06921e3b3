"""The bench harness's own logic, on recorded loadgen JSON, and one tiny
end-to-end bench run. Run by scripts/test (python3 -m unittest)."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import harness as H  # noqa: E402
import report  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "bench"
BENCH = ROOT / "scripts" / "bench"


def load_bench_module():
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("bench", str(BENCH))
    spec = importlib.util.spec_from_loader("bench", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def validate(obj):
    """Validate a summary against results/schema.json (python3-jsonschema)."""
    import jsonschema
    schema = json.loads((ROOT / "results" / "schema.json").read_text())
    jsonschema.validate(obj, schema)


class Figures(unittest.TestCase):
    def test_figures_come_from_the_loadgen_json(self):
        run = json.loads((DATA / "runs" / "throughput-epoll-c64.json").read_text())
        f = H.figures(run)
        self.assertEqual(f["rps"], run["rps"])
        self.assertEqual(f["p99_us"], run["latency_us"]["p99"])
        self.assertAlmostEqual(f["server_user_per_req_us"], run["server"]["user_s"] * 1e6 / run["requests"])
        self.assertEqual(f["errors"], sum(v for v in run["errors"].values() if isinstance(v, int)))

    def test_no_answer_is_zero_success_and_no_latency(self):
        f = H.figures({"requests": 0, "rps": 0, "errors": {"timeout": 0}, "latency_us": {"p99": 0}})
        self.assertEqual(f["success_rate"], 0.0)
        self.assertIsNone(f["p99_us"])

    def test_success_rate_counts_errors(self):
        f = H.figures({"requests": 90, "errors": {"timeout": 6, "connect": 4}, "latency_us": {}})
        self.assertAlmostEqual(f["success_rate"], 0.9)

    def test_loadgen_bound_when_its_cpu_is_saturated(self):
        run = {"requests": 1000, "duration_s": 2.0, "loadgen_cpu": {"user_s": 1.2, "system_s": 0.7}}
        self.assertTrue(H.loadgen_bound(run, "1"))
        run["loadgen_cpu"] = {"user_s": 0.3, "system_s": 0.2}
        self.assertFalse(H.loadgen_bound(run, "1"))
        run.update(requests=0, loadgen_cpu={"user_s": 2.0, "system_s": 0.0})
        self.assertFalse(H.loadgen_bound(run, "1"))


class TenantMetrics(unittest.TestCase):
    def test_counters_of_one_tenant_with_their_second_label(self):
        text = ("# TYPE sandbox_requests_total counter\n"
                'sandbox_requests_total{tenant="spin"} 12\n'
                'sandbox_requests_total{tenant="spinner"} 99\n'
                'sandbox_errors_total{tenant="spin",kind="throttled"} 7\n'
                'sandbox_errors_total{tenant="spinner",kind="throttled"} 1\n'
                'sandbox_limit_hits_total{tenant="spin",limit="time"} 3\n'
                'sandbox_seconds_total{tenant="spin"} 0.250000\n'
                'requests_total{cmd="ext",status="200"} 5\n')
        self.assertEqual(H.parse_tenant_metrics(text, "spin"),
                         {"requests": 12, "errors_throttled": 7, "limit_hits_time": 3,
                          "seconds": 0.25})


class Tables(unittest.TestCase):
    def test_best_row_is_marked(self):
        t = H.text_table("t", ["design", "req/s", "p99 us"], [["a", 10.0, 5.0], ["b", 20.0, None]], (1, "max"))
        lines = t.splitlines()
        self.assertTrue(lines[3].startswith(" a"))
        self.assertTrue(lines[4].startswith("*b"))
        t = H.text_table("t", ["design", "req/s", "p99 us"], [["a", 10.0, 5.0], ["b", 20.0, None]], (2, "min"))
        self.assertTrue(t.splitlines()[3].startswith("*a"))

    def test_report_on_recorded_results(self):
        out = Path(tempfile.mkdtemp())
        try:
            shutil.copytree(DATA, out, dirs_exist_ok=True)
            summary = json.loads((out / "summary.json").read_text())
            text = report.write_all(out, summary)
            self.assertIn("1. throughput", text)
            self.assertIn("6. c10k", text)
            self.assertIn("breaking point", text)  # select past FD_SETSIZE
            row = next(line for line in text.splitlines() if line.lstrip("* ").startswith("epoll"))
            self.assertIn("{:,.0f}".format(next(r for r in summary["runs"] if r["design"] == "epoll"
                                                 and r["point"] == "c64")["figures"]["rps"]), row)
            self.assertTrue((out / "index.html").exists())
            self.assertTrue((out / "tables.txt").exists())
        finally:
            shutil.rmtree(out)

    def test_recorded_summary_matches_the_schema(self):
        validate(json.loads((DATA / "summary.json").read_text()))

    def test_schema_rejects_a_run_without_design(self):
        import jsonschema
        s = json.loads((DATA / "summary.json").read_text())
        del s["runs"][0]["design"]
        with self.assertRaises(jsonschema.ValidationError):
            validate(s)


class Exactness(unittest.TestCase):
    def test_database_against_acknowledged_sums(self):
        bench = load_bench_module()
        d = Path(tempfile.mkdtemp())
        db = d / "n.db"
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        con.executemany("INSERT INTO counters VALUES (?, ?)", [("a", 10), ("b", -3), ("c", 7)])
        con.commit()
        con.close()
        run = {"increment": {"acked": {"a": 10, "b": -3, "c": 5}, "unacked": {"c": 4}}}
        self.assertTrue(bench.Bench.exactness(db, run)["exact"])  # c: 5 acked + up to 4 in doubt
        run["increment"]["acked"]["a"] = 11
        r = bench.Bench.exactness(db, run)
        self.assertFalse(r["exact"])
        self.assertIn("1 keys", r["mismatch"])
        shutil.rmtree(d)


class Rounds(unittest.TestCase):
    """Throughput points run in rounds: the run with the median req/s is kept."""

    def bench(self):
        import argparse
        bench = load_bench_module()
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        args = argparse.Namespace(quick=True, duration=None, repeat=3, out=str(out), designs=None,
                                  scenarios=None)
        b = bench.Bench(args)
        self.addCleanup(shutil.rmtree, b.tmp, True)
        return b

    def run_with(self, rps):
        run = json.loads((DATA / "runs" / "throughput-epoll-c64.json").read_text())
        run["rps"] = rps
        return run, None

    def test_median_run_is_kept_with_the_spread(self):
        b = self.bench()
        b.keep_median("epoll", "throughput", "c64", [self.run_with(r) for r in (90.0, 120.0, 100.0)])
        (rec,) = b.runs
        self.assertEqual(rec["figures"]["rps"], 100.0)
        self.assertEqual((rec["figures"]["rps_min"], rec["figures"]["rps_max"]), (90.0, 120.0))
        self.assertEqual(rec["figures"]["repeats"], 3)
        self.assertEqual(b.max_rps["epoll"], 100.0)  # the rate scenario's reference

    def test_a_failed_round_leaves_the_others(self):
        b = self.bench()
        b.keep_median("epoll", "throughput", "c8",
                      [self.run_with(50.0), (H.HarnessError("loadgen: boom"), None), self.run_with(70.0)])
        self.assertTrue(b.runs[0]["ok"])
        self.assertIn(b.runs[0]["figures"]["rps"], (50.0, 70.0))
        b.keep_median("select", "throughput", "c8", [(H.HarnessError("loadgen: boom"), None)] * 3)
        self.assertFalse(b.runs[1]["ok"])
        self.assertIn("boom", b.runs[1]["reason"])


class EndToEnd(unittest.TestCase):
    def test_bad_flags_exit_2(self):
        for args in (["--designs", "nosuch"], ["--scenarios", "nosuch"], ["--duration", "0"],
                     ["--repeat", "0"], ["--bogus"]):
            p = subprocess.run([str(BENCH), *args], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, args)
            self.assertEqual(len(p.stderr.strip().splitlines()[-1:]), 1)

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists(), "not built")
    def test_tiny_bench_run_leaves_a_valid_summary(self):
        out = Path(tempfile.mkdtemp())
        try:
            p = subprocess.run([str(BENCH), "--quick", "--designs", "epoll", "--scenarios", "throughput",
                                "--duration", "0.3", "--out", str(out)], capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr[-2000:])
            summary = json.loads((out / "summary.json").read_text())
            validate(summary)
            runs = [r for r in summary["runs"] if r["design"] == "epoll"]
            self.assertEqual({r["point"] for r in runs}, {"c64", "c64-pipe16"})
            self.assertTrue(all(r["ok"] and r["figures"]["rps"] > 0 for r in runs), runs)
            self.assertTrue((out / "index.html").exists())
            self.assertIn("1. throughput", p.stdout)
        finally:
            shutil.rmtree(out)


if __name__ == "__main__":
    unittest.main()
