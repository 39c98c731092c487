"""``bureau credentials provision --fleet-bundle`` and ``list --fleet``: one age-encrypted
bundle for many machines, published in the fleet room (wire/fleet_bundle.py).

Each chosen machine's key is taken only as that machine published it (machine_records:
joined, key event sent by the machine itself, not tombstoned), and the escrow recipient is
always one of the recipients: without it no one could reseal the bundle when the fleet
changes (fleet_reseal.py). Two fields are OURS, signed with the rest:

- ``machines``: ``"all"`` (every enrolled machine, now and as the fleet grows: reseal adds
  new ones) or ``"listed"`` (the machines named at provision; reseal only drops those
  that leave). The list itself is ``encrypted_for``, which the signature covers.
- ``sealed_for``: ``sha256:<hex>`` over the (user ID, age key) pairs and the escrow key the
  shard is encrypted to, so reseal can tell a re-enrolled machine's new key from the old
  one without a byte per recipient more.
- ``escrow_recipient``: the escrow's public key (``age1...``), so reseal refuses an identity
  that is not the escrow's (a machine's key would open the bundle too, and then take the
  escrow's place).

Shards: the fewest that each fit in a state event and name at most MAX_RECIPIENTS machines,
the machines sorted by user ID and split evenly, every shard a whole bundle with the
escrow. Written from the last to shard 0 (whose
``shard.count`` is what readers go by), then shards left over from a bigger fleet become
tombstones (``{}``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bureau import age_keys
from bureau.errors import BureauError, InputError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.operator.credentials import admin_client
from bureau.operator.machines import ENROLLED, machine_records
from bureau.operator.principal_credentials import MAX_CONTENT_BYTES, check_held
from bureau.operator.signed import sign_fleet_bundle
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    MATRIX_SERVICE,
    MATRIX_TOKEN,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
    canonical_json,
    rfc3339_now,
)
from bureau.wire.files import OperatorCredentials
from bureau.wire.fleet_bundle import (
    MAX_SHARDS,
    SHARD_FIELD,
    Shard,
    binding_principal,
    bundle_of,
    shard_key,
)
from bureau.wire.service_route import ServiceRoute

MACHINES_FIELD = "machines"
SEALED_FOR_FIELD = "sealed_for"
ESCROW_FIELD = "escrow_recipient"
ALL = "all"
LISTED = "listed"
# One X25519 stanza is 98 bytes of age header, 130.7 in base64; its user ID in
# encrypted_for adds its quoted length and a comma. A first guess, on the low side (the
# shard field is left out): sizes are then measured, adding a shard until they fit.
_STANZA_B64 = 130
# At most this many machines a shard, well under what fits (about 330 beside a small set):
# a machine pays one X25519 for every stanza before its own, and age's header parse grows
# faster than its recipients. Measured (pyrage decrypt_io, as the last recipient): 0.9 ms
# at 16, 3.9 at 64, 15.6 at 200, 32 at 329. Every machine pays it on every rotation.
MAX_RECIPIENTS = 64
# rage adds a random "grease" stanza to every header (up to about 160 bytes seen), so two
# encryptions to the same recipients differ in size; the guess leaves it out.
_GREASE_B64 = 400


@dataclass(frozen=True)
class Recipient:
    user_id: str
    public_key: str


@dataclass(frozen=True)
class FleetBundleRequest:
    name: str  # the bundle's name (fleet_bundle.check_bundle_name)
    machines: tuple[str, ...] | None  # full machine localparts; None: every enrolled machine
    secrets: dict[str, Secret]
    services: dict[str, ServiceRoute]
    services_where: str
    escrow_recipient: str
    expires_at: str | None = None


def content_size(content: Mapping[str, Any]) -> int:
    return len(json.dumps(content, separators=(",", ":")).encode())


def sealed_for(recipients: Iterable[Recipient], escrow: str) -> str:
    pairs = sorted([r.user_id, r.public_key] for r in recipients)
    return "sha256:" + hashlib.sha256(canonical_json([pairs, escrow])).hexdigest()


@dataclass(frozen=True)
class Sealer:
    """Everything a bundle's shards share; ``shard`` and ``plan`` encrypt and sign."""

    name: str
    plaintext: bytes = field(repr=False)
    keys: tuple[str, ...]
    services: dict[str, ServiceRoute]
    escrow: str
    mode: str
    provisioned_by: str
    provisioned_at: str
    sign: Callable[[str, dict[str, Any]], dict[str, Any]] = field(repr=False)
    expires_at: str | None = None

    @classmethod
    def of(
        cls,
        name: str,
        secrets: dict[str, Secret],
        services: dict[str, ServiceRoute],
        creds: OperatorCredentials,
        *,
        escrow: str,
        mode: str,
        expires_at: str | None = None,
        now: datetime | None = None,
    ) -> Sealer:
        return cls(
            name=name,
            plaintext=bundle_plaintext(secrets, binding_principal(name), services),
            keys=tuple(sorted(secrets)),
            services=services,
            escrow=escrow,
            mode=mode,
            provisioned_by=creds.admin_user,
            provisioned_at=rfc3339_now(now),
            sign=lambda key, content: sign_fleet_bundle(creds, key, content),
            expires_at=expires_at,
        )

    def shard(self, index: int, count: int, recipients: list[Recipient]) -> dict[str, Any]:
        """Shard ``index`` of ``count``, encrypted to ``recipients`` and the escrow, signed."""
        event = CredentialsEvent(
            principal="",
            encrypted_for=(*(r.user_id for r in recipients), ESCROW_RECIPIENT),
            keys=self.keys,
            ciphertext=age_keys.encrypt(
                self.plaintext, [*(r.public_key for r in recipients), self.escrow]
            ),
            provisioned_by=self.provisioned_by,
            provisioned_at=self.provisioned_at,
            signature=binding_digest(binding_principal(self.name), self.services),
            services=self.services,
            expires_at=self.expires_at,
        )
        content = event.to_json()
        if count > 1:
            content[SHARD_FIELD] = Shard(index, count).to_json()
        content[MACHINES_FIELD] = self.mode
        content[SEALED_FOR_FIELD] = sealed_for(recipients, self.escrow)
        content[ESCROW_FIELD] = self.escrow
        return self.sign(shard_key(self.name, index), content)

    def plan(
        self, recipients: list[Recipient], max_recipients: int = MAX_RECIPIENTS
    ) -> list[dict[str, Any]]:
        """The fewest shards that each fit in a state event and hold at most
        ``max_recipients`` machines, for ``recipients``."""
        ordered = sorted(recipients, key=lambda r: r.user_id)
        base = content_size(self.shard(0, 1, []))
        if base > MAX_CONTENT_BYTES:
            raise BureauError(
                f"{self.name}: the secrets alone make a {base}-byte event; a Matrix state "
                f"event holds at most about {MAX_CONTENT_BYTES} bytes of content"
            )
        guess = sum(_STANZA_B64 + len(json.dumps(r.user_id)) + 1 for r in ordered)
        count = max(
            1,
            math.ceil(guess / (MAX_CONTENT_BYTES - base + _GREASE_B64)),
            math.ceil(len(ordered) / max_recipients),
        )
        while count <= MAX_SHARDS:
            shards = [self.shard(i, count, g) for i, g in enumerate(split(ordered, count))]
            if all(content_size(s) <= MAX_CONTENT_BYTES for s in shards):
                return shards
            count += 1
        raise BureauError(
            f"{self.name}: {len(ordered)} machines need more than {MAX_SHARDS} shards with "
            "these secrets; split the secrets into several bundles"
        )


def split(items: list[Recipient], count: int) -> list[list[Recipient]]:
    """``items`` in ``count`` contiguous groups whose sizes differ by one at most."""
    size, extra = divmod(len(items), count)
    groups, at = [], 0
    for i in range(count):
        end = at + size + (1 if i < extra else 0)
        groups.append(items[at:end])
        at = end
    return groups


def enrolled_machines(admin: MatrixHTTP, creds: OperatorCredentials) -> dict[str, Recipient]:
    """User ID -> recipient, for every machine enrolled in the fleet now."""
    machine_room = resolve_fleet_rooms(admin, creds.fleet, creds.server_name).machine
    records = machine_records(admin.room_state_events(machine_room), creds.fleet, creds.server_name)
    return {
        r.user_id: Recipient(r.user_id, r.public_key)
        for r in records
        if r.state == ENROLLED and r.public_key is not None
    }


def chosen(
    machines: tuple[str, ...] | None, enrolled: Mapping[str, Recipient], server: str
) -> list[Recipient]:
    """The recipients ``--machines`` names; every named machine must be enrolled."""
    if machines is None:
        return list(enrolled.values())
    picked = []
    for machine in machines:
        user = names.user_id(machine, server)
        if user not in enrolled:
            raise InputError(
                "--machines",
                None,
                f"{machine} is not an enrolled machine of this fleet with a key it published "
                "itself (see `bureau machine list`)",
            )
        picked.append(enrolled[user])
    return picked


def fleet_room(admin: MatrixHTTP, creds: OperatorCredentials) -> str:
    return resolve_fleet_rooms(admin, creds.fleet, creds.server_name).fleet


def bundle_events(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Name -> shard index -> content, for the fleet room's non-empty credentials events."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for event in events:
        key, content = event.get("state_key"), event.get("content")
        if event.get("type") != rooms.CREDENTIALS or not isinstance(key, str) or not content:
            continue
        parsed = bundle_of(key)
        if parsed is not None and isinstance(content, dict):
            found.setdefault(parsed[0], {})[parsed[1]] = content
    return found


def publish(
    admin: MatrixHTTP,
    room: str,
    name: str,
    shards: list[dict[str, Any]],
    existing: Mapping[int, Any],
) -> tuple[list[str], list[str]]:
    """Write ``shards`` (the others at once, then shard 0, whose count readers go by),
    then tombstone the ones of ``existing`` beyond them. Returns (state keys written, event
    IDs of every write). The others go at once so that machines are woken for them
    together: one at a time, each write queued behind the fan-out of the one before
    (bench/scale.py, 200 machines)."""

    def put(index: int) -> str:
        return admin.put_state(room, rooms.CREDENTIALS, shard_key(name, index), shards[index])

    with ThreadPoolExecutor(max_workers=8) as pool:
        event_ids = list(pool.map(put, range(1, len(shards))))
    event_ids.append(put(0))
    keys = [shard_key(name, index) for index in range(len(shards))]
    for index in sorted(i for i in existing if i >= len(shards)):
        event_ids.append(admin.put_state(room, rooms.CREDENTIALS, shard_key(name, index), {}))
    return keys, event_ids


def provision_fleet_bundle(
    creds: OperatorCredentials,
    request: FleetBundleRequest,
    now: datetime | None = None,
    *,
    max_recipients: int = MAX_RECIPIENTS,
) -> list[str]:
    """Encrypt and publish a fleet bundle; the state keys of its shards, shard 0 first."""
    check_held(request.services, request.secrets, request.services_where)
    if MATRIX_TOKEN in request.secrets or MATRIX_SERVICE in request.services:
        # As the launcher refuses them: a Matrix identity is a principal's own.
        raise InputError(
            request.services_where if MATRIX_SERVICE in request.services else "--secrets-file",
            None,
            f"a fleet bundle holds no {MATRIX_TOKEN} and no {MATRIX_SERVICE} route "
            "(a principal's own Matrix identity)",
        )
    admin = admin_client(creds)
    recipients = chosen(request.machines, enrolled_machines(admin, creds), creds.server_name)
    sealer = Sealer.of(
        request.name,
        request.secrets,
        request.services,
        creds,
        escrow=request.escrow_recipient,
        mode=ALL if request.machines is None else LISTED,
        expires_at=request.expires_at,
        now=now,
    )
    shards = sealer.plan(recipients, max_recipients)
    room = fleet_room(admin, creds)
    existing = bundle_events(admin.room_state_events(room)).get(request.name, {})
    return publish(admin, room, request.name, shards, existing)[0]


def list_fleet_bundles(creds: OperatorCredentials) -> list[dict[str, Any]]:
    """The fleet room's bundles: names, shards, recipients, keys; never values."""
    admin = admin_client(creds)
    listed: list[dict[str, Any]] = []
    bundles = bundle_events(admin.room_state_events(fleet_room(admin, creds)))
    for name, shards in sorted(bundles.items()):
        first = shards.get(0)
        if first is None:
            continue
        try:
            count = Shard.from_content(first, name).count
            events = [
                CredentialsEvent.from_json(shards.get(i), shard_key(name, i)) for i in range(count)
            ]
        except InputError as exc:
            listed.append({"name": name, "invalid": str(exc)})
            continue
        machines = [u for e in events for u in e.encrypted_for if u != ESCROW_RECIPIENT]
        listed.append(
            {
                "name": name,
                "shards": count,
                "machines": first.get(MACHINES_FIELD, LISTED),
                "recipients": len(machines),
                "escrow": all(ESCROW_RECIPIENT in e.encrypted_for for e in events),
                "escrow_recipient": first.get(ESCROW_FIELD),
                "keys": list(events[0].keys),
                "services": {n: r.upstream_url for n, r in sorted(events[0].services.items())},
                "provisioned_at": events[0].provisioned_at,
                "expires_at": events[0].expires_at,
            }
        )
    return listed
