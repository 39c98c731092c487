"""The operator's signatures on what it writes (wire/signing.py), and its keys as the fleet
sees them.

Credentials events, templates and machine-config assignments are signed with the key in
the operator credential file (``BUREAU_OPERATOR_SIGNING_KEY``, 0600) as they are written.
A credential file without one (upstream's, or one older than signatures) writes them
unsigned, as upstream does; our machines then refuse them unless they allow unsigned
events, which the CLI says on stderr.

The public keys are published in ``m.bureau.operator_keys`` (the fleet room, state key
""): ``keys``, the set in force, for people and doctors, and ``statements``, each signed
by a key in force, which machines apply to their pinned set (wire/operator_keys.py):
adding a key (another operator's, or this operator's next one) and revoking one. A
machine trusts only what it pinned and what such statements changed; nothing else of
this event. The public key is also written beside the credential file
(``<file>.pub``, 0644) for ``bureau machine doctor --fix --operator-key``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from bureau.errors import BureauError, InputError
from bureau.files import atomic_write
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.operator.credentials import admin_client
from bureau.wire import names, rooms
from bureau.wire.files import OperatorCredentials
from bureau.wire.fleet_bundle import signing_target
from bureau.wire.operator_keys import (
    EVENT_TYPE,
    TrustedKeys,
    published,
    read_statements,
    statement,
)
from bureau.wire.signing import OperatorKey, PublicKey, read_public_keys, sign

UNSIGNED_NOTE = (
    "the credential file holds no operator signing key ({file}: run `bureau matrix setup` "
    "to make one): what this writes is unsigned, and bureau machines refuse it unless "
    "they run with --allow-unsigned"
)


def sign_as(
    creds: OperatorCredentials, kind: str, target: str, content: Mapping[str, Any]
) -> dict[str, Any]:
    """``content`` signed by the operator's key; as it is when the file holds none."""
    if creds.signing_key is None:
        return dict(content)
    return sign(content, kind, target, creds.signing_key)


def sign_fleet_bundle(
    creds: OperatorCredentials, state_key: str, content: Mapping[str, Any]
) -> dict[str, Any]:
    """One shard of a fleet bundle, signed about its place in the fleet room."""
    target = signing_target(names.fleet_room_localpart(creds.fleet), creds.server_name, state_key)
    return sign_as(creds, rooms.CREDENTIALS, target, content)


def public_key_file(credential_file: Path) -> Path:
    return credential_file.with_name(credential_file.name + ".pub")


def write_public_key(credential_file: Path, key: PublicKey) -> bool:
    path = public_key_file(credential_file)
    text = key.to_text()
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, text.encode(), 0o644)
    return True


def _fleet_room(admin: MatrixHTTP, creds: OperatorCredentials) -> str:
    alias = names.room_alias(names.fleet_room_localpart(creds.fleet), creds.server_name)
    room = admin.resolve_alias(alias)
    if room is None:
        raise BureauError(f"{alias} does not exist: run `bureau matrix setup`")
    return room


def _read(admin: MatrixHTTP, room: str) -> tuple[dict[str, PublicKey], list[dict[str, Any]]]:
    content = admin.get_state(room, EVENT_TYPE, "") or {}
    try:
        keys = read_public_keys(content.get("keys", {}), EVENT_TYPE)
    except InputError:
        keys = {}
    statements = content.get("statements")
    return keys, list(statements) if isinstance(statements, list) else []


def publish(
    admin: MatrixHTTP,
    creds: OperatorCredentials,
    *,
    add: PublicKey | None = None,
    revoke: PublicKey | None = None,
    by: OperatorKey | None = None,
) -> bool:
    """Publish ``m.bureau.operator_keys`` with the credential file's key in force, and
    ``add``/``revoke`` stated by ``by`` (the file's key unless given). False when it
    already said so."""
    room = _fleet_room(admin, creds)
    keys, statements = _read(admin, room)
    signer = by or creds.signing_key
    if signer is None:
        raise BureauError(UNSIGNED_NOTE.format(file="the credential file"))
    keys.setdefault(signer.key_id, signer.public)
    if add is not None:
        statements.append(statement("add", add, signer))
        keys[add.key_id] = add
    if revoke is not None:
        statements.append(statement("revoke", revoke, signer))
        keys.pop(revoke.key_id, None)
    content = published(keys, statements)
    if admin.get_state(room, EVENT_TYPE, "") == content:
        return False
    admin.put_state(room, EVENT_TYPE, "", content)
    return True


def keys_to_pin(admin: MatrixHTTP, creds: OperatorCredentials) -> dict[str, PublicKey]:
    """What a machine provisioned now pins: the credential file's key, and every key the
    published statements reach from it (another operator's, added with a signature), never
    a key the published ``keys`` merely list (whoever holds the hub's admin token could
    write that)."""
    if creds.signing_key is None:
        return {}
    own = creds.signing_key.public
    _, statements = _read(admin, _fleet_room(admin, creds))
    trusted, _ = TrustedKeys({own.key_id: own}).apply(read_statements({"statements": statements}))
    return trusted.keys


def published_keys(creds: OperatorCredentials) -> dict[str, PublicKey]:
    """The keys the fleet room says are in force."""
    admin = admin_client(creds)
    return _read(admin, _fleet_room(admin, creds))[0]


def rotate(
    credential_file: Path,
    creds: OperatorCredentials,
    *,
    revoke_old: bool,
    report: Callable[[str], None],
) -> OperatorKey:
    """A new signing key, stated by the old one (machines that trust the old key come to
    trust the new one), then kept in the credential file in its place; with
    ``revoke_old``, the old key is revoked by the new one. What was signed with the old
    key must be written again (``bureau machine assign``, ``template push``,
    ``credentials provision``) before machines stop trusting it."""
    old = creds.signing_key
    if old is None:
        raise BureauError(UNSIGNED_NOTE.format(file=credential_file))
    new = OperatorKey.generate()
    admin = admin_client(creds)
    publish(admin, creds, add=new.public, by=old)
    report(f"published {new.key_id}, stated by {old.key_id}")
    updated = replace(creds, signing_key=new)
    credentials.write(credential_file, updated)
    write_public_key(credential_file, new.public)
    report(f"{credential_file} now signs with {new.key_id}")
    if revoke_old:
        publish(admin, updated, revoke=old.public, by=new)
        report(f"revoked {old.key_id}, stated by {new.key_id}")
    return new


def add_key(creds: OperatorCredentials, key: PublicKey) -> bool:
    """Another operator's key, stated by this operator's."""
    return publish(admin_client(creds), creds, add=key)


def revoke_key(creds: OperatorCredentials, key_id: str) -> PublicKey:
    """Revoke a published key (another operator's, or an old one of this operator)."""
    if creds.signing_key is not None and key_id == creds.signing_key.key_id:
        raise InputError(key_id, None, "is the credential file's own key: rotate it first")
    keys = published_keys(creds)
    key = keys.get(key_id)
    if key is None:
        raise InputError(key_id, None, f"is not in force ({', '.join(sorted(keys)) or 'none'})")
    publish(admin_client(creds), creds, revoke=key)
    return key
