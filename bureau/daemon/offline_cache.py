"""What a worker needs to start its principals with the hub out of reach (OURS, #19).

After each reconcile from the hub's state the daemon records, for every principal it
wants running, the ensure it would send the launcher: the credentials event (ciphertext,
never plaintext), the sandbox spec, and the signed assignment and templates it resolves
from, all as the operator published them. Only signed content is kept: the launcher
checks every signature again when the cache is replayed, so a cache edited by anyone who
can write the daemon's state dir can start nothing the operator did not sign (it can
replay an older signed bundle, as a daemon relaying old events could; WIRE.md).

The file is ``offline-cache.json`` in the daemon's state dir, 0600, replaced atomically
and only when what it holds changes:

    {"version": 1, "machine": "@<machine>:<server>", "saved_at": "<RFC 3339>",
     "principals": [{"principal": "@...", "credentials": {...}, "sandbox": {...} | null,
                     "assignment": {...}, "templates": {"<ref>": {...}}, ...}, ...]}

Each entry holds the fields of ``reconcile.Ensure`` under their launcher-protocol names
(``content`` is ``credentials``); a field this version does not know makes the entry
unreadable, and an unreadable entry is skipped with one line naming it, never the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau.daemon.launcher_client import LauncherClient, LauncherRefused, LauncherUnavailable
from bureau.daemon.principals import MAX_STARTING, principal_ref, typed
from bureau.daemon.reconcile import Ensure
from bureau.errors import BureauError, InputError
from bureau.files import atomic_write
from bureau.notify import Notifier
from bureau.wire.credentials import CredentialsEvent, content_digest, parse_rfc3339, rfc3339_now
from bureau.wire.names import InvalidName, PrincipalRef
from bureau.wire.sandbox_spec import SandboxSpec
from bureau.wire.signing import SIGNATURES

FILE_NAME = "offline-cache.json"
VERSION = 1
MODE = 0o600
_RENAMED = {"content": "credentials"}  # Ensure's field -> its name on the launcher wire


def cache_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def is_signed(ensure: Ensure) -> bool:
    """Whether everything the ensure carries bears an operator's signature (checked by the
    launcher, not here): an unsigned assignment or template would be unchecked content."""
    if ensure.assignment is None:
        return False
    signed: list[object] = [ensure.content, ensure.assignment, *ensure.templates.values()]
    if ensure.fleet_credentials is not None:  # {"state_key", "content"}, as relayed
        signed.append(ensure.fleet_credentials.get("content"))
    return all(isinstance(part, Mapping) and SIGNATURES in part for part in signed)


def entry_json(ensure: Ensure) -> dict[str, Any]:
    return {
        _RENAMED.get(f.name, f.name): getattr(ensure, f.name) for f in dataclasses.fields(Ensure)
    }


def entry_from_json(obj: object, where: str) -> Ensure:
    """InputError naming the field."""
    if not isinstance(obj, dict):
        raise InputError(where, None, "expected an object")
    known = {_RENAMED.get(f.name, f.name): f for f in dataclasses.fields(Ensure)}
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise InputError(where, unknown[0], "not a field this version caches")
    principal = obj.get("principal")
    try:
        PrincipalRef.from_user_id(principal if isinstance(principal, str) else "")
    except InvalidName as exc:
        raise InputError(where, "principal", str(exc)) from None
    where = f"{where} ({principal})"
    CredentialsEvent.from_json(obj.get("credentials"), f"{where}: credentials")
    sandbox = obj.get("sandbox")
    if sandbox is not None:
        try:
            SandboxSpec.from_json(sandbox)
        except InputError as exc:
            raise InputError(f"{where}: sandbox", None, str(exc)) from None
    values: dict[str, Any] = {}
    for name, f in known.items():
        value = obj.get(name, None)
        if name not in ("principal", "credentials", "sandbox") and value is not None:
            if not isinstance(value, dict):
                raise InputError(where, name, "expected an object")
            if name == "templates" and not all(isinstance(v, dict) for v in value.values()):
                raise InputError(where, name, "expected an object of ref -> template content")
        if value is None and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        values[f.name] = value
    return Ensure(**values)


@dataclass(frozen=True)
class OfflineCache:
    machine: str
    saved_at: str
    principals: tuple[Ensure, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "machine": self.machine,
            "saved_at": self.saved_at,
            "principals": [entry_json(e) for e in self.principals],
        }

    @classmethod
    def from_json(cls, obj: object, where: str, log: Any) -> OfflineCache:
        """InputError naming the field for a file that cannot be read at all; an entry
        that cannot be read is logged (naming it) and left out."""
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        if obj.get("version") != VERSION:
            raise InputError(where, "version", f"expected {VERSION}")
        machine, saved_at = obj.get("machine"), obj.get("saved_at")
        if not isinstance(machine, str) or not machine:
            raise InputError(where, "machine", "expected the machine's user ID")
        try:
            parse_rfc3339(saved_at if isinstance(saved_at, str) else "")
        except ValueError as exc:
            raise InputError(where, "saved_at", str(exc)) from None
        entries = obj.get("principals")
        if not isinstance(entries, list):
            raise InputError(where, "principals", "expected a list")
        principals = []
        for i, item in enumerate(entries):
            try:
                principals.append(entry_from_json(item, f"{where}: principals[{i}]"))
            except InputError as exc:
                log.warning("offline cache entry unreadable; skipped", error=str(exc))
        return cls(machine, str(saved_at), tuple(principals))


def load(state_dir: Path, machine: str, log: Any) -> OfflineCache | None:
    """The cache, or None (none yet, or unreadable: logged)."""
    path = cache_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("offline cache unreadable", path=str(path), error=exc.strerror)
        return None
    try:
        cache = OfflineCache.from_json(json.loads(raw), str(path), log)
    except (ValueError, InputError) as exc:
        message = str(exc) if isinstance(exc, InputError) else f"{path}: not JSON"
        log.warning("offline cache unreadable", error=message)
        return None
    if cache.machine != machine:
        log.warning("offline cache is another machine's; not used", path=str(path))
        return None
    return cache


def startable(cache: OfflineCache, now: float, log: Any) -> list[Ensure]:
    """The cached principals whose bundles have not expired (the launcher would refuse
    those; each is logged once, by name)."""
    out = []
    for ensure in cache.principals:
        expires = ensure.content.get("expires_at")
        if isinstance(expires, str) and expires:
            try:
                expired = parse_rfc3339(expires).timestamp() <= now
            except ValueError:
                expired = True
            if expired:
                log.warning(
                    "not started from the offline cache: its credentials expired",
                    principal=ensure.principal,
                    expires_at=expires,
                )
                continue
        out.append(ensure)
    return out


class CacheWriter:
    """Keeps ``offline-cache.json`` in step with what the hub says the machine runs."""

    def __init__(self, state_dir: Path, machine: str, log: Any) -> None:
        self._path = cache_path(state_dir)
        self._machine = machine
        self._log = log
        self._entries: dict[str, Ensure] = {}
        # No file holds the same as an empty one: a machine that runs nothing writes none.
        self._written: str | None = content_digest([])
        cached = load(state_dir, machine, log)
        if cached is not None:
            self._entries = {e.principal: e for e in cached.principals}
            self._written = content_digest([entry_json(e) for e in cached.principals])

    def record(self, wanted: Iterable[Ensure], held: Iterable[str]) -> None:
        """``wanted``: an ensure for every principal the hub's state wants running and
        this pass could resolve; ``held``: principals it could not resolve this time,
        whose last cached entry stands."""
        kept = {p: self._entries[p] for p in held if p in self._entries}
        unsigned = []
        for ensure in wanted:
            if is_signed(ensure):
                kept[ensure.principal] = ensure
            else:
                unsigned.append(ensure.principal)
        entries = [kept[p] for p in sorted(kept)]
        digest = content_digest([entry_json(e) for e in entries])
        if digest == self._written:
            return
        cache = OfflineCache(self._machine, rfc3339_now(), tuple(entries))
        data = json.dumps(cache.to_json(), separators=(",", ":")).encode()
        try:
            atomic_write(self._path, data, MODE)
        except BureauError as exc:
            self._log.warning("offline cache not written", error=str(exc))
            return
        self._entries, self._written = {e.principal: e for e in entries}, digest
        self._log.info(
            "offline cache written",
            principals=len(entries),
            unsigned_not_cached=unsigned or None,
        )


LAUNCHER_WAIT_SECONDS = 5.0  # the longest pause between asks while the launcher starts


async def replay(launcher: LauncherClient, ensures: list[Ensure], log: Any) -> int:
    """Ask the launcher to run each cached principal (it checks every signature again);
    the number it runs. Waits for a launcher still starting (after a reboot the two
    start together); a principal it refuses is logged by name and the rest go on."""
    delay = 0.25
    while True:
        try:
            await launcher.list()
            break
        except LauncherUnavailable:
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAUNCHER_WAIT_SECONDS)
    started = 0
    starting = asyncio.Semaphore(MAX_STARTING)

    async def one(ensure: Ensure) -> None:
        nonlocal started
        try:
            credentials, sandbox, fleet = typed(ensure)
            async with starting:
                await launcher.ensure(
                    principal_ref(ensure.principal),
                    credentials,
                    sandbox,
                    ensure.assignment,
                    ensure.templates,
                    fleet=fleet,
                )
        except (InputError, LauncherRefused, LauncherUnavailable) as exc:
            log.warning(
                "could not start a principal from the offline cache",
                principal=ensure.principal,
                error=str(exc),
            )
            return
        started += 1
        log.info("principal running, from the offline cache", principal=ensure.principal)

    async with asyncio.TaskGroup() as tasks:
        for ensure in ensures:
            tasks.create_task(one(ensure))
    return started


async def start_offline(
    state_dir: Path, machine: str, launcher: LauncherClient, notifier: Notifier, log: Any
) -> None:
    """Start what the cache holds (the hub is out of reach); READY says how many."""
    cache = load(state_dir, machine, log)
    if cache is None:
        log.warning("hub unreachable and no offline cache; waiting for the hub")
        return
    ensures = startable(cache, time.time(), log)
    started = await replay(launcher, ensures, log)
    summary = (
        f"hub unreachable; {started} of {len(cache.principals)} principals started "
        f"from the offline cache of {cache.saved_at}"
    )
    log.info(summary)
    notifier.ready(summary)
