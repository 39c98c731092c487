"""bureau-daemon's lifecycle: connect, then three owned tasks until SIGTERM.

    sync       long-polls the machine's rooms, keeps the config and credentials state
    reconcile  makes the launcher's principals match it (on every change, and every
               RECONCILE_SECONDS in case the launcher restarted)
    heartbeat  publishes m.bureau.machine_status at start, on change, and periodically

Matrix failures back off (bureau.matrix.retry: the server's hint, else 1 s doubling to
30 s) and the sync resumes from its last token; proxies keep serving meanwhile because
they never depend on the daemon. SIGTERM stops the daemon and leaves principals running
for the next one. A daemon that cannot reach the hub when it starts (a reboot during an
outage) starts the principals recorded in its offline cache (daemon/offline_cache.py)
and goes on from the hub's state once it answers. Losing the machine's standing (token
revoked, removed from the config room) is fatal: the daemon stops every principal and
exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bureau import lifecycle
from bureau.daemon import fleet_reads, machine_info, offline_cache
from bureau.daemon.fleet_relay import fleet_relays
from bureau.daemon.launcher_client import LauncherClient, LauncherUnavailable
from bureau.daemon.principals import Principals
from bureau.daemon.reconcile import Ensure, plan, relayed
from bureau.daemon.relogin import SoftLogouts
from bureau.daemon.room_view import RoomView
from bureau.daemon.sandbox_specs import SandboxSpecs
from bureau.daemon.status_publisher import StatusPublisher
from bureau.errors import MatrixError
from bureau.lifecycle import Owned
from bureau.matrix.fleet_rooms import fleet_room_aliases
from bureau.matrix.retry import next_delay
from bureau.matrix.sync import MachineMatrix
from bureau.notify import Notifier
from bureau.wire import names, rooms
from bureau.wire.operator_keys import EVENT_TYPE as OPERATOR_KEYS
from bureau.wire.template import EVENT_TYPE as TEMPLATE_EVENT

STATE_TYPES = [
    rooms.MACHINE_CONFIG,
    rooms.CREDENTIALS,
    rooms.FLEET_PROFILE,
    TEMPLATE_EVENT,
    OPERATOR_KEYS,
]

RECONCILE_SECONDS = 30.0
HEARTBEAT_SECONDS = 300.0
# SIGTERM's teardown only says STOPPING: what runs is cancelled at once after it.
STOP_GRACE_SECONDS = 5.0
# How long a starting daemon waits for the hub before it starts principals from the
# offline cache anyway (a failed request starts them at once).
OFFLINE_AFTER_SECONDS = 10.0


class Daemon:
    def __init__(
        self,
        *,
        matrix: MachineMatrix,
        launcher: LauncherClient,
        machine_user: str,
        log: Any,
        notifier: Notifier,
        run_dir: Path,
        state_dir: Path,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        reconcile_seconds: float = RECONCILE_SECONDS,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._matrix = matrix
        self._launcher = launcher
        self._machine_user = machine_user
        localpart, self._server = names.parse_user_id(machine_user)
        self._localpart = localpart
        self._fleet = names.fleet_of_entity(localpart)
        self._log = log
        self._reconcile_seconds = reconcile_seconds
        self._notifier = notifier
        self._run_dir = run_dir
        self._state_dir = state_dir
        self._relogin = SoftLogouts(
            launcher=launcher,
            matrix=matrix,
            machine_user=machine_user,
            state_dir=state_dir,
            log=log,
            rng=rng,
        )
        self._rng = rng
        self._cache = offline_cache.CacheWriter(state_dir, machine_user, log)
        self._cut_off = asyncio.Event()  # a request to the hub failed before it connected
        self._replaying = False
        self._stop = asyncio.Event()
        self._synced = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._reconcile_now = asyncio.Event()
        self.fatal: str | None = None
        self._since: str | None = None
        self._rooms = RoomView(names.state_key(localpart, self._server), run_dir, log)
        self._principals = Principals(launcher, log, rng, self._reconcile_now.set)
        self._specs = SandboxSpecs(
            self._server, self._join_template_room, self._read_room_state, log
        )
        self._templates = self._specs.templates
        self._route_problems: dict[str, str] = {}  # principal -> why its routes cannot be made
        self._status = StatusPublisher(
            matrix=matrix,
            launcher=launcher,
            machine_user=machine_user,
            state_key=names.state_key(localpart, self._server),
            principals=self._principals,
            problems=self._problems,
            interval=heartbeat_seconds,
            rng=rng,
            log=log,
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        async def start(tasks: Owned) -> None:
            tasks.create_task(self._main())  # READY once the first sync is reconciled
            tasks.create_task(self._notifier.watchdog())

        async def stopping() -> None:
            self._notifier.stopping(self.fatal or "stopping; principals keep running")

        try:
            await lifecycle.serve(start, stopping, grace=STOP_GRACE_SECONDS, stop=self._stop)
        finally:
            await self._matrix.close()
        if self.fatal is not None:
            await self._principals.stop_all()
            return 1
        self._log.info("stopped; principals keep running for the next daemon")
        return 0

    async def _main(self) -> None:
        offline = asyncio.create_task(self._start_offline())
        try:
            connected = await self._connect()
            if connected and self._replaying:
                # Its ensures and the first pass from the hub's state must not cross: an
                # older cached bundle would land after a newer one.
                await offline
        finally:
            offline.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await offline
        if not connected:
            return
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sync_loop())
            tasks.create_task(self._reconcile_loop())
            tasks.create_task(self._status.run(self._reconciled))
            tasks.create_task(self._publish_info())

    def _die(self, reason: str) -> None:
        self._log.error("machine lost its standing; stopping every principal", reason=reason)
        self.fatal = reason
        self._stop.set()

    async def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """Run ``call`` until it succeeds; back off on failures the network may cure."""
        attempt = 0
        while True:
            try:
                return await call()
            except MatrixError as exc:
                if exc.errcode == "M_UNKNOWN_TOKEN" and await self._logged_in_again(exc):
                    continue
                if exc.errcode == "M_UNKNOWN_TOKEN" or exc.status == 403:
                    raise
                self._cut_off.set()
                delay = next_delay(attempt, exc.retry_after, self._rng)
                attempt += 1
                self._log.warning(f"{what} failed; retrying", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)

    async def _connect(self) -> bool:
        try:
            user = await self._retrying("token check", self._matrix.whoami)
            if user != self._machine_user:
                self._die(f"the session is for {user}, not {self._machine_user}")
                return False
            config_alias = names.room_alias(self._localpart, self._server)
            aliases = fleet_room_aliases(self._fleet, self._server)
            for alias in (config_alias, *aliases.values()):
                room_id = await self._retrying(f"joining {alias}", partial(self._join_alias, alias))
                if alias == config_alias:
                    self._rooms.config_room = room_id
                elif alias == aliases["machine"]:
                    self._status.room = room_id
                elif alias == aliases["fleet"]:
                    self._rooms.fleet_room = room_id
        except MatrixError as exc:
            self._die(str(exc))
            return False
        template_alias = names.room_alias(names.template_room_localpart(self._fleet), self._server)
        await self._specs.follow(template_alias)
        self._log.info("connected", config_room=self._rooms.config_room)
        return True

    async def _start_offline(self) -> None:
        """Once the hub has failed to answer (or not answered for OFFLINE_AFTER_SECONDS),
        start what the offline cache holds; READY says so."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OFFLINE_AFTER_SECONDS):
                await self._cut_off.wait()
        self._replaying = True
        await offline_cache.start_offline(
            self._state_dir, self._machine_user, self._launcher, self._notifier, self._log
        )

    async def _logged_in_again(self, exc: MatrixError) -> bool:
        return await self._relogin.mend(exc)

    async def _join_template_room(self, alias: str) -> str:
        """One attempt: a room that is not there (404) or not ours to join (403) must not
        hold up reconciling every other principal; SandboxSpecs tries it again later."""
        return await self._join_alias(alias)

    async def _join_alias(self, alias: str) -> str:
        return await self._matrix.join(await self._matrix.resolve_alias(alias))

    # -- sync ----------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        attempt = 0
        while True:
            try:
                batch = await self._matrix.sync(self._since, STATE_TYPES)
            except MatrixError as exc:
                if exc.errcode == "M_UNKNOWN_TOKEN":
                    if await self._logged_in_again(exc):
                        continue
                    self._die("the access token was revoked")
                    return
                delay = next_delay(attempt, exc.retry_after, self._rng)
                attempt += 1
                self._log.warning("sync failed; retrying", error=str(exc), retry_in=delay)
                self._notifier.status(
                    f"sync failing ({exc.errcode or exc.status or 'unreachable'}); "
                    f"retrying in {delay:.0f} s; {self._principals.running} principals running"
                )
                await asyncio.sleep(delay)
                continue
            self._relogin.reset()
            if attempt:
                self._log.info("sync resumed")
                self._notifier.status(self._summary())
            attempt = 0
            self._since = batch.next_batch
            if self._rooms.config_room in batch.left:
                self._die("removed from its config room")
                return
            # A sync's timeline and state blocks do not add up to the room's state when
            # publishers race: the history forks, and a later batch's state block re-sends
            # a value its timeline had already superseded (seen with concurrent credential
            # updates: the daemon kept an older bundle until the next event for that
            # principal, which may never come). So a batch only says which rooms changed;
            # what they hold is read back as the homeserver resolved it.
            touched = {
                room_id
                for room_id, event in batch.state
                if (
                    room_id in (self._rooms.config_room, self._rooms.fleet_room)
                    or self._templates.follows(room_id)
                )
                and event.get("type") in STATE_TYPES
            }
            if not self._synced.is_set():
                # The first pass decides what keeps running, so it reads the rooms whether
                # or not the first batch carried their state: seen after a daemon was
                # killed, an initial sync without the config room's state made the next
                # daemon stop every principal, then start them again.
                touched |= {self._rooms.config_room, self._rooms.fleet_room}
            try:
                await self._read_touched(touched, batch.state)
            except MatrixError as exc:
                self._die(str(exc))
                return
            changed = {self._rooms.config_room, self._rooms.fleet_room} & touched or any(
                self._templates.follows(room_id) for room_id in touched
            )
            if changed or not self._synced.is_set():
                self._synced.set()
                self._reconcile_now.set()

    async def _read_touched(
        self, touched: set[str], state: list[tuple[str, dict[str, Any]]]
    ) -> None:
        for room_id in sorted(touched):
            if self._templates.follows(room_id):
                await self._specs.refresh(room_id)
            elif room_id == self._rooms.fleet_room and self._synced.is_set():
                changed = [e for r, e in state if r == room_id and e.get("type") in STATE_TYPES]
                await self._read_fleet_changes(changed)
            else:
                await self._read_room_state(room_id)

    async def _read_fleet_changes(self, events: list[dict[str, Any]]) -> None:
        """What changed in the fleet room, without its whole state (fleet_reads.py)."""
        room = self._rooms.fleet_room
        to_read, as_sent = fleet_reads.split(events, self._machine_user)
        read = []
        for kind, key in to_read:
            content = await self._retrying(
                f"reading {kind} {key!r} in {room}",
                partial(self._matrix.state_event, room, kind, key),
            )
            read.append({"type": kind, "state_key": key, "content": content})
        self._rooms.apply([(room, event) for event in [*as_sent, *read]])

    async def _read_room_state(self, room_id: str) -> None:
        events = await self._retrying(
            f"reading the state of {room_id}", partial(self._matrix.room_state, room_id)
        )
        if self._templates.follows(room_id):
            self._templates.set_state(room_id, events)
        self._rooms.replace_room(room_id, events)

    # -- reconcile -----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        try:
            await self._reconciling()
        finally:
            await self._principals.close()

    async def _reconciling(self) -> None:
        await self._synced.wait()
        unavailable = 0
        while True:
            self._reconcile_now.clear()
            wait = self._reconcile_seconds
            try:
                await self._reconcile()
            except LauncherUnavailable as exc:
                # A launcher restarting (systemd brings it back in seconds) is asked again
                # soon: 1 s doubling, up to the reconcile interval.
                wait = min(2.0**unavailable, self._reconcile_seconds)
                unavailable += 1
                self._log.warning("launcher unavailable; will retry", error=str(exc), retry_in=wait)
            else:
                unavailable = 0
                retry_at = self._principals.next_retry()
                if retry_at is not None:
                    wait = min(wait, max(retry_at - time.monotonic(), 0.0))
                if not self._reconciled.is_set():
                    self._reconciled.set()
                    self._log.info("ready: first sync done and principals reconciled")
                    self._notifier.ready(self._summary())
                else:
                    self._notifier.status(self._summary())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the event fires, and the daemon would not stop on SIGTERM.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._reconcile_now.wait()

    def _summary(self) -> str:
        failing = len(self._principals.failures)
        running = f"synced; {self._principals.running} principals running"
        return running + (f"; {failing} failing" if failing else "")

    async def _reconcile(self) -> None:
        # The first pass waits for its actions: READY means the principals are in place.
        settle = not self._reconciled.is_set()
        problems = self._problems()
        specs, held = await self._specs.resolve(self._rooms.config)
        credentials, routes = relayed(self._rooms.credentials, self._specs.services)
        fleet, unserved = fleet_relays(
            self._specs.credential_refs,
            self._rooms.fleet_credentials,
            self._machine_user,
            self._route_problems,
            self._log,
        )
        # Without its fleet bundle a principal is not run: one running is stopped.
        credentials = {p: c for p, c in credentials.items() if p not in unserved}
        self._route_problems = {**routes, **unserved}
        if self._problems() != problems:
            self._status.now.set()
        held |= set(routes)
        wanted = plan(
            self._rooms.config,
            credentials,
            {},
            specs=specs,
            held=held,
            templates=self._specs.sources,
            fleet=fleet,
        )
        self._cache.record((a for a in wanted if isinstance(a, Ensure)), held)
        await self._principals.trust(self._rooms.statements)  # before any ensure it may concern
        if await self._principals.reconcile(
            self._rooms.config,
            credentials,
            settle=settle,
            specs=specs,
            held=held,
            templates=self._specs.sources,
            fleet=fleet,
        ):
            self._status.now.set()

    def _problems(self) -> dict[str, str]:
        """Principals the daemon cannot ask the launcher for, and why."""
        return {**self._specs.problems, **self._route_problems}

    async def _publish_info(self) -> None:
        await machine_info.publish(
            self._matrix,
            self._status.room,
            names.state_key(self._localpart, self._server),
            self._machine_user,
            retrying=self._retrying,
            log=self._log,
        )
