"""The grammar a service route's parts are checked against (WIRE.md "Service routes"):
credential names, header names, upstream URLs, and the one-line refusals that name the
field. Pure; shared by routes, credential kinds, templates and the proxy payload."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from bureau.errors import InputError

# Upstream sets no grammar for credential names (MATRIX_TOKEN, github-token, ...); this is
# the printable subset they use, so that a name is safe in a log line and a header map.
# ``bureau.`` is reserved: the binding, and any entry a later version adds beside it.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RESERVED_PREFIX = "bureau."
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
# Connection-level headers an injected credential must never pose as.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def shown(value: str, limit: int = 80) -> str:
    """A value quoted in an error, cut short: errors travel into logs and heartbeats."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def valid_credential_name(name: str) -> bool:
    return bool(_CREDENTIAL_NAME.fullmatch(name)) and not name.startswith(RESERVED_PREFIX)


def has_control_character(value: str) -> bool:
    """CR, LF, NUL and the other C0 controls (tab aside) and DEL: a credential becomes a
    header value, and these would split or end the header."""
    return any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)


def check_upstream_url(url: str, where: str, field_name: str = "upstream_url") -> None:
    """An http(s) URL with a host and, if any, a port in 1-65535; nothing a proxy would have
    to guess at. urlsplit raises plain ValueError for a broken IPv6 literal or a bad port:
    caught here so that a malformed event is one refusal, never an uncaught exception."""
    if not url.isascii() or has_control_character(url) or " " in url:
        raise InputError(where, field_name, "must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(where, field_name, f"{shown(url)} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(where, field_name, f"{shown(url)} is not an http(s) URL with a host")
    if parts.netloc.endswith(":") or port == 0:
        raise InputError(where, field_name, f"{shown(url)}: the port must be 1-65535")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InputError(where, field_name, "must not carry credentials, query or fragment")


def check_inject_headers(inject: dict[str, Any], where: str) -> None:
    """header -> credential name, as a bundle's route and a template's proxy service
    both carry it: a header a credential may pose as, and a name, never a value."""
    for header, credential in inject.items():
        if not HEADER_NAME.fullmatch(header) or header.lower() in HOP_BY_HOP:
            raise InputError(where, f"inject_headers.{header}", "not an injectable header")
        if not isinstance(credential, str) or not valid_credential_name(credential):
            raise InputError(where, f"inject_headers.{header}", "expected a credential name")


def credential_name(
    obj: dict[str, Any], key: str, where: str, *, optional: bool = False
) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not valid_credential_name(value):
        raise InputError(where, key, "expected a credential name")
    return value


def known_fields(obj: object, allowed: frozenset[str], where: str) -> dict[str, Any]:
    """``obj`` as an object with no field outside ``allowed`` (our own formats are strict)."""
    if not isinstance(obj, dict):
        raise InputError(where, None, "expected an object")
    unknown = set(obj) - allowed
    if unknown:
        raise InputError(where, sorted(unknown)[0], "unknown field")
    return obj
