"""``bureau credentials reseal``: re-encrypt every fleet bundle to the machines enrolled now,
with the operator's escrow identity, so that a new machine gets the fleet's credentials
without anyone typing a secret again and a decommissioned one is dropped.

A bundle is read only when every shard verifies against the operator keys the credential
file's key reaches (as a machine provisioned now would pin them): ``encrypted_for`` and
``machines`` decide who gets the secrets next, so they must be the operator's. Its
plaintext must carry the fleet binding (fleet_bundle.binding_principal): an upstream
bundle, unbound, is left alone. Who it goes to: ``machines: "all"``, every enrolled
machine; ``"listed"``, those of its machines still enrolled. Nothing is written when the
shards it would write are sealed for what they already are (``sealed_for``), so running it
again, or ``--watch`` seeing its own writes, changes nothing.

``--watch`` follows the fleet's machine room and fleet room with /sync (a key published or
tombstoned, a membership, a bundle provisioned by someone else) and reseals after each
change; a SIGTERM or SIGINT while it waits stops it at once, during a pass once the pass
is done. Each pass is one line.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any
from urllib.parse import quote

from bureau import age_keys
from bureau.errors import BureauError, InputError
from bureau.matrix.client import CLIENT, MatrixHTTP
from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.operator import signed
from bureau.operator.credentials import admin_client
from bureau.operator.fleet_bundles import (
    ALL,
    ESCROW_FIELD,
    LISTED,
    MACHINES_FIELD,
    SEALED_FOR_FIELD,
    Recipient,
    Sealer,
    bundle_events,
    enrolled_machines,
    publish,
)
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    open_plaintext,
    rfc3339_now,
)
from bureau.wire.files import OperatorCredentials
from bureau.wire.fleet_bundle import Shard, binding_principal, shard_key, signing_target
from bureau.wire.signing import PublicKey, verify

WATCH_TIMEOUT_MS = 20_000


def parse_identity(text: str, where: str) -> Secret:
    """An age identity file (as age-keygen writes it: ``#`` comments, one
    AGE-SECRET-KEY-1... line). Errors name ``where``, never the text."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise InputError(where, None, "expected one AGE-SECRET-KEY-1... line (and # comments)")
    identity = Secret(lines[0])
    age_keys.public_key_of(identity, where)
    return identity


@dataclass(frozen=True)
class Change:
    """What a reseal does, or would do, to one bundle: names, never values."""

    name: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rekeyed: bool = False
    shards: tuple[int, int] = (1, 1)
    machines: int = 0
    error: str | None = None

    @property
    def changed(self) -> bool:
        return self.error is None and bool(
            self.added or self.removed or self.rekeyed or self.shards[0] != self.shards[1]
        )

    def line(self) -> str:
        if self.error is not None:
            return f"{self.name}: not resealed: {self.error}"
        if not self.changed:
            return f"{self.name}: unchanged ({self.machines} machines, {self.shards[1]} shards)"
        parts = [f"+{m}" for m in self.added] + [f"-{m}" for m in self.removed]
        if self.rekeyed:
            parts.append("machine keys changed")
        before, after = self.shards
        parts.append(f"{self.machines} machines, shards {before} -> {after}")
        return f"{self.name}: {' '.join(parts)}"


def _short(user_id: str, fleet: str) -> str:
    localpart = names.parse_user_id(user_id)[0]
    return localpart.removeprefix(f"{fleet}/")


class Resealer:
    """One operator's view of the fleet room; ``run`` is one pass over every bundle."""

    def __init__(self, creds: OperatorCredentials, escrow: Secret) -> None:
        self.creds = creds
        self._escrow = escrow
        self.escrow_public = age_keys.public_key_of(escrow, "--escrow-identity")
        self.admin: MatrixHTTP = admin_client(creds)
        self.rooms = resolve_fleet_rooms(self.admin, creds.fleet, creds.server_name)
        self.written: set[str] = set()  # event IDs of our own writes, for --watch

    def _trusted(self) -> Mapping[str, PublicKey] | None:
        if self.creds.signing_key is None:
            return None  # an unsigned operator writes and reads unsigned
        return signed.keys_to_pin(self.admin, self.creds)

    def run(self, *, dry_run: bool) -> list[Change]:
        enrolled = enrolled_machines(self.admin, self.creds)
        trusted = self._trusted()
        bundles = bundle_events(self.admin.room_state_events(self.rooms.fleet))
        changes = []
        for name, shards in sorted(bundles.items()):
            if 0 not in shards:
                continue  # a removed bundle (shard 0 a tombstone): its leftovers stay so
            try:
                changes.append(self._one(name, shards, enrolled, trusted, dry_run=dry_run))
            except (InputError, age_keys.DecryptFailed) as exc:
                changes.append(Change(name, error=str(exc)))
        return changes

    def _verified(
        self,
        name: str,
        shards: Mapping[int, dict[str, Any]],
        trusted: Mapping[str, PublicKey] | None,
    ) -> list[CredentialsEvent]:
        count = Shard.from_content(shards[0], name).count
        events = []
        localpart = names.fleet_room_localpart(self.creds.fleet)
        for index in range(count):
            key = shard_key(name, index)
            content = shards.get(index)
            if content is None:
                raise InputError(key, None, f"shard {index} of {count} is missing")
            if trusted is not None:
                target = signing_target(localpart, self.creds.server_name, key)
                verify(content, rooms.CREDENTIALS, target, trusted, key)
            events.append(CredentialsEvent.from_json(content, key))
        return events

    def _one(
        self,
        name: str,
        shards: Mapping[int, dict[str, Any]],
        enrolled: Mapping[str, Recipient],
        trusted: Mapping[str, PublicKey] | None,
        *,
        dry_run: bool,
    ) -> Change:
        events = self._verified(name, shards, trusted)
        first = events[0]
        if ESCROW_RECIPIENT not in first.encrypted_for:
            raise InputError(name, "encrypted_for", f"has no {ESCROW_RECIPIENT}: cannot reseal")
        if shards[0].get(ESCROW_FIELD) != self.escrow_public:
            raise InputError(
                name, ESCROW_FIELD, "names another escrow recipient than this escrow identity's"
            )
        try:
            plaintext = age_keys.decrypt(first.ciphertext, self._escrow)
        except age_keys.DecryptFailed:
            raise InputError(name, None, "not encrypted to this escrow identity") from None
        bound = replace(first, principal=binding_principal(name))
        opened = open_plaintext(plaintext, bound, name, unbound_allowed=False)
        mode = shards[0].get(MACHINES_FIELD)
        mode = mode if mode in (ALL, LISTED) else LISTED
        current = {u for e in events for u in e.encrypted_for if u != ESCROW_RECIPIENT}
        target = set(enrolled) if mode == ALL else current & set(enrolled)
        sealer = Sealer.of(
            name,
            opened.credentials,
            first.services,
            self.creds,
            escrow=self.escrow_public,
            mode=mode,
            expires_at=first.expires_at,
        )
        planned = sealer.plan([enrolled[u] for u in target])
        fleet = self.creds.fleet
        change = Change(
            name,
            added=tuple(sorted(_short(u, fleet) for u in target - current)),
            removed=tuple(sorted(_short(u, fleet) for u in current - target)),
            shards=(len(events), len(planned)),
            machines=len(target),
        )
        before = [s.get(SEALED_FOR_FIELD) for s in (shards[i] for i in range(len(events)))]
        after = [s[SEALED_FOR_FIELD] for s in planned]
        if before == after:
            return replace(change, shards=(len(events), len(events)))
        # The same machines in as many shards, sealed differently: a machine's key changed
        # (decommissioned and enrolled again under its name between two reseals).
        same = not change.added and not change.removed and len(events) == len(planned)
        change = replace(change, rekeyed=same)
        if not dry_run:
            _, ids = publish(self.admin, self.rooms.fleet, name, planned, shards)
            self.written.update(ids)
        return change


def summary(changes: list[Change], seconds: float, *, dry_run: bool) -> str:
    """One line for a pass."""
    done = [c for c in changes if c.changed]
    failed = [c for c in changes if c.error is not None]
    verb = "would reseal" if dry_run else "resealed"
    details = "; ".join(c.line() for c in (*done, *failed))
    return (
        f"{rfc3339_now()} reseal: {len(changes)} bundles, {verb} {len(done)}, "
        f"{len(failed)} failed, {seconds * 1000:.0f} ms" + (f": {details}" if details else "")
    )


def reseal(creds: OperatorCredentials, escrow: Secret, *, dry_run: bool = False) -> list[Change]:
    return Resealer(creds, escrow).run(dry_run=dry_run)


class _Stop(BaseException):
    """A signal arrived while waiting: unwinds the wait at once."""


class Stopper:
    """SIGTERM/SIGINT: while ``busy`` (a pass under way), noted and acted on after it; while
    waiting, the wait ends at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.busy = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signal = signal.Signals(signum).name
        if not self.busy:
            raise _Stop


def _sync_filter(rooms_: list[str]) -> dict[str, Any]:
    types = [rooms.MACHINE_KEY, "m.room.member", rooms.CREDENTIALS]
    return {
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "rooms": rooms_,
            "state": {"types": types, "lazy_load_members": True},
            "timeline": {"types": types, "limit": 100},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
    }


def _sync(admin: MatrixHTTP, since: str | None, filter_id: str, timeout_ms: int) -> dict[str, Any]:
    query = f"filter={quote(filter_id)}&timeout={timeout_ms if since else 0}"
    if since:
        query += f"&since={quote(since)}"
    return admin.call("GET", f"{CLIENT}/sync?{query}", what="sync the fleet's rooms")


def _relevant(data: Mapping[str, Any], ours: set[str]) -> bool:
    """Whether a sync answer holds a change a reseal acts on (not our own writes)."""
    joined = (data.get("rooms") or {}).get("join") or {}
    for room in joined.values():
        for section in ("state", "timeline"):
            for event in (room.get(section) or {}).get("events") or []:
                if event.get("event_id") not in ours and "state_key" in event:
                    return True
    return False


def watch(
    creds: OperatorCredentials,
    escrow: Secret,
    report: Callable[[str], None],
    *,
    stopper: Stopper | None = None,
    timeout_ms: int = WATCH_TIMEOUT_MS,
) -> str:
    """Reseal now and after every change, until a signal; returns the signal's name."""
    stopper = stopper or Stopper()
    stopper.install()
    resealer: Resealer | None = None
    filter_id = ""
    since: str | None = None
    pending = True
    failures = 0
    try:
        while stopper.signal is None:
            try:
                stopper.busy = True
                if resealer is None:
                    resealer = Resealer(creds, escrow)
                    filter_id = _make_filter(resealer)
                if since is None:
                    # Where the stream stands before the first pass: nothing after it is missed.
                    since = str(_sync(resealer.admin, None, filter_id, 0).get("next_batch"))
                if pending:
                    started = time.monotonic()
                    changes = resealer.run(dry_run=False)
                    report(summary(changes, time.monotonic() - started, dry_run=False))
                    pending = False
                stopper.busy = False
                if stopper.signal is not None:
                    break
                data = _sync(resealer.admin, since, filter_id, timeout_ms)
                stopper.busy = True
                since = str(data.get("next_batch") or since)
                pending = _relevant(data, resealer.written)
                failures = 0
            except BureauError as exc:
                # The hub away, a room not there yet: said once a try, tried again later.
                stopper.busy = False
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                report(f"{rfc3339_now()} reseal: {exc}; again in {delay:.1f} s")
                pending = True
                time.sleep(delay)
    except _Stop:
        pass
    finally:
        stopper.busy = True
    return stopper.signal or "SIGTERM"


def _make_filter(resealer: Resealer) -> str:
    what = "make the sync filter"
    user = quote(resealer.creds.admin_user, safe="")
    body = _sync_filter([resealer.rooms.machine, resealer.rooms.fleet])
    data = resealer.admin.call("POST", f"{CLIENT}/user/{user}/filter", body, what=what)
    return str(data.get("filter_id", ""))
