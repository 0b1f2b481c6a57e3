"""A real HTTP server on loopback standing in for an external provider in tests.

Responses are queued per (method, path); every request received is recorded.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


class FakeProvider:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._replies: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._default: dict[tuple[str, str], Reply] = {}
        self._lock = threading.Lock()
        self.url = ""

    def reply(self, method: str, path: str, *replies: Reply) -> None:
        """Queue replies; the last one given is repeated once the queue is empty."""
        with self._lock:
            self._replies[(method, path)].extend(replies)
            self._default[(method, path)] = replies[-1]

    def next_reply(self, method: str, path: str) -> Reply:
        with self._lock:
            queue = self._replies[(method, path)]
            if queue:
                return queue.popleft()
            return self._default.get((method, path), Reply(404, {"error": "no route"}))

    def handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                received = Received(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with provider._lock:
                    provider.requests.append(received)
                reply = provider.next_reply(self.command, parts.path)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if reply.raw is None:
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        return Handler


@contextmanager
def serve() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), provider.handler())
    server.daemon_threads = True
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
