"""bureau-proxy as a real process, in front of a real upstream."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from processes import (
    BIN,
    GateUpstream,
    RunningProxy,
    echo_exchange,
    echo_upstream,
    proxy,
    stars,
    unix_request,
)

from bureau.errors import InputError
from bureau.proxy import main as proxy_main
from bureau.wire.proxy_payload import ProxyPayload

CANARY = "canary-token-7f3a9c"
API_KEY = "canary-apikey-51be"


def _payload(upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "principal": "@t/fleet/prod/agent/alpha:bureau.local",
        "services": {
            "api": {
                "upstream_url": upstream,
                "auth_scheme": "Bearer",
                "inject_headers": {"Authorization": "TOKEN", "X-Api-Key": "API_KEY"},
                "strip_headers": ["X-Strip-Me"],
            },
            "broken": {
                "upstream_url": "http://127.0.0.1:1",
                "inject_headers": {"Authorization": "TOKEN"},
            },
            "unprovisioned": {
                "upstream_url": upstream,
                "inject_headers": {"Authorization": "ABSENT"},
            },
        },
        "credentials": {"TOKEN": CANARY, "API_KEY": API_KEY},
        "expires_at": None,
        **extra,
    }


@pytest.fixture
def upstream() -> Any:
    with echo_upstream() as url:
        yield url


def test_injects_strips_and_forwards(upstream: str, tmp_path: Path) -> None:
    sock = tmp_path / "alpha.proxy.sock"
    with proxy(_payload(upstream), sock) as running:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        limits = Path(f"/proc/{running.proc.pid}/limits").read_text()
        assert any(
            ln.startswith("Max core file size") and ln.split()[4:6] == ["0", "0"]
            for ln in limits.splitlines()
        )

        health = unix_request(sock, "GET", "/health")
        assert health.status == 200
        assert health.json()["services"] == ["api", "broken", "unprovisioned"]
        assert CANARY not in health.body.decode()

        reply, received = echo_exchange(
            sock,
            "GET",
            "/http/api/v1/a%2Fb?x=1&y=%2F",
            headers={
                "Authorization": "Bearer client-supplied",
                "Cookie": "session=client",
                "X-Strip-Me": "gone",
                "X-Api-Key": "client-key",
                "X-Kept": "kept",
                "Proxy-Authorization": "Basic xyz",
                "Connection": "keep-alive, X-Conn-Listed",
                "X-Conn-Listed": "hop",
            },
        )
        assert reply.status == 200
        seen = reply.json()
        assert seen["path"] == "/v1/a%2Fb"
        assert seen["query"] == "x=1&y=%2F"
        # The credentials reached the upstream; its echo showed the workload `*`s.
        assert received["headers"]["authorization"] == f"Bearer {CANARY}"
        assert received["headers"]["x-api-key"] == API_KEY
        headers = seen["headers"]
        assert headers["authorization"] == f"Bearer {stars(CANARY)}"
        assert headers["x-api-key"] == stars(API_KEY)
        assert CANARY not in reply.body.decode()
        assert API_KEY not in reply.body.decode()
        assert headers["x-kept"] == "kept"
        for gone in ("cookie", "x-strip-me", "proxy-authorization", "x-conn-listed"):
            assert gone not in headers
        assert headers["host"] == upstream.removeprefix("http://")

        body = b"b" * (1 << 20)
        posted = unix_request(sock, "POST", "/http/api/upload", body=body)
        assert posted.json()["body_length"] == len(body)
        assert posted.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        big = unix_request(sock, "GET", "/http/api/big")
        assert big.status == 200
        assert big.body == b"x" * 65536

        redirect = unix_request(sock, "GET", "/http/api/redirect")
        assert redirect.status == 302
        assert redirect.headers["location"] == "http://elsewhere.invalid/landing"

        unknown = unix_request(sock, "GET", "/http/nope/x")
        assert (unknown.status, unknown.json()) == (404, {"error": "unknown service 'nope'"})
        missing = unix_request(sock, "GET", "/http/unprovisioned/x")
        assert missing.status == 503
        assert "ABSENT" in missing.json()["error"]
        broken = unix_request(sock, "GET", "/http/broken/x")
        assert broken.status == 502
        assert broken.json() == {"error": "upstream of 'broken' unreachable"}
        returncode, stderr = running.stop()
    assert returncode == 0
    assert CANARY not in stderr
    assert API_KEY not in stderr


def test_expired_credentials_are_refused(upstream: str, tmp_path: Path) -> None:
    with proxy(_payload(upstream, expires_at="2001-01-01T00:00:00Z"), tmp_path / "s") as p:
        reply = unix_request(p.socket, "GET", "/http/api/x")
        assert (reply.status, reply.json()) == (503, {"error": "credentials expired"})


def _logged(running: RunningProxy, event: str) -> None:
    """Read the proxy's log until it says ``event``."""
    assert running.proc.stderr is not None
    while f'"event": "{event}"' not in (line := running.proc.stderr.readline().decode()):
        assert line, f"the proxy exited without logging {event!r}"


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    """A request at the upstream when SIGTERM comes, answered only once the proxy has
    started draining, still reaches its client; then the proxy exits 0."""
    with GateUpstream() as gate, proxy(_payload(gate.url), tmp_path / "s") as running:
        result: dict[str, Any] = {}

        def held() -> None:
            result["reply"] = unix_request(running.socket, "GET", "/http/api/held")

        thread = threading.Thread(target=held)
        thread.start()
        gate.wait_arrived(1)
        running.proc.send_signal(signal.SIGTERM)
        _logged(running, "draining")
        # Its listener closed (after the grace for connections already queued): the proxy
        # now only waits for what is in flight, which the upstream answers only now.
        deadline = time.monotonic() + 30
        while _accepts(running.socket):
            assert time.monotonic() < deadline, "the proxy never stopped accepting"
            time.sleep(0.01)
        gate.open()
        thread.join(timeout=30)
        assert result["reply"].status == 200
        assert result["reply"].json() == {"path": "/held"}
        assert running.proc.wait(timeout=30) == 0


def test_a_client_that_goes_away_is_no_upstream_error(tmp_path: Path) -> None:
    with GateUpstream() as gate, proxy(_payload(gate.url), tmp_path / "s") as running:
        clients = []
        for _ in range(3):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(running.socket))
            client.sendall(b"GET /http/api/held HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        gate.wait_arrived(3)
        for client in clients:
            client.close()
        # The upstream answers after the clients left; the next client is served.
        gate.open()
        gate.wait_answered(3)
        assert unix_request(running.socket, "GET", "/http/api/x").status == 200
        code, stderr = running.stop()
    assert code == 0
    assert "Traceback" not in stderr
    assert "upstream failed" not in stderr


@pytest.mark.parametrize(
    ("credentials", "problem"),
    [
        ({"TOKEN": "line\r\nX-Evil: 1"}, "credentials.TOKEN: contains a control character"),
        ({"TOKEN": "nul\x00"}, "credentials.TOKEN: contains a control character"),
        ({"bad name": "x"}, "expected name -> string"),
    ],
)
def test_bad_payload_is_refused_without_echoing_values(
    tmp_path: Path, credentials: dict[str, str], problem: str
) -> None:
    payload = json.dumps(_payload("http://127.0.0.1:9", credentials=credentials)).encode()
    result = subprocess.run(
        [str(BIN / "bureau-proxy"), "--socket", str(tmp_path / "s")],
        input=payload,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert problem in err
    assert "Traceback" not in err
    assert "X-Evil" not in err
    assert not (tmp_path / "s").exists()


# The launcher's way of starting a proxy, done by hand: this helper is a child subreaper,
# asks the template for a proxy over its control socket, writes the payload to the proxy's
# stdin and prints the proxy's exit code. The template's stderr (and so the proxy's) is
# the helper's.
BY_TEMPLATE = """
import array, json, os, socket, subprocess, sys
from bureau.hardening import become_subreaper
become_subreaper()
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
template = subprocess.Popen(
    [sys.executable, "-m", "bureau.proxy.template", "--control-fd", str(theirs.fileno())],
    stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
)
theirs.close()
stdin_r, stdin_w = os.pipe()
stdout_r, stdout_w = os.pipe()
fds = array.array("i", [stdin_r, stdout_w])
message = json.dumps({"argv": sys.argv[1:]}).encode()
ours.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
pid = json.loads(ours.recv(4096))["pid"]
os.close(stdin_r)
os.close(stdout_w)
os.write(stdin_w, sys.stdin.buffer.read())
os.close(stdin_w)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
ours.close()
template.wait(30)
print(code)
"""


def _start_failing(how: str, payload: bytes, socket_path: Path) -> tuple[int, str]:
    """Start a proxy that cannot start, directly or forked by the template: its exit code
    and its stderr."""
    argv = ["--socket", str(socket_path)]
    if how == "directly":
        command = [str(BIN / "bureau-proxy"), *argv]
    else:
        command = [sys.executable, "-c", BY_TEMPLATE, *argv]
    result = subprocess.run(command, input=payload, capture_output=True, timeout=60, check=False)
    code = result.returncode if how == "directly" else int(result.stdout)
    return code, result.stderr.decode()


@pytest.mark.parametrize("how", ["directly", "by the template"])
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("port out of range", "port"),
        ("port zero", "port"),
        ("a file where the socket's directory goes", "file exists"),
    ],
)
def test_a_proxy_that_cannot_start_says_why_in_one_line(
    tmp_path: Path, how: str, case: str, reason: str
) -> None:
    upstream = "http://127.0.0.1:8080"
    socket_path = tmp_path / "run" / "s"
    if case == "port out of range":
        upstream = "http://127.0.0.1:99999"
    elif case == "port zero":
        upstream = "http://127.0.0.1:0"
    else:
        (tmp_path / "run").write_text("in the way")
    code, stderr = _start_failing(how, json.dumps(_payload(upstream)).encode(), socket_path)
    lines = stderr.splitlines()
    assert code != 0
    assert len(lines) == 1, stderr
    assert reason in lines[0].lower()
    assert CANARY not in stderr
    assert API_KEY not in stderr


def test_a_payload_that_fails_to_load_unexpectedly_still_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the payload's parser raises, the proxy's reason is one line, and a
    credential value the exception quotes is masked."""

    def broken(cls: type[ProxyPayload], raw: bytes) -> ProxyPayload:
        raise RuntimeError(f"cannot take {CANARY}\nat all")

    monkeypatch.setattr(ProxyPayload, "from_bytes", classmethod(broken))
    raw = json.dumps(_payload("http://127.0.0.1:9")).encode()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(raw)))
    with pytest.raises(InputError) as refused:
        proxy_main.read_payload()
    assert str(refused.value) == (
        "proxy payload (stdin): RuntimeError: cannot take <redacted> at all"
    )


def test_template_refuses_to_run_without_its_launcher() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bureau.proxy.template"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "bureau-proxy template: started by bureau-launcher with --control-fd N\n"
    )


def test_https_upstream_is_verified(tmp_path: Path) -> None:
    """Credentials go to an HTTPS upstream only over a verified connection: the certificate
    must chain to a trusted root and name the host the route names."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(cert)}
    with echo_upstream("--tls-cert", str(cert), "--tls-key", str(key), scheme="https") as url:
        port = url.rsplit(":", 1)[1]
        payload = _payload(f"https://localhost:{port}")
        # The same server under a name its certificate does not carry.
        payload["services"]["wrongname"] = {
            "upstream_url": f"https://127.0.0.1:{port}",
            "inject_headers": {"Authorization": "TOKEN"},
        }
        with proxy(payload, tmp_path / "s", env=env) as running:
            reply, received = echo_exchange(running.socket, "GET", "/http/api/tls")
            assert received["headers"]["authorization"] == f"Bearer {CANARY}"
            seen = reply.json()
            assert seen["headers"]["authorization"] == f"Bearer {stars(CANARY)}"
            assert seen["headers"]["host"] == f"localhost:{port}"
            again = unix_request(running.socket, "GET", "/http/api/again")  # a kept connection
            assert again.json()["path"] == "/again"
            refused = unix_request(running.socket, "GET", "/http/wrongname/x")
            assert refused.status == 502
            code, stderr = running.stop()
        assert code == 0
        assert "SSLCertVerificationError" in stderr
        assert CANARY not in stderr
    # Without the test root in the trust store, the same upstream is refused too.
    with (
        echo_upstream("--tls-cert", str(cert), "--tls-key", str(key), scheme="https") as url,
        proxy(_payload(url.replace("127.0.0.1", "localhost")), tmp_path / "t") as running,
    ):
        assert unix_request(running.socket, "GET", "/http/api/x").status == 502


@pytest.mark.slow
def test_handover_under_load_loses_no_request(upstream: str, tmp_path: Path) -> None:
    """The launcher's rotation, done by hand many times: the next proxy binds a temporary
    path, the path is renamed over the principal's socket, the old proxy gets SIGTERM.
    Clients connecting all the while (a new connection per request) all get answers:
    connections queued on the old listener are accepted and served, not reset."""
    final = tmp_path / "p.sock"
    errors: list[str] = []
    answered = 0
    counted = threading.Condition()
    stop = threading.Event()

    def client() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                reply = unix_request(final, "GET", "/http/api/x", timeout=10)
                assert reply.status == 200, reply.status
                with counted:
                    answered += 1
                    counted.notify_all()
            except Exception as exc:
                errors.append(repr(exc))

    def flowed(more: int) -> None:
        """Wait for ``more`` answers (or the first error)."""
        with counted:
            wanted = answered + more
            assert counted.wait_for(lambda: answered >= wanted or bool(errors), 30)

    def start(index: int) -> subprocess.Popen[bytes]:
        temp = tmp_path / f".p.sock.{index}"
        proc = subprocess.Popen(
            [str(BIN / "bureau-proxy"), "--socket", str(temp), "--log-level", "warning"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(_payload(upstream)).encode())
        proc.stdin.close()
        assert proc.stdout.readline().startswith(b"READY")
        proc.stdout.close()
        temp.rename(final)
        return proc

    old = start(0)
    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for index in range(1, 13):
            flowed(10)  # through each proxy before it is handed over
            new = start(index)
            old.send_signal(signal.SIGTERM)
            assert old.wait(timeout=30) == 0
            old = new
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        old.kill()
        old.wait()
    assert errors == []
    assert answered > 100
