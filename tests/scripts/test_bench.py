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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import anchors  # noqa: E402
import harness as H  # noqa: E402
import report  # noqa: E402
import world as W  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "bench"
WORLD_WHY = (W.why_not() if all((H.BIN / x).exists() for x in ("world-link", "loadgen", "server-epoll"))
             else "world-link, loadgen or server-epoll is not built")
BENCH = ROOT / "scripts" / "bench"
ANCHORS_WHY = (None if all(anchors.executable(k) for k in anchors.KINDS)
               else "nginx or haproxy is not installed (scripts/deps.sh build installs them, as root)")
BUILT = (H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists()


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

    def test_link_bound_noted(self):
        # A run whose link emulator was busy says so under its table, as a
        # loadgen-bound run does: the link, not the server, was the limit.
        run = {"design": "epoll", "scenario": "wan", "point": "100ms", "ok": True, "reason": None,
               "loadgen_bound": False, "link_bound": True, "figures": {"rps": 1.0, "link_cpu": 0.95},
               "file": None}
        notes = report.rows_for({"runs": [run]}, "wan")[3]
        self.assertTrue(any("link emulator was the limit" in n for n in notes), notes)
        notes = report.rows_for({"runs": [dict(run, link_bound=False)]}, "wan")[3]
        self.assertFalse(any("link emulator" in n for n in notes), notes)
        # Packets its TUN devices dropped (it could not read them in time)
        # make the run link-bound too, and the note says how many.
        run["figures"] = {"rps": 1.0, "link_cpu": 0.3, "link_tun_drops": 812}
        notes = report.rows_for({"runs": [run]}, "wan")[3]
        self.assertTrue(any("812 packets dropped" in n for n in notes), notes)

    def test_unfinished_older_than_every_answer_noted(self):
        # loadgen's unfinished requests become figures; one older than the
        # row's longest latency gets a note under the table, young ones
        # (cut off by the end of the run) do not.
        run = {"requests": 10, "rps": 5.0, "errors": {}, "latency_us": {"p99": 900, "max": 1000},
               "unfinished": {"requests": 2, "oldest_us": 1500000}}
        f = H.figures(run)
        self.assertEqual((f["unfinished"], f["unfinished_oldest_us"]), (2, 1500000))
        rec = {"design": "epoll", "scenario": "wan", "point": "100ms", "ok": True, "reason": None,
               "loadgen_bound": False, "link_bound": False, "figures": f, "file": None}
        notes = report.rows_for({"runs": [rec]}, "wan")[3]
        self.assertTrue(any("2 requests unanswered at the end, the oldest for 1500 ms" in n
                            for n in notes), notes)
        run["unfinished"]["oldest_us"] = 800
        rec["figures"] = H.figures(run)
        self.assertFalse(any("unanswered" in n for n in report.rows_for({"runs": [rec]}, "wan")[3]))
        self.assertIsNone(H.figures({"requests": 1, "latency_us": {}})["unfinished"])

    def test_loadgen_bound_when_its_cpu_is_saturated(self):
        run = {"requests": 1000, "duration_s": 2.0, "loadgen_cpu": {"user_s": 1.2, "system_s": 0.7}}
        self.assertTrue(H.loadgen_bound(run, "1"))
        run["loadgen_cpu"] = {"user_s": 0.3, "system_s": 0.2}
        self.assertFalse(H.loadgen_bound(run, "1"))
        run.update(requests=0, loadgen_cpu={"user_s": 2.0, "system_s": 0.0})
        self.assertFalse(H.loadgen_bound(run, "1"))

    def test_loadgen_bound_when_what_shares_its_cpus_saturates_them(self):
        # loadgen used half its CPU, and the upstream beside it the rest
        # (the proxy scenario on two cores): the client side was the limit.
        run = {"requests": 1000, "duration_s": 2.0,
               "loadgen_cpu": {"user_s": 0.2, "system_s": 0.8, "cpus": 1, "cpus_busy_s": 1.96}}
        self.assertTrue(H.loadgen_bound(run, "1"))
        self.assertAlmostEqual(H.figures(run)["loadgen_cpus_busy"], 0.98)
        rec = {"design": "proxy", "scenario": "proxy", "point": "0ms-1m-c64", "ok": True, "reason": None,
               "loadgen_bound": True, "link_bound": False, "figures": H.figures(run), "file": None}
        notes = report.rows_for({"runs": [rec]}, "proxy")[3]
        # the row's label names the point: the note does not repeat it
        self.assertIn("0ms-1m-c64 proxy: the client was the limit (loadgen's CPUs were 98% busy), not the server",
                      notes)
        notes = report.rows_for({"runs": [dict(rec, scenario="throughput", point="c64")]}, "throughput")[3]
        self.assertTrue(any(n.startswith("proxy c64: the client was the limit") for n in notes), notes)
        run["loadgen_cpu"]["cpus_busy_s"] = 1.5
        self.assertFalse(H.loadgen_bound(run, "1"))
        # Unpinned, loadgen's CPUs are the server's too: their being busy
        # says nothing of the client.
        run["loadgen_cpu"]["cpus_busy_s"] = 1.96
        self.assertFalse(H.loadgen_bound(run, None))
        # An older loadgen's JSON has no such figure.
        del run["loadgen_cpu"]["cpus"]
        self.assertFalse(H.loadgen_bound(run, "1"))
        self.assertIsNone(H.figures(run)["loadgen_cpus_busy"])


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

    def test_every_scenario_has_its_numbered_table(self):
        bench = load_bench_module()
        self.assertEqual(list(report.TABLES), bench.NAMES)
        self.assertEqual(bench.NAMES[0], "throughput")  # the rate scenario's reference runs first
        for i, sc in enumerate(H.scenarios(), 1):
            self.assertTrue(report.TABLES[sc.NAME][0].startswith(f"{i}. "))
            self.assertLessEqual(sc.BEST[0], len(sc.COLUMNS))  # column 0 is the design

    def test_recorded_summary_matches_the_schema(self):
        validate(json.loads((DATA / "summary.json").read_text()))

    def test_schema_rejects_a_run_without_design(self):
        import jsonschema
        s = json.loads((DATA / "summary.json").read_text())
        del s["runs"][0]["design"]
        with self.assertRaises(jsonschema.ValidationError):
            validate(s)


class LoadgenSchema(unittest.TestCase):
    """bin/loadgen --json and loadgen merge against $defs/loadgen_run."""

    def validate_run(self, run):
        import jsonschema
        schema = json.loads((ROOT / "results" / "schema.json").read_text())
        jsonschema.validate(run, dict(schema["$defs"]["loadgen_run"], **{"$defs": schema["$defs"]}))

    def test_recorded_runs_match(self):
        for f in sorted((DATA / "runs").glob("*.json")):
            self.validate_run(json.loads(f.read_text()))

    @unittest.skipUnless((H.BIN / "loadgen").exists() and (H.BIN / "server-epoll").exists(), "not built")
    def test_a_run_and_a_merge_match(self):
        d = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, d)
        with H.Server([str(H.BIN / "server-epoll"), "--port", "0"]) as srv:
            runs = []
            for i in range(2):
                run = H.run_loadgen(["-c", "2", "-R", "200", "-d", "0.5s", f"http://127.0.0.1:{srv.port}/"])
                self.validate_run(run)
                self.assertTrue(run["latency_us"]["histogram"].startswith("HISTFAAA"))
                (d / f"{i}.json").write_text(json.dumps(run))
                runs.append(run)
        p = subprocess.run([str(H.BIN / "loadgen"), "merge", str(d / "m.json"), str(d / "0.json"),
                            str(d / "1.json")], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        merged = json.loads((d / "m.json").read_text())
        self.validate_run(merged)
        self.assertEqual(merged["requests"], sum(r["requests"] for r in runs))
        self.assertEqual(merged["merged"]["agents"], 2)


class Exactness(unittest.TestCase):
    def test_database_against_acknowledged_sums(self):
        d = Path(tempfile.mkdtemp())
        db = d / "n.db"
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE counters(key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        con.executemany("INSERT INTO counters VALUES (?, ?)", [("a", 10), ("b", -3), ("c", 7)])
        con.commit()
        con.close()
        run = {"increment": {"acked": {"a": 10, "b": -3, "c": 5}, "unacked": {"c": 4}}}
        self.assertTrue(H.exactness(db, run)["exact"])  # c: 5 acked + up to 4 in doubt
        run["increment"]["acked"]["a"] = 11
        r = H.exactness(db, run)
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

    def test_each_rounds_figures_are_kept(self):
        b = self.bench()
        b.keep_median("epoll", "throughput", "c64", [self.run_with(r) for r in (90.0, 120.0, 100.0)])
        rounds = b.runs[0]["rounds"]
        self.assertEqual(rounds["rps"], [90.0, 100.0, 120.0])
        self.assertEqual(len(rounds["server_cpu_per_req_us"]), 3)  # what compare judges the noise from
        b.keep_median("epoll", "throughput", "c8", [self.run_with(50.0)])
        self.assertNotIn("rounds", b.runs[1])  # one round: no spread

    def test_a_failed_round_leaves_the_others(self):
        b = self.bench()
        b.keep_median("epoll", "throughput", "c8",
                      [self.run_with(50.0), (H.HarnessError("loadgen: boom"), None), self.run_with(70.0)])
        self.assertTrue(b.runs[0]["ok"])
        self.assertIn(b.runs[0]["figures"]["rps"], (50.0, 70.0))
        b.keep_median("select", "throughput", "c8", [(H.HarnessError("loadgen: boom"), None)] * 3)
        self.assertFalse(b.runs[1]["ok"])
        self.assertIn("boom", b.runs[1]["reason"])


class Unavailable(unittest.TestCase):
    """A design this machine cannot run (server-uring without io_uring)
    exits 2 before it listens, with one line: skipped with that line."""

    def fake_bin(self, script):
        d = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, d)
        exe = d / "server-uring"
        exe.write_text("#!/bin/sh\n" + script)
        exe.chmod(0o755)
        return d

    def with_bin(self, d, scenario):
        import argparse
        bench = load_bench_module()
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        b = bench.Bench(argparse.Namespace(quick=True, duration=0.3, repeat=1, out=str(out), designs=None,
                                           scenarios=None))
        self.addCleanup(shutil.rmtree, b.tmp, True)
        real = H.BIN
        H.BIN = d
        try:
            b.with_server("uring", scenario, lambda srv: self.fail("it started"))
            bench.Bench.scenario(b, "throughput").side_by_side(b, ["uring"], with_nginx=False)
        finally:
            H.BIN = real
        return b.runs

    def test_exit_2_is_a_skip_with_its_line(self):
        why = "server-uring: io_uring is not available: io_uring_setup: Operation not permitted"
        runs = self.with_bin(self.fake_bin(f"echo starting >&2\necho '{why}' >&2\nexit 2\n"), "hol-wait")
        self.assertEqual([(r["scenario"], r["ok"], r["reason"]) for r in runs],
                         [("hol-wait", False, f"skipped: {why}"), ("throughput", False, f"skipped: {why}")])

    def test_another_failure_is_not_a_skip(self):
        (run, _) = self.with_bin(self.fake_bin("echo 'server-uring: boom' >&2\nexit 1\n"), "c10k")
        self.assertEqual(run["reason"], "server-uring did not start: server-uring: boom")


class OOM(unittest.TestCase):
    """A server the memory limit kills is a result, "OOM at N clients"."""

    def test_memory_kill_is_a_result(self):
        import argparse
        bench = load_bench_module()
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        b = bench.Bench(argparse.Namespace(quick=True, duration=0.3, repeat=1, out=str(out), designs=None,
                                           scenarios=None, mem_limit="16M"))
        self.addCleanup(shutil.rmtree, b.tmp, True)

        class Host:  # a server host whose limit kills during the run
            limits = {"mem_limit": "16M"}
            kills = 0

            def oom_kills(self):
                return self.kills

        host = Host()

        class Proc:
            returncode = None

            def poll(self):
                return self.returncode

        srv = type("Srv", (), {"host": host, "proc": Proc(), "pid": 1, "addr": "10.77.0.1", "port": 1})()

        def killed(*a, **kw):
            host.kills += 1
            srv.proc.returncode = -9
            raise H.HarnessError("loadgen: connection reset")
        real = H.run_loadgen
        H.run_loadgen = killed
        try:
            rec = b.measure("threads", "c10k", "1000+64", srv, ["-c", "64", "--idle", "1000", "http://x/"])
            again = b.measure("threads", "c10k", "again", srv, ["-c", "64", "http://x/"])
        finally:
            H.run_loadgen = real
        self.assertFalse(rec["ok"])
        self.assertTrue(rec["reason"].startswith("OOM at 1064 clients"), rec["reason"])
        self.assertEqual(again["reason"], rec["reason"])  # the server is gone: said so, not retried


class EndToEnd(unittest.TestCase):
    def test_bad_flags_exit_2(self):
        for args in (["--designs", "nosuch"], ["--scenarios", "nosuch"], ["--duration", "0"],
                     ["--repeat", "0"], ["--bogus"], ["--rtt=-20ms"], ["--rtt", "20"],
                     ["--rtt", "5parsecs"], ["--loss", "101%"], ["--loss", "1.5"],
                     ["--rate", "10mbps"], ["--cpu-quota", "0"], ["--cpu-quota", "-1"],
                     ["--mem-limit", "64Q"], ["--mem-limit", "0"]):
            p = subprocess.run([str(BENCH), *args], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, args)
            self.assertEqual(len(p.stderr.splitlines()), 1, (args, p.stderr))

    @unittest.skipIf(WORLD_WHY, WORLD_WHY)
    def test_tiny_bench_over_a_link_records_the_topology(self):
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        p = subprocess.run([str(BENCH), "--quick", "--designs", "epoll", "--scenarios", "throughput",
                            "--duration", "0.3", "--rtt", "2ms", "--loss", "0%", "--rate", "1gbit",
                            "--cpu-quota", "0.5", "--mem-limit", "64M", "--out", str(out)],
                           capture_output=True, text=True, timeout=180)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        summary = json.loads((out / "summary.json").read_text())
        validate(summary)
        topo = summary["topology"]
        self.assertEqual([h["name"] for h in topo["hosts"]], ["server", "client"])
        server = topo["hosts"][0]
        self.assertEqual((server["cpu_quota"], server["mem_limit"], server["oom_kills"]), (0.5, "64M", 0))
        (link,) = topo["links"]
        self.assertEqual((link["rtt"], link["loss"], link["rate"]), ("2ms", "0%", "1gbit"))
        self.assertGreaterEqual(link["rtt_min_ms"], 2.0)
        self.assertLess(link["rtt_measured_ms"], 10)
        self.assertGreater(link["emulator"]["ab"]["out"], 0)
        self.assertEqual(topo["limits"]["server"], {"cpu_quota": 0.5, "mem_limit": "64M"})
        runs = [r for r in summary["runs"] if r["design"] == "epoll"]
        self.assertTrue(runs and all(r["ok"] and r["figures"]["rps"] > 0 for r in runs), runs)

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


@unittest.skipUnless(BUILT, "loadgen or server-epoll is not built")
@unittest.skipIf(ANCHORS_WHY, ANCHORS_WHY)
class Proxy(unittest.TestCase):
    """The proxy scenario (scripts/scenarios/11-proxy.py) and its anchors."""

    def test_an_anchor_proxies_and_leaves_nothing(self):
        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        with H.Server([str(H.BIN / "server-epoll"), "--port", "0"]) as up:
            for kind in anchors.KINDS:
                with anchors.ReverseProxy(kind, [f"127.0.0.1:{up.port}"], workdir=work) as px:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{px.port}/stream?n=70000",
                                                  timeout=10).read()
                    self.assertEqual(body, b"A" * 70000, kind)
                    self.assertIn(f"127.0.0.1:{up.port}", px.config)
                self.assertIsNotNone(px.exit_status, kind)  # stopped and reaped
                self.assertFalse(os.path.exists(f"/proc/{px.pid}"), kind)
        self.assertEqual(list(work.iterdir()), [])  # its directory removed

    def test_cpu_and_p99_to_best_anchor_are_medians_of_rounds(self):
        sc = next(sc for sc in H.scenarios() if sc.NAME == "proxy")

        def rec(p99s, kept, cpus=(), kept_cpu=1.0, kernel=()):
            return {"figures": {"rps": 1.0, "server_cpu_per_req_us": kept_cpu, "p99_us": kept,
                                "server_system_per_req_us": kept_cpu / 2},
                    "rounds": {"p99_us": p99s, "server_cpu_per_req_us": list(cpus),
                               "server_system_per_req_us": list(kernel)}}
        # The kept runs' p99s would say 3 against 2, and their CPU 18
        # against 21 (0.86): the rounds' medians say 20 against 25 (nginx)
        # and 30 (HAProxy), and 16 against 24 (nginx) and 25 (HAProxy).
        # Its floor: the median of its rounds' system CPU, 12, over the same 24.
        recs = {"proxy": rec([40, 20, 3, 10, 21], 3, [18, 16, 15, 17, 9], 18, [15, 12, 11, 16, 8]),
                "proxy-nopool": rec([50], 50),
                "nginx": rec([25, 2, 26, 24, 90], 2, [24, 30, 23, 25, 21], 30),
                "haproxy": rec([30, 30, 31], 30, [21, 25, 26], 21)}
        sc.to_anchors(recs)
        self.assertAlmostEqual(recs["proxy"]["figures"]["p99_to_best_anchor"], 20 / 25)
        self.assertAlmostEqual(recs["proxy-nopool"]["figures"]["p99_to_best_anchor"], 50 / 25)
        self.assertAlmostEqual(recs["proxy"]["figures"]["cpu_to_best_anchor"], 16 / 24)
        self.assertAlmostEqual(recs["proxy-nopool"]["figures"]["cpu_to_best_anchor"], 1 / 24)  # one round: its own
        self.assertAlmostEqual(recs["proxy"]["figures"]["cpu_floor_to_best_anchor"], 12 / 24)
        self.assertAlmostEqual(recs["proxy-nopool"]["figures"]["cpu_floor_to_best_anchor"], 0.5 / 24)
        self.assertEqual(sc.median_p99(rec([4, 1, 3, 2], 9)), 2.5)

    def test_quick_run_side_by_side(self):
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        # 0.6 s a run: at 20 ms, 0.3 s left a loaded machine's nginx without
        # one answer in the window
        p = subprocess.run([str(BENCH), "--quick", "--scenarios", "proxy", "--duration", "0.6",
                            "--out", str(out)], capture_output=True, text=True, timeout=240)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        self.assertIn("proxy: reverse proxies", p.stdout)
        summary = json.loads((out / "summary.json").read_text())
        validate(summary)
        runs = {(r["design"], r["point"]): r for r in summary["runs"] if r["scenario"] == "proxy"}
        variants = ["direct", "nginx", "haproxy"]
        if (H.BIN / "server-proxy").exists():
            variants += ["proxy", "proxy-nopool"]
        else:  # said so, not failed
            for v in ("proxy", "proxy-nopool"):
                self.assertIn("not built", runs[(v, "-")]["reason"])
        points = ["0ms-hello-c64", "0ms-hello-pipe16", "0ms-hello-rate"]
        if WORLD_WHY:
            for v in variants:
                self.assertTrue(runs[(v, "20ms")]["reason"].startswith("skipped: "), runs[(v, "20ms")])
        else:
            points += ["20ms-hello-c64", "q0.5-hello-c64", "20ms-hello-rate", "q0.5-hello-rate"]
        for v in variants:
            for point in points:
                r = runs.get((v, point))
                self.assertTrue(r and r["ok"], (v, point, r))
                f = r["figures"]
                self.assertGreater(f["rps"], 0, (v, point))
                self.assertEqual(f["errors"], 0, (v, point))  # keep-alive and pipelining survived
                # /proc counts CPU in 10 ms ticks: a run of a few thousand
                # requests across the link may take less than one
                self.assertGreaterEqual(f["server_cpu_per_req_us"], 0, (v, point))
                if point.startswith("0ms"):
                    self.assertGreater(f["server_cpu_per_req_us"], 0, (v, point))
                self.assertLessEqual(f["p50_us"], f["p99_us"], (v, point))
                if point.startswith("q0.5"):
                    # the quota's host is the proxy's: direct has none
                    self.assertEqual("throttled_periods" in f, v != "direct", (v, point))
                    self.assertGreaterEqual(f.get("throttled_periods", 0), 0, (v, point))
                if point.startswith("20ms"):
                    # every variant crosses the 20 ms link once per request at least
                    self.assertGreaterEqual(f["p50_us"], 19000, (v, point))
                    self.assertIn("link_cpu", f)
                    self.assertGreaterEqual(f["link_tun_drops"], 0)
            if v.startswith("proxy"):
                f = runs[(v, "0ms-hello-c64")]["figures"]
                # kernel time alone, each round's at most its CPU time: so are their medians
                self.assertGreater(f["cpu_floor_to_best_anchor"], 0, v)
                self.assertLessEqual(f["cpu_floor_to_best_anchor"], f["cpu_to_best_anchor"], v)
        # Every variant of a rate point ran open loop at one rate: 0.6 of the
        # slowest proxy's hello-c64 req/s, which direct, closed, would pass.
        for part in [p.removesuffix("-hello-rate") for p in points if p.endswith("-rate")]:
            closed = [runs[(v, f"{part}-hello-c64")]["figures"]["rps"] for v in ("proxy", "nginx", "haproxy")
                      if (v, f"{part}-hello-c64") in runs]
            for v in variants:
                f = runs[(v, f"{part}-hello-rate")]["figures"]
                self.assertEqual(f["target_rps"], int(0.6 * min(closed)), (v, part))
                self.assertLessEqual(f["rps"], 1.2 * f["target_rps"], (v, part))  # closed loop: 1/0.6 of it or more
        configs = summary["anchor_configs"]
        for text in ("master_process off;", "access_log off;", "keepalive 64;",
                     "proxy_http_version 1.1;", 'proxy_set_header Connection "";'):
            self.assertIn(text, configs["nginx 0ms"])
        for text in ("nbthread 1", "mode http", "http-reuse always", "option http-keep-alive"):
            self.assertIn(text, configs["haproxy 0ms"])
        if not WORLD_WHY:
            hosts = {h["name"]: h for h in summary["topology"]["hosts"]}
            self.assertEqual((hosts["px20p"]["cpu_quota"], hosts["pxq05p"]["cpu_quota"]), (None, 0.5))
            self.assertIn("10.77.0.", configs["haproxy 20ms"])


class Incrementor(unittest.TestCase):
    """The incrementor scenario (scripts/scenarios/08-incrementor.py)."""

    SC = next(sc for sc in H.scenarios() if sc.NAME == "incrementor")

    @staticmethod
    def run_of(rps, cpu, exact=True):
        return {"rps": rps, "server": {"cpu_per_request_us": cpu},
                "scenario_figures": {"exact": exact, "mismatch": None if exact else "1 keys, e.g. k7"}}

    def test_ratios_pair_the_runs_of_each_round(self):
        r = self.run_of
        # Round by round durable/buffered is 0.5, 0.6, 0.3 (median 0.5);
        # the medians of the req/s would say 45/100 = 0.45. A failed round
        # pairs with nothing.
        got = {"buffered": [(r(100, 8), None), (r(50, 9), None), (r(200, 7), None), (r(90, 8), None)],
               "durable": [(r(50, 16), None), (r(30, 18), None), (r(60, 20), None),
                           (H.HarnessError("x"), None)],
               "GET /": [(r(120, 8), None), (r(120, 6), None), (r(120, 7), None), (r(120, 4), None)]}
        self.assertAlmostEqual(self.SC.round_ratio(got, "durable", "buffered", "rps"), 0.5)
        # 8/8, 9/6, 7/7, 8/4: median of 1, 1.5, 1, 2
        self.assertAlmostEqual(self.SC.round_ratio(got, "buffered", "GET /", "server_cpu_per_req_us"), 1.25)
        self.assertIsNone(self.SC.round_ratio({"a": [(H.HarnessError("x"), None)], "b": [(r(1, 1), None)]},
                                              "a", "b", "rps"))

    @unittest.skipUnless((H.BIN / "incrementor").exists(), "the incrementor is not built")
    def test_an_inexact_round_fails_its_mode(self):
        r = self.run_of
        recorded = {}

        class Bench(load_bench_module().Bench):  # the real keep_median
            def __init__(self):
                pass

            def alternate(self, jobs):
                self.jobs = list(jobs)
                return {"buffered": [(r(100, 8), None), (r(90, 8, exact=False), None)],
                        "durable": [(r(50, 16), None), (r(40, 16), None)],
                        "GET /": [(r(120, 8), None), (r(120, 8), None)]}

            def record(self, design, scenario, point, run=None, reason=None, extra=None):
                recorded[point] = {"ok": reason is None, "reason": reason, "figures": {}}
                return recorded[point]

        bench = Bench()
        self.SC.run(bench, [])
        self.assertEqual(bench.jobs, ["buffered", "durable", "GET /"])
        self.assertFalse(recorded["buffered"]["ok"])
        self.assertIn("round 2: 1 keys, e.g. k7", recorded["buffered"]["reason"])
        self.assertTrue(recorded["durable"]["ok"])
        self.assertAlmostEqual(recorded["durable"]["figures"]["to_buffered"], (50 / 100 + 40 / 90) / 2)
        self.assertAlmostEqual(recorded["durable"]["figures"]["cpu_to_get"], 2.0)

    @unittest.skipUnless(BUILT and (H.BIN / "incrementor").exists(), "loadgen or the incrementor is not built")
    def test_rounds_side_by_side_exact(self):
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        p = subprocess.run([str(BENCH), "--scenarios", "incrementor", "--duration", "0.5", "--repeat", "2",
                            "--out", str(out)], capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        summary = json.loads((out / "summary.json").read_text())
        validate(summary)
        runs = {(r["design"], r["point"]): r for r in summary["runs"] if r["scenario"] == "incrementor"}
        self.assertEqual(set(runs), {("incrementor", "buffered"), ("incrementor", "durable"), ("epoll", "GET /")})
        for (design, point), rec in runs.items():
            self.assertTrue(rec["ok"], rec)
            f = rec["figures"]
            self.assertEqual(f["repeats"], 2)
            self.assertGreater(f["server_cpu_per_req_us"], 0)
            if design == "incrementor":
                self.assertTrue(f["exact"], f)
                self.assertGreater(f["keys"], 0)
                self.assertGreater(f["cpu_to_get"], 0)
        self.assertGreater(runs[("incrementor", "durable")]["figures"]["to_buffered"], 0)
        self.assertIn("CPU to GET", p.stdout)


@unittest.skipUnless(BUILT and (H.BIN / "incrementor").exists(), "loadgen or the incrementor is not built")
@unittest.skipIf(WORLD_WHY, WORLD_WHY)
@unittest.skipUnless(shutil.which("redis-server"), "no redis-server (scripts/deps.sh installs it)")
class IncrementorNodes(unittest.TestCase):
    """The scaled-out incrementor (scripts/scenarios/12-incrementor-nodes.py)."""

    def test_one_node_and_two_exact_within_their_quota(self):
        out = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, out)
        p = subprocess.run([str(BENCH), "--scenarios", "incrementor-nodes", "--duration", "1",
                            "--repeat", "1", "--out", str(out)], capture_output=True, text=True, timeout=240)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        summary = json.loads((out / "summary.json").read_text())
        validate(summary)
        runs = {r["design"]: r for r in summary["runs"] if r["scenario"] == "incrementor-nodes"}
        self.assertEqual(set(runs), {"1 node", "2 nodes"})
        for name, n in (("1 node", 1), ("2 nodes", 2)):
            r = runs[name]
            self.assertTrue(r["ok"], r)
            f = r["figures"]
            self.assertTrue(f["exact"], f)
            self.assertEqual(f["nodes"], n)
            self.assertGreater(f["rps"], 0)
            self.assertEqual(f["errors"], 0)
            self.assertGreater(f["keys"], 0)
            # the quota held the nodes (a period's rounding over a 1 s window)
            self.assertLess(f["node_cpu"], n * 0.4 * 1.15 + 0.05, f)
            self.assertIsNotNone(f["lag_p99_ms"])
            self.assertLessEqual(f["lag_p99_ms"], f["max_lag_ms"])
            self.assertGreater(f["machine_busy"], 0)
            self.assertLessEqual(f["machine_busy"], 1)
            run = json.loads((out / r["file"]).read_text())
            # loadgen on any CPU: the merged JSON sums each loadgen's CPUs
            self.assertEqual(run["loadgen_cpu"]["cpus"], n * len(os.sched_getaffinity(0)))
        self.assertAlmostEqual(runs["2 nodes"]["figures"]["to_one_node"],
                               runs["2 nodes"]["figures"]["rps"] / runs["1 node"]["figures"]["rps"])
        hosts = {h["name"]: h for h in summary["topology"]["hosts"] if h["name"].startswith("in")}
        quotas = [h["cpu_quota"] for h in hosts.values()]
        self.assertEqual(sorted(q for q in quotas if q), [0.4, 0.4, 0.4])  # 1 + 2 nodes
        # Two nodes on two CPUs (where there are two), the store on any.
        cpus = sorted(os.sched_getaffinity(0))
        two = sorted(h["cpus"] for name, h in hosts.items() if name.startswith("in2") and h["cpu_quota"])
        self.assertEqual(two, sorted(str(cpus[i % len(cpus)]) for i in range(2)))
        self.assertEqual([h["cpus"] for name, h in hosts.items() if not h["cpu_quota"]], [None, None])
        self.assertIn("incrementor-nodes: POST /increment", p.stdout)


if __name__ == "__main__":
    unittest.main()
