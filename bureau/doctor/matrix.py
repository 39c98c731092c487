"""`bureau matrix doctor`: the operator's view of the fleet on its homeserver. The admin
session is valid and a server admin (decommissioning needs it); the namespace's space and
rooms (upstream's system, template, pipeline, artifact and dev rooms included), the
fleet's rooms and every machine's config room exist, the admin is joined, the power levels
are upstream's (WIRE.md "Rooms"), ``m.bureau.dev_team`` is published, and the credential
file records the namespace's rooms as upstream's tools read them. A hub set up by
upstream's tools passes as it is: what is checked is what upstream sets, never our own
additions. Fixes: a fresh admin login, missing rooms, the dev team and the credential
file (through `bureau matrix setup`), joins, and power levels put back."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bureau.doctor.findings import Check, Finding, Report, examine, fail, ok
from bureau.errors import MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.homeserver_admin import homeserver_admin
from bureau.operator import credentials
from bureau.operator.machines import DECOMMISSIONED, machine_records
from bureau.operator.setup import dev_team_ok, room_specs, setup
from bureau.wire import names, rooms
from bureau.wire.files import NAMESPACE_ROOM_KEYS, OperatorCredentials


class MatrixChecks:
    def __init__(self, credential_file: Path, fleet: str | None = None) -> None:
        self.credential_file = credential_file
        self.fleet = fleet
        self.creds: OperatorCredentials = credentials.load(credential_file, fleet)

    def _admin(self) -> MatrixHTTP:
        return credentials.admin_client(self.creds)

    def _setup(self) -> None:
        setup(
            homeserver=self.creds.homeserver_url,
            server_name=self.creds.server_name,
            registration_token=self.creds.registration_token,
            credential_file=self.credential_file,
            fleet=self.creds.fleet,
            report=lambda _line: None,
        )
        self.creds = credentials.load(self.credential_file, self.fleet)

    def session(self) -> Iterator[Finding]:
        name = f"admin session {self.creds.admin_user}"
        try:
            user, _ = self._admin().whoami()
        except MatrixError as exc:
            yield fail(name, str(exc), "log in again with bureau matrix setup", self._setup)
            return
        if user != self.creds.admin_user:
            yield fail(name, f"the token is {user}'s", "log in again", self._setup)
            return
        yield ok(name)
        if homeserver_admin(self._admin()).is_server_admin(user):
            yield ok("server admin", "machines can be decommissioned")
        else:
            yield fail(
                "server admin",
                f"{user} is not a server admin; decommission cannot deactivate accounts",
                "Synapse: register_new_matrix_user -a, or the admin API",
            )

    def fleet_rooms(self) -> Iterator[Finding]:
        admin, server = self._admin(), self.creds.server_name
        dev_team = rooms.dev_team_content(self.creds.fleet, server)
        for spec in room_specs(self.creds.fleet):
            alias = names.room_alias(spec.alias_localpart, server)
            room_id = yield from self._room(admin, alias, spec.power_levels(self.creds.admin_user))
            if room_id is None:
                continue
            published = admin.get_state(room_id, rooms.DEV_TEAM, "")
            name = f"{rooms.DEV_TEAM} in {alias}"
            if dev_team_ok(published, dev_team, exact=spec.exact_dev_team):
                yield ok(name, str((published or {}).get("room")))
            else:
                yield fail(
                    name,
                    f"is {published}, not {dev_team}" if published else "missing",
                    "bureau matrix setup publishes it",
                    self._setup,
                )

    def recorded_rooms(self) -> Iterator[Finding]:
        """The namespace's rooms as upstream's tools read them from the file (`bureau
        matrix user create --operator` needs every one)."""
        admin, server = self._admin(), self.creds.server_name
        name = f"room IDs in {self.credential_file}"
        wrong = []
        recorded = {"space": self.creds.space_room, **self.creds.namespace_rooms}
        for role in ("space", *rooms.NAMESPACE_ROOMS):
            localpart = (
                names.space_alias_localpart(self.creds.fleet)
                if role == "space"
                else rooms.namespace_room_localpart(self.creds.fleet, role)
            )
            actual = admin.resolve_alias(names.room_alias(localpart, server))
            if actual is not None and recorded.get(role) != actual:
                key = "MATRIX_SPACE_ROOM" if role == "space" else NAMESPACE_ROOM_KEYS[role]
                wrong.append(f"{key} is {recorded.get(role) or 'missing'}, not {actual}")
        if wrong:
            detail = "; ".join(wrong[:2]) + (f" (+{len(wrong) - 2} more)" if len(wrong) > 2 else "")
            yield fail(name, detail, "bureau matrix setup rewrites them", self._setup)
        else:
            yield ok(name, "as upstream's tools read them")

    def config_rooms(self) -> Iterator[Finding]:
        admin, server, fleet = self._admin(), self.creds.server_name, self.creds.fleet
        machine_room = admin.resolve_alias(
            names.room_alias(names.machine_room_localpart(fleet), server)
        )
        if machine_room is None:
            return  # fleet_rooms says so
        for record in machine_records(admin.room_state_events(machine_room), fleet, server):
            if record.state == DECOMMISSIONED:
                continue
            alias = names.room_alias(record.name, server)
            expected = rooms.config_room_power_levels(self.creds.admin_user, record.user_id)
            yield from self._room(admin, alias, expected)

    def _room(
        self, admin: MatrixHTTP, alias: str, expected: dict[str, Any]
    ) -> Generator[Finding, None, str | None]:
        """Its findings; returns the room's ID when it exists and the admin is in it."""
        room_id = admin.resolve_alias(alias)
        if room_id is None:
            yield fail(f"room {alias}", "missing", "bureau matrix setup creates it", self._setup)
            return None
        member = self._membership(admin, room_id)
        if member != "join":
            yield fail(
                f"room {alias}",
                f"the admin is not joined ({member or 'never was'})",
                "join it",
                partial(admin.join, room_id),
            )
            return None
        yield ok(f"room {alias}", room_id)
        actual = admin.get_state(room_id, "m.room.power_levels", "") or {}
        drift = rooms.power_level_drift(actual, expected)
        if drift:
            merged = rooms.with_power_levels(actual, expected)
            yield fail(
                f"power levels of {alias}",
                "; ".join(drift[:3]) + (f" (+{len(drift) - 3} more)" if len(drift) > 3 else ""),
                "put upstream's levels back",
                partial(admin.put_state, room_id, "m.room.power_levels", "", merged),
            )
        else:
            yield ok(f"power levels of {alias}", "as upstream's")
        return room_id

    def _membership(self, admin: MatrixHTTP, room_id: str) -> str | None:
        try:
            content = admin.get_state(room_id, "m.room.member", self.creds.admin_user)
        except MatrixError:
            return None
        return str((content or {}).get("membership")) if content else None


def matrix_doctor(credential_file: Path, apply_fixes: bool, fleet: str | None = None) -> Report:
    checks = MatrixChecks(credential_file, fleet)
    order: list[Check] = [
        checks.session,
        checks.fleet_rooms,
        checks.recorded_rooms,
        checks.config_rooms,
    ]
    return examine(order, apply_fixes)
