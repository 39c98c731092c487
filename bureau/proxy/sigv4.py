"""AWS Signature Version 4 for requests the proxy forwards (the ``aws_sigv4`` credential
kind). Pure: bytes and strings in, the headers to add out; the secret key is used here and
never kept in anything this module returns but the signature.

The canonical request follows the published algorithm (docs.aws.amazon.com, "Create a
signed AWS API request"):
  * the path is canonicalised as the service will canonicalise what it receives: for S3,
    the path decoded once and encoded once, unnormalised; for every other service,
    normalised (empty and dot segments resolved) and encoded *again*, so ``%20`` in the
    request is ``%2520`` in the canonical request;
  * query parameters are decoded, re-encoded with the same rules and sorted by name then
    value;
  * headers are lower-cased, values trimmed with inner runs of spaces folded, and
    sorted; the signed set is what the caller passes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class SigningKey:
    """The key and what it is scoped to. repr shows neither the secret nor the key ID
    (a credential of the bundle like the others)."""

    access_key_id: str = field(repr=False)
    secret_access_key: bytes = field(repr=False)
    region: str
    service: str

    def derive(self, date: str) -> bytes:
        key = _hmac(b"AWS4" + self.secret_access_key, date)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        return key


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _encode(data: bytes, *, keep_slash: bool) -> str:
    return quote(data, safe="/~" if keep_slash else "~")


def _normalised(path: str) -> str:
    """RFC 3986 remove_dot_segments, with empty segments dropped, as AWS services (but
    S3) normalise a path before checking its signature."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


def canonical_uri(raw_path: str, service: str) -> str:
    if not raw_path:
        return "/"
    if service == "s3":
        return _encode(unquote_to_bytes(raw_path), keep_slash=True)
    return _encode(_normalised(raw_path).encode(), keep_slash=True)


def canonical_query(raw_query: str) -> str:
    pairs: list[tuple[str, str]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append(
            (
                _encode(unquote_to_bytes(name.replace("+", "%20")), keep_slash=False),
                _encode(unquote_to_bytes(value.replace("+", "%20")), keep_slash=False),
            )
        )
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _header_value(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(canonical header block, signed header list) for the headers to sign."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(_header_value(value))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


def authorization(
    key: SigningKey,
    *,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    payload_hash: str,
    amz_date: str,
    derived: bytes | None = None,
) -> str:
    """The Authorization header's value for a request whose origin-form ``target`` is
    ``path[?query]``, signing exactly ``headers`` (which must include host and the
    date the signature claims), at ``amz_date`` (``YYYYMMDDTHHMMSSZ``). ``derived`` is
    ``key.derive`` of that date, if the caller keeps it (it changes once a day)."""
    path, _, query = target.partition("?")
    block, signed = canonical_headers(headers)
    request = "\n".join(
        (
            method,
            canonical_uri(path, key.service),
            canonical_query(query),
            block,
            signed,
            payload_hash,
        )
    )
    date = amz_date[:8]
    scope = f"{date}/{key.region}/{key.service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(request.encode()).hexdigest()))
    signing = derived if derived is not None else key.derive(date)
    signature = hmac.new(signing, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"{ALGORITHM} Credential={key.access_key_id}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
