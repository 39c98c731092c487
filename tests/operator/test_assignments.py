"""`bureau machine assign` and `unassign` against the real Synapse: the one entry changes;
every other entry (valid or not) and every field this version does not know, at the top
and in entries, is published back exactly as it was."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from conftest import Fleet, one_line_error, run
from machine_helpers import assign, enroll

from bureau.operator import credentials
from bureau.operator.signed import sign_as
from bureau.wire import names, rooms


def _config_room(fleet: Fleet, machine_localpart: str) -> tuple[Any, str, str]:
    admin = credentials.admin_client(fleet.creds)
    server = fleet.hub.server_name
    room = admin.resolve_alias(names.room_alias(machine_localpart, server))
    assert room is not None
    return admin, room, names.state_key(machine_localpart, server)


def test_assign_and_unassign_keep_what_they_do_not_know(fleet: Fleet, tmp_path: Path) -> None:
    enrolled = enroll(fleet, tmp_path)
    machine = enrolled.machine
    admin, room, key = _config_room(fleet, machine.localpart)
    user = f"@{fleet.name}/agent/%s:{fleet.hub.server_name}"
    machine_user = names.user_id(machine.localpart, fleet.hub.server_name)

    def signed(entry: dict[str, Any]) -> dict[str, Any]:
        """The entry as `bureau machine assign` writes it: signed about this machine."""
        return sign_as(fleet.creds, rooms.MACHINE_CONFIG, machine_user, entry)

    theirs = {
        "principal": user % "theirs",
        "auto_start": True,
        "template": "bureau/template:agent-base",
        "restart_policy": "always",
        "payload": {"nested": ["kept", 1]},
    }
    broken = {"principal": user % "broken", "auto_start": "yes"}
    original = {
        "bureau_version": "0.9.0",
        "default_policy": {"anything": [True]},
        "principals": [theirs, broken],
    }
    admin.put_state(room, rooms.MACHINE_CONFIG, key, copy.deepcopy(original))

    assign(fleet, enrolled, "agent/mine")
    after = admin.get_state(room, rooms.MACHINE_CONFIG, key)
    assert after == {
        **original,
        "principals": [theirs, broken, signed({"principal": user % "mine", "auto_start": True})],
    }

    # Re-assigning one that carries fields we know and fields we don't changes only
    # auto_start.
    assign(fleet, enrolled, "agent/theirs", "--no-auto-start")
    after = admin.get_state(room, rooms.MACHINE_CONFIG, key)
    assert after is not None
    assert after["principals"][0] == signed({**theirs, "auto_start": False})

    # Unassigning works even for an entry this version cannot read.
    unassigned = run(
        "bureau",
        "machine",
        "unassign",
        machine.short_name,
        "--principal",
        "agent/broken",
        "--credential-file",
        str(fleet.credential_file),
    )
    assert unassigned.returncode == 0, unassigned.stderr
    after = admin.get_state(room, rooms.MACHINE_CONFIG, key)
    assert after == {
        **original,
        "principals": [
            signed({**theirs, "auto_start": False}),
            signed({"principal": user % "mine", "auto_start": True}),
        ],
    }


def _assign(fleet: Fleet, machine: str, *flags: str) -> Any:
    """`bureau machine assign` of agent/x, as run."""
    cred = str(fleet.credential_file)
    return run("bureau", "machine", "assign", machine, "--principal", "agent/x", *flags,
               "--credential-file", cred)  # fmt: skip


def test_assign_with_a_template_and_a_restart_policy(fleet: Fleet, tmp_path: Path) -> None:
    enrolled = enroll(fleet, tmp_path)
    admin, room, key = _config_room(fleet, enrolled.machine.localpart)
    ns = fleet.name.split("/")[0]
    flags = ("--template", "agent-base", "--restart-policy", "on-failure", "--no-auto-start")
    assign(fleet, enrolled, "agent/templated", *flags)
    after = admin.get_state(room, rooms.MACHINE_CONFIG, key)
    machine_user = names.user_id(enrolled.machine.localpart, fleet.hub.server_name)
    entry = {
        "principal": f"@{fleet.name}/agent/templated:{fleet.hub.server_name}",
        "auto_start": False,
        "template": f"{ns}/template:agent-base",
        "restart_policy": "on-failure",
    }
    # Signed about this machine by the operator (wire/signing.py).
    assert after == {
        "principals": [sign_as(fleet.creds, rooms.MACHINE_CONFIG, machine_user, entry)]
    }
    bad = _assign(fleet, enrolled.machine.short_name, "--template", "No Such:thing")
    assert bad.returncode == 2
    assert one_line_error(bad).startswith("bureau: --template: ")
    missing = _assign(fleet, enrolled.machine.short_name, "--template", "no-such-template")
    assert missing.returncode == 1
    assert "no-such-template" in one_line_error(missing)
    assert "not found" in one_line_error(missing)
    final = admin.get_state(room, rooms.MACHINE_CONFIG, key)
    assert final is not None
    assert len(final["principals"]) == 1
