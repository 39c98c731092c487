"""bureau.wire.credentials: m.bureau.credentials and the routes it carries. A bound event
as bureau writes it round trips both ways; each bad field is refused in one line naming
it. (Upstream's events, read as they come: tests/wire/test_pure_upstream_machine.py.)"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from bureau.errors import InputError
from bureau.wire.credentials import CredentialsEvent
from bureau.wire.route_checks import has_control_character
from bureau.wire.service_route import ServiceRoute, parse_services, services_json

PRINCIPAL = "@bureau/fleet/prod/agent/pm:bureau.local"
MACHINE = "@bureau/fleet/prod/machine/gpu-box:bureau.local"
MISSING = object()  # in a change: take the field out
GITHUB: dict[str, Any] = {
    "upstream_url": "https://api.github.com",
    "inject_headers": {"Authorization": "GITHUB_TOKEN"},
    "auth_scheme": "Bearer",
    "strip_headers": ["X-Forwarded-For"],
}
OPENAI: dict[str, Any] = {
    "upstream_url": "https://api.openai.com/v1",
    "inject_headers": {"Authorization": "OPENAI_API_KEY", "OpenAI-Organization": "openai.org"},
}
# Every field set, as `bureau credentials provision` writes a bound bundle.
EVENT: dict[str, Any] = {
    "version": 1,
    "principal": PRINCIPAL,
    "encrypted_for": [MACHINE, "escrow:operator"],
    "keys": ["GITHUB_TOKEN", "OPENAI_API_KEY", "openai.org"],
    "ciphertext": base64.b64encode(b"age-encryption.org/v1\n-> X25519 ...").decode(),
    "provisioned_by": "@bureau-admin:bureau.local",
    "provisioned_at": "2026-02-09T18:30:00Z",
    "signature": "sha256:" + "0f" * 32,
    "services": {"github": GITHUB, "openai": OPENAI},
    "expires_at": "2026-12-31T23:59:59.5+01:00",
}


def test_control_characters_in_credential_values() -> None:
    assert not has_control_character("Bearer abc\tdef ~")
    for bad in ("a\rb", "a\nb", "a\0b", "a\x0bb", "a\x1fb", "a\x7fb"):
        assert has_control_character(bad), bad


def test_a_bound_event_round_trips_both_ways() -> None:
    event = CredentialsEvent.from_json(EVENT)
    assert event.to_json() == EVENT
    assert CredentialsEvent.from_json(event.to_json()) == event
    assert event.services["github"] == ServiceRoute(
        "https://api.github.com", {"Authorization": "GITHUB_TOKEN"}, "Bearer", ("X-Forwarded-For",)
    )
    # A field a later version adds is read past.
    assert CredentialsEvent.from_json({**EVENT, "added_later": [1]}) == event


def test_routes_round_trip_both_ways() -> None:
    services = parse_services(EVENT["services"], "services")
    assert services_json(services) == EVENT["services"]
    assert parse_services(services_json(services), "services") == services
    for route in services.values():
        assert ServiceRoute.from_json(route.to_json(), "route") == route
    # Read with its trailing slash, written without: one URL, one binding.
    slash = ServiceRoute.from_json({**GITHUB, "upstream_url": "https://api.github.com/"}, "r")
    assert slash == services["github"]


def _changed(path: tuple[str, ...], value: object) -> dict[str, Any]:
    content = copy.deepcopy(EVENT)
    parent = content
    for key in path[:-1]:
        parent = parent[key]
    if value is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return content


ROUTE = ("services", "github")


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("version",), MISSING, "version"),
        (("version",), 2, "version"),
        (("version",), "1", "version"),
        (("principal",), MISSING, "principal"),
        (("principal",), 5, "principal"),
        (("principal",), "bureau/fleet/prod/agent/pm", "principal"),
        (("principal",), "@bureau/fleet/prod/agent/../x:bureau.local", "principal"),
        (("encrypted_for",), MISSING, "encrypted_for"),
        (("encrypted_for",), [], "encrypted_for"),
        (("encrypted_for",), MACHINE, "encrypted_for"),
        (("encrypted_for",), [MACHINE, 5], "encrypted_for"),
        (("keys",), MISSING, "keys"),
        (("keys",), "GITHUB_TOKEN", "keys"),
        (("keys",), [5], "keys"),
        (("keys",), ["API KEY"], "keys"),
        (("ciphertext",), MISSING, "ciphertext"),
        (("ciphertext",), "", "ciphertext"),
        (("ciphertext",), 5, "ciphertext"),
        (("ciphertext",), "YWJjZA", "ciphertext"),  # unpadded
        (("ciphertext",), "YWJj ZA==", "ciphertext"),
        (("ciphertext",), "YWJjZé==", "ciphertext"),
        (("provisioned_by",), MISSING, "provisioned_by"),
        (("provisioned_by",), None, "provisioned_by"),
        (("provisioned_at",), MISSING, "provisioned_at"),
        (("provisioned_at",), "", "provisioned_at"),
        (("provisioned_at",), "2026-02-09 18:30:00Z", "provisioned_at"),
        (("provisioned_at",), 1770661800, "provisioned_at"),
        (("signature",), MISSING, "signature"),
        (("signature",), None, "signature"),
        (("expires_at",), None, "expires_at"),
        (("expires_at",), 5, "expires_at"),
        (("expires_at",), "2026-12-31", "expires_at"),
        (("services",), {}, "services"),
        (("services",), "github", "services"),
        (("services",), [GITHUB], "services"),
        (("services", "GitHub"), GITHUB, "services: GitHub"),
        (ROUTE, "https://api.github.com", "services: github"),
        # OURS and bound: a route field this version does not know may be a limit it
        # would not apply, so the route is refused rather than served without it.
        ((*ROUTE, "timeout"), 30, "services: github: timeout"),
        ((*ROUTE, "upstream_url"), MISSING, "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), 5, "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "ftp://api.github.com", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://h:0", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://h:", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://h:99999", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://[::1", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://u:p@h", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://h/?q=1", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://h/a b", "services: github: upstream_url"),
        ((*ROUTE, "upstream_url"), "https://h/\r\nX: y", "services: github: upstream_url"),
        ((*ROUTE, "inject_headers"), MISSING, "services: github: inject_headers"),
        ((*ROUTE, "inject_headers"), {}, "services: github: inject_headers"),
        ((*ROUTE, "inject_headers"), ["Authorization"], "services: github: inject_headers"),
        (
            (*ROUTE, "inject_headers"),
            {"Host": "GITHUB_TOKEN"},
            "services: github: inject_headers.Host",
        ),
        (
            (*ROUTE, "inject_headers"),
            {"Bad Header": "GITHUB_TOKEN"},
            "services: github: inject_headers.Bad Header",
        ),
        (
            (*ROUTE, "inject_headers"),
            {"X-Key": "not a name"},
            "services: github: inject_headers.X-Key",
        ),
        ((*ROUTE, "inject_headers"), {"X-Key": 5}, "services: github: inject_headers.X-Key"),
        ((*ROUTE, "auth_scheme"), 5, "services: github: auth_scheme"),
        ((*ROUTE, "auth_scheme"), "Bearer token", "services: github: auth_scheme"),
        ((*ROUTE, "strip_headers"), "Cookie", "services: github: strip_headers"),
        ((*ROUTE, "strip_headers"), [5], "services: github: strip_headers"),
        ((*ROUTE, "strip_headers"), ["Bad Header"], "services: github: strip_headers"),
        ((*ROUTE, "strip_headers"), None, "services: github: strip_headers"),
    ],
)
def test_a_bad_field_is_refused_by_name(path: tuple[str, ...], value: object, named: str) -> None:
    with pytest.raises(InputError) as refused:
        CredentialsEvent.from_json(_changed(path, value), "credentials")
    message = str(refused.value)
    assert message.startswith(f"credentials: {named}: "), message
    assert "\n" not in message
    assert "\r" not in message


def test_not_an_object() -> None:
    for content in ([EVENT], "x", None):
        with pytest.raises(InputError, match=r"^credentials: expected an object$"):
            CredentialsEvent.from_json(content, "credentials")
