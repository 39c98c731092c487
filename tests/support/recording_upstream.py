"""An upstream that keeps every request it receives, for the test to read back, and echoes
each one in its answer as an upstream that repeats what it was sent would (in a body, in
headers, in a redirect): what a test of the proxy's scope needs (a refused request never
arrives: ``count``) and of its response cleaning (the echo comes back through the proxy,
and the workload must not see what the upstream saw).

A request with ``Expect: 100-continue`` gets a 100 whose X-Seen header echoes its
Authorization. Each kind is chosen by a segment anywhere in the path
(``/bot<token>/text/x`` is text):

    GET  /anything      200 application/json {"method", "path", "query", "headers", "body"}
    GET  /text/...      200 text/plain: the same, as lines of text
    GET  /split/...     200 chunked text/plain: the same JSON, sent 3 bytes a chunk
    GET  /binary/...    200 application/octet-stream: the same JSON, not text
    GET  /gzip/...      200 application/json with Content-Encoding: gzip, the same JSON
    GET  /tail/...      200 text/plain: the query string as it came, and nothing else; with
                        a Content-Length, or chunked three bytes a chunk when the
                        request has X-Chunked
    GET  /redirect/...  302, Location and Set-Cookie holding the request's query and
                        Authorization header
"""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # as it came, undecoded
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query


KINDS = frozenset({"text", "split", "binary", "gzip", "redirect", "tail"})


class RecordingUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with upstream._lock:
                    upstream.seen.append(seen)
                echo = json.dumps(
                    {
                        "method": seen.method,
                        "path": seen.path,
                        "query": seen.query,
                        "headers": seen.headers,
                        "body": body.decode("latin-1"),
                    }
                ).encode()
                # Anywhere in the path: a proxy's path prefix may come before it.
                kind = next((k for k in seen.path.split("/") if k in KINDS), "")
                if kind == "redirect":
                    where = f"http://elsewhere.invalid/next?{seen.query}"
                    self.send_response(302)
                    self.send_header("Location", where)
                    cookie = seen.headers.get("authorization", "none").replace(" ", "_")
                    self.send_header("Set-Cookie", f"seen={cookie}; Path=/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "tail":
                    echo = seen.query.encode()
                if kind == "split" or (kind == "tail" and "x-chunked" in seen.headers):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for at in range(0, len(echo), 3):
                        piece = echo[at : at + 3]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return
                content_type, encoding = "application/json", None
                if kind == "text":
                    echo = "".join(f"{k}: {v}\n" for k, v in seen.headers.items()).encode()
                    echo += f"target: {seen.target}\n".encode()
                    content_type = "text/plain; charset=utf-8"
                elif kind == "binary":
                    content_type = "application/octet-stream"
                elif kind == "gzip":
                    echo, encoding = gzip.compress(echo), "gzip"
                elif kind == "tail":
                    content_type = "text/plain"
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(echo)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(echo)

            def handle_expect_100(self) -> bool:
                # An interim answer that echoes too: its headers reach the workload.
                self.send_response_only(100)
                self.send_header("X-Seen", self.headers.get("Authorization", "none"))
                self.end_headers()
                return True

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_PURGE = _answer

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def last(self) -> Seen:
        with self._lock:
            return self.seen[-1]

    def __enter__(self) -> RecordingUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
