"""A fault-injecting HTTP front for the real Synapse: it sits on its own loopback port,
forwards every request to the homeserver, and on command refuses connections, hangs,
delays, answers with an error status of its choosing, or cuts a response mid-body.

    with FaultFront(hub_url) as front:
        front.fault("status", 429, {"errcode": "M_LIMIT_EXCEEDED"}, {"Retry-After": "3"})
        ... point a daemon at front.url ...
        front.fault("pass")

Faults apply to requests whose path starts with one of ``paths`` (default: all), and of
those to ``count`` requests after the first ``skip`` (default: every one), until a
request under ``until`` arrives (then everything passes again). Every
request is recorded (time, method, path, what the front did) for assertions about
retries and backoff.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODES = ("pass", "refuse", "hang", "delay", "status", "cut")


@dataclass
class Seen:
    at: float
    method: str
    path: str
    outcome: str


@dataclass
class _Fault:
    mode: str = "pass"
    paths: tuple[str, ...] = ("",)
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    skip: int = 0
    count: int | None = None
    until: str | None = None
    matched: int = 0


class FaultFront:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._fault = _Fault()
        self._changed = threading.Condition()
        self.seen: list[Seen] = []
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultFront:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fault("pass")  # releases hung requests
        self._close()

    # -- control -------------------------------------------------------------------------

    def fault(
        self,
        mode: str,
        status: int = 0,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        paths: tuple[str, ...] = ("",),
        delay: float = 0.0,
        cut_open: bool = False,
        skip: int = 0,
        count: int | None = None,
        until: str | None = None,
    ) -> None:
        """From now on, requests under ``paths`` meet ``mode``. ``cut_open`` also cuts the
        connections open now (a long-poll in flight would otherwise still pass)."""
        assert mode in MODES, mode
        with self._changed:
            was = self._fault.mode
            self._fault = _Fault(
                mode, paths, status, body or {}, headers or {}, delay, skip, count, until
            )
            self._changed.notify_all()
        if mode == "refuse" and was != "refuse":
            self._close()
        elif mode != "refuse" and was == "refuse":
            self._listen()
        if cut_open:
            self._cut_open()

    def requests_to(self, prefix: str, since: float = 0.0) -> list[Seen]:
        return [s for s in list(self.seen) if s.path.startswith(prefix) and s.at >= since]

    # -- serving -------------------------------------------------------------------------

    def _listen(self) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                front._connections.add(self.connection)

            def finish(self) -> None:
                front._connections.discard(self.connection)
                super().finish()

            def _any(self) -> None:
                front._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _any

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        # A client whose connection the front cut is not an error worth a traceback.
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        """Stop listening and cut every open connection, long-polls included: what a
        homeserver that went away looks like to its clients."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._cut_open()

    def _cut_open(self) -> None:
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _current(self, path: str) -> _Fault:
        with self._changed:
            fault = self._fault
            if fault.until is not None and path.startswith(fault.until):
                self._fault = _Fault()
                self._changed.notify_all()
                return self._fault
            if not any(path.startswith(p) for p in fault.paths):
                return _Fault()
            fault.matched += 1
            past_skip = fault.matched - fault.skip
            if past_skip < 1 or (fault.count is not None and past_skip > fault.count):
                return _Fault()
            return fault

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._current(handler.path)
        record = Seen(time.monotonic(), handler.command, handler.path, fault.mode)
        self.seen.append(record)
        if fault.mode == "hang":
            with self._changed:
                self._changed.wait_for(lambda: self._fault.mode != "hang", timeout=600)
            handler.close_connection = True
            return  # the client sees its connection end with no answer
        if fault.mode == "delay":
            time.sleep(fault.delay)
        if fault.mode == "status":
            payload = json.dumps(fault.body).encode()
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in fault.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
            return
        self._forward(handler, body, cut=fault.mode == "cut")

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes, *, cut: bool) -> None:
        upstream = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            upstream.request(handler.command, handler.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        except OSError:
            handler.send_error(502)
            return
        finally:
            upstream.close()
        handler.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if cut:
            # Half the body, then the connection ends: a response cut mid-body.
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        handler.wfile.write(payload)
