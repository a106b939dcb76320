"""A webhook receiver for tests: a loopback HTTP server with scripted answers."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.harness import wait_until

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
# Settings that let a stack deliver to a Receiver quickly.
WEBHOOKS = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_RETRY_BASE_S": "0.05"}


class Receiver:
    """A loopback HTTP server that answers with scripted statuses and records every request."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[int] = []  # statuses to answer in order; then `default`
        self.default = 204
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers.items()), body))
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{address}:{self.port}/hook?token=do-not-log"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def deliveries(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        """The deliveries for `job_id` so far, in order."""
        with self.lock:
            return [(h, b) for h, b in self.requests if json.loads(b)["data"]["jobId"] == job_id]

    def for_job(
        self, job_id: str, count: int = 1, timeout_s: float = 20
    ) -> list[tuple[dict[str, str], bytes]]:
        """Wait until `count` deliveries for `job_id` arrived; return them in order."""

        def arrived() -> list[tuple[dict[str, str], bytes]] | None:
            found = self.deliveries(job_id)
            return found if len(found) >= count else None

        def what() -> str:
            return f"{count} deliveries for job {job_id} (got {len(self.deliveries(job_id))})"

        return wait_until(arrived, timeout_s, what, retry_on=())


class Hostile:
    """A callback receiver that never answers: `blackhole` reads the request and says nothing;
    `trickle` sends a status line, then one header line every `every_s`, forever."""

    def __init__(self, mode: str, every_s: float = 0.5) -> None:
        self.mode, self.every_s = mode, every_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            if self.mode == "trickle":
                threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self.stopped.wait(self.every_s):
                conn.sendall(b"x-still-thinking: 1\r\n")
        except OSError:
            pass

    def holding(self) -> int:
        """How many connections the client still keeps open (pending bytes are discarded)."""
        count = 0
        for conn in list(self.connections):
            try:
                while conn.recv(65536, socket.MSG_DONTWAIT):
                    pass
            except BlockingIOError:
                count += 1  # open, nothing more to read
            except OSError:
                pass
        return count

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()
