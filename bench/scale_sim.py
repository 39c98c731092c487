"""Simulated machines for the scale run: one process, one asyncio loop, many machines.

usage: python bench/scale_sim.py < spec.json   (bench/scale.py starts a few of these)

Each simulated machine is a real enrolled machine (its own account, session, age key and
pinned operator keys, from bench/scale_enroll.py) running the daemon's and the launcher's
code on the credentials path, with nothing else:

- sync: bureau.matrix.sync.MachineMatrix, the daemon's client, long-polling with the
  daemon's filter (service.STATE_TYPES), from its own session and connection;
- what changed is read back as the daemon reads it: the whole state of each touched room
  (config room, fleet room) through MachineMatrix.room_state into bureau.daemon.room_view;
- the decision: bureau.daemon.reconcile.plan over the machine's config and credentials
  against what this machine "runs" (principal -> content digest); for the fleet bundle,
  the shard that names this machine (bureau.wire.fleet_bundle.shard_for) against the
  digest last opened;
- the launcher's part of an ensure: the operator's signature checked against the keys
  the machine pinned at first boot (bureau.wire.signing.verify), the event parsed and its
  recipients checked, the ciphertext decrypted with the machine's own identity
  (bureau.age_keys.decrypt) and the plaintext checked against its binding
  (bureau.wire.credentials.open_plaintext).

Not simulated: no launcher or daemon process, no launcher socket, no proxy started or
handed the payload, no heartbeat or machine info published, no template room followed.

Out (stdout, one JSON object a line): {"m": index, "kind": "principal"|"fleet", "value":
sha256 of TOKEN's value (first 16 hex), "sync", "state", "plan", "done" (monotonic times
of each step; CLOCK_MONOTONIC is one clock for every process), "decrypt_s"}; and
{"m": index, "ready": true} after the first pass. Stops at EOF on stdin.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from bureau.daemon.reconcile import Ensure, plan
from bureau.daemon.room_view import RoomView
from bureau.daemon.service import STATE_TYPES
from bureau.errors import MatrixError
from bureau.launcher.operator_trust import load_pinned
from bureau.machine_state import load_session
from bureau.matrix.fleet_rooms import fleet_room_aliases
from bureau.matrix.sync import MachineMatrix
from bureau.wire import names, rooms
from bureau.wire.credentials import CredentialsEvent, content_digest, open_plaintext
from bureau.wire.fleet_bundle import binding_principal, shard_for, signing_target
from bureau.wire.signing import verify

TOKEN = "TOKEN"  # the name of the credential the bench rotates


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
        self.bundle = str(spec["bundle"])
        self.user = session.user_id
        self.matrix = MachineMatrix(session)
        run_dir = state_dir.parent / "run"
        run_dir.mkdir(exist_ok=True)
        self.view = RoomView(names.state_key(self.localpart, self.server), run_dir, log)
        self.fleet_credentials: dict[str, dict[str, Any]] = {}
        self.running: dict[str, str] = {}  # principal -> digest, as a launcher reports it
        self.fleet_opened = ""

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
            # As the daemon: a batch says which rooms changed, their state is read back.
            touched = {
                room
                for room, event in batch.state
                if room in (self.view.config_room, self.view.fleet_room)
                and event.get("type") in STATE_TYPES
            }
            if first:
                touched = {self.view.config_room, self.view.fleet_room}
            for room in sorted(touched):
                events = await self.matrix.room_state(room)
                self.view.replace_room(room, events)
                if room == self.view.fleet_room:
                    self.fleet_credentials = {
                        str(e.get("state_key")): e.get("content") or {}
                        for e in events
                        if e.get("type") == rooms.CREDENTIALS
                    }
            read = time.monotonic()
            actions = plan(self.view.config, self.view.credentials, self.running)
            shard = shard_for(self.fleet_credentials, self.bundle, self.user)
            fleet_content = self.fleet_credentials.get(shard) if shard else None
            fleet_new = fleet_content and content_digest(fleet_content) != self.fleet_opened
            decided = time.monotonic()
            for action in actions:
                if isinstance(action, Ensure):
                    self._serve("principal", action.principal, action.content, synced, read,
                                decided)  # fmt: skip
            if fleet_new and shard and fleet_content:
                self._serve("fleet", shard, fleet_content, synced, read, decided)
            if first:
                first = False
                self._out({"m": self.index, "ready": True})

    def _serve(
        self, kind: str, key: str, content: dict[str, Any], synced: float, read: float,
        decided: float,
    ) -> None:  # fmt: skip
        """The launcher's checks and decrypt for one ensure (principal) or one fleet
        bundle shard; what it opened is reported by its digest."""
        started = time.monotonic()
        if kind == "principal":
            target, where = key, f"credentials for {key}"
        else:
            target = signing_target(self.fleet_room_localpart, self.server, key)
            where = f"fleet bundle {key}"
        verify(content, rooms.CREDENTIALS, target, self.trusted.keys, where,
               revoked=self.trusted.revoked)  # fmt: skip
        event = CredentialsEvent.from_json(content, where)
        assert self.user in event.encrypted_for, f"{where}: not for {self.user}"
        if kind == "fleet":
            event = dataclasses.replace(event, principal=binding_principal(self.bundle))
        elif event.principal != key:
            raise AssertionError(f"{where}: for {event.principal}")
        plaintext = age_keys.decrypt(event.ciphertext, self.key)
        opened = open_plaintext(plaintext, event, where, unbound_allowed=False)
        done = time.monotonic()
        if kind == "principal":
            self.running[key] = content_digest(content)
        else:
            self.fleet_opened = content_digest(content)
        value = opened.credentials[TOKEN].reveal()
        self._out({"m": self.index, "kind": kind, "value": token_digest(value), "sync": synced,
                   "state": read, "plan": decided, "done": done,
                   "decrypt_s": done - started})  # fmt: skip

    def _out(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
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
