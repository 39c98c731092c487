"""The operator side of tests that publish many credentials events: built and published
through bureau.operator directly (what `bureau credentials provision` calls), so that a
publication costs milliseconds, not a CLI start."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from hub_fleet import Fleet
from machine_helpers import Enrolled

from bureau.operator.credentials import admin_client
from bureau.operator.principal_credentials import (
    CredentialRequest,
    build_event,
    config_room_of,
    machine_public_key,
)
from bureau.operator.signed import sign_as
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import content_digest
from bureau.wire.machine_config import Assignment, MachineConfig
from bureau.wire.service_route import ServiceRoute


class Publisher:
    """Publishes generations of each principal's credentials; remembers which content
    digest carries which generation, so the homeserver's final state can be read back as
    the generation every proxy must end on."""

    def __init__(self, fleet: Fleet, machine: Enrolled, upstream: str) -> None:
        self._creds = fleet.creds
        self._machine = machine.machine.localpart
        admin = admin_client(self._creds)
        self._key = machine_public_key(admin, self._creds, self._machine)
        self._room = config_room_of(admin, self._creds, self._machine)
        # Two headers from two credentials: a proxy holding half of one bundle and half of
        # another would show a token and a generation that disagree.
        self._services = {
            "api": ServiceRoute(
                upstream, {"Authorization": "TOKEN", "X-Generation": "GEN"}, "Bearer"
            )
        }
        self.generation_of: dict[str, str] = {}
        self._lock = threading.Lock()

    def build(self, principal: str, generation: str, now: datetime | None = None) -> dict[str, Any]:
        request = CredentialRequest(
            machine=self._machine,
            principal=self.localpart(principal),
            services=self._services,
            secrets={"TOKEN": Secret(f"{generation}-tok"), "GEN": Secret(generation)},
            services_where="load test",
        )
        event = build_event(request, self._creds, self._key, now)
        content = sign_as(self._creds, rooms.CREDENTIALS, event.principal, event.to_json())
        with self._lock:
            self.generation_of[content_digest(content)] = generation
        return content

    def put(self, principal: str, content: dict[str, Any]) -> None:
        admin_client(self._creds).put_state(
            self._room, rooms.CREDENTIALS, self.state_key(principal), content
        )

    def current(self, principal: str) -> str:
        content = admin_client(self._creds).get_state(
            self._room, rooms.CREDENTIALS, self.state_key(principal)
        )
        return self.generation_of[content_digest(content)]

    def assign(self, principals: list[str]) -> None:
        """The machine's config: these principals (short names), each auto-started."""
        server = self._creds.server_name
        config = MachineConfig(
            tuple(Assignment(names.user_id(self.localpart(p), server), True) for p in principals)
        )
        self.put_config(config.to_json())

    def put_config(self, content: dict[str, Any]) -> None:
        """The machine's config as given, valid or not; each entry that names a principal
        signed by the operator, as `bureau machine assign` signs it."""
        machine = names.user_id(self._machine, self._creds.server_name)
        entries = content.get("principals") if isinstance(content, dict) else None
        if isinstance(entries, list):
            content = {
                **content,
                "principals": [
                    sign_as(self._creds, rooms.MACHINE_CONFIG, machine, e)
                    if isinstance(e, dict) and isinstance(e.get("principal"), str)
                    else e
                    for e in entries
                ],
            }
        admin_client(self._creds).put_state(
            self._room,
            rooms.MACHINE_CONFIG,
            names.state_key(self._machine, self._creds.server_name),
            content,
        )

    def localpart(self, principal: str) -> str:
        return f"{self._creds.fleet}/{principal}"

    def user_id(self, principal: str) -> str:
        return names.user_id(self.localpart(principal), self._creds.server_name)

    def state_key(self, principal: str) -> str:
        return names.state_key(self.localpart(principal), self._creds.server_name)
