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
    with subprocess.Popen(
        [sys.executable, str(ROOT / "script" / "echo-upstream"), *extra],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY", ready
        try:
            yield f"{scheme}://127.0.0.1:{ready[1]}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            proc.stdout.close()


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
