"""Watching bench and lab as they run: the live dashboard (--live) and the
progress line on a terminal.

loadgen writes one JSON line a second on the descriptor `--stream FD`
names (loadgen/live.h); harness.run_loadgen passes one when a Live is
installed (harness.LIVE) and hands each line to Live.feed, tagged with the
server under test (the name of the process loadgen samples). A Live then

- serves, with --live, the page loadgen --live serves (loadgen/live.html,
  the same file) on 127.0.0.1 and the lines as server-sent events at
  /events, with "status" events saying what runs and what is left;
- keeps, when stderr is a terminal, one progress line at the bottom (what
  runs, elapsed, what is left), cleared before each log line
  (harness.log) and redrawn after.

The server is http.server in a thread: a dashboard is for a few watchers.
"""

import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "loadgen" / "live.html"


def _fmt_s(s):
    s = int(round(max(0.0, s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class _Events:
    """Every event so far, and a condition its readers wait on."""

    def __init__(self):
        self.lines = []
        self.ended = False
        self.cv = threading.Condition()

    def add(self, obj, event=None):
        text = json.dumps(obj, separators=(",", ":"))
        with self.cv:
            self.lines.append((f"event: {event}\n" if event else "") + f"data: {text}\n\n")
            if event == "end":
                self.ended = True
            self.cv.notify_all()


def _handler(events):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # A connection that says nothing (or a subscriber that reads
        # nothing) ends its thread after this many seconds.
        timeout = 5

        def log_message(self, *args):
            """Quiet: the bench's own output is what the terminal shows."""

        def _send(self, status, ctype, body):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self._send(200, "text/html; charset=utf-8", PAGE.read_bytes())
            if path != "/events":
                return self._send(404, "text/plain",
                                  b"not found: the dashboard is / and its events /events\n")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            sent = 0
            try:
                self.wfile.write(b"retry: 2000\n\n")
                while True:
                    with events.cv:
                        while sent == len(events.lines) and not events.ended:
                            events.cv.wait(1.0)
                        todo = events.lines[sent:]
                        done = events.ended
                    sent += len(todo)
                    if todo:
                        self.wfile.write("".join(todo).encode())
                        self.wfile.flush()
                    if done and sent == len(events.lines):
                        return
            except OSError:
                return  # the browser went away

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    """A thread per connection, MAX_CLIENTS at most: more are closed at
    once (a dashboard is for a few watchers; without a cap, silent
    connections would cost a thread each without end)."""

    daemon_threads = True
    MAX_CLIENTS = 32
    request_queue_size = 64  # the listen backlog: a burst is accepted (and maybe closed), not dropped

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.slots = threading.BoundedSemaphore(self.MAX_CLIENTS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Live:
    """What bench or lab is doing, shown live. port: serve the dashboard
    there on 127.0.0.1 (0: a free one), None: no dashboard. tty: draw the
    progress line (default: whether stderr is a terminal). `what` names the
    program ("bench", "lab")."""

    def __init__(self, what, port=None, tty=None):
        self.what = what
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.lock = threading.Lock()
        self.now = ""  # the step: "scenario throughput (1 of 9)"
        self.left = ""  # what comes after it
        self.doing_ = ""  # within the step: "epoll c64"
        self.run = None  # the last second loadgen sent of the run going on
        self.shown = False  # the progress line is on the screen
        self.screen = threading.RLock()  # held while writing to the terminal
        self.events = _Events()
        self.httpd = None
        self.url = None
        if port is not None:
            self.httpd = _Server(("127.0.0.1", port), _handler(self.events))
            self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.stop = threading.Event()
        if self.tty:
            threading.Thread(target=self._ticker, daemon=True).start()

    # ---- what runs ----
    def step(self, now, left):
        """A new step begins (now: what it is; left: what comes after)."""
        with self.lock:
            self.now, self.left, self.run, self.doing_ = now, left, None, ""
        self._status()
        self.draw()

    def doing(self, what):
        """Within the step, a new run begins (what: "epoll c64")."""
        with self.lock:
            self.doing_, self.run = what, None
        self.draw()

    def feed(self, obj, label):
        """A line from loadgen's --stream (a dict), against the server `label`."""
        if obj.get("type") != "sec":
            return
        obj = dict(obj, label=label, step=self.now)
        with self.lock:
            self.run = obj
        self.events.add(obj)
        self._status()

    def _status(self):
        with self.lock:
            now, run = self.now, self.run
            if run:
                left = f"{run['left_s']:.0f} s of this run" if run.get("left_s", -1) >= 0 else ""
                now = f"{now}: {run['label']}"
                left = "; ".join(x for x in (left, self.left) if x)
            else:
                left = self.left
            st = {"type": "status", "now": now, "left": left,
                  "elapsed_s": round(time.monotonic() - self.t0, 1)}
        self.events.add(st)

    # ---- the progress line ----
    def line(self):
        """The progress line's text."""
        with self.lock:
            text = f"{self.what} {_fmt_s(time.monotonic() - self.t0)}: {self.now}"
            if self.doing_:
                text += f", {self.doing_}"
            if self.run:
                r = self.run
                text += (f", {r['label']} {r.get('rps', 0):.0f} req/s"
                         + (f", {r['left_s']:.0f}s left" if r.get("left_s", -1) >= 0 else ""))
            if self.left:
                text += f"; then {self.left}"
        return text

    def draw(self):
        """Redraw the progress line (on a terminal only)."""
        if not self.tty:
            return
        try:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns or 100  # 0: a pty never sized
        except OSError:
            cols = 100
        text = self.line()[: max(10, cols - 1)]
        with self.screen:
            sys.stderr.write("\r" + text + "\033[K")
            sys.stderr.flush()
            self.shown = True

    def clear(self):
        """Take the progress line off before a log line is printed."""
        if not self.tty:
            return
        with self.screen:
            if self.shown:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
                self.shown = False

    def _ticker(self):
        while not self.stop.wait(1.0):
            self.draw()

    def close(self, linger=0.5):
        """The end: the page says so, the progress line goes."""
        self.stop.set()
        if isinstance(sys.stdout, _Above):
            sys.stdout = sys.stdout.close()
        self.clear()
        self.events.add({"type": "end", "elapsed_s": round(time.monotonic() - self.t0, 1)}, "end")
        if self.httpd:
            time.sleep(linger)  # the event streams send their end
            self.httpd.shutdown()
            self.httpd.server_close()


class _Above:
    """stdout, when it is the terminal the progress line is on: whole lines
    are written above the progress line (cleared first; the ticker draws it
    again), never into it."""

    def __init__(self, live, stream):
        self.live, self.stream, self.buf = live, stream, ""

    def write(self, s):
        self.buf += s
        if "\n" in self.buf:
            head, _, self.buf = self.buf.rpartition("\n")
            with self.live.screen:
                self.live.clear()
                self.stream.write(head + "\n")
                self.stream.flush()
        return len(s)

    def flush(self):
        """Partial lines wait for their end (the progress line is in the way)."""

    def close(self):
        """Write what is left; the stream to put back in sys.stdout."""
        self.stream.write(self.buf)
        self.stream.flush()
        return self.stream

    def __getattr__(self, name):
        return getattr(self.stream, name)


def server_label(pid):
    """The name of the process loadgen samples ("epoll" for server-epoll):
    the first word of its command line, as it ran it."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return f"pid {pid}"
    name = Path(argv0.split(" ")[0]).name
    return name[len("server-"):] if name.startswith("server-") else name


def watched(what, port, fn):
    """fn() watched, for scripts/`what`: the dashboard with --live (port not
    None), the progress line on a terminal, neither otherwise (harness.LIVE
    is the Live meanwhile). Returns fn's result, or 2 when the port cannot
    be had."""
    import harness as H
    if port is None and not sys.stderr.isatty():
        return fn()
    try:
        H.LIVE = Live(what, port=port)
    except OSError as e:
        print(f"scripts/{what}: --live: {e}", file=sys.stderr)
        return 2
    if H.LIVE.url:
        H.log(f"{what}: live dashboard on {H.LIVE.url}")
    if H.LIVE.tty and sys.stdout.isatty():
        sys.stdout = _Above(H.LIVE, sys.stdout)
    try:
        return fn()
    finally:
        H.LIVE.close()
        H.LIVE = None
