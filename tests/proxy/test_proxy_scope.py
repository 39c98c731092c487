"""A credential's scope through a real bureau-proxy: each allowed and each refused request
is its own case, evasions included, and every refusal is shown never to reach the upstream
(it records every request it gets). A refusal is a 403 naming the kind of rule, never the
rule or a credential, and the connection goes on serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from processes import RunningProxy, proxy, unix_request
from raw_http import Conn
from recording_upstream import RecordingUpstream

TOKEN = "scope-canary-0b7e"
ALLOW = [
    "GET /repos/acme/*/issues",
    "POST /repos/acme/*/issues",
    "GET /repos/acme/**",
    "PURGE /cache/*",
]
DENY = ["* /repos/acme/secrets/**", "DELETE /**"]


def _payload(url: str) -> dict[str, Any]:
    scoped = {
        "upstream_url": url + "/base",
        "inject_query": {"token": "TOKEN"},
        "allow": ALLOW,
        "deny": DENY,
    }
    return {
        "principal": "@t/fleet/prod/agent/alpha:bureau.local",
        "services": {
            "scoped": scoped,
            "deny-only": {
                "upstream_url": url,
                "inject_headers": {"X-Token": "TOKEN"},
                "deny": ["POST /admin/**"],
            },
            "nothing-allowed": {**scoped, "allow": []},
            "unprovisioned": {**scoped, "inject_query": {"token": "ABSENT"}},
        },
        "credentials": {"TOKEN": TOKEN},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as recording:
        yield recording


@pytest.fixture(scope="module")
def running(
    upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    sock = tmp_path_factory.mktemp("scope") / "p.sock"
    with proxy(_payload(upstream.url), sock) as started:
        yield started


def _send(running: RunningProxy, method: str, target: str) -> Any:
    return unix_request(running.socket, method, target, body=b"{}" if method == "POST" else None)


@pytest.mark.parametrize(
    ("method", "target", "arrives_as"),
    [
        ("GET", "/repos/acme/widget/issues", "/base/repos/acme/widget/issues"),
        ("POST", "/repos/acme/widget/issues", "/base/repos/acme/widget/issues"),
        ("GET", "/repos/acme/widget/issues?state=open", "/base/repos/acme/widget/issues"),
        ("GET", "/repos/acme", "/base/repos/acme"),
        ("GET", "/repos/acme/widget/pulls/7/files", "/base/repos/acme/widget/pulls/7/files"),
        # Forwarded byte for byte: only the check sees the decoded, collapsed form.
        ("GET", "/repos/%61cme/widget", "/base/repos/%61cme/widget"),
        ("GET", "/repos//acme/widget", "/base/repos//acme/widget"),
        ("GET", "/repos/acme/widget%20two/issues", "/base/repos/acme/widget%20two/issues"),
        ("PURGE", "/cache/entry", "/base/cache/entry"),
    ],
)
def test_allowed(
    running: RunningProxy, upstream: RecordingUpstream, method: str, target: str, arrives_as: str
) -> None:
    before = upstream.count
    reply = _send(running, method, f"/http/scoped{target}")
    assert reply.status == 200, reply.body
    assert upstream.count == before + 1
    seen = upstream.last()
    assert (seen.method, seen.path) == (method, arrives_as)
    assert seen.query.endswith(f"token={TOKEN}")


@pytest.mark.parametrize(
    ("method", "target", "rule"),
    [
        ("PUT", "/repos/acme/widget/issues", "allow"),  # method not allowed
        ("GET", "/repos/other/widget", "allow"),  # path not allowed
        ("POST", "/repos/acme/widget/issues/7", "allow"),  # * stays within a segment
        ("GET", "/", "allow"),
        ("GET", "/repos/acme/secrets/token", "deny"),  # deny wins over allow
        ("GET", "/repos/acme/secrets", "deny"),
        ("DELETE", "/repos/acme/widget", "deny"),
        ("GET", "/repos/acme/%73ecrets/token", "deny"),  # %73 is s
        ("GET", "/repos//acme///secrets/token", "deny"),  # doubled slashes collapse
        ("GET", "/repos/acme/x/../secrets/token", "path"),  # dot segments refused
        ("GET", "/repos/acme/x/%2e%2e/secrets/token", "path"),
        ("GET", "/repos/acme/x/.%2E/secrets/token", "path"),
        ("GET", "/repos/acme/./secrets/token", "path"),
        ("GET", "/repos/acme/x%2F..%2Fsecrets", "path"),  # encoded slash
        ("GET", "/repos/acme/x%5c..%5csecrets", "path"),  # encoded backslash
        ("GET", "/repos/acme/%zz", "path"),  # malformed escape
    ],
)
def test_refused(
    running: RunningProxy, upstream: RecordingUpstream, method: str, target: str, rule: str
) -> None:
    before = upstream.count
    reply = _send(running, method, f"/http/scoped{target}")
    assert reply.status == 403
    body = reply.json()
    assert body["rule"] == rule
    assert set(body) == {"error", "rule"}
    assert body["error"].startswith("'scoped': ")
    # Neither the credential nor the rules it was checked against.
    for shown in (TOKEN, *ALLOW, *DENY, "acme"):
        assert shown not in reply.body.decode()
    assert upstream.count == before


def test_a_method_in_lower_case_never_reaches_the_upstream(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    """``delete`` is not DELETE to the deny rule's eye (scope.py compares in upper case),
    but llhttp refuses it before any route is looked at: a 400, and nothing goes out."""
    before = upstream.count
    conn = Conn(running.socket)
    try:
        conn.send(b"delete /http/scoped/repos/acme/widget HTTP/1.1\r\nHost: p\r\n\r\n")
        reply = conn.read()
    finally:
        conn.close()
    assert reply.status == 400
    assert upstream.count == before


def test_a_deny_list_alone_lets_the_rest_through(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    assert _send(running, "POST", "/http/deny-only/admin/users").status == 403
    assert _send(running, "GET", "/http/deny-only/admin/users").status == 200
    assert _send(running, "POST", "/http/deny-only/users").status == 200
    assert upstream.count == before + 2


def test_an_empty_allow_list_allows_nothing(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    reply = _send(running, "GET", "/http/nothing-allowed/repos/acme")
    assert (reply.status, reply.json()["rule"]) == (403, "allow")
    assert upstream.count == before


def test_a_refusal_comes_before_a_missing_credential(running: RunningProxy) -> None:
    assert _send(running, "GET", "/http/unprovisioned/repos/acme/secrets").status == 403
    assert _send(running, "GET", "/http/unprovisioned/repos/acme").status == 503


def test_a_refused_request_with_a_body_leaves_the_connection_serving(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    """Its body is read and dropped; the next request on the connection goes through."""
    before = upstream.count
    body = json.dumps({"title": "x" * 5000}).encode()
    refused = (
        b"POST /http/scoped/repos/acme/secrets/x HTTP/1.1\r\nHost: p\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    chunked = (
        b"PUT /http/scoped/repos/acme/widget/issues HTTP/1.1\r\nHost: p\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    allowed = b"GET /http/scoped/repos/acme/widget HTTP/1.1\r\nHost: p\r\n\r\n"
    conn = Conn(running.socket)
    try:
        conn.send(refused + chunked + allowed)
        answers = [conn.read() for _ in range(3)]
    finally:
        conn.close()
    assert [a.status for a in answers] == [403, 403, 200]
    assert [a.json().get("rule") for a in answers[:2]] == ["deny", "allow"]
    assert upstream.count == before + 1
    assert upstream.last().path == "/base/repos/acme/widget"


def test_refusals_are_logged_without_the_path_or_a_credential(
    upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sock = tmp_path_factory.mktemp("scope-log") / "p.sock"
    with proxy(_payload(upstream.url), sock) as started:
        assert _send(started, "GET", "/http/scoped/repos/acme/secrets/x").status == 403
        _, log = started.stop()
    (line,) = [json.loads(ln) for ln in log.splitlines() if "request refused" in ln]
    assert {line[k] for k in ("service", "method", "rule")} == {"scoped", "GET", "deny"}
    assert "secrets" not in log
    assert TOKEN not in log
