"""`scripts/bench compare OLD NEW` and `scripts/bench history FIGURE`, on
recorded results (tests/scripts/data/bench) and copies of them changed on
purpose. Run by scripts/test (python3 -m unittest); a few seconds."""

import copy
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
import compare  # noqa: E402
import history  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "bench"
BENCH = ROOT / "scripts" / "bench"


def bench(*args, env=None):
    return subprocess.run(["/usr/bin/python3", str(BENCH), *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **(env or {})))


def with_rounds(summary, spread=0.04):
    """The summary with three rounds around each throughput figure kept
    (its value, and spread above and below), as --repeat 3 records them."""
    s = copy.deepcopy(summary)
    for r in s["runs"]:
        if r["ok"] and r["scenario"] == "throughput":
            r["rounds"] = {k: [v * (1 - spread), v, v * (1 + spread)] for k, v in r["figures"].items()
                           if k in compare.FIGURES and isinstance(v, (int, float)) and v}
    return s


class Compare(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="compare-"))
        self.addCleanup(shutil.rmtree, self.tmp)
        self.base = json.loads((DATA / "summary.json").read_text())

    def folder(self, name, summary):
        d = self.tmp / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(summary))
        return d

    def test_the_same_runs_are_within_noise(self):
        s = with_rounds(self.base)
        old, new = self.folder("old", s), self.folder("new", s)
        p = bench("compare", old, new, "--json", self.tmp / "c.json", "--html", self.tmp / "c.html")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        rep = json.loads((self.tmp / "c.json").read_text())
        self.assertGreater(len(rep["rows"]), 20)
        # shown, not judged: the recorded c10k's select was loadgen-bound; the
        # iterative server answered no PING beside the WAITs, and no request
        # beside the 10,000 idle connections
        self.assertEqual({r["verdict"] for r in rep["rows"]}, {"within noise", "not judged"})
        why = {(r["scenario"], r["design"]): r["why"] for r in rep["rows"] if r["verdict"] == "not judged"}
        self.assertEqual(set(why), {("c10k", "select"), ("c10k", "iterative"), ("hol-wait", "iterative")})
        self.assertEqual(why[("hol-wait", "iterative")], "0 requests: too few to judge")
        self.assertEqual(rep["regressions"], 0)
        self.assertIn("within noise", p.stdout)
        self.assertIn("<table>", (self.tmp / "c.html").read_text())
        # every design, scenario and point both ran, for each default figure there
        keys = {(r["scenario"], r["design"], r["point"]) for r in rep["rows"]}
        self.assertIn(("throughput", "epoll", "c64"), keys)
        self.assertIn(("hol-wait", "select", "ping"), keys)

    def test_a_slower_build_is_a_regression(self):
        old_s = with_rounds(self.base)
        new_s = copy.deepcopy(old_s)
        for r in new_s["runs"]:
            if r["design"] == "epoll" and r["scenario"] == "throughput" and r["point"] == "c64":
                for k, f in (("rps", 0.6), ("server_cpu_per_req_us", 1.5)):
                    r["figures"][k] *= f
                    r["rounds"][k] = [v * f for v in r["rounds"][k]]
        old, new = self.folder("old", old_s), self.folder("new", new_s)
        p = bench("compare", old, new, "--json", "-")
        self.assertEqual(p.returncode, 1, p.stderr)
        rep = json.loads(p.stdout)
        # req/s drifts by more than 40% between runs on a shared machine:
        # only the CPU per request is beyond the noise by default
        bad = {(r["design"], r["point"], r["figure"]): r for r in rep["rows"] if r["verdict"] in ("better", "worse")}
        self.assertEqual(set(bad), {("epoll", "c64", "server_cpu_per_req_us")})
        r = bad[("epoll", "c64", "server_cpu_per_req_us")]
        self.assertEqual((r["verdict"], r["regression"]), ("worse", True))
        self.assertAlmostEqual(r["change"], 0.5)
        self.assertAlmostEqual(r["noise"], 1.04 / 0.96 - 1 + compare.FLOORS_ROUNDS["server_cpu_per_req_us"])
        self.assertEqual(rep["regressions"], 1)
        # with a 10% floor (a quiet machine), the req/s too
        p = bench("compare", old, new, "--noise", "10", "--json", "-")
        rep = json.loads(p.stdout)
        bad = {(r["design"], r["point"], r["figure"]) for r in rep["rows"] if r["verdict"] == "worse"}
        self.assertEqual(bad, {("epoll", "c64", "rps"), ("epoll", "c64", "server_cpu_per_req_us")})
        self.assertEqual((p.returncode, rep["regressions"]), (1, 2))
        # the same change the other way is better, and exit 0
        p = bench("compare", new, old, "--json", "-")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual({r["verdict"] for r in json.loads(p.stdout)["rows"]}, {"within noise", "better", "not judged"})
        # a regression under the threshold does not fail
        p = bench("compare", old, new, "--threshold", "60")
        self.assertEqual(p.returncode, 0, p.stdout)

    def test_only_figures_measured_in_rounds_fail_by_default(self):
        new_s = copy.deepcopy(self.base)  # one round each, as --quick records them
        r = next(r for r in new_s["runs"] if r["design"] == "epoll" and r["point"] == "c64")
        r["figures"]["server_cpu_per_req_us"] *= 3  # beyond a single run's floor (110%)
        old, new = self.folder("old", self.base), self.folder("new", new_s)
        p = bench("compare", old, new)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertRegex(p.stdout, r"throughput c64 +epoll +server CPU us/req .* WORSE +one round")
        self.assertIn("no figure was measured in rounds on both sides", p.stdout)
        p = bench("compare", old, new, "--gate", "all")
        self.assertEqual(p.returncode, 1, p.stdout)

    def test_noise_from_the_rounds(self):
        floors = ({f: 0.15 for f in compare.FIGURES}, {f: 0.15 for f in compare.FIGURES})
        # 30% slower, but the rounds spread by a factor 2.3: within noise;
        # with rounds 4% apart the same change is worse.
        self.assertEqual(compare.judge([60, 100, 140], [91, 130, 170], "server_cpu_per_req_us", floors)["verdict"],
                         "within noise")
        j = compare.judge([98, 100, 102], [128, 130, 132], "server_cpu_per_req_us", floors)
        self.assertEqual((j["verdict"], round(j["change"], 2), round(j["noise"], 2)), ("worse", 0.3, 0.19))
        # one round: the floor alone decides; a halving is as far as a doubling
        self.assertEqual(compare.judge([100], [112], "rps", floors)["verdict"], "within noise")
        self.assertEqual(compare.judge([100], [80], "rps", floors)["verdict"], "worse")
        self.assertEqual(compare.judge([100], [80], "p99_us", floors)["verdict"], "better")
        self.assertAlmostEqual(compare.judge([100], [50], "rps", floors)["size"], 1.0)
        # a round that counted no CPU tick measured nothing: left out
        j = compare.judge([0.0, 10.0, 11.0], [10.0, 10.5, 11.0], "server_cpu_per_req_us", floors)
        self.assertEqual((j["old"], j["verdict"]), (10.5, "within noise"))
        self.assertEqual(compare.judge([0.0], [3.0], "server_cpu_per_req_us", floors)["why"],
                         "a value is 0: no ratio")

    def test_what_is_not_the_servers_figure_is_not_judged(self):
        old_s, new_s = copy.deepcopy(self.base), copy.deepcopy(self.base)
        for s, rate, rps in ((old_s, 1000, 1000.0), (new_s, 2000, 300.0)):
            s["runs"].append({"design": "epoll", "scenario": "rate", "point": "90%", "ok": True, "reason": None,
                              "loadgen_bound": False, "file": None,
                              "figures": {"rate": rate, "rps": rps, "requests": 5000}})
        r = next(r for r in new_s["runs"] if r["design"] == "epoll" and r["point"] == "c8")
        r["loadgen_bound"], r["figures"]["rps"] = True, r["figures"]["rps"] / 3
        r["figures"]["server_cpu_per_req_us"] *= 3
        rep = compare.compare(old_s, new_s, ["rps", "server_cpu_per_req_us"],
                              (compare.FLOORS_ROUNDS, compare.FLOORS_ONE), 0.1)
        rows = {(r["scenario"], r["point"], r["design"]): r for r in rep["rows"]}
        self.assertEqual(rows[("rate", "90%", "epoll")]["verdict"], "not judged")
        self.assertIn("target rate differs", rows[("rate", "90%", "epoll")]["why"])
        tp = {x["figure"]: x for x in rep["rows"] if (x["scenario"], x["point"], x["design"])
              == ("throughput", "c8", "epoll")}
        self.assertEqual(tp["rps"]["verdict"], "not judged")
        # ... but the server's CPU per request is the server's, whoever was the limit
        self.assertEqual(tp["server_cpu_per_req_us"]["verdict"], "worse")

    def test_only_some_scenarios(self):
        s = self.folder("s", self.base)
        p = bench("compare", s, s, "--scenarios", "hol-wait", "--json", "-")
        self.assertEqual({r["scenario"] for r in json.loads(p.stdout)["rows"]}, {"hol-wait"})

    def test_a_design_failing_in_new_is_a_regression(self):
        new_s = copy.deepcopy(self.base)
        r = next(r for r in new_s["runs"] if r["design"] == "select" and r["point"] == "c8")
        r.update(ok=False, reason="select did not start")
        p = bench("compare", self.folder("old", self.base), self.folder("new", new_s))
        self.assertEqual(p.returncode, 1)
        self.assertIn("FAILED in new: throughput c8 select: select did not start", p.stdout)

    def test_bad_arguments_exit_2_with_one_line(self):
        good = self.folder("good", self.base)
        (self.tmp / "empty").mkdir()
        for args in ([], [good], [good, self.tmp / "missing"], [good, self.tmp / "empty"],
                     [good, good, "--figures", "rps,nope"], [good, good, "--threshold", "x"],
                     [good, good, "--bogus"], [good, good, "--scenarios", "nope"], [good, good, "--gate", "x"]):
            p = bench("compare", *args)
            self.assertEqual(p.returncode, 2, (args, p.stdout, p.stderr))
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, (args, p.stderr))
            self.assertTrue(p.stderr.startswith("scripts/bench compare: "), p.stderr)
            self.assertEqual(p.stdout, "")


class History(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="history-"))
        self.addCleanup(shutil.rmtree, self.tmp)
        self.db = self.tmp / "history.db"
        self.env = {"BENCH_HISTORY": str(self.db)}

    def test_runs_are_appended_once_and_printed_across_commits(self):
        base = json.loads((DATA / "summary.json").read_text())
        os.environ["BENCH_HISTORY"] = str(self.db)
        try:
            for i, commit in enumerate(("aaaa111", "bbbb222")):
                s = with_rounds(base) if i else copy.deepcopy(base)
                s["env"]["git_commit"], s["env"]["date"] = commit, f"2026-01-0{i + 1}T00:00:00Z"
                next(r for r in s["runs"] if r["design"] == "epoll" and r["point"] == "c64")["figures"]["rps"] = \
                    1000.0 * (i + 1)
                self.assertEqual(history.record(self.tmp / f"run{i}", s), self.db)
                history.record(self.tmp / f"run{i}", s)  # a second time: not added again
        finally:
            del os.environ["BENCH_HISTORY"]
        con = sqlite3.connect(self.db)
        self.assertEqual(con.execute("SELECT count(*) FROM runs").fetchone()[0], 2)
        lo, hi = con.execute("SELECT lo, hi FROM figures f JOIN runs r ON r.id = f.run_id WHERE r.git_commit = "
                             "'bbbb222' AND design = 'select' AND point = 'c64' AND figure = 'rps'").fetchone()
        self.assertLess(lo, hi)  # the rounds' range kept
        con.close()
        p = bench("history", "rps", "--scenario", "throughput", "--point", "c64", env=self.env)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], "rps, throughput c64:")
        self.assertIn("epoll", lines[1])
        self.assertTrue(lines[2].split()[2].startswith("aaaa111") and "1,000" in lines[2], lines)
        self.assertTrue(lines[3].split()[2].startswith("bbbb222") and "2,000" in lines[3], lines)
        p = bench("history", "p99_us", "--design", "epoll", "--json", env=self.env)
        rows = json.loads(p.stdout)
        self.assertEqual({r["design"] for r in rows}, {"epoll"})
        self.assertEqual(len({r["git_commit"] for r in rows}), 2)

    def test_bad_arguments_exit_2_with_one_line(self):
        p = bench("history", "rps", env=self.env)  # no database yet
        self.assertEqual((p.returncode, len(p.stderr.splitlines())), (2, 1), p.stderr)
        s = json.loads((DATA / "summary.json").read_text())
        history.add(history.connect(self.db), self.tmp / "r", s)
        for args in (["nope"], [], ["rps", "--bogus"]):
            p = bench("history", *args, env=self.env)
            self.assertEqual((p.returncode, len(p.stderr.splitlines())), (2, 1), (args, p.stderr))

    def test_only_runs_into_results_are_history(self):
        env = os.environ.pop("BENCH_HISTORY", None)
        try:
            self.assertIsNone(history.db_path(self.tmp / "run"))
            self.assertEqual(history.db_path(ROOT / "results" / "20260101T000000Z"),
                             ROOT / "results" / "history.db")
        finally:
            if env is not None:
                os.environ["BENCH_HISTORY"] = env


if __name__ == "__main__":
    unittest.main()
