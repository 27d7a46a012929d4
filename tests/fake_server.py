"""A small local HTTP server standing in for a tracking server that misbehaves, on 127.0.0.1 (any free port).

``mode`` says how it answers, and may change while it serves: ``mlflow`` (an empty JSON object, which MLflow's
client reads as an empty answer: enough for a search), ``503`` (with a Retry-After of ten minutes), ``hang`` (no
answer until the server stops), ``404`` (an HTML page), ``html`` (200 with an HTML page) or ``tag-race`` (like
``mlflow``, but its first experiment-tag write answers what a SQL store answers when another client inserted the
same tag at that moment). ``/health`` always answers OK, as a server whose API alone fails does.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

PAGE = b"<html><body>this is not an MLflow tracking server</body></html>"
LOST_TAG_RACE = (b'{"error_code": "BAD_REQUEST", "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: '
                 b'experiment_tags.key, experiment_tags.experiment_id"}')


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.stopping, self.requests = mode, threading.Event(), 0
        self.tag_writes = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def answer(self, status: int, body: bytes, kind: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1
        mode = self.server.mode
        if "set-experiment-tag" in self.path:
            self.server.tag_writes += 1
            if mode == "tag-race" and self.server.tag_writes == 1:
                return self.answer(400, LOST_TAG_RACE)
        if mode == "tag-race":
            mode = "mlflow"
        if self.path == "/health" or mode == "mlflow":
            self.answer(200, b"{}" if mode == "mlflow" else b"OK")
        elif mode == "503":
            self.answer(503, b"Service Unavailable", "text/plain", **{"Retry-After": "600"})
        elif mode == "hang":
            self.server.stopping.wait()
        elif mode == "404":
            self.answer(404, PAGE, "text/html")
        else:
            self.answer(200, PAGE, "text/html")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


@contextmanager
def fake_server(mode: str) -> Iterator[FakeServer]:
    server = FakeServer(mode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()  # hanging answers end
        server.shutdown()
        server.server_close()
