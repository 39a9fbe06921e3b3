"""harness: what scripts/bench and scripts/lab share.

Start a server pinned to its CPUs and stop it by PID whatever happens, run
bin/loadgen and read its JSON, describe the machine, format the tables and
the pages' style (the charts are scripts/svgchart.py's); find the lab's
experiments and the bench's scenarios, one file each (`discover`). Standard
library only (Debian's python3).
"""

import functools
import html
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
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


class Unavailable(HarnessError):
    """A server that exited 2 before it listened: it cannot run here (a
    kernel without io_uring or one of its features, say) or with these
    flags, and said why in one line. Its message is "skipped: " and that
    line: the bench records the design as skipped, with the reason."""


FILE_NAME = re.compile(r"^(\d+)-([a-z0-9][a-z0-9-]*)\.py$")


@functools.lru_cache(maxsize=None)
def discover(folder, kind, required):
    """The modules in folder, one per file NN-NAME.py, in file-name order:
    the number only sorts them (the runners number them 1, 2, ... by
    position). Each module must set NAME to the NAME of its file name and
    every attribute in `required` (a tuple). Files starting with _ are not
    loaded (helpers); any other .py that is not NN-NAME.py is an error, so
    that a misnamed file is not silently left out. Raises HarnessError
    saying which file is wrong and why."""
    found, names = [], set()
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        m = FILE_NAME.match(path.name)
        if not m:
            raise HarnessError(f"{path}: a {kind} file is named NN-NAME.py (a number, a dash, its name in lower case)")
        spec = importlib.util.spec_from_file_location(f"{Path(folder).name}.{m.group(2)}", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:  # a broken file names itself, not a traceback
            raise HarnessError(f"{path}: cannot load: {type(e).__name__}: {e}")
        if getattr(mod, "NAME", None) != m.group(2):
            raise HarnessError(f"{path}: NAME must be '{m.group(2)}', as in its file name")
        missing = [a for a in required if not hasattr(mod, a)]
        if missing:
            raise HarnessError(f"{path}: a {kind} sets {', '.join(missing)}")
        if mod.NAME in names:
            raise HarnessError(f"{path}: a second {kind} named '{mod.NAME}'")
        names.add(mod.NAME)
        found.append(mod)
    return found


def scenarios():
    """The bench's scenarios, scripts/scenarios/NN-NAME.py, in order (see
    scripts/bench's head); report.py takes their tables from them."""
    return discover(ROOT / "scripts" / "scenarios", "bench scenario",
                    ("ABOUT", "QUICK", "TITLE", "COLUMNS", "BEST", "run"))


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


def spawn(argv, host=None, **kw):
    """Popen argv here, or in a world host (scripts/world.py: its namespace
    and cgroups) when host is given; either way the Popen's pid is the
    command's, so it is stopped and sampled by PID alike."""
    if host is None:
        return subprocess.Popen(argv, preexec_fn=_raise_nofile, **kw)
    _raise_nofile()  # Host.popen has its own preexec_fn: children inherit ours
    return host.popen(argv, **kw)


class Server:
    """A server process started on a free port, waited for until it prints
    `listening on HOST:PORT`, and stopped by its PID (SIGTERM, then
    SIGKILL) when the `with` block ends, whatever happened inside. With a
    world host it runs there (its argv then says `--host` the host's
    address); `addr` is where it listens, as it said."""

    def __init__(self, argv, cpus=None, log_dir=None, ready_timeout=10.0, port=None, env=None,
                 host=None):
        self.argv = list(argv)
        self.host = host
        self.addr = "127.0.0.1"
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
            self.proc = spawn(pinned(self.argv, self.cpus), self.host, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=self.env)
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
                self.addr, self.port = m.group(1).decode(), int(m.group(2))
                break
            if self.proc.poll() is not None:
                buf += self.proc.stderr.read() or b""  # what it said before it exited
                break
            time.sleep(0.02)
        log.write(buf)
        if self.port is None or self.proc.poll() is not None:
            said = buf.decode(errors="replace").strip()
            status = self.stop()
            log.close()
            self.proc.stderr.close()
            if status == 2 and said:
                raise Unavailable(f"skipped: {said.splitlines()[-1][-300:]}")
            raise HarnessError(f"{name} did not start: {said[-300:]}")
        # From here its stderr goes on into the log, read by a drain thread
        # so a chatty server never blocks on a full pipe.
        import threading

        def drain(src, dst):
            os.set_blocking(src.fileno(), True)
            for line in iter(src.readline, b""):
                dst.write(line)
            dst.close()
            src.close()

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

    def __init__(self, argv, port, cpus, host=None):
        super().__init__(argv, cpus, host=host)
        self.fixed_port = port

    def start(self):
        import socket
        self.log_path = Path(tempfile.gettempdir()) / f"anchor.{os.getpid()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = spawn(pinned(self.argv, self.cpus), self.host, stdout=subprocess.DEVNULL, stderr=log)
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


# A live.Live when bench or lab runs with --live or on a terminal (its
# progress line); with --live every loadgen run streams its seconds to it
# (--stream), without it loadgen runs as it would unwatched.
LIVE = None


def _watch(fd, label):
    """Hand loadgen's --stream lines from fd to LIVE until it closes it."""
    with os.fdopen(fd, "r") as f:
        for line in f:
            try:
                LIVE.feed(json.loads(line), label)
            except ValueError:
                pass  # not a line of loadgen's: nothing to show


def run_loadgen(args, cpus=None, server_pid=None, budget_s=60.0, hgrm=None, host=None):
    """Run bin/loadgen with args (a list: options and TARGET), here or in a
    world host, and return its JSON as a dict. Bounded: killed after
    budget_s. Raises HarnessError with loadgen's own error line when it
    fails."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    argv = [str(BIN / "loadgen"), "--quiet", "--json", out]
    if server_pid:
        argv += ["--server-pid", str(server_pid)]
    if hgrm:
        argv += ["--hgrm", str(hgrm)]
    watch, rfd, wfd = None, None, None
    if LIVE is not None and LIVE.httpd is not None:
        import live
        rfd, wfd = os.pipe()
        argv += ["--stream", str(wfd)]
        label = live.server_label(server_pid) if server_pid else str(args[-1])
        watch = threading.Thread(target=_watch, args=(rfd, label), daemon=True)
    argv += [str(a) for a in args]
    p = None
    try:
        p = spawn(pinned(argv, cpus), host, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                  pass_fds=(wfd,) if wfd is not None else ())
        if watch:
            os.close(wfd)  # loadgen's copy is the writer now: its exit ends the reader
            wfd = None
            watch.start()  # the reader owns rfd now
            rfd = None
        _, err = p.communicate(timeout=budget_s)
        if watch:
            watch.join(5)
        if p.returncode != 0:
            raise HarnessError("loadgen: " + err.decode(errors="replace").strip()[-300:])
        with open(out) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise HarnessError(f"loadgen did not finish within {budget_s:.0f} s")
    except (OSError, ValueError) as e:
        raise HarnessError(f"loadgen: {e}")
    finally:
        for fd in (rfd, wfd):  # loadgen did not start: nobody took them
            if fd is not None:
                os.close(fd)
        try:
            os.unlink(out)
        except OSError:
            pass


class Background:
    """A loadgen run in the background (the WAIT or BURN clients beside a
    measured run), stopped by PID when the block ends."""

    def __init__(self, args, cpus=None, host=None):
        self.argv = pinned([str(BIN / "loadgen"), "--quiet"] + [str(a) for a in args], cpus)
        self.host = host
        self.proc = None

    def __enter__(self):
        self.proc = spawn(self.argv, self.host, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    unf = run.get("unfinished") or {}  # absent from older loadgens' files
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
        "loadgen_cpus_busy": cpus_busy(run),
        "unfinished": unf.get("requests"),
        "unfinished_oldest_us": unf.get("oldest_us"),
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


def exactness(db, run):
    """Compare an incrementor's database with loadgen's acknowledged sums
    (its --increment JSON): every key must hold at least what was
    acknowledged and at most that plus what was sent without an answer."""
    inc = run.get("increment") or {}
    acked, unacked = inc.get("acked") or {}, inc.get("unacked") or {}
    try:
        con = sqlite3.connect(str(db))
        got = dict(con.execute("SELECT key, value FROM counters").fetchall())
        con.close()
    except sqlite3.Error as e:
        return {"exact": False, "mismatch": f"cannot read the database: {e}"}
    bad = []
    for k in set(acked) | set(got):
        a, u, v = acked.get(k, 0), unacked.get(k, 0), got.get(k, 0)
        lo, hi = min(a, a + u), max(a, a + u)
        if not lo <= v <= hi:
            bad.append(k)
    return {"exact": not bad, "keys": len(got), "mismatch": (f"{len(bad)} keys, e.g. {bad[0]}" if bad else None),
            "acked_requests": inc.get("acked_requests")}


def cpus_busy(run):
    """The share of loadgen's CPUs that was busy over the run's window,
    whoever kept them busy (loadgen, or what shares its CPUs: the proxy
    scenario's upstream on two cores); None when loadgen did not say."""
    gen = run.get("loadgen_cpu") or {}
    dur = run.get("duration_s")
    if not dur or not gen.get("cpus") or gen.get("cpus_busy_s") is None:
        return None
    # /proc/stat counts in ticks: a full CPU may read a tick over the window
    return min(1.0, gen["cpus_busy_s"] / (dur * gen["cpus"]))


def loadgen_bound(run, gen_cpus):
    """Was the client side, not the server, the limit? True when loadgen
    used over 90% of the CPUs it had, or, when it has CPUs of its own
    (gen_cpus), when something else sharing them kept them over 90% busy:
    the answers then come as fast as the client's CPUs take them."""
    gen = run.get("loadgen_cpu") or {}
    dur = run.get("duration_s") or (run.get("config") or {}).get("duration_s")
    if not dur or gen.get("user_s") is None or not run.get("requests"):
        return False  # a run with no answers was limited by the server
    used = (gen.get("user_s", 0) + gen.get("system_s", 0)) / dur
    busy = cpus_busy(run) if gen_cpus else None  # unpinned, the server's CPUs count too
    return used > 0.9 * ncpus(gen_cpus) or (busy is not None and busy > 0.9)


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


PAGE_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}tr.best{background:#e8f5e9;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f6f6f6;padding:.6em;overflow:auto}
.fail{color:#b00}.ok{color:#070}"""


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def log(msg):
    if LIVE is not None:
        LIVE.clear()  # the progress line goes, the message stays, the line comes back
    print(msg, file=sys.stderr, flush=True)
    if LIVE is not None:
        LIVE.draw()
