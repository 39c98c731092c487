"""Fleet bundles against the real Synapse, machines enrolled by real first boots: provision
to chosen machines (each opens it with its own age identity through the age CLI, a
machine outside ``encrypted_for`` cannot), shards and their tombstones, reseal adding a new
machine and dropping a decommissioned one (which cannot open what was resealed), a dry
run that writes nothing and shows no value, and --watch resealing a machine that enrolls.
Canaries are planted in every secret and looked for in every output."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, Fleet, one_line_error
from fleet_helpers import age_open, bureau_run, machines_of, room_events
from fleet_helpers import escrow as new_escrow
from machine_helpers import Enrolled, boot, enroll, eventually, provision

from bureau.operator import credentials
from bureau.operator.fleet_bundles import FleetBundleRequest, provision_fleet_bundle
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import ESCROW_RECIPIENT
from bureau.wire.fleet_bundle import shard_for, signing_target
from bureau.wire.signing import verify


def _canary() -> str:
    return f"fleetcanary-{secrets.token_hex(8)}"


def _provision(
    fleet: Fleet, name: str, machines: str, escrow: str, secret_lines: str
) -> subprocess.CompletedProcess[str]:
    return bureau_run(fleet, "credentials", "provision", "--fleet-bundle", name,
                      "--machines", machines, "--escrow-recipient", escrow,
                      stdin=secret_lines)  # fmt: skip


def _reseal(
    fleet: Fleet, identity: Path, *more: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return bureau_run(fleet, "credentials", "reseal", "--escrow-identity", identity, *more,
                      stdin=stdin)  # fmt: skip


def _opened_by(fleet: Fleet, name: str, machine: Enrolled) -> dict[str, str] | None:
    events = room_events(fleet)
    key = shard_for(events, name, machine.machine.user_id)
    return None if key is None else age_open(events[key], machine.plain_key)


def _state_ms(fleet: Fleet, room_localpart: str, kind: str, key: str) -> int:
    admin = credentials.admin_client(fleet.creds)
    room = admin.resolve_alias(names.room_alias(room_localpart, fleet.hub.server_name))
    assert room is not None
    (event,) = [
        e for e in admin.room_state_events(room) if e["type"] == kind and e["state_key"] == key
    ]
    return int(event["origin_server_ts"])


def _published_ms(fleet: Fleet, name: str) -> int:
    return _state_ms(fleet, names.fleet_room_localpart(fleet.name), rooms.CREDENTIALS, name)


def _key_ms(fleet: Fleet, machine: Enrolled) -> int:
    key = names.state_key(machine.machine.localpart, fleet.hub.server_name)
    return _state_ms(fleet, names.machine_room_localpart(fleet.name), rooms.MACHINE_KEY, key)


def _no_canary(canary: str, *outputs: str) -> None:
    for output in outputs:
        assert canary not in output


@pytest.mark.slow
def test_provision_to_two_machines_each_opens_it_and_a_third_cannot(
    fleet: Fleet, tmp_path: Path
) -> None:
    one, two, other = (enroll(fleet, tmp_path / n) for n in ("one", "two", "other"))
    _, escrow = new_escrow(tmp_path)
    canary = _canary()
    chosen = f"{one.machine.short_name},{two.machine.short_name}"
    result = _provision(fleet, "nix-cache", chosen, escrow, f"NIX_TOKEN={canary}\n")
    assert result.returncode == 0, result.stderr
    assert "provisioned fleet bundle nix-cache (NIX_TOKEN) for 2 machines" in result.stdout
    _no_canary(canary, result.stdout, result.stderr)

    events = room_events(fleet)
    content = events["nix-cache"]
    assert content["principal"] == ""
    assert content["encrypted_for"] == [
        *sorted([one.machine.user_id, two.machine.user_id]),
        ESCROW_RECIPIENT,
    ]
    assert content["machines"] == "listed"
    assert content["escrow_recipient"] == escrow
    assert "shard" not in content
    signing_key = fleet.creds.signing_key
    assert signing_key is not None
    target = signing_target(
        names.fleet_room_localpart(fleet.name), fleet.hub.server_name, "nix-cache"
    )
    trusted = {signing_key.key_id: signing_key.public}
    verify(content, rooms.CREDENTIALS, target, trusted, "nix-cache")
    for machine in (one, two):
        opened = age_open(content, machine.plain_key)
        assert opened is not None
        assert opened["NIX_TOKEN"] == canary
        assert opened["bureau.binding"].startswith("sha256:")
    assert age_open(content, other.plain_key) is None
    assert _opened_by(fleet, "nix-cache", other) is None

    listed = bureau_run(fleet, "credentials", "list", "--fleet-bundles")
    assert listed.returncode == 0, listed.stderr
    assert "nix-cache: keys NIX_TOKEN; no services; machines listed: 2 in 1 shard" in listed.stdout
    _no_canary(canary, listed.stdout, listed.stderr)


@pytest.mark.slow
def test_shards_each_machine_finds_its_own_and_a_smaller_fleet_tombstones_the_rest(
    fleet: Fleet, tmp_path: Path
) -> None:
    machines = [enroll(fleet, tmp_path / f"m{i}") for i in range(3)]
    _, escrow = new_escrow(tmp_path)
    canary = _canary()
    request = FleetBundleRequest(
        name="wide",
        machines=None,
        secrets={"TOKEN": Secret(canary)},
        services={},
        services_where="--services",
        escrow_recipient=escrow,
    )
    # One machine a shard: three events, as an oversized fleet gets.
    keys = provision_fleet_bundle(fleet.creds, request, max_recipients=1)
    assert keys == ["wide", "wide#1", "wide#2"]
    events = room_events(fleet)
    seen = []
    for index, key in enumerate(keys):
        assert events[key]["shard"] == {"index": index, "count": 3}
        assert events[key]["encrypted_for"][-1] == ESCROW_RECIPIENT
        seen += machines_of(events[key])
    assert sorted(seen) == sorted(m.machine.user_id for m in machines)
    for machine in machines:
        opened = _opened_by(fleet, "wide", machine)
        assert opened is not None
        assert opened["TOKEN"] == canary

    # Again for the first machine alone: one event, and the shards beyond it tombstoned.
    first = machines[0]
    smaller = FleetBundleRequest(**{**request.__dict__, "machines": (first.machine.localpart,)})
    assert provision_fleet_bundle(fleet.creds, smaller) == ["wide"]
    events = room_events(fleet)
    assert events["wide#1"] == {}
    assert events["wide#2"] == {}
    assert "shard" not in events["wide"]
    assert machines_of(events["wide"]) == [first.machine.user_id]
    assert _opened_by(fleet, "wide", machines[1]) is None


@pytest.mark.slow
def test_reseal_adds_a_new_machine_and_drops_a_decommissioned_one(
    fleet: Fleet, tmp_path: Path
) -> None:
    stays, leaves = enroll(fleet, tmp_path / "stays"), enroll(fleet, tmp_path / "leaves")
    identity, escrow = new_escrow(tmp_path)
    canary = _canary()
    assert _provision(fleet, "everyone", "all", escrow, f"TOKEN={canary}\n").returncode == 0
    listed = f"{stays.machine.short_name},{leaves.machine.short_name}"
    assert _provision(fleet, "chosen", listed, escrow, f"TOKEN={canary}-2\n").returncode == 0
    assert _opened_by(fleet, "everyone", leaves) is not None
    before = room_events(fleet)

    joins = enroll(fleet, tmp_path / "joins")
    gone = bureau_run(fleet, "machine", "decommission", leaves.machine.short_name)
    assert gone.returncode == 0, gone.stderr

    dry = _reseal(fleet, identity, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    joined, left = joins.machine.short_name, leaves.machine.short_name
    assert f"would: everyone: +{joined} -{left} 2 machines, shards 1 -> 1" in dry.stdout
    assert f"would: chosen: -{left} 1 machines, shards 1 -> 1" in dry.stdout
    assert "would reseal 2, 0 failed" in dry.stdout
    _no_canary(canary, dry.stdout, dry.stderr)
    assert room_events(fleet) == before  # a dry run writes nothing

    done = _reseal(fleet, identity)
    assert done.returncode == 0, done.stderr
    _no_canary(canary, done.stdout, done.stderr)
    events = room_events(fleet)
    assert sorted(machines_of(events["everyone"])) == sorted(
        [stays.machine.user_id, joins.machine.user_id]
    )
    assert machines_of(events["chosen"]) == [stays.machine.user_id]  # listed: no newcomer
    for name, value in (("everyone", canary), ("chosen", f"{canary}-2")):
        opened = _opened_by(fleet, name, stays)
        assert opened is not None
        assert opened["TOKEN"] == value
        # The decommissioned machine's identity opens neither resealed bundle.
        assert age_open(events[name], leaves.plain_key) is None
    assert (_opened_by(fleet, "everyone", joins) or {}).get("TOKEN") == canary
    assert _opened_by(fleet, "chosen", joins) is None

    # Nothing changed since: nothing is written.
    again = _reseal(fleet, identity)
    assert again.returncode == 0, again.stderr
    assert "everyone: unchanged (2 machines, 1 shards)" in again.stdout
    assert room_events(fleet) == events


@pytest.mark.slow
def test_watch_reseals_a_machine_within_seconds_of_its_first_boot(
    fleet: Fleet, tmp_path: Path
) -> None:
    identity, escrow = new_escrow(tmp_path)
    canary = _canary()
    assert _provision(fleet, "fleetwide", "all", escrow, f"TOKEN={canary}\n").returncode == 0
    out = tmp_path / "watch.out"
    with out.open("w") as sink:
        watcher = subprocess.Popen(
            [
                str(BIN / "bureau"),
                "credentials",
                "reseal",
                "--watch",
                "--escrow-identity",
                str(identity),
                "--credential-file",
                str(fleet.credential_file),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: "reseal: 1 bundles" in out.read_text())
        machine = enroll(fleet, tmp_path / "newcomer")
        booted = time.monotonic()
        eventually(lambda: _opened_by(fleet, "fleetwide", machine), seconds=10)
        # By the hub's clock: from the machine's key (the end of its first boot) to the
        # bundle resealed for it.
        took = _published_ms(fleet, "fleetwide") - _key_ms(fleet, machine)
        print(f"\nresealed {took} ms after the machine published its key")
        assert 0 < took < 10_000
        assert time.monotonic() - booted < 10
        assert (_opened_by(fleet, "fleetwide", machine) or {}).get("TOKEN") == canary
    finally:
        watcher.send_signal(signal.SIGTERM)
        code = watcher.wait(timeout=30)
    log = out.read_text()
    assert code == 0, log
    assert "reseal --watch: stopped by SIGTERM" in log
    assert f"fleetwide: +{machine.machine.short_name}" in log
    assert "Traceback" not in log
    _no_canary(canary, log)


@pytest.mark.slow
def test_bad_input_is_one_line_naming_the_flag(fleet: Fleet, tmp_path: Path) -> None:
    identity, escrow = new_escrow(tmp_path)
    bundle = ("--fleet-bundle", "x")
    cases: list[tuple[tuple[str, ...], str]] = [
        ((*bundle, "--machine", "machine/a", "--machines", "all"), "--fleet-bundle"),
        ((*bundle, "--escrow-recipient", escrow), "--machines"),
        ((*bundle, "--machines", "all"), "--escrow-recipient"),
        (("--fleet-bundle", "a#1", "--machines", "all"), "--fleet-bundle"),
        ((*bundle, "--machines", "a,,b"), "--machines"),
        (("--machines", "all", "--principal", "agent/a"), "--machines"),
        (("--principal", "agent/a", "--services", "s.json"), "--machine"),
        ((*bundle, "--machines", "all", "--escrow-recipient", "age1nope"), "--escrow-recipient"),
        ((*bundle, "--machines", "machine/nosuch", "--escrow-recipient", escrow), "--machines"),
    ]
    matrix = (*bundle, "--machines", "all", "--escrow-recipient", escrow)
    cases.append((matrix, "MATRIX_TOKEN"))
    for flags, flag in cases:
        token = "MATRIX_TOKEN" if flags is matrix else "TOKEN"
        result = bureau_run(
            fleet, "credentials", "provision", *flags, stdin=f"{token}=fleetcanary-bad\n"
        )
        assert result.returncode != 0, flags
        line = one_line_error(result)
        assert flag in line, (flags, line)
        assert "fleetcanary-bad" not in line

    loose = tmp_path / "loose.txt"
    loose.write_text(identity.read_text())
    loose.chmod(0o644)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("# not a key\nAGE-SECRET-KEY-1NOPE\n")
    garbage.chmod(0o600)
    for more, where in [
        (("--escrow-identity", str(loose)), str(loose)),
        (("--escrow-identity", str(garbage)), str(garbage)),
        (("--escrow-identity", str(identity), "--watch", "--dry-run"), "--dry-run"),
    ]:
        result = bureau_run(fleet, "credentials", "reseal", *more)
        assert result.returncode != 0, more
        assert where in one_line_error(result), more
    from_stdin = _reseal(fleet, Path("-"), stdin="AGE-SECRET-KEY-1NOPE\n")
    assert "--escrow-identity (stdin)" in one_line_error(from_stdin)
    listed = bureau_run(fleet, "credentials", "list")
    assert "--machine" in one_line_error(listed)


@pytest.mark.slow
def test_reseal_with_another_escrow_identity_names_the_bundle(fleet: Fleet, tmp_path: Path) -> None:
    machine = enroll(fleet, tmp_path / "m")
    _, escrow = new_escrow(tmp_path / "right")
    wrong, _ = new_escrow(tmp_path / "wrong")
    canary = _canary()
    result = _provision(fleet, "kept", machine.machine.short_name, escrow, f"TOKEN={canary}\n")
    assert result.returncode == 0, result.stderr
    before = room_events(fleet)
    refused = _reseal(fleet, wrong)
    assert refused.returncode == 1
    assert (
        "kept: not resealed: kept: escrow_recipient: names another escrow recipient than "
        "this escrow identity's" in refused.stdout
    )
    # A machine's identity opens the bundle too, and is refused all the same.
    by_machine = _reseal(fleet, machine.plain_key)
    assert by_machine.returncode == 1
    assert "names another escrow recipient" in by_machine.stdout
    assert "not resealed: kept" in one_line_error(refused)
    _no_canary(canary, refused.stdout, refused.stderr)
    assert room_events(fleet) == before


@pytest.mark.slow
def test_a_machine_enrolled_again_under_its_name_is_resealed_to_its_new_key(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Decommissioned and enrolled afresh between two reseals: the same user ID in
    encrypted_for, another key; reseal tells them apart (sealed_for) and seals anew."""
    first = enroll(fleet, tmp_path / "first")
    identity, escrow = new_escrow(tmp_path)
    canary = _canary()
    assert _provision(fleet, "kept", "all", escrow, f"TOKEN={canary}\n").returncode == 0
    name = first.machine.short_name
    assert bureau_run(fleet, "machine", "decommission", name).returncode == 0
    again = provision(fleet, tmp_path / "again", name)
    assert boot(again, "--key-storage", "plain").returncode == 0
    second = Enrolled(again)
    assert second.public_key != first.public_key
    assert _opened_by(fleet, "kept", second) is None  # sealed to the old key still

    result = _reseal(fleet, identity)
    assert result.returncode == 0, result.stderr
    assert "kept: machine keys changed 1 machines, shards 1 -> 1" in result.stdout
    _no_canary(canary, result.stdout, result.stderr)
    assert (_opened_by(fleet, "kept", second) or {}).get("TOKEN") == canary
    assert age_open(room_events(fleet)["kept"], first.plain_key) is None
