"""bureau-proxy against peers that do not play fair: a client or an upstream whose head or
trailers never end, and a client that pipelines requests and never reads the answers
(memory must stay flat and other clients keep being served), and an upstream that answers
one request with more than one response (nothing beyond the one response reaches the
client, and that upstream connection is closed, never reused)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processes import RunningProxy, echo_upstream, proxy, unix_request
from raw_http import Conn

TOKEN = "canary-bounds-0c41"
FILLER = b"a" * 65536
# Streaming stops here even if the proxy takes it all: enough to show memory stays flat.
STREAM_CAP = 256 << 20
# A proxy that buffers an endless head grows past this long before the cap.
GROWTH_LIMIT_KIB = 48 << 10
# The most a bounded head may cost the proxy, allocator slack included.
FLAT_KIB = 16 << 10
# A client whose bytes the proxy has not taken for this long has been stopped being read.
STALL = 1.0
INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected"


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the process started), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def stream_endless(sock: socket.socket, prefix: bytes, pid: int) -> str:
    """Send ``prefix`` and then filler that never ends the head. "refused" once the proxy
    stops taking it (it closed the connection), "grew" if the proxy's memory grew by
    GROWTH_LIMIT_KIB first, "cap" after STREAM_CAP bytes."""
    start = memory_kib(pid, "VmRSS")
    sent = 0
    try:
        sock.sendall(prefix)
        while sent < STREAM_CAP:
            sock.sendall(FILLER)
            sent += len(FILLER)
            if sent % (4 << 20) == 0 and memory_kib(pid, "VmRSS") - start > GROWTH_LIMIT_KIB:
                return "grew"
    except (BrokenPipeError, ConnectionResetError):
        return "refused"
    return "cap"


@dataclass
class RawConnection:
    proxy_pid: int
    paths: list[bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    stream_result: str = ""


Answer = Callable[[socket.socket, RawConnection], None]


class RawUpstream:
    """A TCP upstream whose answers are raw bytes chosen per path (requests carry no body),
    on kept-alive connections; it records each connection and when the proxy closed it."""

    def __init__(self, answers: dict[bytes, Answer]) -> None:
        self.answers = answers
        self.connections: list[RawConnection] = []
        self.proxy_pid = 0  # set once the proxy runs: what stream_endless watches
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            record = RawConnection(self.proxy_pid)
            self.connections.append(record)
            threading.Thread(target=self._serve, args=(sock, record), daemon=True).start()

    def _serve(self, sock: socket.socket, record: RawConnection) -> None:
        buffered = b""
        with sock:
            try:
                while True:
                    while b"\r\n\r\n" not in buffered:
                        data = sock.recv(65536)
                        if not data:
                            return
                        buffered += data
                    head, _, buffered = buffered.partition(b"\r\n\r\n")
                    path = head.split(b" ")[1]
                    record.paths.append(path)
                    self.answers[path](sock, record)
            except OSError:
                return
            finally:
                record.closed.set()

    def close(self) -> None:
        self.listener.close()


def send(data: bytes) -> Answer:
    def answer(sock: socket.socket, record: RawConnection) -> None:
        del record
        sock.sendall(data)  # one write: the proxy sees it all in one read

    return answer


@dataclass
class Setup:
    running: RunningProxy
    raw: RawUpstream


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    answers: dict[bytes, Answer] = getattr(request, "param", {})
    raw = RawUpstream({b"/ok": send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), **answers})
    with echo_upstream() as good:
        payload = {
            "principal": "@t/fleet/prod/agent/bounds:bureau.local",
            "services": {
                "good": {"upstream_url": good, "inject_headers": {"Authorization": "TOKEN"}},
                "evil": {"upstream_url": raw.url, "inject_headers": {"X-Other": "TOKEN"}},
            },
            "credentials": {"TOKEN": TOKEN},
            "expires_at": None,
        }
        try:
            with proxy(payload, tmp_path / "s") as running:
                raw.proxy_pid = running.proc.pid
                yield Setup(running, raw)
        finally:
            raw.close()


class Bystander:
    """Another client of the same proxy, making requests one after another until stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[str] = []
        self.served = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.served.wait(30), "the bystander's first request was not served"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = unix_request(self.path, "GET", "/http/good/bystander", timeout=10)
                assert reply.json()["path"] == "/bystander"
                self.served.set()
            except Exception as exc:
                self.errors.append(repr(exc))
                return

    def finish(self) -> list[str]:
        """Wait for one more answer after the attack, then stop; the errors seen."""
        self.served.clear()
        self.served.wait(30)
        self.stop.set()
        self.thread.join(30)
        return self.errors


CHUNKED_POST = b"POST /http/good/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
HEAD_TOO_LARGE = "request head too large"
TRAILERS_TOO_LARGE = "request trailers too large"


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        # A value that never ends, a name that never ends, one after a whole header.
        (b"GET /http/good/x HTTP/1.1\r\nHost: x\r\nX-Endless: ", HEAD_TOO_LARGE),
        (b"GET /http/good/x HTTP/1.1\r\nHost: x\r\nX-Endless", HEAD_TOO_LARGE),
        (b"GET /http/good/x HTTP/1.1\r\nHost: x\r\nX-A: b\r\nX-Endless: ", HEAD_TOO_LARGE),
        # The same in the trailers after a chunked body (the head went upstream already).
        (CHUNKED_POST + b"0\r\nX-Endless: ", TRAILERS_TOO_LARGE),
        (CHUNKED_POST + b"0\r\nX-Endless", TRAILERS_TOO_LARGE),
        (CHUNKED_POST + b"5\r\nhello\r\n0\r\nX-A: b\r\nX-Endless: ", TRAILERS_TOO_LARGE),
    ],
)
def test_an_endless_request_head_is_cut_at_the_limit(
    setup: Setup, prefix: bytes, error: str
) -> None:
    pid = setup.running.proc.pid
    unix_request(setup.running.socket, "GET", "/http/good/warm")
    peak = memory_kib(pid, "VmHWM")
    bystander = Bystander(setup.running.socket)
    attacker = Conn(setup.running.socket)
    try:
        result = stream_endless(attacker.sock, prefix, pid)
        growth = memory_kib(pid, "VmHWM") - peak
        assert result == "refused", f"the proxy took the head ({result}, +{growth} KiB)"
        answer = attacker.read()
        assert answer.status == 431
        assert answer.json() == {"error": error}
        assert answer.headers["connection"] == "close"
        assert attacker.closed()
    finally:
        attacker.close()
        errors = bystander.finish()
    assert growth < FLAT_KIB, f"the proxy's peak memory grew by {growth} KiB"
    assert errors == []


def endless_response(prefix: bytes) -> Answer:
    def answer(sock: socket.socket, record: RawConnection) -> None:
        record.stream_result = stream_endless(sock, prefix, record.proxy_pid)
        if record.stream_result != "refused":
            sock.shutdown(socket.SHUT_RDWR)  # the proxy took it all: end the test quickly

    return answer


ENDLESS = {
    b"/value": endless_response(b"HTTP/1.1 200 OK\r\nX-Endless: "),
    b"/name": endless_response(b"HTTP/1.1 200 OK\r\nX-Endless"),
    b"/reason": endless_response(b"HTTP/1.1 200 Endless"),
    # An interim response relayed first: the final answer can still be the 502.
    b"/after-continue": endless_response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Endless: "
    ),
}


@pytest.mark.parametrize("setup", [ENDLESS], indirect=True)
@pytest.mark.parametrize("path", list(ENDLESS))
def test_an_endless_upstream_head_is_a_502_and_that_connection_is_dropped(
    setup: Setup, path: bytes
) -> None:
    running, raw = setup.running, setup.raw
    pid = running.proc.pid
    assert unix_request(running.socket, "GET", "/http/evil/ok").status == 200
    peak = memory_kib(pid, "VmHWM")
    bystander = Bystander(running.socket)
    try:
        reply = unix_request(running.socket, "GET", "/http/evil" + path.decode(), timeout=60)
        growth = memory_kib(pid, "VmHWM") - peak
    finally:
        errors = bystander.finish()
    endless = raw.connections[0]
    assert endless.closed.wait(30)
    assert endless.paths == [b"/ok", path]
    assert endless.stream_result == "refused", f"the proxy took the head (+{growth} KiB)"
    assert reply.status == 502
    assert reply.json() == {"error": "upstream of 'evil' sent a response head too large"}
    assert growth < FLAT_KIB, f"the proxy's peak memory grew by {growth} KiB"
    assert errors == []
    # The next request to that upstream goes on a new connection.
    assert unix_request(running.socket, "GET", "/http/evil/ok").status == 200
    assert [c.paths for c in raw.connections] == [[b"/ok", path], [b"/ok"]]


ENDLESS_TRAILERS = {
    b"/trailer-value": endless_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Endless: "
    ),
    b"/trailer-name": endless_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-A: b\r\nX-Endless"
    ),
}


def read_until_closed(conn: Conn) -> bytes:
    received = b""
    try:
        while data := conn.stream.read1(65536):
            received += data
    except ConnectionResetError:
        pass
    return received


TRAILED = {
    b"/trailed": send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Trailer: one\r\nSet-Cookie: late=1\r\n\r\n"
    ),
}


@pytest.mark.parametrize("setup", [TRAILED], indirect=True)
def test_upstream_trailers_within_the_limit_are_dropped(setup: Setup) -> None:
    """The client's chunked body ends with a bare last chunk, and that upstream connection
    carries the next request."""
    client = Conn(setup.running.socket)
    try:
        client.send(b"GET /http/evil/trailed HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = client.read()  # asserts the last chunk is followed by the blank line
        assert (answer.status, answer.body) == (200, b"ok")
        assert answer.headers["transfer-encoding"] == "chunked"
        client.send(b"GET /http/evil/ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read().body == b"ok"
    finally:
        client.close()
    assert [c.paths for c in setup.raw.connections] == [[b"/trailed", b"/ok"]]


@pytest.mark.parametrize("setup", [ENDLESS_TRAILERS], indirect=True)
@pytest.mark.parametrize("path", list(ENDLESS_TRAILERS))
def test_an_endless_upstream_trailer_cuts_the_relayed_response_short(
    setup: Setup, path: bytes
) -> None:
    """The head and the first chunk are already the client's when the trailers begin: the
    client's connection is cut before the last chunk, so it cannot take the answer for a
    whole one, and that upstream connection is dropped."""
    running, raw = setup.running, setup.raw
    pid = running.proc.pid
    assert unix_request(running.socket, "GET", "/http/evil/ok").status == 200
    peak = memory_kib(pid, "VmHWM")
    bystander = Bystander(running.socket)
    client = Conn(running.socket)
    try:
        client.send(b"GET /http/evil" + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        received = read_until_closed(client)
        growth = memory_kib(pid, "VmHWM") - peak
    finally:
        client.close()
        errors = bystander.finish()
    endless = raw.connections[0]
    assert endless.closed.wait(30)
    assert endless.paths == [b"/ok", path]
    assert endless.stream_result == "refused", f"the proxy took the trailers (+{growth} KiB)"
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert body == b"2\r\nok\r\n"  # no last chunk: the client sees the answer is cut short
    assert growth < FLAT_KIB, f"the proxy's peak memory grew by {growth} KiB"
    assert errors == []
    assert unix_request(running.socket, "GET", "/http/evil/ok").status == 200
    assert [c.paths for c in raw.connections] == [[b"/ok", path], [b"/ok"]]


EXCESS = {
    b"/double": send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + INJECTED),
    b"/head": send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(INJECTED) + INJECTED),
    b"/no-content": send(
        b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(INJECTED) + INJECTED
    ),
    b"/not-modified": send(b"HTTP/1.1 304 Not Modified\r\n\r\n" + INJECTED),
    b"/chunked-no-content": send(
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(INJECTED), INJECTED)
    ),
}


@pytest.mark.parametrize("setup", [EXCESS], indirect=True)
@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        (b"GET", b"/double", 200, b"first"),
        (b"HEAD", b"/head", 200, b""),
        (b"GET", b"/no-content", 204, b""),
        (b"GET", b"/not-modified", 304, b""),
        (b"GET", b"/chunked-no-content", 204, b""),
    ],
)
def test_an_upstream_gets_one_response_per_request(
    setup: Setup, method: bytes, path: bytes, status: int, body: bytes
) -> None:
    """Whatever the upstream sends beyond its one response never reaches the client, whose
    next pipelined request (for another service) gets its own answer."""
    client = Conn(setup.running.socket)
    try:
        client.send(
            method + b" /http/evil" + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /http/good/after HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        first = client.read(head_only=method == b"HEAD")
        assert (first.status, first.body) == (status, body)
        second = client.read()
        assert second.body != b"injected"
        assert second.json()["path"] == "/after"
    finally:
        client.close()
    # That upstream connection was closed, and the next request goes on a fresh one.
    assert setup.raw.connections[0].closed.wait(30)
    again = unix_request(setup.running.socket, "GET", "/http/evil/ok")
    assert (again.status, again.body) == (200, b"ok")
    assert [c.paths for c in setup.raw.connections] == [[path], [b"/ok"]]


CODINGS = {
    b"/gzip-chunked": send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    b"/gzip": send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
}


@pytest.mark.parametrize("setup", [CODINGS], indirect=True)
@pytest.mark.parametrize("path", list(CODINGS))
def test_an_upstream_transfer_coding_the_proxy_would_drop_is_a_502(
    setup: Setup, path: bytes
) -> None:
    """Re-framed as chunked alone, the body would reach the client still gzipped with
    nothing saying so."""
    reply = unix_request(setup.running.socket, "GET", "/http/evil" + path.decode())
    assert reply.status == 502
    assert reply.json() == {
        "error": "upstream of 'evil' used a transfer coding the proxy cannot pass on"
    }
    assert setup.raw.connections[0].closed.wait(30)


def stream_unread(sock: socket.socket, request: bytes, pid: int) -> str:
    """Pipeline ``request`` over and over and read none of the answers. "stalled" once the
    proxy has taken nothing for STALL seconds (it stopped reading this client), "grew" if
    its memory grew by GROWTH_LIMIT_KIB first, "cap" after STREAM_CAP bytes."""
    batch = request * (len(FILLER) // len(request))
    start = memory_kib(pid, "VmRSS")
    sent = 0
    sock.settimeout(STALL)
    try:
        while sent < STREAM_CAP:
            sock.sendall(batch)
            sent += len(batch)
            if (
                sent % (4 << 20) < len(batch)
                and memory_kib(pid, "VmRSS") - start > GROWTH_LIMIT_KIB
            ):
                return "grew"
    except TimeoutError:
        return "stalled"
    return "cap"


@pytest.mark.parametrize(
    "target",
    [
        b"/health",  # answered by the proxy itself
        b"/nowhere",  # a 404, also local
        b"/http/good/x",  # forwarded: the requests queue behind the one upstream
    ],
)
def test_a_client_that_never_reads_stops_being_read(setup: Setup, target: bytes) -> None:
    pid = setup.running.proc.pid
    unix_request(setup.running.socket, "GET", "/http/good/warm")
    peak = memory_kib(pid, "VmHWM")
    bystander = Bystander(setup.running.socket)
    client = Conn(setup.running.socket)
    try:
        result = stream_unread(client.sock, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", pid)
        growth = memory_kib(pid, "VmHWM") - peak
    finally:
        client.close()
        errors = bystander.finish()
    assert result == "stalled", f"the proxy kept reading ({result}, +{growth} KiB)"
    assert growth < FLAT_KIB, f"the proxy's peak memory grew by {growth} KiB"
    assert errors == []


def test_a_client_that_reads_late_gets_every_answer_in_order(setup: Setup) -> None:
    """Far more pipelined requests than the proxy holds for one client, mostly answered by
    the proxy itself, some forwarded: nothing is read until the proxy has stopped taking
    them, then every answer arrives, in order."""
    running = setup.running
    pid = running.proc.pid
    health = Conn(running.socket)
    try:
        health.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        expected = b""  # the answer, byte for byte
        while (line := health.stream.readline()) != b"\r\n":
            expected += line
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        expected += line + health.stream.read(length)
    finally:
        health.close()
    assert expected.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"status": "ok"' in expected
    unix_request(running.socket, "GET", "/http/good/warm")
    peak = memory_kib(pid, "VmHWM")
    count = 1 << 17
    forwarded = range(0, count, 1024)
    requests = b"".join(
        b"GET /http/good/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
        if i % 1024 == 0
        else b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        for i in range(count)
    )
    client = Conn(running.socket)
    sent = threading.Event()

    def send_all() -> None:
        client.sock.sendall(requests)
        sent.set()

    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        taken = sent.wait(STALL)
        growth = memory_kib(pid, "VmHWM") - peak
        for i in range(count):
            if i in forwarded:
                answer = client.read()
                assert answer.json()["path"] == f"/{i}", i
            else:
                assert client.stream.read(len(expected)) == expected, i
        assert sent.wait(30)
    finally:
        sender.join(30)
        client.close()
    assert not taken, f"the proxy took every request, none answered (+{growth} KiB)"
    assert growth < FLAT_KIB, f"the proxy's peak memory grew by {growth} KiB"


def test_a_body_held_for_an_upstream_that_fails_stops_counting(tmp_path: Path) -> None:
    """A request body waits for its upstream connection, and past 1 MiB the proxy stops
    reading. That connection's TLS handshake then fails: the client gets its 502, and the
    rest of the body and the next request are read; the held body no longer counts."""
    held = socket.create_server(("127.0.0.1", 0))  # accepts, and never answers a handshake
    payload = {
        "principal": "@t/fleet/prod/agent/bounds:bureau.local",
        "services": {
            "held": {
                "upstream_url": f"https://127.0.0.1:{held.getsockname()[1]}",
                "inject_headers": {"Authorization": "TOKEN"},
            }
        },
        "credentials": {"TOKEN": TOKEN},
        "expires_at": None,
    }
    body = b"a" * (4 << 20)
    with held, proxy(payload, tmp_path / "s") as running:
        client = Conn(running.socket)
        sent = threading.Event()

        def send_body() -> None:
            head = b"POST /http/held/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            with contextlib.suppress(OSError):  # the test gave up on a proxy that stopped
                client.sock.sendall(head % len(body) + body)
                sent.set()

        sender = threading.Thread(target=send_body)
        sender.start()
        upstream, _ = held.accept()
        try:
            stopped = not sent.wait(STALL)  # the proxy stopped reading with 1 MiB held
            upstream.close()
            answer = client.read()
            assert (answer.status, answer.json()) == (
                502,
                {"error": "upstream of 'held' unreachable"},
            )
            assert sent.wait(10), "the proxy stopped reading for good"
            client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.read().json()["status"] == "ok"
        finally:
            upstream.close()
            client.sock.shutdown(socket.SHUT_RDWR)
            sender.join(30)
            client.close()
    assert stopped, "the proxy read the whole body though no upstream could take it"
