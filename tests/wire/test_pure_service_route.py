"""A service route with every credential kind and scope (WIRE.md "Service routes"): it
round-trips, names every credential it injects, keeps the JSON of a route without the new
fields as it was (a bound bundle's digest is over it), and refuses each bad field by name."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from bureau.errors import InputError
from bureau.wire.credentials import binding_digest
from bureau.wire.service_route import ServiceRoute, parse_services, referenced_credentials

FULL: dict[str, Any] = {
    "upstream_url": "https://api.example.com/v2",
    "inject_headers": {"X-Api-Key": "API_KEY"},
    "auth_scheme": "Bearer",
    "strip_headers": ["Cookie"],
    "allow": ["GET /repos/acme/**", "POST /repos/acme/*/issues"],
    "deny": ["* /repos/acme/secrets/**"],
    "inject_query": {"key": "QUERY_KEY"},
    "path_prefix": "/bot{BOT_TOKEN}/v1",
    "oauth2": {
        "grant": "refresh_token",
        "token_url": "https://idp.example.com/oauth/token",
        "client_id": "CLIENT_ID",
        "client_secret": "CLIENT_SECRET",
        "refresh_token": "REFRESH_TOKEN",
        "scopes": ["repo", "read:org"],
        "client_auth": "post",
    },
}
AWS: dict[str, Any] = {
    "upstream_url": "https://s3.eu-west-1.amazonaws.com",
    "aws_sigv4": {
        "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
        "region": "eu-west-1",
        "service": "s3",
    },
    "allow": [],
}
BASIC: dict[str, Any] = {
    "upstream_url": "http://registry.internal:5000",
    "basic_auth": {"username": "REGISTRY_USER", "password": "REGISTRY_PASSWORD"},
}


@pytest.mark.parametrize("route", [FULL, AWS, BASIC], ids=["oauth2", "aws", "basic"])
def test_round_trip(route: dict[str, Any]) -> None:
    parsed = ServiceRoute.from_json(route, "s")
    written = parsed.to_json()
    expected = {"inject_headers": {}, **route}
    assert written == expected
    assert ServiceRoute.from_json(written, "s") == parsed


def test_every_injected_credential_is_named() -> None:
    services = parse_services({"full": FULL, "aws": AWS, "basic": BASIC}, "services")
    assert referenced_credentials(services) == {
        "API_KEY",
        "QUERY_KEY",
        "BOT_TOKEN",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "REFRESH_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "REGISTRY_USER",
        "REGISTRY_PASSWORD",
    }


def test_a_route_without_the_new_fields_writes_what_it_always_wrote() -> None:
    """Bundles bound before these kinds existed must still match their binding: the digest
    is over exactly the JSON such a route always had."""
    old = {
        "upstream_url": "https://api.github.com",
        "inject_headers": {"Authorization": "T"},
        "auth_scheme": "Bearer",
    }
    route = ServiceRoute.from_json(old, "s")
    assert route.to_json() == old
    canonical = json.dumps(
        {"principal": "@p:s", "services": {"github": old}}, sort_keys=True, separators=(",", ":")
    )
    expected = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert binding_digest("@p:s", {"github": route}) == expected


def test_the_scope_is_part_of_what_a_binding_covers() -> None:
    bound = {"api": ServiceRoute.from_json(FULL, "s")}
    widened = {"api": ServiceRoute.from_json({**FULL, "deny": []}, "s")}
    assert binding_digest("@p:s", bound) != binding_digest("@p:s", widened)


def _with(base: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    route = copy.deepcopy(base)
    target = route
    for step in path[:-1]:
        target = target[step]
    if value is _GONE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return route


_GONE = object()


@pytest.mark.parametrize(
    ("base", "path", "value", "named"),
    [
        (FULL, ("surprise",), 1, "s: surprise: unknown field"),
        (FULL, ("allow",), "GET /", 'allow: expected a list of "<METHOD> <path pattern>"'),
        (FULL, ("allow",), ["GET"], "allow[0]: 'GET': expected '<METHOD> <path pattern>'"),
        (FULL, ("deny",), ["GET /a/**b"], "deny[0]: 'GET /a/**b': ** must be a whole segment"),
        (FULL, ("inject_query",), {"k": "bureau.binding"}, "inject_query: k: expected a cred"),
        (FULL, ("inject_query",), {"a b": "K"}, "inject_query.a b: not a parameter name"),
        (FULL, ("inject_query",), ["K"], "inject_query: expected an object"),
        (FULL, ("path_prefix",), "bot{T}", "path_prefix: expected a path starting with /"),
        (FULL, ("path_prefix",), "/bot/", "path_prefix: expected a path starting with /"),
        (FULL, ("path_prefix",), "/bot{T}?x=1", "path_prefix: holds a character a path may not"),
        (FULL, ("path_prefix",), "/a/../{T}", "path_prefix: holds a dot segment"),
        (FULL, ("path_prefix",), "/bot{not a name}", "path_prefix: {not a name} is not a cred"),
        (FULL, ("oauth2", "grant"), "password", "oauth2: grant: expected one of"),
        (FULL, ("oauth2", "token_url"), "ftp://idp/token", "oauth2: token_url: 'ftp://idp/tok"),
        (FULL, ("oauth2", "token_url"), _GONE, "oauth2: token_url: expected an http(s) URL"),
        (FULL, ("oauth2", "refresh_token"), _GONE, "oauth2: refresh_token: expected a cred"),
        (FULL, ("oauth2", "client_secret"), 7, "oauth2: client_secret: expected a credential"),
        (FULL, ("oauth2", "scopes"), ["a b"], "oauth2: scopes: expected a list of scope tok"),
        (FULL, ("oauth2", "client_auth"), "jwt", "oauth2: client_auth: expected one of basic"),
        (FULL, ("oauth2", "extra"), 1, "oauth2: extra: unknown field"),
        (AWS, ("aws_sigv4", "region"), "EU West", "aws_sigv4: region: expected a word"),
        (AWS, ("aws_sigv4", "service"), _GONE, "aws_sigv4: service: expected a word"),
        (AWS, ("aws_sigv4", "secret_access_key"), "", "aws_sigv4: secret_access_key: expected"),
        (BASIC, ("basic_auth", "password"), _GONE, "basic_auth: password: expected a credent"),
        (BASIC, ("basic_auth",), "USER:PASS", "basic_auth: expected an object"),
        (BASIC, ("aws_sigv4",), AWS["aws_sigv4"], "s: aws_sigv4: at most one of basic_auth"),
        (
            BASIC,
            ("inject_headers",),
            {"Authorization": "T"},
            "inject_headers.Authorization: basic_auth sets it",
        ),
        (
            {"upstream_url": "https://x.example"},
            ("allow",),
            ["GET /**"],
            "inject_headers: no credential to inject",
        ),
    ],
)
def test_each_bad_field_is_refused_by_name(
    base: dict[str, Any], path: tuple[str, ...], value: object, named: str
) -> None:
    with pytest.raises(InputError) as refused:
        ServiceRoute.from_json(_with(base, path, value), "s")
    assert named in str(refused.value)


def test_client_credentials_takes_no_refresh_token() -> None:
    route = _with(FULL, ("oauth2", "grant"), "client_credentials")
    with pytest.raises(InputError, match="refresh_token: only with grant refresh_token"):
        ServiceRoute.from_json(route, "s")
    del route["oauth2"]["refresh_token"]
    assert ServiceRoute.from_json(route, "s").oauth2 is not None
