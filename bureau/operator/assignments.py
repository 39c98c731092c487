"""``bureau machine assign`` and ``unassign``: read-modify-write of the machine's
``m.bureau.machine_config``. Only the one entry changes; every other entry and every field
this version does not know goes back byte for byte (machine_config.with_entry). Concurrent
writers race (last write wins): Matrix offers no compare-and-set on state."""

from __future__ import annotations

from typing import Any

from bureau.errors import BureauError, InputError
from bureau.operator.credentials import admin_client
from bureau.operator.principal_credentials import config_room_of
from bureau.operator.signed import sign_as
from bureau.wire import names, rooms
from bureau.wire.files import OperatorCredentials
from bureau.wire.machine_config import Assignment, with_entry, without_entry


def _update(creds: OperatorCredentials, machine: str, change: Any) -> bool:
    admin = admin_client(creds)
    room = config_room_of(admin, creds, machine)
    key = names.state_key(machine, creds.server_name)
    current = admin.get_state(room, rooms.MACHINE_CONFIG, key) or {}
    updated = change(current)
    if updated == current:
        return False
    admin.put_state(room, rooms.MACHINE_CONFIG, key, updated)
    return True


def assign(
    creds: OperatorCredentials,
    machine: str,
    principal: str,
    auto_start: bool,
    **overrides: Any,
) -> bool:
    """``overrides``: Assignment fields to set (template, restart_policy, ...)."""
    user = names.user_id(principal, creds.server_name)
    machine_user = names.user_id(machine, creds.server_name)
    # Checked through the typed form, written as the fields alone.
    fields = Assignment(user, auto_start, **overrides).to_json()
    del fields["principal"]

    def change(content: object) -> dict[str, Any]:
        updated = with_entry(content, user, fields)
        entry = next(
            e for e in updated["principals"] if isinstance(e, dict) and e.get("principal") == user
        )
        try:
            Assignment.from_json(entry, f"the assignment of {user}")
        except InputError as exc:
            raise BureauError(f"{exc}; unassign it first, then assign it again") from None
        # Signed about this machine: the launcher runs it here only (wire/signing.py).
        mine = sign_as(creds, rooms.MACHINE_CONFIG, machine_user, entry)
        return {
            **updated,
            "principals": [mine if e is entry else e for e in updated["principals"]],
        }

    return _update(creds, machine, change)


def unassign(creds: OperatorCredentials, machine: str, principal: str) -> bool:
    user = names.user_id(principal, creds.server_name)
    return _update(creds, machine, lambda content: without_entry(content, user))
