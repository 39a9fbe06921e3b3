#!/usr/bin/python3
"""A counter service with the incrementor's HTTP API (POST /increment
key=<k>&value=<v>, GET /counters/<key>), for tests/scripts/
test_check_incrementor.py: scripts/check-incrementor must pass it when it
is right and fail it when it is not.

    fake-counter.py PORT STATE MODE

MODE: exact; drop (every 17th increment is acknowledged and not applied);
double (every 17th is applied twice). Each applied increment is appended to
the file STATE before its answer and the file is replayed at the start, so
a SIGKILL loses nothing that was acknowledged (the page cache keeps what a
killed process wrote).
"""

import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, state_path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
counters = {}
lock = threading.Lock()
seen = 0

if os.path.exists(state_path):
    with open(state_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:  # a line cut by a kill was never acknowledged
                counters[parts[0]] = counters.get(parts[0], 0) + int(parts[1])
state = os.open(state_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        # One write: a head and a body in two would meet the client's
        # delayed ACK (Nagle), 40 ms per request.
        body = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        self.wfile.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def do_POST(self):
        global seen
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        try:
            key, value = form["key"][0], int(form["value"][0])
        except (KeyError, ValueError):
            return self.answer(400, {"error": "bad request"})
        with lock:
            seen += 1
            times = 1
            if seen % 17 == 0:
                times = 0 if mode == "drop" else 2 if mode == "double" else 1
            for _ in range(times):
                os.write(state, f"{key} {value}\n".encode())
                counters[key] = counters.get(key, 0) + value
        self.answer(200, {"ok": True})

    def do_GET(self):
        if not self.path.startswith("/counters/"):
            return self.answer(404, {"error": "not found"})
        key = urllib.parse.unquote(self.path[len("/counters/"):])
        with lock:
            if key not in counters:
                return self.answer(404, {"error": "no such counter"})
            self.answer(200, {"key": key, "value": counters[key]})


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
