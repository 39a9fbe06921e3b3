"""anchors: nginx and HAProxy as reverse proxies, the proxy design's anchors.

    with anchors.ReverseProxy("nginx", ["127.0.0.1:8090"], cpus="0", workdir=d) as px:
        run_loadgen([..., f"http://{px.addr}:{px.port}/"], server_pid=px.pid)
        px.config  # the exact configuration it runs with

Each runs as one process with one event loop (nginx: no master, one worker;
HAProxy: nbthread 1), in the foreground, pinned to the caller's CPU, with a
keep-alive pool to its upstreams (round robin) as large as server-proxy's
default (64 idle connections), no access log, in a directory of its own
(configuration, pid, logs, temp paths) removed when it stops. It listens
on a free port of 127.0.0.1, or of a world host's address (scripts/world.py)
when given a host; it is ready once that process holds a listening socket
on that port (read from /proc, so it works inside a namespace too), and is
stopped by its PID like any H.Server.

Beyond what makes them proxies, the configurations set only what keeps
them comparable with server-proxy: X-Forwarded-For added as it adds it,
the same timeouts (30 s to connect and for an answer), no cap on requests
per connection (nginx closes a client connection after 1,000 by default,
losing the pipelined requests behind it), and nginx streams a large answer
through its buffers instead of spooling it to a temporary file.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import harness as H

KINDS = ("nginx", "haproxy")
POOL = 64  # idle upstream connections kept: server-proxy's --upstream-keepalive default
TIMEOUT_S = 30  # connect and answer timeout: server-proxy's --upstream-timeout-ms default


def executable(kind):
    """The path of nginx or haproxy, or None when not installed."""
    if kind not in KINDS:
        raise ValueError(f"unknown anchor {kind!r}")
    path = shutil.which(kind) or f"/usr/sbin/{kind}"
    return path if os.access(path, os.X_OK) else None


def _nginx_temp_paths(nginx):
    """The *_temp_path directives of the modules this nginx was built with:
    each defaults to an absolute path under /var/lib/nginx, which a
    directory of our own must replace; a module built out has no directive."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    paths = []
    for module in re.findall(r"--http-([a-z-]+)-temp-path=", out):
        name = module.replace("-", "_")
        if f"--without-http_{name}_module" not in out:
            paths.append(f"{name}_temp_path")
    return paths


def nginx_config(listen, upstreams, workdir, nginx="nginx"):
    """nginx.conf: one process, proxy_pass to an upstream block with a pool."""
    d = Path(workdir)
    temp = "".join(f"    {p} {d}/{p.removesuffix('_temp_path')};\n" for p in _nginx_temp_paths(nginx))
    servers = "".join(f"        server {u};\n" for u in upstreams)
    return f"""# nginx as a reverse proxy: one process (no master), one event loop
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp}    # the default (1000) closes a client connection, and the pipelined
    # requests behind it, after 1,000 requests; server-proxy has no such cap
    keepalive_requests 1000000;
    upstream upstreams {{
{servers}        keepalive {POOL};
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://upstreams;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout {TIMEOUT_S}s;
            proxy_read_timeout {TIMEOUT_S}s;
            # stream a large answer through the buffers, never to a file
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def haproxy_config(listen, upstreams, workdir):
    """haproxy.cfg: one thread, HTTP mode, connections to the upstreams reused."""
    servers = "".join(f"    server u{i} {u} pool-max-conn {POOL}\n" for i, u in enumerate(upstreams))
    return f"""# HAProxy as a reverse proxy: one thread, no logging (no log line)
global
    nbthread 1
    maxconn 4096
    pidfile {Path(workdir)}/haproxy.pid
defaults
    mode http
    option http-keep-alive
    http-reuse always
    option forwardfor
    timeout connect {TIMEOUT_S}s
    timeout server {TIMEOUT_S}s
    timeout client 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
frontend proxy
    bind {listen}
    default_backend upstreams
backend upstreams
    balance roundrobin
{servers}"""


def _listening(pid, port):
    """Does process pid hold a socket listening on port (in its namespace)?"""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        # sl local_address rem_address st ... inode: state 0A is LISTEN
        cols = row.split()
        if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == port and cols[9] in inodes:
            return True
    return False


class ReverseProxy(H.Server):
    """nginx or HAProxy in front of upstreams ("HOST:PORT"), here or in a
    world host; `config` is the text it runs with, `addr` and `port` where
    it listens."""

    def __init__(self, kind, upstreams, cpus=None, host=None, workdir=None, ready_timeout=10.0):
        exe = executable(kind)
        if exe is None:
            raise H.HarnessError(f"{kind} is not installed (scripts/deps.sh bench)")
        super().__init__([exe], cpus=cpus, host=host, ready_timeout=ready_timeout)
        self.kind, self.exe = kind, exe
        self.upstreams = list(upstreams)
        self.parent = Path(workdir or tempfile.gettempdir())
        self.dir = None
        self.config = None
        self.addr = host.addr if host else "127.0.0.1"

    def start(self):
        # A free port is chosen here and bound by the anchor a moment later:
        # another process may take it in between, so a start that fails is
        # tried again on another port.
        errors = []
        for _ in range(3):
            try:
                return self._start_once(H.free_port())
            except H.HarnessError as e:
                errors.append(str(e))
        raise H.HarnessError(errors[-1])

    def _start_once(self, port):
        self.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=self.parent))
        listen = f"{self.addr}:{port}"
        if self.kind == "nginx":
            self.config = nginx_config(listen, self.upstreams, self.dir, self.exe)
            conf = self.dir / "nginx.conf"
            # -e: the startup error log, before the configuration is read
            self.argv = [self.exe, "-p", f"{self.dir}/", "-e", str(self.dir / "error.log"), "-c", str(conf)]
        else:
            self.config = haproxy_config(listen, self.upstreams, self.dir)
            conf = self.dir / "haproxy.cfg"
            self.argv = [self.exe, "-db", "-f", str(conf)]
        conf.write_text(self.config)
        self.log_path = self.dir / "stderr.log"
        self.exit_status = None
        with open(self.log_path, "wb") as log:
            try:
                self.proc = H.spawn(H.pinned(self.argv, self.cpus), self.host,
                                    stdout=subprocess.DEVNULL, stderr=log)
            except OSError as e:
                self._remove()
                raise H.HarnessError(f"cannot start {self.kind}: {e}")
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _listening(self.proc.pid, port):
                self.port = port
                return self
            time.sleep(0.02)
        self.proc.poll()
        why = self._log_tail()  # read before stop() removes the directory
        self.stop()
        raise H.HarnessError(f"{self.kind} did not start: {why}")

    def _log_tail(self):
        text = ""
        for name in ("stderr.log", "error.log"):
            try:
                text += (self.dir / name).read_text(errors="replace")
            except OSError:
                pass
        return text.strip()[-300:] or "(no message)"

    def _remove(self):
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def stop(self, timeout=12.0):
        status = super().stop(timeout)
        self._remove()
        return status
