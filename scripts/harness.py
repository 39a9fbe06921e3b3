"""harness: what scripts/bench and scripts/lab share.

Start a server pinned to its CPUs and stop it by PID whatever happens, run
bin/loadgen and read its JSON, describe the machine, draw charts with
gnuplot and write the HTML page. Standard library only (Debian's python3).
"""

import html
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("BIN", ROOT / "bin"))
if not BIN.is_absolute():
    BIN = ROOT / BIN

SCHEMA_VERSION = 1


class HarnessError(Exception):
    """A step could not run (a server that won't start, a loadgen failure)."""


def cpu_sets():
    """(server CPUs, loadgen CPUs) as taskset lists, sized from the online
    CPUs: the server gets the first half, the load generator the rest, so
    they never compete for a core. One CPU: both share it (None, None)."""
    n = os.cpu_count() or 1
    if n < 2 or not shutil.which("taskset"):
        return None, None
    half = n // 2
    server = ",".join(str(i) for i in range(half))
    gen = ",".join(str(i) for i in range(half, n))
    return server, gen


def ncpus(cpus):
    return len(cpus.split(",")) if cpus else (os.cpu_count() or 1)


def _raise_nofile():
    # c10k: children inherit the hard limit as their soft one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(argv, cpus):
    return (["taskset", "-c", cpus] + list(argv)) if cpus else list(argv)


class Server:
    """A server process started on a free port, waited for until it prints
    `listening on HOST:PORT`, and stopped by its PID (SIGTERM, then
    SIGKILL) when the `with` block ends, whatever happened inside."""

    def __init__(self, argv, cpus=None, log_dir=None, ready_timeout=10.0, port=None, env=None):
        self.argv = list(argv)
        self.env = env  # None: this process's environment
        self.cpus = cpus
        self.ready_timeout = ready_timeout
        self.log_dir = Path(log_dir or tempfile.gettempdir())
        self.proc = None
        self.port = port
        self.log_path = None
        self.exit_status = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = Path(self.argv[0]).name
        self.log_path = self.log_dir / f"{name}.{os.getpid()}.{int(time.time()*1000)}.log"
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(pinned(self.argv, self.cpus), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, preexec_fn=_raise_nofile, env=self.env)
        except OSError as e:
            log.close()
            raise HarnessError(f"cannot start {name}: {e}")
        deadline = time.monotonic() + self.ready_timeout
        buf = b""
        os.set_blocking(self.proc.stderr.fileno(), False)
        while time.monotonic() < deadline:
            chunk = self.proc.stderr.read() or b""
            buf += chunk
            m = re.search(rb"listening on (\S+):(\d+)", buf)
            if m:
                self.port = int(m.group(2))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        log.write(buf)
        if self.port is None or self.proc.poll() is not None:
            self.stop()
            log.close()
            raise HarnessError(f"{name} did not start: {buf.decode(errors='replace').strip()[-300:]}")
        # From here its stderr goes on into the log, read by a drain thread
        # so a chatty server never blocks on a full pipe.
        import threading

        def drain(src, dst):
            os.set_blocking(src.fileno(), True)
            for line in iter(src.readline, b""):
                dst.write(line)
            dst.close()

        threading.Thread(target=drain, args=(self.proc.stderr, log), daemon=True).start()
        return self

    def stop(self, timeout=12.0):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit status."""
        if not self.proc or self.exit_status is not None:
            return self.exit_status
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_status = self.proc.returncode
        return self.exit_status

    def rss_kb(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None


def nginx_server(port, cpus, workdir):
    """An nginx anchor: one worker, `return 200 "hello, world\\n"`, no log."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        return None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "hello, world\\n"; }}
  }}
}}
""")
    return AnchorServer([nginx, "-c", str(conf)], port, cpus)


class AnchorServer(Server):
    """A server that doesn't print `listening on`: ready once its port
    accepts a connection."""

    def __init__(self, argv, port, cpus):
        super().__init__(argv, cpus)
        self.fixed_port = port

    def start(self):
        import socket
        self.log_path = Path(tempfile.gettempdir()) / f"anchor.{os.getpid()}.log"
        self.proc = subprocess.Popen(pinned(self.argv, self.cpus), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"), preexec_fn=_raise_nofile)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.fixed_port), timeout=0.2).close()
                self.port = self.fixed_port
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise HarnessError(f"{self.argv[0]} did not start (see {self.log_path})")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_loadgen(args, cpus=None, server_pid=None, budget_s=60.0, hgrm=None):
    """Run bin/loadgen with args (a list: options and TARGET) and return its
    JSON as a dict. Bounded: killed after budget_s. Raises HarnessError with
    loadgen's own error line when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    argv = [str(BIN / "loadgen"), "--quiet", "--json", out]
    if server_pid:
        argv += ["--server-pid", str(server_pid)]
    if hgrm:
        argv += ["--hgrm", str(hgrm)]
    argv += [str(a) for a in args]
    try:
        p = subprocess.run(pinned(argv, cpus), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=budget_s, preexec_fn=_raise_nofile)
        if p.returncode != 0:
            raise HarnessError("loadgen: " + p.stderr.decode(errors="replace").strip()[-300:])
        with open(out) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"loadgen did not finish within {budget_s:.0f} s")
    except (OSError, ValueError) as e:
        raise HarnessError(f"loadgen: {e}")
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass


class Background:
    """A loadgen run in the background (the WAIT or BURN clients beside a
    measured run), stopped by PID when the block ends."""

    def __init__(self, args, cpus=None):
        self.argv = pinned([str(BIN / "loadgen"), "--quiet"] + [str(a) for a in args], cpus)
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_raise_nofile)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return False


def figures(run, duration=None):
    """The figures a table shows, from one loadgen JSON."""
    lat = run.get("latency_us") or {}
    srv = run.get("server") or {}
    errs = run.get("errors") or {}
    nerr = sum(v for k, v in errs.items() if isinstance(v, int))
    req = run.get("requests") or 0
    gen = run.get("loadgen_cpu") or {}
    # No answer at all is a 0% success rate (the requests were still
    # waiting when the run ended), and has no latency to speak of.
    none = not req
    f = {
        "rps": run.get("rps"),
        "requests": req,
        "errors": nerr,
        "success_rate": (req / (req + nerr)) if req else 0.0,
        "p50_us": None if none else lat.get("p50"),
        "p90_us": None if none else lat.get("p90"),
        "p99_us": None if none else lat.get("p99"),
        "p999_us": None if none else lat.get("p999"),
        "max_us": None if none else lat.get("max"),
        "loadgen_cpu_per_req_us": gen.get("cpu_per_request_us"),
    }
    if srv:
        user, system = srv.get("user_s"), srv.get("system_s")
        f.update({
            "server_user_per_req_us": (user * 1e6 / req) if req and user is not None else None,
            "server_system_per_req_us": (system * 1e6 / req) if req and system is not None else None,
            "server_cpu_per_req_us": srv.get("cpu_per_request_us"),
            "ctxsw_per_req": srv.get("ctxt_switches_per_request"),
            "peak_rss_kb": srv.get("peak_rss_kb"),
            "threads_max": srv.get("threads_max"),
        })
    return f


def tenant_metrics(port, tenant):
    """A tenant's sandbox_* counters from a server's /metrics, without the
    prefix and the _total suffix: requests, seconds, restored_bytes...; a
    counter with a second label gets its value appended: errors_throttled,
    limit_hits_time..."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as f:
        return parse_tenant_metrics(f.read().decode(), tenant)


def parse_tenant_metrics(text, tenant):
    """tenant_metrics from the text of /metrics."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if not name.startswith("sandbox_") or not rest.startswith(f'tenant="{tenant}"'):
            continue
        key = name[len("sandbox_"):].removesuffix("_total")
        labels = rest.partition("}")[0][len(f'tenant="{tenant}"'):]
        if labels.startswith(","):
            key += "_" + labels.partition("=")[2].strip('"')
        elif labels:
            continue  # another tenant whose name starts with this one
        out[key] = float(rest.split()[-1])
    return out


def loadgen_bound(run, gen_cpus):
    """Was the load generator, not the server, the limit? True when it used
    over 90% of the CPUs it had."""
    gen = run.get("loadgen_cpu") or {}
    dur = run.get("duration_s") or (run.get("config") or {}).get("duration_s")
    if not dur or gen.get("user_s") is None or not run.get("requests"):
        return False  # a run with no answers was limited by the server
    used = (gen.get("user_s", 0) + gen.get("system_s", 0)) / dur
    return used > 0.9 * ncpus(gen_cpus)


def env_info(cflags=None):
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    dirty = first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "compiler": first_line([os.environ.get("CC", "cc"), "--version"]),
        "cflags": cflags or os.environ.get("BENCH_CFLAGS", "-O2 -g"),
        "git_commit": (commit or "unknown") + ("-dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
    }


def fmt(v, kind=None):
    """Human form of a figure for the tables."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if kind == "rate":
        return f"{v*100:.1f}%"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def text_table(title, headers, rows, best=None):
    """A plain-text table; `best` = (column index, 'max' or 'min') marks the
    best row with a '*'."""
    mark = set()
    if best and rows:
        col, how = best
        vals = [(r[col], i) for i, r in enumerate(rows) if isinstance(r[col], (int, float)) and r[col] is not None]
        if vals:
            target = max(vals)[0] if how == "max" else min(vals)[0]
            mark = {i for v, i in vals if v == target}
    cells = [[("*" if i in mark else " ") + str(r[0])] + [fmt(v, "rate" if "success" in headers[j + 1] else None)
                                                           for j, v in enumerate(r[1:])]
             for i, r in enumerate(rows)]
    widths = [max(len(h), *(len(c[k]) for c in cells)) if cells else len(h) for k, h in enumerate(headers)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    out.append("  ".join("-" * w for w in widths))
    for c in cells:
        out.append("  ".join(c[k].rjust(widths[k]) if k else c[k].ljust(widths[k]) for k in range(len(c))))
    return "\n".join(out)


def html_table(headers, rows, best=None):
    mark = set()
    if best and rows:
        col, how = best
        vals = [(r[col], i) for i, r in enumerate(rows) if isinstance(r[col], (int, float))]
        if vals:
            target = max(vals)[0] if how == "max" else min(vals)[0]
            mark = {i for v, i in vals if v == target}
    h = "<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in headers) + "</tr>\n"
    for i, r in enumerate(rows):
        cls = ' class="best"' if i in mark else ""
        h += f"<tr{cls}>" + "".join(
            f"<td>{html.escape(fmt(v, 'rate' if 'success' in headers[j] else None))}</td>"
            for j, v in enumerate(r)) + "</tr>\n"
    return h + "</table>"


def gnuplot(svg, title, xlabel, ylabel, series, logx=False, logy=False, xtics=None):
    """Draw series {name: [(x, y), ...]} as lines into an SVG. Returns True
    when drawn; False when gnuplot is missing or nothing has a point."""
    series = {k: [(x, y) for x, y in v if y is not None] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series or not shutil.which("gnuplot"):
        return False
    svg = Path(svg)
    datadir = Path(tempfile.mkdtemp())
    plots = []
    for i, (name, pts) in enumerate(sorted(series.items())):
        d = datadir / f"s{i}.dat"
        d.write_text("".join(f"{x} {y}\n" for x, y in pts))
        plots.append(f"'{d}' using 1:2 with linespoints title '{name}'")
    script = [
        "set terminal svg size 800,480 dynamic enhanced font 'sans,11' background rgb 'white'",
        f"set output '{svg}'",
        f"set title '{title}'",
        f"set xlabel '{xlabel}'",
        f"set ylabel '{ylabel}'",
        "set grid",
        "set key outside right",
    ]
    if logx:
        script.append("set logscale x")
    if logy:
        script.append("set logscale y")
    if xtics:
        script.append("set xtics (" + ", ".join(f"'{lbl}' {x}" for lbl, x in xtics) + ")")
    script.append("plot " + ", ".join(plots))
    try:
        subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True,
                       capture_output=True, timeout=30)
        return True
    except (subprocess.SubprocessError, OSError):
        return False
    finally:
        shutil.rmtree(datadir, ignore_errors=True)


PAGE_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}tr.best{background:#e8f5e9;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f6f6f6;padding:.6em;overflow:auto}
.fail{color:#b00}.ok{color:#070}"""


def html_page(path, title, intro_html, sections):
    """Write a self-contained page: sections are (heading, html, [svg names])
    with the SVGs beside the page (so it reads offline)."""
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{PAGE_STYLE}</style><h1>{html.escape(title)}</h1>", intro_html]
    for heading, body, images in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
        for img in images:
            parts.append(f'<img src="{html.escape(img)}" alt="{html.escape(img)}">')
    Path(path).write_text("\n".join(parts) + "\n")


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def log(msg):
    print(msg, file=sys.stderr, flush=True)
