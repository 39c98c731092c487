"""Operator signatures (OURS), made and checked as Matrix signs JSON: ed25519 over the
canonical JSON of an object without its ``signatures`` and ``unsigned``, the signature
kept in ``signatures: {<entity>: {"ed25519:<key id>": <unpadded base64>}}``. Through
``signedjson`` and ``canonicaljson``, the libraries Synapse signs and checks every event
and server key with (PyNaCl, i.e. libsodium, underneath). Pure.

What is signed is not the event content alone but ``{"type", "target", "content"}``: the
event type, what the content is about, and the content without ``signatures``; the
signatures are then stored in the content. Matrix signs events the same way, type and
state key included. Without the target, a daemon relaying signed content could pass one
principal's signed assignment off as another machine's, or one template's signed content
as another template's. Targets (``target_of``): a credentials event, its principal's
user ID; a template, its ref with the server named (``ns/template@server:name``); a
machine-config assignment, the machine's user ID (the entry names the principal); an
operator key statement, the key ID it is about.

Private keys live in the operator's credential file (0600), in Synapse's signing key
format (``ed25519 <version> <base64 seed>``), behind ``OperatorKey`` whose repr never shows
them; nothing here writes one anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing
from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from bureau.errors import InputError
from bureau.secret import Secret

ENTITY = "bureau.operator"  # the signing entity in ``signatures``
SIGNATURES = "signatures"
ALGORITHM = "ed25519"
_VERSION = re.compile(r"[A-Za-z0-9_]{1,32}")
_KEY_ID = re.compile(r"ed25519:[A-Za-z0-9_]{1,32}")
_B64 = re.compile(r"[A-Za-z0-9+/]{43}=?")


class Unverified(InputError):
    """Content that is not signed by a trusted operator key; the message says why."""


class Unsigned(Unverified):
    """Content that carries no signature at all (as upstream's tools write it)."""


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def key_version(public: bytes) -> str:
    """A key's version, from its public half: the same key has the same ID everywhere."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """An operator's public key: ``ed25519:<version>`` and its 32 bytes."""

    key_id: str
    raw: bytes

    @classmethod
    def parse(cls, key_id: object, value: object, where: str) -> PublicKey:
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise InputError(where, None, f"{str(key_id)[:40]!r} is not a key ID (ed25519:...)")
        if not isinstance(value, str) or not _B64.fullmatch(value):
            raise InputError(where, key_id, "expected the base64 of a 32-byte ed25519 key")
        raw = _b64decode(value)
        if len(raw) != 32:
            raise InputError(where, key_id, "expected the base64 of a 32-byte ed25519 key")
        return cls(key_id, raw)

    @classmethod
    def from_text(cls, text: str, where: str) -> PublicKey:
        """One line, ``ed25519:<version> <base64>`` (what ``to_text`` writes)."""
        parts = text.split()
        if len(parts) != 2:
            raise InputError(where, None, "expected one line: ed25519:<version> <base64>")
        return cls.parse(parts[0], parts[1], where)

    @property
    def base64(self) -> str:
        return _b64encode(self.raw)

    def to_text(self) -> str:
        return f"{self.key_id} {self.base64}\n"

    def verify_key(self) -> VerifyKey:
        key: VerifyKey = nacl.signing.VerifyKey(self.raw)  # type: ignore[assignment]
        key.alg, key.version = self.key_id.split(":", 1)
        return key


def read_public_keys(obj: object, where: str) -> dict[str, PublicKey]:
    """``{"ed25519:<version>": "<base64>"}``, as published and pinned."""
    if not isinstance(obj, dict):
        raise InputError(where, None, "expected an object of key ID -> base64 public key")
    return {k: PublicKey.parse(k, v, where) for k, v in obj.items()}


def public_keys_json(keys: Mapping[str, PublicKey]) -> dict[str, str]:
    return {k: keys[k].base64 for k in sorted(keys)}


class OperatorKey:
    """An operator's private signing key. Shown nowhere: its repr names the key ID only,
    and its text form is read through ``reveal()``, for the credential file alone."""

    __slots__ = ("_key",)

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> OperatorKey:
        fresh = generate_signing_key("new")
        fresh.version = key_version(bytes(fresh.verify_key))
        return cls(fresh)

    @classmethod
    def from_text(cls, text: Secret, where: str) -> OperatorKey:
        """Synapse's signing key format: ``ed25519 <version> <base64 seed>``."""
        parts = text.reveal().split()
        if len(parts) != 3 or parts[0] != ALGORITHM or not _VERSION.fullmatch(parts[1]):
            raise InputError(where, None, "expected ed25519 <version> <base64 seed>")
        try:
            key = decode_signing_key_base64(ALGORITHM, parts[1], parts[2])
        except (ValueError, TypeError, nacl.exceptions.CryptoError):
            raise InputError(where, None, "the seed is not the base64 of 32 bytes") from None
        return cls(key)

    def reveal(self) -> Secret:
        return Secret(f"{ALGORITHM} {self._key.version} {encode_signing_key_base64(self._key)}")

    @property
    def key_id(self) -> str:
        return f"{ALGORITHM}:{self._key.version}"

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key_id, bytes(get_verify_key(self._key)))

    def __repr__(self) -> str:
        return f"OperatorKey({self.key_id})"

    def __reduce__(self) -> Any:
        raise TypeError("OperatorKey cannot be pickled")

    def _sign(self, obj: dict[str, Any]) -> str:
        signed = sign_json(dict(obj), ENTITY, self._key)
        return str(signed[SIGNATURES][ENTITY][self.key_id])


def template_target(room: str, name: str, server: str) -> str:
    """A template's target: its ref with the server always named."""
    return f"{room}@{server}:{name}"


def unsigned_content(content: Mapping[str, Any]) -> dict[str, Any]:
    """The content as its author wrote it: without ``signatures`` (nor Matrix's
    ``unsigned``)."""
    return {k: v for k, v in content.items() if k not in (SIGNATURES, "unsigned")}


def _signed_object(kind: str, target: str, content: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": kind, "target": target, "content": unsigned_content(content)}


def sign(content: Mapping[str, Any], kind: str, target: str, key: OperatorKey) -> dict[str, Any]:
    """``content`` with one signature, by ``key``: earlier ones were over what it said
    before, and go."""
    signature = key._sign(_signed_object(kind, target, content))
    return {**unsigned_content(content), SIGNATURES: {ENTITY: {key.key_id: signature}}}


def signature_ids(content: Mapping[str, Any], where: str) -> list[str]:
    """The operator key IDs ``content`` claims signatures by (Unsigned when none)."""
    if SIGNATURES not in content:
        raise Unsigned(where, SIGNATURES, "absent: not signed by an operator")
    signatures = content[SIGNATURES]
    ours = signatures.get(ENTITY) if isinstance(signatures, dict) else None
    if not isinstance(ours, dict) or not ours:
        raise Unverified(where, SIGNATURES, f"expected {{{ENTITY!r}: {{key ID: signature}}}}")
    return [k for k in ours if isinstance(k, str)]


def verify(
    content: Mapping[str, Any],
    kind: str,
    target: str,
    trusted: Mapping[str, PublicKey],
    where: str,
    *,
    revoked: Mapping[str, PublicKey] | None = None,
) -> str:
    """The ID of the trusted key that signed ``content`` as ``kind`` about ``target``.
    Unsigned when it carries no signature; Unverified naming why otherwise (a key not
    trusted here, a revoked one, a signature that does not match this content)."""
    claimed = signature_ids(content, where)
    signed = {**_signed_object(kind, target, content), SIGNATURES: content[SIGNATURES]}
    for key_id in claimed:
        key = trusted.get(key_id)
        if key is None:
            continue
        try:
            verify_signed_json(signed, ENTITY, key.verify_key())
        except SignatureVerifyException:
            raise Unverified(
                where, SIGNATURES, f"the signature by {key_id} does not match this content"
            ) from None
        return key_id
    gone = [k for k in claimed if revoked and k in revoked]
    if gone:
        raise Unverified(where, SIGNATURES, f"signed by {gone[0]}, a removed operator key")
    shown = ", ".join(sorted(claimed)[:3])
    raise Unverified(where, SIGNATURES, f"signed by no operator key this machine trusts ({shown})")
