"""The bench's and the lab's pages (results/index.html, results/lab/index.html)
as a reader sees them: loaded in headless Chromium (Debian's `chromium`)
over the DevTools protocol on a pipe, with no console message, no error,
every chart drawn with what it shows, nothing fetched from anywhere. Also
the charts' SVG on its own. Run by scripts/test (python3 -m unittest); a
few seconds (one browser per page)."""

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import report  # noqa: E402
import svgchart  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "bench"
CHROMIUM = shutil.which("chromium")

# What the page shows: each chart's figure, its size as drawn, its marks
# (bars, points, curves), thresholds and spread whiskers; the resources
# the page loaded beyond itself.
PROBE = """JSON.stringify({
  charts: [...document.querySelectorAll('figure.chart')].map(f => {
    const s = f.querySelector('svg'), b = s ? s.getBoundingClientRect() : {width: 0, height: 0};
    return {id: f.id, width: b.width, height: b.height, marks: f.querySelectorAll('.mark').length,
            thresholds: f.querySelectorAll('.threshold').length, spreads: f.querySelectorAll('.spread').length};
  }),
  resources: performance.getEntriesByType('resource').map(e => e.name),
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent)
})"""


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe (it reads
    commands on fd 3, writes answers and events on fd 4, each a JSON text
    ended by a NUL), stopped by its PID."""

    def __init__(self, timeout=40):
        self.deadline = time.monotonic() + timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        # Out of the way of 3 and 4, so that the child's dup2s cannot clobber one another.
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(out_w)

        def fds():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
             "--window-size=1200,900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, pass_fds=(3, 4))
        os.close(hi_r)
        os.close(hi_w)
        self.buf, self.next_id, self.events = b"", 0, []

    def close(self):
        try:
            self.send("Browser.close", wait=False)
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.out_r)
        shutil.rmtree(self.profile, ignore_errors=True)

    def read(self):
        """The next message, within the deadline."""
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.out_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.out_r, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its pipe")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method, params=None, session=None, wait=True):
        """Send a command; its result (events meanwhile kept in events)."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        while wait:
            m = self.read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method, session):
        for i, m in enumerate(self.events):
            if m.get("method") == method and m.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            m = self.read()
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def load(self, path, screenshot=None):
        """Open file path; (what PROBE says, [console messages, exceptions
        and log errors]). Writes a PNG of the whole page to screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=s)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=s)
        self.wait_event("Page.loadEventFired", s)
        got = json.loads(self.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True},
                                   session=s)["result"]["value"])
        if screenshot:
            import base64
            shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=s)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        problems = []
        for m in self.events:
            p = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled":
                problems.append(f"console.{p.get('type')}: {[a.get('value') for a in p.get('args', [])]}")
            elif m.get("method") == "Runtime.exceptionThrown":
                problems.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                problems.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return got, problems


def hgrm(path, p50_ms):
    """A small .hgrm (loadgen's format: values in ms) around p50_ms."""
    lines = ["       Value     Percentile TotalCount 1/(1-Percentile)", ""]
    for i, pct in enumerate((0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)):
        inv = f"{1 / (1 - pct):.2f}" if pct < 1 else ""
        lines.append(f"{p50_ms * (1 + 3 * i * i / 10):12.3f} {pct:.12f} {int(pct * 1000):10d} {inv:>14}")
    Path(path).write_text("\n".join(lines) + "\n")


@unittest.skipUnless(CHROMIUM, "chromium is not installed (scripts/deps.sh build installs it, as root)")
class Pages(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pages-"))
        self.addCleanup(shutil.rmtree, self.tmp)
        self.browser = Browser()
        self.addCleanup(self.browser.close)

    def test_bench_page_leads_with_charts_and_every_chart_is_drawn(self):
        out = self.tmp / "bench"
        shutil.copytree(DATA, out)
        summary = json.loads((out / "summary.json").read_text())
        for r in summary["runs"]:  # three rounds each, as --repeat 3 records them
            if r["scenario"] == "throughput" and r["ok"]:
                f = r["figures"]
                r["rounds"] = {k: [f[k] * 0.9, f[k], f[k] * 1.05] for k in ("rps", "server_cpu_per_req_us")}
            if r["scenario"] == "hol-wait" and r["ok"]:
                hgrm(out / r["file"].replace(".json", ".hgrm"), 0.2)
        summary["config"]["repeat"] = 3
        report.write_all(out, summary)
        got, problems = self.browser.load(out / "index.html", screenshot=os.environ.get("REPORT_SCREENSHOT"))
        self.assertEqual(problems, [])
        self.assertEqual(got["resources"], [])  # nothing fetched: it reads offline
        ids = [c["id"] for c in got["charts"]]
        self.assertEqual(ids, ["chart-cpu-c64", "chart-cpu-c64-pipe16", "chart-throughput",
                               "chart-throughput-c64-pipe16", "chart-latency-hol-wait"])
        designs = 3
        for c in got["charts"]:
            self.assertGreater(c["width"], 300, c)
            self.assertGreater(c["height"], 100, c)
            self.assertGreater(c["marks"], 0, c)
        marks = {c["id"]: c for c in got["charts"]}
        self.assertEqual(marks["chart-cpu-c64"]["marks"], 2 * designs)  # user and system, stacked
        self.assertEqual(marks["chart-cpu-c64"]["spreads"], designs)  # the rounds' whiskers
        self.assertEqual(marks["chart-throughput"]["marks"], 4 * designs)  # c1, c8, c64, c256
        self.assertEqual(marks["chart-latency-hol-wait"]["marks"], designs)  # one curve each
        # the charts first, then the machine, then the tables
        self.assertEqual(got["headings"][:5], ["Server CPU per request, by design", "Throughput",
                                               "Latency percentile spectra", "Machine and topology", "Tables"])
        page = (out / "index.html").read_text()
        self.assertNotIn('"cpu_model"', page)  # no JSON dump
        self.assertNotIn("<script", page)

    def test_lab_page_draws_categories_as_bars_with_thresholds(self):
        os.environ["LAB_OUT"] = str(self.tmp / "lab")
        self.addCleanup(os.environ.pop, "LAB_OUT")
        lab = load_lab()

        def bars(l):
            l.fig(epoll_ping_ms=1500.2, reactor_ping_ms=0.4, per_design={"epoll": 1, "reactor": 2})
            l.check("on epoll the PING waits (>= 1000 ms)", True, mark=1000)
            l.check("on the reactor it does not (< 100 ms)", True, mark=100)
            l.check("an observation with no threshold", False)
            l.bars("PING latency", "ms", {"epoll": 1500.2, "reactor": 0.4})

        def lines(l):
            l.check("memory grows", True, mark=5000)
            l.lines("memory", "clients", "KB", {"threads": [(10, 3000), (100, 9000)], "epoll": [(10, 2000),
                                                                                           (100, 2100)]},
                    logx=True)
        lab.run_one("wait", "A WAIT", "q1?", bars)
        lab.run_one("threads-scale", "Threads", "q2?", lines)
        lab.index()
        got, problems = self.browser.load(self.tmp / "lab" / "index.html",
                                          screenshot=os.environ.get("LAB_SCREENSHOT"))
        self.assertEqual(problems, [])
        self.assertEqual(got["resources"], [])
        charts = {c["id"]: c for c in got["charts"]}
        self.assertEqual(set(charts), {"chart-wait", "chart-threads-scale"})
        self.assertEqual((charts["chart-wait"]["marks"], charts["chart-wait"]["thresholds"]), (2, 2))
        self.assertEqual((charts["chart-threads-scale"]["marks"], charts["chart-threads-scale"]["thresholds"]),
                         (4, 1))
        for c in charts.values():
            self.assertGreater(c["width"], 300, c)
        page = (self.tmp / "lab" / "index.html").read_text()
        self.assertIn("<td>per_design reactor</td><td>2</td>", page)  # figures in a table
        self.assertIn("E1: on epoll the PING waits (&gt;= 1000 ms): held (marked at 1000)", page)
        result = json.loads((self.tmp / "lab" / "wait" / "result.json").read_text())
        self.assertEqual(result["chart"], "chart.svg")
        self.assertEqual([e.get("mark") for e in result["expected"]], [1000, 100, None])
        self.assertTrue((self.tmp / "lab" / "wait" / "chart.svg").read_text().startswith("<svg"))


def load_lab():
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("lab", str(ROOT / "scripts" / "lab"))
    spec = importlib.util.spec_from_loader("lab", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Charts(unittest.TestCase):
    """The SVG itself, without a browser."""

    def test_bars_scale_to_their_values(self):
        svg = svgchart.hbars("t", "us", [("a", 10.0, (8.0, 12.0)), ("b", 20.0, None), ("c", None, None)],
                             thresholds=[(15.0, "E1", True)])
        self.assertEqual(svg.count('class="mark"'), 2)  # c has no value, said so
        self.assertIn("no value", svg)
        widths = [float(x.split('"')[0]) for x in svg.split('class="mark" x="')[1:] for x in
                  [x.split('width="')[1]]]
        self.assertAlmostEqual(widths[1] / widths[0], 2.0, places=2)
        self.assertIn("rounds: 8 to 12", svg)
        self.assertIn('class="threshold"', svg)

    def test_log_axes_and_ticks(self):
        self.assertEqual(svgchart.log_ticks(3, 4000), [1, 10, 100, 1000, 10000])
        self.assertEqual(svgchart.nice_ticks(0, 87), [0, 20, 40, 60, 80, 100])
        svg = svgchart.lines("t", "x", "y", {"s": [(1, 5), (10, 50), (100, 0)]}, logx=True, logy=True)
        self.assertEqual(svg.count('class="mark"'), 2)  # 0 has no place on a log axis


if __name__ == "__main__":
    unittest.main()
