"""bureau.proxy.http_rules.split_target: the request target, split as bytes."""

from __future__ import annotations

from bureau.proxy.http_rules import split_target


def test_proxy_target_keeps_bytes() -> None:
    assert split_target(b"/http/api/v1/a%2Fb?x=%2F&y") == (b"api", b"/v1/a%2Fb?x=%2F&y")
    assert split_target(b"/http/api") == (b"api", b"/")
    assert split_target(b"/http/api?q=1") == (b"api", b"/?q=1")
    assert split_target(b"/http/api/") == (b"api", b"/")
    for elsewhere in (b"http://evil.example/http/api/x", b"/http//x", b"/health", b"*"):
        assert split_target(elsewhere) is None
