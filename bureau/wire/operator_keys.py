"""Which operator keys a machine trusts, and how that changes (OURS). Pure.

A machine trusts the keys pinned in its state dir (``operator-keys.json``, 0644):
``{"keys": {key ID: base64}, "revoked": {key ID: base64}}``. First boot pins the keys
``bootstrap.json`` names; ``bureau machine doctor --fix --operator-key FILE`` pins one
locally. Nothing from Matrix replaces the set: it changes only through *statements*, each
signed by a key the machine already trusts:

    {"action": "add", "key_id": "ed25519:<v>", "public_key": "<base64>", "signatures": ...}
    {"action": "revoke", "key_id": "ed25519:<v>", "public_key": "<base64>", "signatures": ...}

signed as ``m.bureau.operator_key`` about the key ID (signing.py). The operator publishes
them in ``m.bureau.operator_keys`` (the fleet room, state key ""), with ``keys``, the set
now in force, for people and doctors; the daemon relays the statements and the launcher
applies those it can verify. A revoked key is never trusted again, whoever adds it back;
its signatures are refused from then on. The last trusted key is never revoked by a
statement (the machine would then refuse everything until someone came to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bureau.errors import InputError
from bureau.wire.signing import (
    OperatorKey,
    PublicKey,
    Unverified,
    public_keys_json,
    read_public_keys,
    sign,
    verify,
)

EVENT_TYPE = "m.bureau.operator_keys"  # the published set and statements (fleet room)
STATEMENT = "m.bureau.operator_key"  # what a statement is signed as
PINNED_FILE = "operator-keys.json"
ACTIONS = ("add", "revoke")
MAX_STATEMENTS = 256


@dataclass(frozen=True)
class Statement:
    action: str
    key: PublicKey
    content: dict[str, Any]  # as published, signatures included

    @classmethod
    def from_json(cls, obj: object, where: str) -> Statement:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        action = obj.get("action")
        if action not in ACTIONS:
            raise InputError(where, "action", f"expected one of {', '.join(ACTIONS)}")
        key = PublicKey.parse(obj.get("key_id"), obj.get("public_key"), where)
        return cls(str(action), key, dict(obj))

    def verified_by(self, trusted: Mapping[str, PublicKey], where: str) -> str:
        return verify(self.content, STATEMENT, self.key.key_id, trusted, where)


def statement(action: str, key: PublicKey, by: OperatorKey) -> dict[str, Any]:
    """A statement about ``key``, signed by ``by``."""
    body = {"action": action, "key_id": key.key_id, "public_key": key.base64}
    return sign(body, STATEMENT, key.key_id, by)


@dataclass(frozen=True)
class TrustedKeys:
    keys: dict[str, PublicKey] = field(default_factory=dict)
    revoked: dict[str, PublicKey] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str = PINNED_FILE) -> TrustedKeys:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        keys = read_public_keys(obj.get("keys", {}), f"{where}: keys")
        revoked = read_public_keys(obj.get("revoked", {}), f"{where}: revoked")
        return cls({k: v for k, v in keys.items() if k not in revoked}, revoked)

    def to_json(self) -> dict[str, Any]:
        return {"keys": public_keys_json(self.keys), "revoked": public_keys_json(self.revoked)}

    def with_key(self, key: PublicKey) -> TrustedKeys:
        """``key`` pinned by hand (doctor); a revoked key stays revoked."""
        if key.key_id in self.revoked:
            raise InputError(key.key_id, None, "was revoked on this machine; never trusted again")
        return replace(self, keys={**self.keys, key.key_id: key})

    def apply(self, statements: Iterable[Statement]) -> tuple[TrustedKeys, list[str]]:
        """The set after every statement that a trusted key signed, in whatever order they
        come (one may be signed by a key another adds): passes until nothing changes.
        Returns it with what changed, one line each."""
        keys, revoked = dict(self.keys), dict(self.revoked)
        changes: list[str] = []
        pending = list(statements)
        progress = True
        while pending and progress:
            progress = False
            for item in list(pending):
                target = item.key.key_id
                try:
                    signer = item.verified_by(keys, f"{EVENT_TYPE}: {item.action} {target}")
                except Unverified:
                    continue  # perhaps signed by a key a later statement adds
                pending.remove(item)
                if item.action == "add" and target not in keys and target not in revoked:
                    keys[target] = item.key
                    changes.append(f"trusted {target} (added by {signer})")
                    progress = True
                elif item.action == "revoke" and target not in revoked:
                    if set(keys) == {target}:
                        changes.append(f"kept {target}: it is the last trusted key")
                        continue
                    keys.pop(target, None)
                    revoked[target] = item.key
                    changes.append(f"revoked {target} (by {signer})")
                    progress = True
        return TrustedKeys(keys, revoked), changes


def read_statements(content: object, where: str = EVENT_TYPE) -> list[Statement]:
    """The statements of a published ``m.bureau.operator_keys``; one that does not read is
    skipped (it could never verify), the others stand."""
    if not isinstance(content, dict):
        return []
    raw = content.get("statements")
    if not isinstance(raw, list):
        return []
    out = []
    for index, item in enumerate(raw[:MAX_STATEMENTS]):
        try:
            out.append(Statement.from_json(item, f"{where}: statements[{index}]"))
        except InputError:
            continue
    return out


def published(
    keys: Mapping[str, PublicKey], statements: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """The content of ``m.bureau.operator_keys``."""
    return {"keys": public_keys_json(keys), "statements": list(statements)}
