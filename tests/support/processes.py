"""Real processes the tests and the bench drive: our console scripts, the echo upstream and
bureau-proxy, plus an HTTP client that speaks over a Unix socket (what a sandboxed
principal does)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent  # helpers some tests run as scripts
BIN = Path(sys.executable).parent


def run(
    program: str, *args: str | Path, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts as a user would, capturing its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDENTIALS_")}
    return subprocess.run(
        [str(BIN / program), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=90,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def echo_upstream(*extra: str, scheme: str = "http") -> Iterator[str]:
    """The echo upstream, recording what it receives (``echo_received``): the proxy
    cleans the echo the workload sees of every secret it injected."""
    with tempfile.TemporaryDirectory(prefix="echo-") as tmp:
        record = Path(tmp) / "received.jsonl"
        record.touch()
        command = [sys.executable, str(ROOT / "script" / "echo-upstream"), *extra]
        with subprocess.Popen(
            [*command, "--record", str(record)], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            ready = proc.stdout.readline().split()
            assert ready[0] == "READY", ready
            url = f"{scheme}://127.0.0.1:{ready[1]}"
            ECHO_RECORDS[url] = record
            try:
                yield url
            finally:
                proc.terminate()
                proc.wait(timeout=10)
                proc.stdout.close()
                del ECHO_RECORDS[url]
                ECHO_STOPPED[url] = record.read_text(encoding="utf-8")


def echo_exchange(
    path: Path,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> tuple[Reply, dict[str, Any]]:
    """A request through the proxy on ``path`` to an echo upstream: the reply as the
    workload got it, and the request as the upstream received it (``echo_received``)."""
    request_id = os.urandom(8).hex()
    reply = unix_request(
        path,
        method,
        target,
        headers={**(headers or {}), "X-Request-Id": request_id},
        body=body,
        timeout=timeout,
    )
    received = echo_received(request_id)
    assert received is not None, "the echo upstream recorded no such request"
    return reply, received


def stars(secret: str) -> str:
    """What the workload sees of ``secret`` in a cleaned response."""
    return "*" * len(secret)


# Each running echo upstream's record of the requests it received, by its URL; and the
# last one stopped at each URL, read after its end.
ECHO_RECORDS: dict[str, Path] = {}
ECHO_STOPPED: dict[str, str] = {}


def echo_requests(url: str) -> list[dict[str, Any]]:
    """Every request the echo upstream at ``url`` received so far (or before it was
    stopped), in order."""
    record = ECHO_RECORDS.get(url)
    text = record.read_text(encoding="utf-8") if record is not None else ECHO_STOPPED[url]
    return [json.loads(line) for line in text.splitlines()]


def echo_authorizations() -> set[str]:
    """Every Authorization any running echo upstream received so far: what a test reads
    when the request came from a workload it cannot tag."""
    return {
        r["headers"]["authorization"]
        for url in ECHO_RECORDS
        for r in echo_requests(url)
        if "authorization" in r["headers"]
    }


def echo_received(request_id: str, url: str | None = None) -> dict[str, Any] | None:
    """The request an echo upstream (``url``'s, or any running one) received carrying
    ``X-Request-Id: <request_id>``: method, path, query and headers (lower-case names),
    as they reached it; None if none did."""
    records = [ECHO_RECORDS[url]] if url is not None else list(ECHO_RECORDS.values())
    for record in records:
        for line in record.read_text(encoding="utf-8").splitlines():
            seen: dict[str, Any] = json.loads(line)
            if seen["headers"].get("x-request-id") == request_id:
                return seen
    return None


class GateUpstream:
    """An upstream that holds every request until the test opens the gate, and says when
    requests arrive and when its answers have gone out: what a test waits on instead of
    guessing how long a request takes to cross the proxy.

        with GateUpstream() as gate:
            ... a request through the proxy to gate.url ...
            gate.wait_arrived(1)
            gate.open()
            gate.wait_answered(1)
    """

    def __init__(self) -> None:
        self.arrived = 0
        self.answered = 0
        self._open = False
        self._changed = threading.Condition()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with gate._changed:
                    gate.arrived += 1
                    gate._changed.notify_all()
                    gate._changed.wait_for(lambda: gate._open, timeout=60)
                try:
                    payload = json.dumps({"path": self.path}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True  # the proxy is gone: answered all the same
                finally:
                    with gate._changed:
                        gate.answered += 1
                        gate._changed.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A proxy that went away is not an error worth a traceback.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GateUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()
        self._server.shutdown()
        self._server.server_close()

    def open(self) -> None:
        """Answer every request held, and every later one at once."""
        with self._changed:
            self._open = True
            self._changed.notify_all()

    def _wait(self, what: str, count: int, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: getattr(self, what) >= count, timeout):
                raise AssertionError(f"{what}: {getattr(self, what)} of {count} in {timeout} s")

    def wait_arrived(self, count: int, timeout: float = 30) -> None:
        self._wait("arrived", count, timeout)

    def wait_answered(self, count: int, timeout: float = 30) -> None:
        self._wait("answered", count, timeout)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def unix_request(
    path: Path,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> Reply:
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class RunningProxy:
    proc: subprocess.Popen[bytes]
    socket: Path

    def stop(self) -> tuple[int, str]:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err.decode()


@contextlib.contextmanager
def proxy(
    payload: dict[str, Any] | bytes, socket_path: Path, env: dict[str, str] | None = None
) -> Iterator[RunningProxy]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with subprocess.Popen(
        [str(BIN / "bureau-proxy"), "--socket", str(socket_path)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(raw)
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush it again
        line = proc.stdout.readline().decode()
        if not line.startswith("READY"):
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"proxy did not start: {err.decode()}")
        running = RunningProxy(proc, socket_path)
        try:
            yield running
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def launcher_call(socket_path: Path, request: dict[str, Any] | bytes, timeout: float = 60) -> Any:
    """One request on the launcher socket, as the daemon sends it (or raw bytes)."""
    raw = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(raw)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def launcher_ensure(socket_path: Path, principal: str, content: dict[str, Any]) -> Any:
    """The daemon's ensure request: run ``principal``'s proxy with these credentials."""
    return launcher_call(
        socket_path, {"action": "ensure", "principal": principal, "credentials": content}
    )
