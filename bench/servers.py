"""The processes a benchmark drives: an nginx upstream (a small 200 and a 64 KiB body, on
loopback TCP and on a Unix socket for the direct leg), nginx as the header-injecting
reverse proxy an operator would pick instead of bureau, and bureau-proxy itself. Each is
a context manager that leaves nothing running."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from processes import free_port, proxy

TOKEN = "bench-token-0123456789"  # a fake credential: the proxies inject it
BIG_BODY = 64 * 1024


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


@contextlib.contextmanager
def upstream(work: Path) -> Iterator[tuple[Server, int]]:
    """nginx serving /small (3 bytes) and /big (64 KiB), on a port and a Unix socket."""
    port = free_port()
    (work / "big.bin").parent.mkdir(parents=True, exist_ok=True)
    (work / "big.bin").write_bytes(b"x" * BIG_BODY)
    sock = work / "upstream.sock"
    server = f"""
  server {{
    listen 127.0.0.1:{port};
    listen unix:{sock};
    location = /small {{ return 200 "ok\\n"; }}
    location = /big {{ alias {work / "big.bin"}; }}
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


@contextlib.contextmanager
def bureau_proxy(work: Path, upstream_port: int) -> Iterator[Server]:
    """bureau-proxy as the launcher starts it: the payload on stdin, READY on stdout."""
    work.mkdir(parents=True, exist_ok=True)
    payload = {
        "principal": "@bench/fleet/prod/agent/bench:bench.local",
        "services": {
            "api": {
                "upstream_url": f"http://127.0.0.1:{upstream_port}",
                "auth_scheme": "Bearer",
                "inject_headers": {"Authorization": "TOKEN"},
            }
        },
        "credentials": {"TOKEN": TOKEN},
        "expires_at": None,
    }
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}
    env["BUREAU_LOG_LEVEL"] = "warning"  # it logs nothing under load that is not a fault
    with proxy(payload, work / "bureau-proxy.sock", env) as running:
        yield Server(running.proc, running.socket)
