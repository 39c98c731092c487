"""``bureau machine decommission``: take a machine out of the fleet for good, as
upstream's `bureau machine decommission` does (cmd/bureau/machine/decommission.go), plus
the account's deactivation (upstream does that in `bureau machine revoke`; ours does it
here so that the name's old password and tokens are dead at once).

In this order, so that a daemon still running on the machine sees its principals' reason
to stop before it sees its own removal: every credentials event in its config room
becomes the tombstone ``{}``; its ``m.bureau.machine_config`` becomes ``{}``; its
published key becomes ``{}``; in an ops room (upstream's provision makes one) its
reservation and drain become ``{}``; it is removed from its config and ops rooms, the
fleet's rooms and the namespace's; its ``m.bureau.machine_status`` becomes ``{}`` (only
now, so that a daemon still heartbeating cannot write it back); no membership may remain;
its account is deactivated (the homeserver's admin API: bureau.matrix.homeserver_admin).
Upstream's provision refuses a name whose key or status is not ``{}`` or that is still in
a room: after this it accepts it. Each step is skipped when already done, so a
decommission cut off half way is finished by running it again. The name can be
provisioned again afterwards (provision reactivates the account).
"""

from __future__ import annotations

from collections.abc import Callable

from bureau.errors import BureauError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import namespace_room, resolve_fleet_rooms
from bureau.matrix.homeserver_admin import homeserver_admin
from bureau.operator.credentials import admin_client
from bureau.operator.machines import machine_records
from bureau.wire import names, rooms
from bureau.wire.files import OperatorCredentials

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

    def tombstone(room: str, event_type: str, state_key: str, what: str) -> None:
        """``{}`` unless it already is."""
        nonlocal changed
        if admin.get_state(room, event_type, state_key) != {}:
            admin.put_state(room, event_type, state_key, {})
            report(f"{what} tombstoned")
            changed = True

    config_room = admin.resolve_alias(names.room_alias(machine_localpart, server))
    if config_room is not None:
        for event in admin.room_state_events(config_room):
            if event.get("type") == rooms.CREDENTIALS and event.get("content"):
                principal_key = str(event.get("state_key"))
                admin.put_state(config_room, rooms.CREDENTIALS, principal_key, {})
                report(f"credentials of @{principal_key} tombstoned")
                changed = True
        tombstone(config_room, rooms.MACHINE_CONFIG, key, "machine config")
    tombstone(fleet_rooms.machine, rooms.MACHINE_KEY, key, "machine key")
    ops_room = admin.resolve_alias(names.room_alias(f"{machine_localpart}/ops", server))
    if ops_room is not None:
        tombstone(ops_room, rooms.RESERVATION, key, "reservation")
        tombstone(ops_room, rooms.MACHINE_DRAIN, "", "drain")
    namespace_rooms = [namespace_room(admin, creds.fleet, server, r) for r in rooms.NAMESPACE_ROOMS]
    every_room = [
        r for r in (config_room, ops_room, *fleet_rooms.all(), *namespace_rooms) if r is not None
    ]
    for room_id in every_room:
        if admin.kick(room_id, user, REASON):
            report(f"removed from {room_id}")
            changed = True
    tombstone(fleet_rooms.machine, rooms.MACHINE_STATUS, key, "machine status")
    remaining = [r for r in every_room if _membership(admin, r, user) in ("join", "invite")]
    if remaining:
        raise BureauError(
            f"{user} is still in {', '.join(remaining)} after being removed; run this again"
        )
    accounts = homeserver_admin(admin)
    if accounts.is_server_admin(creds.admin_user):
        accounts.deactivate(user)
        report(f"account {user} deactivated")
    else:
        raise BureauError(
            f"{creds.admin_user} is not a server admin on this homeserver, so {user} could "
            "not be deactivated (everything else is done); make it one (Synapse: "
            "register_new_matrix_user -a, or the admin API) and run this again"
        )
    return changed


def _membership(admin: MatrixHTTP, room_id: str, user: str) -> str | None:
    content = admin.get_state(room_id, "m.room.member", user)
    membership = (content or {}).get("membership")
    return membership if isinstance(membership, str) else None
