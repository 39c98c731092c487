"""A credential's scope as plain functions: each allowed and each refused request is its own
case, evasions included (percent-encoding, dot segments, doubled slashes, a method in lower
case), and each unreadable rule is refused with a message naming it."""

from __future__ import annotations

import pytest

from bureau.proxy.scope import AmbiguousPath, Scope, canonical_path
from bureau.wire.scope_rules import Rule, RuleError

GITHUB = Scope.parse(
    allow=["GET /repos/acme/*/issues", "POST /repos/acme/*/issues", "GET /repos/acme/**"],
    deny=["* /repos/acme/secrets/**", "DELETE /**"],
)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"/repos/acme/widget/issues"),
        (b"POST", b"/repos/acme/widget/issues"),
        (b"GET", b"/repos/acme/widget/issues?state=open&page=2"),
        (b"GET", b"/repos/acme"),  # ** matches zero segments
        (b"GET", b"/repos/acme/"),
        (b"GET", b"/repos/acme/widget/pulls/7/files"),
        (b"get", b"/repos/acme/widget/issues"),  # methods compare in upper case
        (b"GET", b"/repos/acme/widget%20two/issues"),  # other escapes kept as they are
    ],
)
def test_allowed(method: bytes, target: bytes) -> None:
    assert GITHUB.refusal(method, target) is None


@pytest.mark.parametrize(
    ("method", "target", "refused_by"),
    [
        (b"PUT", b"/repos/acme/widget/issues", "allow"),  # method not allowed
        (b"GET", b"/repos/other/widget/issues", "allow"),  # path not allowed
        (b"POST", b"/repos/acme/widget/issues/7", "allow"),  # * stays within a segment
        (b"GET", b"/repos/acme/secrets/token", "deny"),  # deny wins over allow
        (b"GET", b"/repos/acme/secrets", "deny"),
        (b"DELETE", b"/repos/acme/widget", "deny"),
        (b"delete", b"/repos/acme/widget", "deny"),  # lower case cannot slip past DELETE
        (b"DeLeTe", b"/repos/acme/widget", "deny"),
        (b"GET", b"/repos/acme/%73ecrets/token", "deny"),  # %73 is s
        (b"GET", b"/repos/%61cme/secrets/token", "deny"),  # %61 is a
        (b"GET", b"/repos//acme/secrets/token", "deny"),  # doubled slashes collapse
        (b"GET", b"/repos/acme//secrets/token", "deny"),
        (b"GET", b"/repos/acme/x/../secrets/token", "path"),  # dot segments refused
        (b"GET", b"/repos/acme/x/%2e%2e/secrets/token", "path"),
        (b"GET", b"/repos/acme/x/.%2E/secrets/token", "path"),
        (b"GET", b"/repos/acme/./secrets/token", "path"),
        (b"GET", b"/repos/acme/x%2F..%2Fsecrets", "path"),  # encoded slash
        (b"GET", b"/repos/acme/x%5c..%5csecrets", "path"),  # encoded backslash
        (b"GET", b"/repos/acme\\secrets", "path"),  # backslash
        (b"GET", b"/repos/acme/%zz", "path"),  # malformed escape
        (b"GET", b"/repos/acme/%4", "path"),
        (b"GET", b"*", "path"),  # not an origin-form path
        (b"GET", b"http://api.example/repos/acme", "path"),
    ],
)
def test_refused(method: bytes, target: bytes, refused_by: str) -> None:
    assert GITHUB.refusal(method, target) == refused_by


def test_no_rules_let_everything_through_and_an_empty_allow_list_nothing() -> None:
    assert Scope.parse(None, None).unrestricted
    assert Scope.parse(None, None).refusal(b"DELETE", b"/anything/../at/all") is None
    nothing = Scope.parse([], None)
    assert nothing.refusal(b"GET", b"/") == "allow"
    only_deny = Scope.parse(None, ["POST /admin/**"])
    assert only_deny.refusal(b"GET", b"/admin/users") is None
    assert only_deny.refusal(b"POST", b"/admin/users") == "deny"


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a/*/c", "/a/b/c", True),
        ("/a/*/c", "/a/b/x/c", False),
        ("/a/**/c", "/a/c", True),
        ("/a/**/c", "/a/b/x/c", True),
        ("/a/**/c", "/a/b/x/d", False),
        ("/**", "/", True),
        ("/**/z", "/a/b/z", True),
        ("/v*/items", "/v2/items", True),
        ("/v*/items", "/x2/items", False),
        ("/files/*.json", "/files/report.json", True),
        ("/files/*.json", "/files/report.json.exe", False),
        ("/a*b*c", "/abc", True),
        ("/a*b*c", "/acb", False),
        ("/a*a", "/a", False),  # prefix and suffix may not overlap
        ("/", "/", True),
        ("/", "/a", False),
        ("/a", "/a/", False),  # a trailing slash is its own path
        ("/a/", "/a/", True),
    ],
)
def test_pattern_semantics(pattern: str, path: str, matches: bool) -> None:
    rule = Rule.parse(f"GET {pattern}")
    assert rule.matches("GET", canonical_path(path.encode())) is matches


def test_many_double_stars_stay_cheap() -> None:
    """A pattern of many ** against a long path that does not match: bounded work, not
    exponential (this would not finish if it were)."""
    rule = Rule.parse("GET " + "/**/a" * 20 + "/never")
    path = canonical_path(b"/a" * 500)
    assert not rule.matches("GET", path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("/repos/**", "expected '<METHOD> <path pattern>'"),
        ("GET", "expected '<METHOD> <path pattern>'"),
        ("GET repos/x", "must start with /"),
        ("GET /a b", "must start with / and hold no spaces"),
        ("G(T /x", "is not an HTTP method"),
        ("GET /a/**b", "** must be a whole segment"),
        ("GET /a/../b", "dot segments never match"),
    ],
)
def test_unreadable_rules_are_refused_by_name(text: str, problem: str) -> None:
    with pytest.raises(RuleError) as refused:
        Rule.parse(text)
    assert problem in str(refused.value)
    assert repr(text) in str(refused.value)


def test_canonical_path_decodes_only_unreserved_characters() -> None:
    assert canonical_path(b"/%41%2d%7e%20%3f") == ("A-~%20%3F",)
    with pytest.raises(AmbiguousPath, match="dot segment"):
        canonical_path(b"/a/%2E")
