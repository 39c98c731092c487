"""``bureau machine decommission``: take a machine out of the fleet for good.

In this order, so that a daemon still running on the machine sees its principals' reason
to stop before it sees its own removal: every credentials event in its config room
becomes the tombstone ``{}``; its assignments are removed; its published key becomes
``{}``; it is removed from its config room and the fleet rooms; its account is
deactivated (Synapse's server admin API). Each step is skipped when already done, so a
decommission cut off half way is finished by running it again. The name can be
provisioned again afterwards (provision reactivates the account).
"""

from __future__ import annotations

from collections.abc import Callable

from bureau import names, rooms
from bureau.errors import BureauError
from bureau.machine_config import MachineConfig
from bureau.operator.credentials import admin_client
from bureau.operator.fleet import resolve_fleet_rooms, template_room
from bureau.operator.machines import machine_records
from bureau.schema import OperatorCredentials

REASON = "decommissioned by bureau machine decommission"


def decommission(
    creds: OperatorCredentials, machine_localpart: str, report: Callable[[str], None]
) -> bool:
    """Returns whether anything changed."""
    admin = admin_client(creds)
    server = creds.server_name
    user = names.user_id(machine_localpart, server)
    key = names.state_key(machine_localpart, server)
    fleet_rooms = resolve_fleet_rooms(admin, creds.fleet, server)
    machine_state = admin.room_state_events(fleet_rooms.machine)
    if not any(r.user_id == user for r in machine_records(machine_state, creds.fleet, server)):
        raise BureauError(f"{machine_localpart}: no such machine in {creds.fleet}")
    changed = False
    config_room = admin.resolve_alias(names.room_alias(machine_localpart, server))
    if config_room is not None:
        for event in admin.room_state_events(config_room):
            if event.get("type") == rooms.CREDENTIALS and event.get("content"):
                principal_key = str(event.get("state_key"))
                admin.put_state(config_room, rooms.CREDENTIALS, principal_key, {})
                report(f"credentials of @{principal_key} tombstoned")
                changed = True
        config = admin.get_state(config_room, rooms.MACHINE_CONFIG, key)
        if config and config.get("principals"):
            admin.put_state(config_room, rooms.MACHINE_CONFIG, key, MachineConfig().to_json())
            report("assignments removed")
            changed = True
    published = next(
        (
            e
            for e in machine_state
            if e.get("type") == rooms.MACHINE_KEY and e.get("state_key") == key
        ),
        None,
    )
    if published is not None and published.get("content"):
        admin.put_state(fleet_rooms.machine, rooms.MACHINE_KEY, key, {})
        report("machine key tombstoned")
        changed = True
    templates = template_room(admin, creds.fleet, server)
    for room_id in (config_room, *fleet_rooms.all(), templates):
        if room_id is not None and admin.kick(room_id, user, REASON):
            report(f"removed from {room_id}")
            changed = True
    if admin.is_server_admin(creds.admin_user):
        admin.deactivate_user(user)
        report(f"account {user} deactivated")
    else:
        raise BureauError(
            f"{creds.admin_user} is not a server admin on this homeserver, so {user} could "
            "not be deactivated (everything else is done); make it one (Synapse: "
            "register_new_matrix_user -a, or the admin API) and run this again"
        )
    return changed
