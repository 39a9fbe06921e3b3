"""Watching runs live: loadgen's --stream lines and --live dashboard, bench's
and lab's --live, the progress line (on a terminal only), and every
server's /metrics through promtool. Run by scripts/test (python3 -m
unittest); each test takes a few seconds."""

import fcntl
import json
import os
import pty
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import harness as H  # noqa: E402

LOADGEN = H.BIN / "loadgen"
BUILT = LOADGEN.exists() and (H.BIN / "server-epoll").exists()
NOT_BUILT = "bin/loadgen or bin/server-epoll is not built (run make)"


def server(design="server-epoll", *flags):
    return H.Server([str(H.BIN / design), "--port", "0", *flags])


def run_pty(argv, timeout=60, env=None):
    """Run argv with its stderr (and stdout) on a pseudo-terminal: (status,
    everything it wrote)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    try:
        rc = p.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"{argv[0]} did not end within {timeout} s")
    return rc, out.decode(errors="replace")


def events(url, timeout=30):
    """Read a server-sent event stream to its end: [(arrival time, event
    name, data as a dict)]."""
    got, name = [], "message"
    with urllib.request.urlopen(url, timeout=timeout) as f:
        for raw in f:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                got.append((time.monotonic(), name, json.loads(line[6:])))
                name = "message"
    return got


@unittest.skipUnless(BUILT, NOT_BUILT)
class LoadgenStream(unittest.TestCase):
    def test_lines_parse_and_carry_the_figures(self):
        with server() as srv:
            r, w = os.pipe()
            p = subprocess.Popen([str(LOADGEN), "--quiet", "-c", "4", "-d", "2.5s", "--server-pid",
                                  str(srv.pid), "--stream", str(w), f"http://127.0.0.1:{srv.port}/"],
                                 pass_fds=(w,), stderr=subprocess.PIPE)
            os.close(w)
            with os.fdopen(r) as f:
                lines = [json.loads(x) for x in f]
            _, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        secs = [x for x in lines if x["type"] == "sec"]
        self.assertEqual(lines[-1]["type"], "end")
        self.assertEqual([x["sec"] for x in secs], list(range(len(secs))))
        self.assertEqual(len(secs), 3)  # 2 full seconds and the half one
        self.assertEqual([s["span_s"] for s in secs[:2]], [1.0, 1.0])
        self.assertAlmostEqual(secs[2]["span_s"], 0.5, delta=0.05)
        for s in secs[:2]:
            self.assertGreater(s["requests"], 0)
            self.assertGreater(s["rps"], 0)
            self.assertTrue(0 < s["p50_us"] <= s["p99_us"] <= s["p999_us"], s)
            sv = s["server"]
            for k in ("cpu_user_s", "cpu_system_s", "rss_kb", "vcsw", "nvcsw", "conns"):
                self.assertIn(k, sv)
            self.assertGreater(sv["cpu_user_s"] + sv["cpu_system_s"], 0)
            self.assertGreater(sv["rss_kb"], 0)
            self.assertEqual(sv["conns"], 4)  # the 4 connections, not the listener
        # The seconds add up to the run.
        self.assertEqual(sum(s["requests"] for s in secs), lines[-1]["requests"])
        self.assertGreater(lines[-1]["server_cpu_per_req_us"], 0)

    def test_stalled_reader_does_not_hold_the_run(self):
        # A pipe of one page, full before the run starts, that nobody reads:
        # loadgen drops lines rather than block, and writes its report.
        with server() as srv, tempfile.TemporaryDirectory() as d:
            r, w = os.pipe()
            fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ
            os.set_blocking(w, False)
            try:
                while True:
                    os.write(w, b"x" * 4096)
            except BlockingIOError:
                pass
            os.set_blocking(w, True)
            t0 = time.monotonic()
            p = subprocess.Popen([str(LOADGEN), "--quiet", "-c", "2", "-d", "2s", "--json", f"{d}/r.json",
                                  "--stream", str(w), f"http://127.0.0.1:{srv.port}/"],
                                 pass_fds=(w,), stderr=subprocess.PIPE)
            os.close(w)
            try:
                _, err = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                os.close(r)
                self.fail("loadgen blocked on a --stream pipe nobody reads")
            os.close(r)
            self.assertEqual(p.returncode, 0, err)
            self.assertLess(time.monotonic() - t0, 8)
            self.assertGreater(json.load(open(f"{d}/r.json"))["requests"], 0)

    def test_a_stalled_thread_s_second_is_not_lost(self):
        # One of loadgen's threads stopped for over a second (ptrace stops
        # that thread alone): the main thread waits for it (or says
        # "partial"), and no second of the stream differs from the report's.
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        with server() as srv, tempfile.TemporaryDirectory() as d:
            r, w = os.pipe()
            p = subprocess.Popen([str(LOADGEN), "--quiet", "-t", "2", "-c", "4", "-d", "3s", "--json",
                                  f"{d}/r.json", "--stream", str(w), f"http://127.0.0.1:{srv.port}/"],
                                 pass_fds=(w,), stderr=subprocess.PIPE)
            os.close(w)
            time.sleep(1.3)
            tid = min(int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid)
            if libc.ptrace(0x4206, tid, None, None) != 0:  # PTRACE_SEIZE
                p.kill()
                p.wait()
                os.close(r)
                self.skipTest(f"ptrace: {os.strerror(ctypes.get_errno())}")
            try:
                self.assertEqual(libc.ptrace(0x4207, tid, None, None), 0)  # PTRACE_INTERRUPT
                os.waitpid(tid, 0x40000000)  # __WALL: it has stopped
                time.sleep(1.2)
            finally:
                libc.ptrace(17, tid, None, None)  # PTRACE_DETACH: it runs on
            with os.fdopen(r) as f:
                lines = [json.loads(x) for x in f]
            _, err = p.communicate(timeout=30)
            rep = json.load(open(f"{d}/r.json"))
        self.assertEqual(p.returncode, 0, err)
        secs = [x for x in lines if x["type"] == "sec"]
        full = [s for s in secs if not s.get("partial")]
        self.assertGreaterEqual(len(full), 2)
        for s in full:
            self.assertEqual(s["requests"], rep["per_second"][s["sec"]]["requests"], s["sec"])

    def test_seconds_add_up_when_the_run_drains(self):
        # -n with -d: the answers that arrive after the end still count in
        # the last second (the drain), on the stream as in the report.
        with server() as srv, tempfile.TemporaryDirectory() as d:
            r, w = os.pipe()
            p = subprocess.Popen([str(LOADGEN), "--quiet", "-c", "20", "-n", "100000000", "-d", "3s",
                                  "--mix", "WAIT 400:1", "--json", f"{d}/r.json", "--stream", str(w),
                                  f"tcp://127.0.0.1:{srv.port}"], pass_fds=(w,), stderr=subprocess.PIPE)
            os.close(w)
            with os.fdopen(r) as f:
                lines = [json.loads(x) for x in f]
            _, err = p.communicate(timeout=30)
            rep = json.load(open(f"{d}/r.json"))
        self.assertEqual(p.returncode, 0, err)
        secs = [x for x in lines if x["type"] == "sec"]
        self.assertEqual(lines[-1]["type"], "end")
        self.assertEqual([s["sec"] for s in secs], list(range(len(secs))))
        self.assertEqual([s["requests"] for s in secs], [s["requests"] for s in rep["per_second"]])
        self.assertEqual(sum(s["requests"] for s in secs), lines[-1]["requests"])


@unittest.skipUnless(BUILT, NOT_BUILT)
class LoadgenLive(unittest.TestCase):
    def test_page_answers_and_events_come_during_the_run(self):
        with server() as srv:
            p = subprocess.Popen([str(LOADGEN), "--quiet", "-c", "2", "-d", "3s", "--server-pid", str(srv.pid),
                                  "--live", "0", f"http://127.0.0.1:{srv.port}/"],
                                 stderr=subprocess.PIPE, text=True)
            first = p.stderr.readline()
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", first)
            self.assertIsNotNone(m, first)
            url = m.group(1)
            page = urllib.request.urlopen(url, timeout=5).read().decode()
            self.assertIn("EventSource", page)
            self.assertNotIn("://", page.replace("http://127.0.0.1", ""))  # nothing from outside
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + "nothing", timeout=5)
            self.assertEqual(e.exception.code, 404)
            got = events(url + "events")
            _, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        secs = [(t, d) for t, n, d in got if d["type"] == "sec"]
        self.assertGreaterEqual(len(secs), 2)
        self.assertEqual(got[-1][1], "end")  # the stream ends with the run's end
        self.assertIn("requests", got[-1][2])
        # Delivered as the run went, not all at its end.
        self.assertGreater(got[-1][0] - secs[0][0], 0.8)

    def start_live(self, *flags, fds=None):
        """loadgen with --live 0 on a server: (process, dashboard port).
        fds: its descriptor limit."""
        srv = server()
        srv.start()
        self.addCleanup(srv.stop)
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))) if fds else None
        p = subprocess.Popen([str(LOADGEN), "--quiet", *flags, "--live", "0", f"http://127.0.0.1:{srv.port}/"],
                             stderr=subprocess.PIPE, text=True, preexec_fn=limit)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        for _ in range(3):  # after a warning or two (fds)
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", p.stderr.readline())
            if m:
                return p, int(m.group(1))
        self.fail("no dashboard address on stderr")

    def test_chatty_subscribers_cost_no_cpu(self):
        # Subscribers that keep writing after their request: loadgen closes
        # them or ignores them, it does not spin on their input.
        p, port = self.start_live("-c", "1", "-R", "50", "-d", "3s")
        socks = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            socks.append(s)
        junk = b"x" * 65536
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            for s in list(socks):
                try:
                    s.send(junk)
                except BlockingIOError:
                    pass
                except OSError:
                    socks.remove(s)  # closed by loadgen: fine too
            time.sleep(0.001)
        else:
            self.fail("loadgen did not end")
        p.returncode = os.waitstatus_to_exitcode(status)
        for s in socks:
            s.close()
        self.assertEqual(p.returncode, 0)
        # A 3 s run at 50 requests/s costs a few tens of milliseconds; a main
        # thread spinning on the subscribers' input, seconds.
        self.assertLess(ru.ru_utime + ru.ru_stime, 0.6)

    def wait_cpu(self, p, timeout=20):
        """Wait for p to end: its CPU time (user and system), in seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return ru.ru_utime + ru.ru_stime
            time.sleep(0.05)
        self.fail("loadgen did not end")

    def test_out_of_descriptors_costs_no_cpu(self):
        # More connections than loadgen has descriptors for: accept fails
        # (EMFILE) while the listener stays readable; loadgen rests it
        # rather than spin.
        # The watchers come once the load runs (its first second has been
        # published): before that they could take the descriptors its
        # threads have yet to open, which this limit (below what loadgen
        # asks for, as it warns) does not leave room for.
        p, port = self.start_live("-c", "1", "-R", "50", "-d", "3s", fds=24)
        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        first.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = b""
        while b"data:" not in seen:
            b = first.recv(4096)
            self.assertTrue(b, "the event stream ended before its first second")
            seen += b
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
        cpu = self.wait_cpu(p)
        for s in socks + [first]:
            s.close()
        self.assertEqual(p.returncode, 0, p.stderr.read())
        self.assertLess(cpu, 0.6)

    def test_silent_connections_do_not_lock_the_page_out(self):
        p, port = self.start_live("-c", "1", "-R", "20", "-d", "3s")
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        try:
            time.sleep(0.2)
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3).read().decode()
            self.assertIn("EventSource", page)
        finally:
            for s in silent:
                s.close()
        _, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)

    def test_a_body_does_not_lose_the_answer(self):
        p, port = self.start_live("-c", "1", "-R", "20", "-d", "2s")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100000)
        time.sleep(0.2)  # the answer and the end of the connection are here by now
        got = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
        except ConnectionResetError:  # a close with the body unread: the answer may be lost
            got += b"<reset>"
        s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 405"), got[:100])
        self.assertFalse(got.endswith(b"<reset>"), "the connection ended with a reset")
        _, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)

    def test_bad_flags_exit_2_with_one_line(self):
        (fd, path) = tempfile.mkstemp()
        os.close(fd)
        os.unlink(path)
        for flags in (["--stream", "0"], ["--stream", "x"], ["--live", "70000"], ["--live", "-1"],
                      ["--stream", "999"], ["--chat", "1:2", "--live", "0"]):
            with self.subTest(flags=flags):
                target = "tcp://127.0.0.1:9" if "--chat" in flags else "http://127.0.0.1:9/"
                if flags == ["--stream", "999"]:  # well-formed, not open: found once the target answers
                    continue
                p = subprocess.run([str(LOADGEN), *flags, target], capture_output=True, text=True, timeout=10)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        with server() as srv:
            p = subprocess.run([str(LOADGEN), "--stream", "999", "-d", "1", f"http://127.0.0.1:{srv.port}/"],
                               capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertEqual(p.stderr.strip(), "loadgen: --stream 999: not an open descriptor")


@unittest.skipUnless(BUILT, NOT_BUILT)
class ProgressLine(unittest.TestCase):
    def test_loadgen_on_a_terminal_only(self):
        with server() as srv:
            argv = [str(LOADGEN), "-c", "2", "-d", "2s", f"http://127.0.0.1:{srv.port}/"]
            rc, out = run_pty(argv)
            self.assertEqual(rc, 0, out)
            self.assertRegex(out, r"\rloadgen http://127\.0\.0\.1:\d+/: 1s of 2s, 1s left: \d+ req/s")
            argv[argv.index("2s")] = "1s"
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("\r", p.stderr)
        self.assertNotIn("left", p.stderr)

    def test_bench_on_a_terminal_only(self):
        with tempfile.TemporaryDirectory() as d:
            argv = [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--designs", "epoll",
                    "--scenarios", "throughput", "--duration", "0.5", "--out", d]
            rc, out = run_pty(argv, timeout=90)
            self.assertEqual(rc, 0, out[-2000:])
            self.assertRegex(out, r"\rbench \d+s: scenario throughput \(1 of 1\)[^\r\n]*; then the report")
        # Redirected, it has none: test_bench_live_streams_every_run.

    def test_live_progress_line_writes_around_log_lines(self):
        import live
        r, w = os.pipe()
        saved = sys.stderr
        sys.stderr = os.fdopen(w, "w")
        try:
            lv = live.Live("lab", tty=True)
            lv.step("experiment wait (1 of 2)", "1 more")
            print("a log line", file=sys.stderr)  # what harness.log does, around it:
            lv.clear()
            lv.close()
            sys.stderr.close()
        finally:
            sys.stderr = saved
        with os.fdopen(r, newline="") as f:
            text = f.read()
        self.assertIn("\rlab 0s: experiment wait (1 of 2); then 1 more\033[K", text)
        self.assertTrue(text.endswith("\r\033[K"), repr(text))


class ScriptLive(unittest.TestCase):
    def test_silent_connections_are_capped(self):
        # scripts/live.py: a thread per connection, so a cap on them; the
        # ones beyond it are closed at once.
        import live
        lv = live.Live("lab", port=0, tty=False)
        port = int(lv.url.rsplit(":", 1)[1].strip("/"))
        base = threading.active_count()
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
        try:
            time.sleep(0.5)
            self.assertLessEqual(threading.active_count() - base, 32)
            self.assertEqual(silent[-1].recv(1), b"")  # closed, not left waiting
        finally:
            for s in silent:
                s.close()
            lv.close()


@unittest.skipUnless(BUILT, NOT_BUILT)
class BenchLive(unittest.TestCase):
    def test_bench_live_streams_every_run(self):
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--designs",
                                  "epoll,poll", "--scenarios", "throughput", "--duration", "0.5", "--out", d,
                                  "--live", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                 cwd=ROOT)
            first = p.stderr.readline()
            m = re.search(r"live dashboard on (http://127\.0\.0\.1:\d+/)", first)
            self.assertIsNotNone(m, first)
            self.assertIn("EventSource", urllib.request.urlopen(m.group(1), timeout=5).read().decode())
            got = events(m.group(1) + "events", timeout=60)
            _, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        self.assertNotIn("\r", err)  # not a terminal: no progress line
        secs = [d for _, _, d in got if d["type"] == "sec"]
        self.assertEqual({d["label"] for d in secs}, {"epoll", "poll"})
        self.assertTrue(all("server" in d and d["requests"] > 0 for d in secs), secs)
        status = [d for _, _, d in got if d["type"] == "status"]
        self.assertTrue(any(d["now"].startswith("scenario throughput (1 of 1)") for d in status), status)
        self.assertEqual(got[-1][1], "end")

    def test_lab_live_serves_its_steps(self):
        # (The loadgen runs of an experiment stream as bench's do: harness.run_loadgen.)
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "lab"), "wait", "--live", "0"],
                                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
                                 env=dict(os.environ, LAB_OUT=d))
            first = p.stderr.readline()
            m = re.search(r"live dashboard on (http://127\.0\.0\.1:\d+/)", first)
            self.assertIsNotNone(m, first)
            self.assertIn("EventSource", urllib.request.urlopen(m.group(1), timeout=5).read().decode())
            got = events(m.group(1) + "events", timeout=60)
            _, err = p.communicate(timeout=60)
        self.assertIn(p.returncode, (0, 1), err)  # 1: an expectation did not hold on a busy machine
        self.assertNotIn("\r", err)  # not a terminal: no progress line
        status = [d for _, _, d in got if d["type"] == "status"]
        self.assertTrue(any(d["now"] == "experiment wait (1 of 1)" and d["left"] == "the index" for d in status),
                        status)
        self.assertEqual(got[-1][1], "end")

    def test_lab_progress_line_on_a_terminal(self):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, LAB_OUT=d)
            argv = [sys.executable, str(ROOT / "scripts" / "lab"), "wait"]
            rc, text = run_pty(argv, env=env)
            self.assertIn(rc, (0, 1), text)  # 1: an expectation did not hold on a busy machine
        self.assertIn("\rlab 0s: experiment wait (1 of 1); then the index\033[K", text)
        # The experiments' own lines (stdout, the same terminal) go above it, whole.
        self.assertEqual(len(re.findall(r"\r\033\[K== wait: A WAIT", text)), 1, repr(text))
        self.assertTrue(text.endswith("\r\033[K") or text.endswith("index.html\r\n"), repr(text[-200:]))

    def test_bad_live_port_is_one_line(self):
        for prog in ("bench", "lab"):
            with self.subTest(prog=prog):
                argv = [sys.executable, str(ROOT / "scripts" / prog), "--live", "70000"]
                p = subprocess.run(argv + (["wait"] if prog == "lab" else []), capture_output=True,
                                   text=True, timeout=30, cwd=ROOT)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertEqual(p.stderr.strip(), f"scripts/{prog}: --live must be a port from 0 to 65535")


PROMTOOL = shutil.which("promtool")


@unittest.skipUnless(BUILT and PROMTOOL, "promtool (Debian's prometheus) or the servers are missing")
class Metrics(unittest.TestCase):
    """Every server's /metrics (and the incrementor's), after some traffic,
    passes promtool's checks: the text format and its lint."""

    def check(self, text, who):
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
        self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""), f"{who}:\n{text[:3000]}")

    def get(self, port, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as f:
            return f.read().decode()

    def test_every_design(self):
        designs = sorted(p.stem for p in (ROOT / "servers").glob("*.c") if p.stem not in ("template", "echo"))
        with server() as upstream:
            for d in designs:
                with self.subTest(design=d):
                    flags = {"proxy": ["--upstream", f"127.0.0.1:{upstream.port}"],
                             "sandboxed": ["--tenants", str(ROOT / "tenants")]}.get(d, [])
                    if not (H.BIN / f"server-{d}").exists():
                        self.fail(f"bin/server-{d} is not built")
                    try:
                        srv = server(f"server-{d}", *flags)
                        srv.start()
                    except H.HarnessError as e:
                        if d == "uring":  # a kernel without io_uring: it says so and exits 2
                            self.skipTest(f"server-uring: {e}")
                        raise
                    try:
                        for path in ["/", "/ping", "/nothing"] + (["/t/hello/"] if d == "sandboxed" else []):
                            try:
                                self.get(srv.port, path)
                            except urllib.error.HTTPError:
                                pass  # a 404 is traffic too
                        self.check(self.get(srv.port, "/metrics"), d)
                    finally:
                        srv.stop()

    def test_incrementor(self):
        if not (H.BIN / "incrementor").exists():
            self.skipTest("bin/incrementor is not built")
        with tempfile.TemporaryDirectory() as d:
            with H.Server([str(H.BIN / "incrementor"), "--port", "0", "--db", f"{d}/db.sqlite"]) as srv:
                req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/increment", data=b"key=a&value=3")
                urllib.request.urlopen(req, timeout=5).read()
                self.check(self.get(srv.port, "/metrics"), "incrementor")


if __name__ == "__main__":
    unittest.main()
