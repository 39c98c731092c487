"""The scale run's new machine: with `bureau credentials reseal --watch` running (the real
CLI, its own process), one more machine is provisioned by the operator (not timed: it
happens before the machine exists), then timed from the start of its real first boot
(`bureau-launcher --first-boot-only`, its own process) until it has decrypted the fleet
bundle: its simulated daemon (as bench/scale_sim.py's, in this process) syncs, reads the
fleet room's state, finds the shard naming it (fleet_bundle.shard_for), checks the
operator's signature on it and opens it with its own key.

The rest of the fleet's simulators keep running meanwhile: the hub serves them as well,
and reseal's new shards re-ensure their principals too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from processes import BIN
from scale_publish import BUNDLE
from scale_sim import FLEET_TOKEN, token_digest

from bureau import age_keys, key_store
from bureau.daemon.service import STATE_TYPES
from bureau.files import atomic_write
from bureau.launcher import fleet_bundles
from bureau.launcher.operator_trust import load_pinned
from bureau.machine_state import load_session
from bureau.matrix.fleet_rooms import fleet_room_aliases
from bureau.matrix.sync import MachineMatrix
from bureau.operator import machines
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.files import OperatorCredentials
from bureau.wire.fleet_bundle import shard_for, signing_target
from bureau.wire.launcher_protocol import FleetCredentials
from bureau.wire.signing import verify

WATCH_READY_TIMEOUT = 120.0
SERVE_TIMEOUT = 120.0


@contextlib.contextmanager
def reseal_watch(credential_file: Path, escrow: Secret, work: Path) -> Iterator[Path]:
    """`bureau credentials reseal --watch` running, past its first pass; yields its log."""
    identity = work / "escrow-identity.txt"
    atomic_write(identity, escrow.reveal().encode() + b"\n", 0o600)
    log = work / "reseal-watch.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "bureau"), "credentials", "reseal", "--watch", "--escrow-identity",
             str(identity), "--credential-file", str(credential_file)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WATCH_READY_TIMEOUT
        while "reseal:" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reseal --watch did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def first_fleet_decrypt(
    state_dir: Path, fleet: str, server: str, expected: str
) -> dict[str, float]:
    """The new machine's daemon, started as its first boot ends: until it has opened its
    shard of the fleet bundle and found ``expected`` (a value's digest) in it; monotonic
    times of the sync that brought it and of the decrypt."""
    session = load_session(state_dir)
    loaded = key_store.load(state_dir, None)
    assert session is not None, f"{state_dir}: no session"
    assert loaded is not None, f"{state_dir}: no key"
    trusted = load_pinned(state_dir)
    matrix = MachineMatrix(session)
    room_localpart = names.fleet_room_localpart(fleet)
    try:
        room = await matrix.join(
            await matrix.resolve_alias(fleet_room_aliases(fleet, server)["fleet"])
        )
        since: str | None = None
        while True:
            batch = await matrix.sync(since, STATE_TYPES)
            synced = time.monotonic()
            since = batch.next_batch
            events = {
                str(e.get("state_key")): e.get("content") or {}
                for e in await matrix.room_state(room)
                if e.get("type") == rooms.CREDENTIALS
            }
            key = shard_for(events, BUNDLE, session.user_id)
            if key is None:
                continue
            shard = FleetCredentials.from_json({"state_key": key, "content": events[key]})
            target = signing_target(room_localpart, server, key)
            verify(events[key], rooms.CREDENTIALS, target, trusted.keys, key,
                   revoked=trusted.revoked)  # fmt: skip
            fleet_bundles.check("new machine", shard, [session.user_id])
            plaintext = age_keys.decrypt(shard.event.ciphertext, loaded[0])
            opened = fleet_bundles.opened("new machine", shard, plaintext, unbound_allowed=False)
            if token_digest(opened.credentials[FLEET_TOKEN].reveal()) == expected:
                return {"sync": synced, "done": time.monotonic()}
    finally:
        await matrix.close()


def run(creds: OperatorCredentials, credential_file: Path, escrow: Secret, work: Path,
        index: int, value: str) -> dict[str, Any]:  # fmt: skip
    """One new machine, first-booted and timed to its decrypt of the fleet bundle, whose
    FLEET_TOKEN is ``value``."""
    work.mkdir(parents=True, exist_ok=True)
    short = f"machine/sim{index}"
    localpart = f"{creds.fleet}/{short}"
    with reseal_watch(credential_file, escrow, work) as log:
        config = machines.provision(creds, localpart)
        bootstrap = work / "bootstrap.json"
        atomic_write(bootstrap, json.dumps(config.to_json()).encode(), 0o600)
        state_dir = work / "state"
        started = time.monotonic()
        boot = subprocess.run(
            [str(BIN / "bureau-launcher"), "--bootstrap-file", str(bootstrap), "--machine-name",
             short, "--state-dir", str(state_dir), "--first-boot-only", "--key-storage", "plain"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        booted = time.monotonic()
        if boot.returncode != 0:
            raise RuntimeError(f"first boot failed: {boot.stderr[-1000:]}")
        got = asyncio.run(
            asyncio.wait_for(
                first_fleet_decrypt(state_dir, creds.fleet, creds.server_name, token_digest(value)),
                SERVE_TIMEOUT,
            )
        )
        reseal_lines = [line for line in log.read_text().splitlines() if "reseal:" in line]
    return {
        "seconds": got["done"] - started,
        "first_boot_s": booted - started,
        "after_boot_s": got["done"] - booted,
        "shard_arrived_s": got["sync"] - started,
        "reseal_passes": reseal_lines[-3:],
    }
