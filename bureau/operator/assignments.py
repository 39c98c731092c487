"""``bureau machine assign`` and ``unassign``: read-modify-write of the machine's
``m.bureau.machine_config``. Concurrent writers race (last write wins): Matrix offers no
compare-and-set on state."""

from __future__ import annotations

from dataclasses import replace

from bureau import names, rooms
from bureau.machine_config import Assignment, MachineConfig
from bureau.operator.credentials import admin_client
from bureau.operator.principal_credentials import config_room_of
from bureau.schema import OperatorCredentials


def _update(
    creds: OperatorCredentials, machine: str, change: str, principal: str, auto_start: bool
) -> bool:
    admin = admin_client(creds)
    room = config_room_of(admin, creds, machine)
    key = names.state_key(machine, creds.server_name)
    current = MachineConfig.from_json(admin.get_state(room, rooms.MACHINE_CONFIG, key))
    user = names.user_id(principal, creds.server_name)
    if change == "assign":
        existing = current.find(user)
        assignment = (
            replace(existing, auto_start=auto_start) if existing else Assignment(user, auto_start)
        )
        updated = current.with_assignment(assignment)
    else:
        updated = current.without(user)
    if updated.to_json() == current.to_json():
        return False
    admin.put_state(room, rooms.MACHINE_CONFIG, key, updated.to_json())
    return True


def assign(creds: OperatorCredentials, machine: str, principal: str, auto_start: bool) -> bool:
    return _update(creds, machine, "assign", principal, auto_start)


def unassign(creds: OperatorCredentials, machine: str, principal: str) -> bool:
    return _update(creds, machine, "unassign", principal, auto_start=False)
