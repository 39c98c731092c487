"""Fleet bundles end to end, as an operator runs them (#20): a real hub, real first boots,
per machine a real sandboxd, launcher and daemon, and the real ``bureau`` CLI.

- A machine that enrolls while ``bureau credentials reseal --watch`` runs gets the fleet's
  credential served by its proxy, with no one typing a secret again (the seconds from the
  start of its first boot to serving are printed); a decommissioned machine is dropped by
  the watch, cannot open what it wrote after, and the watch stops on SIGTERM with exit 0.
- A bundle split into shards is served by every machine, each from its own shard.
- A launcher sent another machine's (valid, signed) shard, as a subverted daemon could
  send it, refuses it naming principal and bundle, and what runs runs on.

Canaries are planted in every secret and looked for in every output and log."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, Fleet
from fleet_helpers import (
    BUNDLE,
    age_open,
    bureau,
    cached_ensure,
    escrow,
    fleet_services,
    fleet_value,
    machines_of,
    node,
    provision_bundle,
    push_template,
    recorded_fleet,
    recorded_shard,
    room_events,
    start_principal,
    user_of,
)
from machine_helpers import Enrolled, boot, enroll, eventually, provision, served_token
from processes import echo_upstream

from bureau.daemon.launcher_client import LauncherClient, LauncherRefused
from bureau.wire.fleet_bundle import shard_for
from bureau.wire.launcher_answers import EnsureResult
from bureau.wire.launcher_protocol import EnsureRequest, FleetCredentials

PRINCIPAL = "agent/a"


def _canary() -> str:
    return f"e2ecanary-{secrets.token_hex(8)}"


def _sharded(fleet: Fleet, machines: list[Enrolled], value: str, upstream: str) -> list[str]:
    """The bundle for ``machines``, one machine a shard (as a fleet past the cap gets it)."""
    return provision_bundle(fleet, machines, {"FLEET_TOKEN": value}, upstream, max_recipients=1)


@pytest.mark.slow
def test_a_new_machine_is_served_the_fleet_bundle_through_reseal_watch(
    fleet: Fleet, tmp_path: Path
) -> None:
    push_template(fleet, tmp_path)
    identity, recipient = escrow(tmp_path)
    fleet_token, own_token = _canary(), _canary()
    outputs: list[str] = []
    first = enroll(fleet, tmp_path / "first")
    with echo_upstream() as upstream:
        outputs.append(
            bureau(
                fleet,
                "credentials",
                "provision",
                "--fleet-bundle",
                BUNDLE,
                "--machines",
                "all",
                "--escrow-recipient",
                recipient,
                "--services",
                fleet_services(tmp_path, upstream),
                stdin=f"FLEET_TOKEN={fleet_token}\n",
            )
        )
        assert machines_of(room_events(fleet)[BUNDLE]) == [first.machine.user_id]
        watch_out = tmp_path / "watch.out"
        with watch_out.open("w") as sink:
            watcher = subprocess.Popen(
                [str(BIN / "bureau"), "credentials", "reseal", "--watch",
                 "--escrow-identity", str(identity),
                 "--credential-file", str(fleet.credential_file)],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            eventually(lambda: "reseal: 1 bundles" in watch_out.read_text())
            new = provision(fleet, tmp_path / "new")
            started = time.monotonic()
            result = boot(new, "--key-storage", "plain")
            assert result.returncode == 0, result.stderr
            booted = time.monotonic()
            joined = Enrolled(new)
            with node(joined, fleet) as worker:
                running = time.monotonic()
                outputs.append(
                    start_principal(fleet, tmp_path, upstream, joined, PRINCIPAL, token=own_token)
                )
                socket = worker.socket(PRINCIPAL)
                eventually(lambda: fleet_value(socket) == fleet_token, 60)
                served = time.monotonic()
                assert served_token(socket) == f"Bearer {own_token}"
                print(
                    f"\nfirst boot to fleet credential served: {served - started:.1f} s "
                    f"(first boot {booted - started:.1f} s, sandboxd+launcher+daemon up "
                    f"{running - booted:.1f} s, agent create to served {served - running:.1f} s)"
                )

                # The first machine leaves: the watch reseals to the new one alone, and the
                # first's identity opens nothing written since; the new one serves on.
                outputs.append(bureau(fleet, "machine", "decommission", first.machine.short_name))
                eventually(lambda: machines_of(room_events(fleet)[BUNDLE]) == [new.user_id], 30)
                after = room_events(fleet)[BUNDLE]
                assert age_open(after, first.plain_key) is None
                assert (age_open(after, joined.plain_key) or {}).get("FLEET_TOKEN") == fleet_token
                # Its proxy serves from the resealed shard now (a new content, a new spec).
                user = user_of(fleet, PRINCIPAL)
                resealed = {"state_key": BUNDLE, "content": after}
                eventually(lambda: recorded_fleet(worker.run_dir, user) == resealed)
                assert fleet_value(socket) == fleet_token
        finally:
            watcher.send_signal(signal.SIGTERM)
            code = watcher.wait(timeout=30)
        logs = worker.logs()
    watch_log = watch_out.read_text()
    assert code == 0, watch_log
    assert "reseal --watch: stopped by SIGTERM" in watch_log
    assert f"{BUNDLE}: +{new.short_name}" in watch_log
    assert f"{BUNDLE}: -{first.machine.short_name}" in watch_log
    assert "Traceback" not in watch_log
    for text in (watch_log, logs, *outputs):
        assert fleet_token not in text
        assert own_token not in text


@pytest.mark.slow
def test_a_sharded_bundle_is_served_by_each_machine_from_its_own_shard(
    fleet: Fleet, tmp_path: Path
) -> None:
    push_template(fleet, tmp_path)
    fleet_token = _canary()
    machines = [enroll(fleet, tmp_path / f"m{i}") for i in range(2)]
    user = user_of(fleet, PRINCIPAL)
    with (
        echo_upstream() as upstream,
        node(machines[0], fleet) as one,
        node(machines[1], fleet) as two,
    ):
        assert _sharded(fleet, machines, fleet_token, upstream) == [BUNDLE, f"{BUNDLE}#1"]
        events = room_events(fleet)
        own = [_canary(), _canary()]
        for worker, token in zip((one, two), own, strict=True):
            start_principal(fleet, tmp_path, upstream, worker.machine, PRINCIPAL, token=token)
        shards = []
        for worker, token in zip((one, two), own, strict=True):
            socket = worker.socket(PRINCIPAL)
            eventually(lambda s=socket: fleet_value(s) == fleet_token, 60)
            assert served_token(socket) == f"Bearer {token}"
            # What its daemon relayed: the shard naming its machine, in the launcher's
            # record of the proxy it serves and in the daemon's cache of what it sent.
            mine = shard_for(events, BUNDLE, worker.machine.machine.user_id)
            assert mine is not None
            assert recorded_shard(worker.run_dir, user) == mine
            relayed = cached_ensure(worker.machine.state_dir, user)["fleet_credentials"]
            assert relayed["state_key"] == mine
            shards.append(mine)
        assert sorted(shards) == [BUNDLE, f"{BUNDLE}#1"]
    for text in (one.logs(), two.logs()):
        assert fleet_token not in text
        assert all(value not in text for value in own)


@pytest.mark.slow
def test_a_launcher_refuses_another_machines_shard_and_what_runs_runs_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A subverted daemon, spoken as its launcher hears it: the principal's signed ensure as
    the daemon last sent it, with the fleet bundle's other shard, valid and signed by the
    operator but sealed for another machine."""
    push_template(fleet, tmp_path)
    fleet_token, own_token = _canary(), _canary()
    here, other = (enroll(fleet, tmp_path / n) for n in ("here", "other"))
    user = user_of(fleet, PRINCIPAL)
    with echo_upstream() as upstream, node(here, fleet) as worker:
        _sharded(fleet, [here, other], fleet_token, upstream)
        events = room_events(fleet)
        mine = shard_for(events, BUNDLE, here.machine.user_id)
        theirs = shard_for(events, BUNDLE, other.machine.user_id)
        assert mine is not None
        assert theirs is not None
        assert mine != theirs
        start_principal(fleet, tmp_path, upstream, here, PRINCIPAL, token=own_token)
        socket = worker.socket(PRINCIPAL)
        eventually(lambda: fleet_value(socket) == fleet_token, 60)
        worker.daemon.stop()
        sent = EnsureRequest.from_json(cached_ensure(here.state_dir, user))
        assert sent.fleet_credentials is not None
        assert sent.fleet_credentials.state_key == mine
        client = LauncherClient(worker.launcher.socket)
        # As sent, it is served (nothing to change): the request is the daemon's own.
        asyncio.run(client.call(sent, EnsureResult.from_json))
        mark = len(worker.launcher.lines)
        shard = FleetCredentials.from_json({"state_key": theirs, "content": events[theirs]})
        forged = dataclasses.replace(sent, fleet_credentials=shard)
        with pytest.raises(LauncherRefused) as refused:
            asyncio.run(client.call(forged, EnsureResult.from_json))
        answer = str(refused.value)
        assert answer == (
            f"fleet bundle {theirs} for {user} is not encrypted for this machine; refused"
        )
        line = worker.launcher.lines[worker.launcher.wait_for("request refused", start=mark)]
        assert user in line
        assert f"fleet bundle {theirs} for {user}" in line
        # What runs, runs: the fleet's value from its own shard, and the principal's own.
        assert fleet_value(socket) == fleet_token
        assert served_token(socket) == f"Bearer {own_token}"
        assert recorded_shard(worker.run_dir, user) == mine
    logs = worker.logs()
    for text in (answer, logs):
        assert fleet_token not in text
        assert own_token not in text
