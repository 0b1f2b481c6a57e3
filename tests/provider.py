"""A real HTTP server on loopback standing in for an external provider in tests.

Responses are queued per (method, path); every request received is recorded. Faults:
a reply can wait for an event before answering (a slow provider), promise more body than
it sends and hang up (``truncate``), or stream a body in chunks without a length
(``chunks``). ``FakeProvider.hook`` sees every request first and may answer it itself.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
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
    #: Wait for this event (at most a minute) before answering.
    wait: threading.Event | None = None
    #: Announce the full body, send only its first ``truncate`` bytes, then hang up.
    truncate: int | None = None
    #: Send these chunks with chunked transfer encoding instead of ``body``/``raw``.
    chunks: Iterable[bytes] | None = None


class FakeProvider:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._replies: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._default: dict[tuple[str, str], Reply] = {}
        self._lock = threading.Lock()
        self.url = ""
        #: Called with every request before the queued reply; may return the reply to send.
        self.hook: Callable[[Received], Reply | None] | None = None
        #: Replies the client hung up on while they were being sent.
        self.aborted = 0

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
                hooked = provider.hook(received) if provider.hook is not None else None
                reply = hooked or provider.next_reply(self.command, parts.path)
                if reply.wait is not None:
                    reply.wait.wait(60)
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    with provider._lock:
                        provider.aborted += 1
                    self.close_connection = True

            def _send(self, reply: Reply) -> None:
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if reply.raw is None:
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.chunks is not None:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in reply.chunks:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if reply.truncate is not None:
                    self.wfile.write(payload[: reply.truncate])
                    self.wfile.flush()
                    self.close_connection = True
                    self.request.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that hung up (a timeout, a refused huge body): expected
        super().handle_error(request, client_address)


@contextmanager
def serve() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    server = _Server(("127.0.0.1", 0), provider.handler())
    server.daemon_threads = True
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
