"""The processes a benchmark drives: an nginx upstream (a small 200, a 64 KiB binary body,
text and binary bodies of the same bytes for response cleaning, and an echo of the
Authorization it was sent; on loopback TCP and on a Unix socket for the direct leg), nginx
and HAProxy as the header-injecting reverse proxies an operator would pick instead of
bureau, and bureau-proxy itself with any routes. Each is a context manager that leaves
nothing running."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import free_port, proxy

# A fake credential shaped like a real one (random base62 after a prefix), so that response
# cleaning searches for what it would search for in production: the proxies inject it.
TOKEN = "ghp_bench7QzX2kVbN4yW9mJ3tR8sL5cF1hD6gKpA"
BIG_BODY = 64 * 1024
# Response-cleaning bodies: /text/<size> (text/plain) and /binary/<size>
# (application/octet-stream) serve the same bytes, so the difference is cleaning alone.
TEXT_SIZES = {"64KiB": 64 * 1024, "1MiB": 1024 * 1024}
_WORDS = (
    "the of and to in is that for it as with was on be by this are from or at an have "
    "not they which you one were all we when there can been has more if will their "
    "request response service token user account project status error value update "
    "created deleted repository branch commit issue review message channel region"
)


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not accept connections")
        time.sleep(0.05)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    socket: Path

    def pids(self) -> list[int]:
        """The process and its children (nginx's workers)."""
        found = [self.proc.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            found += [int(p) for p in children.split()]
        return found


@dataclass(frozen=True)
class Case:
    """One leg of one benchmark case: a request shape driven at one concurrency against one
    server (proxy_overhead.py, kind_legs.py)."""

    leg: str
    server: Server
    path: str
    body: str  # the label of the case's body, as the report shows it
    concurrency: int
    charge_cpu: bool  # whether the server's CPU is a proxy's (not the upstream's)
    method: str = "GET"
    request_bytes: int | None = None  # a request body of this many bytes
    headers: tuple[str, ...] = ()


def _nginx_conf(work: Path, server: str) -> str:
    temp = "\n".join(
        f"  {kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
daemon off;
pid {work / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
{temp}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{server}
}}
"""


@contextlib.contextmanager
def nginx(work: Path, server: str, listen_socket: Path) -> Iterator[Server]:
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(_nginx_conf(work, server))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(
        [binary, "-p", str(work), "-c", str(conf), "-e", "stderr"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_socket(listen_socket, proc)
        yield Server(proc, listen_socket)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def api_text(size: int) -> bytes:
    """``size`` bytes of what an API answers (JSON lines of words, ids and times), the same
    on every run: what response cleaning reads through in practice."""
    pick = random.Random(18)  # noqa: S311 -- text, not secrets
    vocabulary = _WORDS.split()
    lines = []
    total = 0
    while total < size:
        sentence = " ".join(pick.choice(vocabulary) for _ in range(pick.randint(4, 14)))
        line = (
            f'{{"id": {pick.randint(1, 10**9)}, "name": "{pick.choice(vocabulary)}", '
            f'"updated_at": "2026-11-{pick.randint(10, 28)}T{pick.randint(10, 23)}:'
            f'{pick.randint(10, 59)}:00Z", "text": "{sentence}"}}\n'
        )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


@contextlib.contextmanager
def upstream(work: Path) -> Iterator[tuple[Server, int]]:
    """nginx serving /small (3 bytes, any method), /big (64 KiB, binary), /text/<size> and
    /binary/<size> (TEXT_SIZES) and /echo (the Authorization it was sent, as text), on a
    port and a Unix socket."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "big.bin").write_bytes(b"x" * BIG_BODY)
    bodies = ""
    for name, size in TEXT_SIZES.items():
        (work / f"{name}.txt").write_bytes(api_text(size))
        bodies += f"""
    location = /text/{name} {{ default_type text/plain; alias {work / f"{name}.txt"}; }}
    location = /binary/{name} {{
      default_type application/octet-stream; alias {work / f"{name}.txt"};
    }}"""
    sock = work / "upstream.sock"
    # /big is binary so that the overhead legs compare forwarding alike: nginx and HAProxy
    # do not clean responses; the cleaning legs measure that on their own.
    server = f"""
  server {{
    listen 127.0.0.1:{port};
    listen unix:{sock};
    location = /small {{ return 200 "ok\\n"; }}
    location = /big {{ default_type application/octet-stream; alias {work / "big.bin"}; }}
    location = /echo {{ return 200 "authorization: $http_authorization\\n"; }}{bodies}
  }}"""
    with nginx(work, server, sock) as running:
        yield running, port


@contextlib.contextmanager
def nginx_proxy(work: Path, upstream_port: int) -> Iterator[Server]:
    """nginx as a reverse proxy on a Unix socket that injects the Authorization header and
    strips client credentials, with pooled upstream connections: the operator's choice."""
    sock = work / "nginx-proxy.sock"
    server = f"""
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen unix:{sock};
    location /http/api/ {{
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Cookie "";
      proxy_set_header Proxy-Authorization "";
      proxy_set_header Authorization "Bearer {TOKEN}";
      proxy_redirect off;
    }}
  }}"""
    with nginx(work, server, sock) as running:
        yield running


def haproxy_conf(sock: Path, upstream_port: int) -> str:
    """HAProxy doing what nginx_proxy does: one thread (as nginx has one worker), keep-alive
    both ways with pooled upstream connections, the client's credentials dropped and the
    Authorization injected, /http/api/ taken off the path."""
    return f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend bench
  bind unix@{sock}
  http-request deny deny_status 404 unless {{ path_beg /http/api/ }}
  http-request del-header Cookie
  http-request del-header Proxy-Authorization
  http-request set-header Authorization "Bearer {TOKEN}"
  http-request replace-path /http/api(/.*) \\1
  default_backend up
backend up
  server up 127.0.0.1:{upstream_port}
"""


@contextlib.contextmanager
def haproxy_proxy(work: Path, upstream_port: int) -> Iterator[Server]:
    """Debian's HAProxy as the second header-injecting reverse proxy, in the foreground."""
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "haproxy.sock"
    conf = work / "haproxy.cfg"
    conf.write_text(haproxy_conf(sock, upstream_port))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    log = work / "haproxy.log"  # its start-up notices, and why it stopped if it did
    with log.open("wb") as err:
        proc = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=err, stderr=err)
    try:
        try:
            wait_for_socket(sock, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from None
        yield Server(proc, sock)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def header_route(upstream_port: int) -> dict[str, Any]:
    """The route every proxy leg injects through: TOKEN as a Bearer Authorization."""
    return {
        "upstream_url": f"http://127.0.0.1:{upstream_port}",
        "auth_scheme": "Bearer",
        "inject_headers": {"Authorization": "TOKEN"},
    }


@contextlib.contextmanager
def bureau_proxy(work: Path, upstream_port: int) -> Iterator[Server]:
    """bureau-proxy with the one header route, service ``api``."""
    with bureau_routes(work, {"api": header_route(upstream_port)}, {"TOKEN": TOKEN}) as ours:
        yield ours


@contextlib.contextmanager
def bureau_routes(
    work: Path, services: dict[str, Any], credentials: dict[str, str]
) -> Iterator[Server]:
    """bureau-proxy as the launcher starts it, with these routes (WIRE.md "Service
    routes") and credentials: the payload on stdin, READY on stdout."""
    work.mkdir(parents=True, exist_ok=True)
    payload = {
        "principal": "@bench/fleet/prod/agent/bench:bench.local",
        "services": services,
        "credentials": credentials,
        "expires_at": None,
    }
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}
    env["BUREAU_LOG_LEVEL"] = "warning"  # it logs nothing under load that is not a fault
    with proxy(payload, work / "bureau-proxy.sock", env) as running:
        yield Server(running.proc, running.socket)
