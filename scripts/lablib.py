"""lablib: what the lab's experiments (scripts/experiments/) share.

The record an experiment fills (`Lab`: what ran, the figures, the expected
observations, a chart), the experiments themselves found on disk
(`experiments`, `experiment`), and small tools: a design's server on a free
port pinned to the server's CPUs, a raw connection, a one-line question
timed, loadgen pinned to its CPUs; for the experiments over an emulated
network, a World (scripts/world.py) or the reason this machine cannot make
one (`Skip`), a server and loadgen inside its hosts. Starting and stopping
by PID, loadgen's JSON and the charts are harness.py's.
"""

import base64
import json
import os
import re
import resource
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import harness as H

FOLDER = Path(__file__).resolve().parent / "experiments"
SCPU, GCPU = H.cpu_sets()


def out_dir():
    """Where results go: $LAB_OUT, else results/lab/ (read at each call, so
    that a test can point it elsewhere)."""
    return Path(os.environ.get("LAB_OUT", H.ROOT / "results" / "lab"))


def experiments():
    """Every experiment module, in order (see scripts/lab's head)."""
    return H.discover(FOLDER, "lab experiment", ("TITLE", "QUESTION", "NEEDS", "run"))


def experiment(name):
    """One experiment module by NAME (conform runs two others)."""
    return next(e for e in experiments() if e.NAME == name)


class Lab:
    """One experiment's record: what ran, the figures, the checks. `quick`
    is scripts/lab --quick: fewer points where an experiment has several."""

    def __init__(self, name, quick=False):
        self.name = name
        self.quick = quick
        self.ran = []
        self.figures = {}
        self.checks = []  # (observation, held)
        self.marks = []  # each check's threshold in its chart's units, or None
        self.chart = None  # "chart.svg" once the runner has drawn chart_data
        self.chart_data = None  # what bars() or lines() asked to draw (result.json keeps it)

    def did(self, what):
        """Say what ran: a command line a reader could type again."""
        self.ran.append(what)

    def fig(self, **kw):
        """Record figures (name=value; dicts and lists too)."""
        self.figures.update(kw)

    def check(self, observation, held, mark=None):
        """An expected observation and whether it held on this machine.
        mark: the threshold it compares a charted figure with, in the
        chart's units (1000 for ">= 1000 ms" on a chart in ms), drawn on the
        chart as a dashed line labelled with the expectation's number."""
        self.checks.append((observation, bool(held)))
        self.marks.append(mark)

    def bars(self, title, ylabel, values):
        """A chart of one figure per label {label: value}: a bar each
        (categories, not a trend). ylabel is the values' unit."""
        self.chart_data = {"kind": "bars", "title": title, "unit": ylabel,
                           "values": [[k, v] for k, v in values.items()]}

    def lines(self, title, xlabel, ylabel, series, logx=False, logy=False):
        """A chart of series {name: [(x, y), ...]} (a figure against a
        quantity: clients, connections)."""
        self.chart_data = {"kind": "lines", "title": title, "xlabel": xlabel, "ylabel": ylabel,
                           "series": {k: [list(p) for p in v] for k, v in series.items()},
                           "logx": logx, "logy": logy}


def chart_svg(data, expected):
    """The SVG of a result's chart_data, with the threshold of each
    expectation (result.json's `expected`, numbered from 1) that has a mark."""
    import svgchart
    marks = [(e["mark"], f"E{i}", e["held"]) for i, e in enumerate(expected, 1) if e.get("mark") is not None]
    if data["kind"] == "bars":
        return svgchart.hbars(data["title"], data["unit"], [(k, v, None) for k, v in data["values"]],
                              thresholds=marks)
    return svgchart.lines(data["title"], data["xlabel"], data["ylabel"],
                          {k: [tuple(p) for p in v] for k, v in data["series"].items()},
                          logx=data.get("logx"), logy=data.get("logy"), thresholds=marks)


def srv_bin(design):
    return str(H.BIN / f"server-{design}")


def server(design, *flags, cpus=SCPU):
    """bin/server-DESIGN on a free port, for a `with` block (stopped by PID)."""
    return H.Server([srv_bin(design), "--port", "0", *flags], cpus=cpus, log_dir=tempfile.gettempdir())


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def ask(port, line, timeout=3.0, expect=None):
    """Seconds for `line` to be answered on a new connection, None when no
    answer came within timeout (or the answer was not `expect`)."""
    t0 = time.monotonic()
    try:
        s = connect(port)
        s.settimeout(timeout)
        s.sendall(line)
        data = b""
        while b"\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
        s.close()
        if expect and not data.startswith(expect):
            return None
        return time.monotonic() - t0
    except OSError:
        return None


def ask_http(port, path):
    """The status of GET path, None when nothing answered."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as f:
            return f.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def loadgen(args, server=None, budget=60):
    """bin/loadgen pinned to its CPUs, sampling the server; its JSON."""
    return H.run_loadgen(args, cpus=GCPU, server_pid=server.pid if server else None, budget_s=budget)


def cpu_per_req(design, flags, lab, args, shown=None):
    """The figures of one loadgen run (args, without the target) against
    GET / on bin/server-DESIGN started with flags."""
    with server(design, *flags) as s:
        r = loadgen(args + [f"http://127.0.0.1:{s.port}/"], s)
    f = H.figures(r)
    lab.did(f"loadgen {shown or ' '.join(args)} against bin/server-{design} {' '.join(flags)}")
    return f


def ms(v):
    """Seconds as milliseconds, one decimal; None stays None."""
    return None if v is None else round(v * 1000, 1)


# --- experiments over an emulated network (scripts/world.py) ---------------


class Skip(Exception):
    """This machine cannot run the experiment (not root, no namespaces, no
    TUN): the reason, which the runner reports as a skip, not a failure."""


def world():
    """A World for a `with` block, its links on the last CPU (SCHED_FIFO:
    the machine's other jobs do not starve them). Skip when this machine
    cannot make one."""
    import world as W
    if not (H.BIN / "world-link").exists():
        raise Skip(f"{H.BIN}/world-link is not built (make)")
    why = W.why_not()
    if why:
        raise Skip(f"no emulated network here: {why}")
    # The hosts' processes inherit the hard descriptor limit as their soft
    # one: a client holds thousands of connections (c10k).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = os.cpu_count() or 1
    return W.World(bin_dir=H.BIN, link_cpu=n - 1 if n > 1 else None)


class HostServer:
    """bin/server-DESIGN in a world's host, listening on the host's address,
    waited for until it says `listening on`. Killed (by PID) when the block
    ends or the world closes; `exit_status()` says whether it died first
    (None while it runs: a memory limit's kill is -9)."""

    def __init__(self, host, design, *flags, port=8080):
        self.host, self.design, self.port = host, design, port
        self.argv = [srv_bin(design), "--host", host.addr, "--port", str(port), *flags]
        self.proc = host.popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        buf = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in buf and time.monotonic() < deadline:
            if select.select([self.proc.stderr], [], [], 0.1)[0]:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        self.log = [buf.decode(errors="replace")]
        if not re.search(rb"listening on \S+:\d+", buf):
            self.stop()
            raise H.HarnessError(f"server-{design} did not start in host {host.name}: "
                                 f"{self.log[0].strip()[-300:]}")
        # Its stderr is read on so that a chatty server never blocks on it.
        threading.Thread(target=lambda: [self.log.append(ln.decode(errors="replace"))
                                         for ln in iter(self.proc.stderr.readline, b"")],
                         daemon=True).start()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return f"http://{self.host.addr}:{self.port}/"

    @property
    def tcp(self):
        return f"tcp://{self.host.addr}:{self.port}"

    def exit_status(self):
        return self.proc.poll()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def host_loadgen(host, args, server=None, budget=30):
    """bin/loadgen in a world's host (args: options and TARGET), sampling the
    server when given (one PID namespace for all hosts): its JSON. Bounded by
    budget seconds."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    argv = [str(H.BIN / "loadgen"), "--quiet", "--json", out]
    if server:
        argv += ["--server-pid", str(server.pid)]
    try:
        try:
            p = host.run(argv + [str(a) for a in args], timeout=budget)
        except subprocess.TimeoutExpired:
            raise H.HarnessError(f"loadgen in host {host.name} did not finish within {budget} s")
        if p.returncode != 0:
            raise H.HarnessError("loadgen: " + p.stderr.strip()[-300:])
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def upstream_counts(run):
    """A proxy's counters per upstream over one loadgen run, from the delta
    of its /metrics (loadgen --metrics): {"HOST:PORT": {"opened": n,
    "reused": n, "failed": n, "retries": n, "timeouts": n, "truncated": n,
    "responses": n}}, responses of every status added. An error when the
    page has none (not a proxy's)."""
    out = {}
    for key, v in (run.get("metrics_delta") or {}).items():
        m = re.fullmatch(r"proxy_upstream_(?:connections_)?(opened|reused|failed|retries|timeouts|truncated|"
                         r"responses)_total\{(.*)\}", key)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))) if m else {}
        if "upstream" in labels:
            up = out.setdefault(labels["upstream"], {})
            up[m.group(1)] = up.get(m.group(1), 0) + round(v)
    if not out:
        raise H.HarnessError("no proxy_upstream_*_total{upstream=...} counters in the proxy's /metrics")
    return out


def favour(host, weight=10):
    """Give host's processes `weight` times a default share of the CPU when
    the machine's other jobs want it too (cpu.shares, v1; cpu.weight, v2):
    a latency then measures the design and its limits, not the machine's
    neighbours. A quota still caps the host."""
    d = host.cg.dirs
    if "cpu" in d:
        (d["cpu"] / "cpu.shares").write_text(str(1024 * weight))
    else:
        (d["all"] / "cpu.weight").write_text(str(100 * weight))


def hist_counts(run):
    """loadgen's latency histogram (its JSON's HdrHistogram V2, compressed,
    base64: loadgen/hlog.h) as {bucket index: count}. Counts of several
    agents add bucket for bucket: the exact histogram of all their samples."""
    raw = base64.b64decode(run["latency_us"]["histogram"])
    cookie, n = struct.unpack(">II", raw[:8])
    if cookie != 0x1C849314:
        raise ValueError(f"not a compressed HdrHistogram V2 (cookie {cookie:#x})")
    p = zlib.decompress(raw[8:8 + n])
    length = struct.unpack(">I", p[4:8])[0]
    body, pos, idx, counts = p[40:40 + length], 0, 0, {}
    while pos < len(body):
        v, shift = 0, 0
        for k in range(9):  # LEB128, at most 9 bytes, the ninth holds 8 bits
            b = body[pos]
            pos += 1
            if k == 8:
                v |= b << 56
                break
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        v = (v >> 1) ^ -(v & 1)  # ZigZag
        if v < 0:
            idx += -v  # a run of empty buckets
        else:
            if v:
                counts[idx] = counts.get(idx, 0) + v
            idx += 1
    return counts


def bucket_low(i):
    """The lowest latency (us) of loadgen's histogram bucket i (hist.c)."""
    if i < 256:
        return i
    shift = (i >> 7) - 1
    return ((i & 127) + 128) << shift


def merge_counts(*hists):
    out = {}
    for h in hists:
        for i, n in h.items():
            out[i] = out.get(i, 0) + n
    return out


def percentile_us(counts, pct):
    """The pct-th percentile (us, a bucket's low end) of counts."""
    total = sum(counts.values())
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= total * pct / 100:
            return bucket_low(i)
    return None


def lowest(counts, n):
    """The n smallest samples of histogram counts, as a histogram."""
    out = {}
    for i in sorted(counts):
        if n <= 0:
            break
        out[i] = min(counts[i], n)
        n -= out[i]
    return out


def fraction_at_least(counts, us):
    """The fraction of the samples of counts at or above us (to the bucket:
    1/128 of the value)."""
    total = sum(counts.values())
    return sum(n for i, n in counts.items() if bucket_low(i) >= us) / total if total else None


def memory_usage(host):
    """Bytes the host's memory cgroup holds now (its processes' pages, and
    the kernel's for them: stacks, sockets)."""
    d = host.cg.dirs
    f = d["memory"] / "memory.usage_in_bytes" if "memory" in d else d["all"] / "memory.current"
    return int(f.read_text())


# --- the lab's page (results/lab/index.html) ---------------------------------


def add_chart(result, lab):
    """Put an experiment's chart into its result: the data (chart_data),
    each expectation's mark, and chart.svg beside result.json."""
    for e, m in zip(result["expected"], lab.marks):
        if m is not None:
            e["mark"] = m
    if lab.chart_data:
        result["chart_data"] = lab.chart_data
        svg = out_dir() / lab.name / "chart.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(chart_svg(lab.chart_data, result["expected"]) + "\n")
        result["chart"] = lab.chart = "chart.svg"


def figure_rows(figures, prefix=""):
    """(name, value text) rows of an experiment's figures: a dict's entries
    become rows of their own (name, then key), anything deeper is compact
    JSON in its cell."""
    rows = []
    for k, v in figures.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix and all(not isinstance(x, (dict, list)) for x in v.values()):
            rows += figure_rows(v, prefix=f"{name} ")
        elif isinstance(v, (dict, list)):
            rows.append((name, json.dumps(v, separators=(", ", ": "))))
        else:
            rows.append((name, H.fmt(v)))
    return rows


INDEX_STYLE = """figure.chart{margin:.5em 0}figure.chart svg{max-width:100%;height:auto;border:1px solid #eee}
.badge{display:inline-block;padding:0 .5em;border-radius:.3em;color:white;font-size:.85em}
.held{background:#1a7f37}.failed{background:#c62828}.skipped{background:#777}
table.figs td{text-align:left;font-size:.9em}table.figs td:last-child{font-family:monospace}
ol.exp{list-style:none;padding-left:1em}ol.exp li{margin:.2em 0}table.overview td,table.overview th{text-align:left}"""


def index_html(results, out):
    """The lab's page for results (result.json dicts, in lab order): an
    overview, then per experiment its question, its chart (categories as
    bars, each expectation's threshold marked), the expectations and the
    figures in a small table. One file: the charts are inline SVG."""
    import html as h

    def state(r):
        return "skipped" if r.get("skipped") else "held" if r["held"] else "failed"
    n = {k: sum(state(r) == k for r in results) for k in ("held", "failed", "skipped")}
    parts = ["<!doctype html><html lang=en><meta charset=utf-8><title>concurrency-lab: the lab</title>",
             f"<style>{H.PAGE_STYLE}{INDEX_STYLE}</style><h1>concurrency-lab: the lab</h1>",
             f"<p>{n['held']} held, {n['failed']} failed, {n['skipped']} skipped. Each experiment: its question, "
             "a chart of what it measured (a dashed line for each expectation's threshold, E1, E2... as "
             "numbered below it: green held, red did not), what was expected and whether it held on this "
             "machine, the figures, what ran. docs/LAB.md explains the why.</p>",
             "<table class=overview><tr><th>experiment</th><th>title</th><th>verdict</th><th>s</th></tr>"]
    for r in results:
        parts.append(f"<tr><td><a href='#{h.escape(r['name'])}'>{h.escape(r['name'])}</a></td>"
                     f"<td>{h.escape(r['title'])}</td><td><span class='badge {state(r)}'>{state(r)}</span></td>"
                     f"<td>{h.escape(H.fmt(r.get('elapsed_s')))}</td></tr>")
    parts.append("</table>")
    for r in results:
        parts.append(f"<h2 id='{h.escape(r['name'])}'>{h.escape(r['name'])}: {h.escape(r['title'])} "
                     f"<span class='badge {state(r)}'>{state(r)}</span></h2>")
        parts.append(f"<p><b>{h.escape(r['question'])}</b></p>")
        if r.get("skipped"):
            parts.append(f"<p>skipped: {h.escape(r['skipped'])}</p>")
        svg = None
        if r.get("chart_data"):
            svg = chart_svg(r["chart_data"], r["expected"])
        elif r.get("chart") and (out / r["name"] / r["chart"]).exists():  # a result from before chart_data
            text = (out / r["name"] / r["chart"]).read_text()
            svg = text[text.find("<svg"):] if "<svg" in text else None
        if svg:
            parts.append(f"<figure class=chart id='chart-{h.escape(r['name'])}'>{svg}</figure>")
        parts.append("<ol class=exp>" + "".join(
            f"<li class={'ok' if e['held'] else 'fail'}>E{i}: {h.escape(e['observation'])}: "
            f"{'held' if e['held'] else 'did not hold'}"
            f"{' (marked at ' + h.escape(H.fmt(e['mark'])) + ')' if e.get('mark') is not None else ''}</li>"
            for i, e in enumerate(r["expected"], 1)) + "</ol>")
        rows = figure_rows(r.get("figures") or {})
        if rows:
            parts.append("<table class=figs><tr><th>figure</th><th>value</th></tr>" + "".join(
                f"<tr><td>{h.escape(k)}</td><td>{h.escape(v)}</td></tr>" for k, v in rows) + "</table>")
        if r.get("ran"):
            parts.append("<details><summary>what ran</summary><ul>" + "".join(
                f"<li><code>{h.escape(x)}</code></li>" for x in r["ran"]) + "</ul></details>")
    return "\n".join(parts) + "\n"
