"""Fleet bundles: one ``m.bureau.credentials`` event that many machines decrypt. Pure.

As upstream writes them (lib/credential/provision_fleet.go): ``principal`` "", every
chosen machine (and ``escrow:operator``) in ``encrypted_for``, an operator-chosen state key,
published in the fleet room. A principal uses one through its template's ``credential_ref``
(upstream's: ``<room alias localpart>[@<server>]:<state key>``, where ``${FLEET_ROOM}``
stands for the machine's fleet room). This worker serves refs to its own fleet room only:
that is the room its daemon reads and the room the operator publishes to.

OURS:
- **bound**: the plaintext carries ``bureau.binding`` over ``{"principal": "fleet:<name>",
  "services"}`` (``binding_principal``), so a bundle cannot be passed off as another
  bundle, nor as a principal's own;
- **signed**: the operator signs it as ``m.bureau.credentials`` about
  ``<fleet room localpart>@<server>:<state key>`` (``signing_target``);
- **sharded**: a state event is at most 64 KiB, so a bundle whose recipients do not fit in
  one is published as ``count`` events, each a whole bundle for its share of the machines
  (the escrow recipient in every one): state keys ``<name>`` and ``<name>#1`` ...
  ``<name>#<count-1>``, each carrying ``shard: {"index", "count"}``. A machine reads the
  shard that names it; an upstream reader sees shard 0 as an ordinary fleet bundle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bureau.errors import InputError
from bureau.wire import names

FLEET_ROOM_VARIABLE = "${FLEET_ROOM}"
SHARD_SEPARATOR = "#"
SHARD_FIELD = "shard"
MAX_SHARDS = 256
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def valid_bundle_name(name: str) -> bool:
    """A fleet bundle's name (its shard 0's state key): it travels into refs, logs and
    state keys, and never holds the shard separator."""
    return bool(_NAME.fullmatch(name))


def check_bundle_name(name: str, where: str, field: str | None = None) -> str:
    if not valid_bundle_name(name):
        raise InputError(
            where,
            field,
            f"{name[:80]!r} is not a fleet bundle name (1-64 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit)",
        )
    return name


def binding_principal(name: str) -> str:
    """What a fleet bundle's plaintext binding names in place of a principal."""
    return f"fleet:{name}"


def shard_key(name: str, index: int) -> str:
    return name if index == 0 else f"{name}{SHARD_SEPARATOR}{index}"


def shard_keys(name: str, count: int) -> list[str]:
    return [shard_key(name, i) for i in range(count)]


def bundle_of(state_key: str) -> tuple[str, int] | None:
    """(bundle name, shard index) for a fleet bundle's state key; None for any other."""
    name, sep, index = state_key.partition(SHARD_SEPARATOR)
    if not valid_bundle_name(name):
        return None
    if not sep:
        return name, 0
    if not index.isdigit() or index.startswith("0") or int(index) >= MAX_SHARDS:
        return None
    return name, int(index)


def signing_target(fleet_room_localpart: str, server: str, state_key: str) -> str:
    """What the operator's signature on one shard is about (wire/signing.py)."""
    return f"{fleet_room_localpart}@{server}:{state_key}"


@dataclass(frozen=True)
class Shard:
    """``shard: {"index": i, "count": n}`` (absent: the one and only shard)."""

    index: int = 0
    count: int = 1

    @classmethod
    def from_content(cls, content: Mapping[str, Any], where: str) -> Shard:
        raw = content.get(SHARD_FIELD)
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InputError(where, SHARD_FIELD, 'expected {"index": i, "count": n}')
        index, count = raw.get("index"), raw.get("count")
        if type(count) is not int or not 1 <= count <= MAX_SHARDS:
            raise InputError(where, f"{SHARD_FIELD}.count", f"expected 1-{MAX_SHARDS}")
        if type(index) is not int or not 0 <= index < count:
            raise InputError(where, f"{SHARD_FIELD}.index", f"expected 0-{count - 1}")
        return cls(index, count)

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


@dataclass(frozen=True)
class CredentialRef:
    """A parsed ``credential_ref``; ``room`` is an alias localpart, ``name`` a state key."""

    room: str
    name: str
    server: str = ""

    @classmethod
    def parse(cls, value: str, fleet_room_localpart: str, where: str) -> CredentialRef:
        """``value`` with ``${FLEET_ROOM}`` replaced by this machine's fleet room.
        InputError naming ``credential_ref`` when it does not parse."""
        text = value.replace(FLEET_ROOM_VARIABLE, fleet_room_localpart)
        room_part, colon, name = text.rpartition(":")
        room, at, server = room_part.partition("@")
        try:
            if not colon or not room:
                raise names.InvalidName(f"{value[:80]!r} is not <room>[@<server>]:<name>")
            names.validate_localpart(room)
            if at:
                names.validate_server_name(server)
        except names.InvalidName as exc:
            raise InputError(where, "credential_ref", str(exc)) from None
        check_bundle_name(name, where, "credential_ref")
        return cls(room, name, server)

    def __str__(self) -> str:
        server = f"@{self.server}" if self.server else ""
        return f"{self.room}{server}:{self.name}"

    def in_fleet_room(self, fleet_room_localpart: str, server: str) -> bool:
        """Whether this ref names the machine's own fleet room, the only one served."""
        return self.room == fleet_room_localpart and self.server in ("", server)


def shard_for(events: Mapping[str, Mapping[str, Any]], name: str, machine_user: str) -> str | None:
    """The state key of the shard of bundle ``name`` whose ``encrypted_for`` names
    ``machine_user``, among a fleet room's credentials events (state key -> content);
    None when no shard does. Only shards within shard 0's count are read: a shard left
    over from a bigger fleet is not."""
    first = events.get(name)
    if not first:
        return None
    try:
        count = Shard.from_content(first, name).count
    except InputError:
        count = 1
    for key in shard_keys(name, count):
        recipients = (events.get(key) or {}).get("encrypted_for")
        if isinstance(recipients, list) and machine_user in recipients:
            return key
    return None
