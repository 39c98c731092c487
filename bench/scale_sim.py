"""Simulated machines for the scale run: one process, one asyncio loop, many machines.

usage: python bench/scale_sim.py < spec.json   (bench/scale.py starts a few of these)

Each simulated machine is a real enrolled machine (its own account, session, age key and
pinned operator keys, from bench/scale_enroll.py) running the daemon's and the launcher's
code on the credentials path, with nothing else:

- sync: bureau.matrix.sync.MachineMatrix, the daemon's client, long-polling with the
  daemon's filter (service.STATE_TYPES), from its own session and connection;
- what changed is read back as the daemon reads it: the whole state of the config room
  (and of the fleet room on the first sync) through MachineMatrix.room_state, and a fleet
  room change event by event (bureau.daemon.fleet_reads: shard 0 and the shards naming
  this machine, through MachineMatrix.state_event), into bureau.daemon.room_view;
- the decision, as the daemon's reconcile makes it: each assigned principal's
  credential_ref to the fleet bundle's shard naming this machine
  (bureau.daemon.fleet_relay.fleet_relays), then bureau.daemon.reconcile.plan against what
  this machine "runs" (principal -> launcher_protocol.running_digest, which covers the
  shard: a rotated fleet bundle re-ensures the principal);
- the launcher's part of each ensure: the operator's signatures on the principal's
  credentials and on the shard (the bundle the ref names, signed about its place in the
  fleet room) checked against the keys the machine pinned at first boot
  (bureau.wire.signing.verify), each checked for this machine, decrypted with the
  machine's own identity (bureau.age_keys.decrypt), opened against its binding and merged
  (bureau.wire.credentials.open_plaintext, bureau.launcher.fleet_bundles).

Not simulated: no launcher or daemon process, no launcher socket (the ensure is handed
over in-process), no proxy started or handed the payload, no heartbeat or machine info
published, no template room followed: the principal's credential_ref, which a signed
template carries, is given to the simulator, so operator_trust's check that the
template names that bundle is reduced to comparing the names.

Out (stdout, one JSON object a line), for each ensure served: {"m": index, "principal",
"fleet": the first 16 hex of the sha256 of TOKEN's and FLEET_TOKEN's values, "sync",
"state", "plan", "done": monotonic times of each step (CLOCK_MONOTONIC is one clock for
every process), "decrypt_s": the launcher's part}; and {"m": index, "ready": true} after
the first pass; {"counts": {"syncs", "state_reads", "state_events"}}, this process's
totals, every half second. Stops at EOF on stdin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from bureau import age_keys, key_store
from bureau.daemon import fleet_reads
from bureau.daemon.fleet_relay import fleet_relays
from bureau.daemon.reconcile import Ensure, plan
from bureau.daemon.room_view import RoomView
from bureau.daemon.service import STATE_TYPES
from bureau.errors import MatrixError
from bureau.launcher import fleet_bundles
from bureau.launcher.operator_trust import load_pinned
from bureau.machine_state import load_session
from bureau.matrix.fleet_rooms import fleet_room_aliases
from bureau.matrix.sync import MachineMatrix
from bureau.template_policy import fleet_ref
from bureau.wire import names, rooms
from bureau.wire.credentials import CredentialsEvent, open_plaintext
from bureau.wire.fleet_bundle import signing_target
from bureau.wire.launcher_protocol import FleetCredentials, running_digest
from bureau.wire.signing import verify

STATS_SECONDS = 0.5
# This process's totals over its machines: syncs returned, room state reads and the state
# events they carried (reported every STATS_SECONDS, so a rotation's reads are counted).
COUNTS = {"syncs": 0, "state_reads": 0, "state_events": 0}
TOKEN = "TOKEN"  # the principal's own credential, rotated one event per machine
FLEET_TOKEN = "FLEET_TOKEN"  # the fleet bundle's, rotated as one bundle


def token_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class SimMachine:
    def __init__(self, spec: dict[str, Any], machine: dict[str, Any], log: Any) -> None:
        self.index = int(machine["index"])
        self.localpart = str(machine["localpart"])
        state_dir = Path(machine["state_dir"])
        session = load_session(state_dir)
        loaded = key_store.load(state_dir, None)
        assert session is not None, f"{state_dir}: no session"
        assert loaded is not None, f"{state_dir}: no key"
        self.key = loaded[0]
        self.trusted = load_pinned(state_dir)
        self.server = str(spec["server"])
        self.fleet = str(spec["fleet"])
        self.user = session.user_id
        self.matrix = MachineMatrix(session)
        run_dir = state_dir.parent / "run"
        run_dir.mkdir(exist_ok=True)
        self.view = RoomView(names.state_key(self.localpart, self.server), run_dir, log)
        self.credential_ref = str(spec["credential_ref"])
        self.read_from_sync = spec.get("read") == "sync"
        self.unserved: dict[str, str] = {}
        self.log = log
        self.running: dict[str, str] = {}  # principal -> running digest, as the launcher's

    async def connect(self) -> None:
        """As the daemon connects: its token checked, its rooms joined by alias."""
        assert await self.matrix.whoami() == self.user
        config_alias = names.room_alias(self.localpart, self.server)
        aliases = fleet_room_aliases(self.fleet, self.server)
        for alias in (config_alias, aliases["machine"], aliases["fleet"]):
            room_id = await self.matrix.join(await self.matrix.resolve_alias(alias))
            if alias == config_alias:
                self.view.config_room = room_id
            elif alias == aliases["fleet"]:
                self.view.fleet_room = room_id
        self.fleet_room_localpart = names.fleet_room_localpart(self.fleet)

    async def run(self) -> None:
        await self.connect()
        since: str | None = None
        first = True
        while True:
            try:
                batch = await self.matrix.sync(since, STATE_TYPES)
            except MatrixError as exc:
                sys.stderr.write(f"sim{self.index}: sync failed: {exc}\n")
                await asyncio.sleep(1.0)
                continue
            synced = time.monotonic()
            since = batch.next_batch
            COUNTS["syncs"] += 1
            # As the daemon: a batch says which rooms changed, their state is read back.
            touched = {
                room
                for room, event in batch.state
                if room in (self.view.config_room, self.view.fleet_room)
                and event.get("type") in STATE_TYPES
            }
            if first:
                touched = {self.view.config_room, self.view.fleet_room}
            if self.read_from_sync and not first:
                # The experiment: the changed events as the sync delivered them, no
                # read-back (what the daemon does not do, as forks can mislead it).
                self.view.apply([(r, e) for r, e in batch.state if r in touched])
                touched = set()
            for room in sorted(touched):
                if room == self.view.fleet_room and not first:
                    # As the daemon reads a fleet room change: shard 0 and the shards
                    # naming this machine, event by event (bureau/daemon/fleet_reads.py).
                    changed = [e for r, e in batch.state if r == room]
                    to_read, as_sent = fleet_reads.split(changed, self.user)
                    read_back = []
                    for kind, key in to_read:
                        content = await self.matrix.state_event(room, kind, key)
                        read_back.append({"type": kind, "state_key": key, "content": content})
                        COUNTS["state_reads"] += 1
                        COUNTS["state_events"] += 1
                    self.view.apply([(room, e) for e in [*as_sent, *read_back]])
                    continue
                events = await self.matrix.room_state(room)
                COUNTS["state_reads"] += 1
                COUNTS["state_events"] += len(events)
                self.view.replace_room(room, events)
            read = time.monotonic()
            # The daemon's reconcile: each assigned principal's credential_ref (here given,
            # not read from a template) to the shard naming this machine, then the plan.
            refs = {a.principal: self.credential_ref for a in self.view.config.principals}
            fleet, unserved = fleet_relays(
                refs, self.view.fleet_credentials, self.user, self.unserved, self.log
            )
            self.unserved = unserved
            credentials = {p: c for p, c in self.view.credentials.items() if p not in unserved}
            actions = plan(self.view.config, credentials, self.running, fleet=fleet)
            decided = time.monotonic()
            for action in actions:
                if isinstance(action, Ensure):
                    self._ensure(action, synced, read, decided)
            if first:
                first = False
                self._out({"m": self.index, "ready": True})

    def _ensure(self, action: Ensure, synced: float, read: float, decided: float) -> None:
        """The launcher's part of an ensure: the operator's signatures on the principal's
        credentials and on the fleet shard (the bundle its ref names), each checked for
        this machine, decrypted with its key, opened against its binding and merged
        (launcher/proxy_kind.py, operator_trust.py, fleet_bundles.py)."""
        started = time.monotonic()
        principal = action.principal
        where = f"credentials for {principal}"
        verify(action.content, rooms.CREDENTIALS, principal, self.trusted.keys, where,
               revoked=self.trusted.revoked)  # fmt: skip
        event = CredentialsEvent.from_json(action.content, where)
        assert event.principal == principal, f"{where}: for {event.principal}"
        assert self.user in event.encrypted_for, f"{where}: not for {self.user}"
        own = open_plaintext(
            age_keys.decrypt(event.ciphertext, self.key), event, where, unbound_allowed=False
        )
        credentials, services = own.credentials, event.services
        if action.fleet_credentials is not None:
            fleet = FleetCredentials.from_json(action.fleet_credentials)
            ref = fleet_ref(self.credential_ref, self.fleet, self.server, where)
            assert fleet.name == ref.name, f"{where}: shard of {fleet.name}, not {ref.name}"
            target = signing_target(self.fleet_room_localpart, self.server, fleet.state_key)
            verify(fleet.to_json()["content"], rooms.CREDENTIALS, target, self.trusted.keys,
                   where, revoked=self.trusted.revoked)  # fmt: skip
            fleet_bundles.check(principal, fleet, [self.user])
            shared = age_keys.decrypt(fleet.event.ciphertext, self.key)
            theirs = fleet_bundles.opened(principal, fleet, shared, unbound_allowed=False)
            credentials, services = fleet_bundles.merged(
                principal, fleet, (credentials, services), (theirs.credentials,
                                                             fleet.event.services)
            )  # fmt: skip
        done = time.monotonic()
        self.running[principal] = running_digest(action.content, action.fleet_credentials)
        times = {"sync": synced, "state": read, "plan": decided, "done": done}
        record: dict[str, Any] = {"m": self.index, **times, "decrypt_s": done - started}
        for kind, name in (("principal", TOKEN), ("fleet", FLEET_TOKEN)):
            if name in credentials:
                record[kind] = token_digest(credentials[name].reveal())
        self._out(record)

    def _out(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


async def report_counts() -> None:
    while True:
        await asyncio.sleep(STATS_SECONDS)
        sys.stdout.write(json.dumps({"counts": COUNTS}) + "\n")
        sys.stdout.flush()


async def main() -> None:
    spec = json.loads(sys.stdin.readline())
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    log = structlog.get_logger("scale-sim")
    machines = [SimMachine(spec, m, log) for m in spec["machines"]]
    loop = asyncio.get_running_loop()
    eof = loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin to stop us
    tasks = [asyncio.create_task(m.run()) for m in machines]
    tasks.append(asyncio.create_task(report_counts()))
    done, _ = await asyncio.wait([eof, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not eof and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(m.matrix.close() for m in machines))


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main())
