"""What the daemon knows of its machine's rooms, from their state events: the machine's
config (its assignments), the credentials events of its config room, and the operator key
statements and fleet bundles (credentials events) of the fleet room. Pure apart from the
log and the fleet profile's file, which the fleet room's ``m.bureau.fleet_profile`` is
materialized into as it arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bureau.errors import InputError
from bureau.profile import materialized as profile_file
from bureau.wire import names, rooms
from bureau.wire.machine_config import MachineConfig, without_auto_start
from bureau.wire.operator_keys import EVENT_TYPE as OPERATOR_KEYS


class RoomView:
    def __init__(self, machine_key: str, run_dir: Path, log: Any) -> None:
        self._machine_key = machine_key  # the machine's state key in its config room
        self._run_dir = run_dir
        self._log = log
        self.config_room = ""
        self.fleet_room = ""
        self.config = MachineConfig()
        self.credentials: dict[str, dict[str, Any]] = {}  # principal -> content as published
        self.statements: list[dict[str, Any]] = []  # operator key statements, relayed
        # The fleet room's credentials events (fleet bundles): state key -> content.
        self.fleet_credentials: dict[str, dict[str, Any]] = {}

    def replace_room(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """A room's whole state, as the homeserver resolved it."""
        if room_id == self.config_room:
            self.credentials = {}
        if room_id == self.fleet_room:
            self.fleet_credentials = {}
        self.apply([(room_id, event) for event in events])

    def apply(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for room_id, event in events:
            kind, key, content = event.get("type"), event.get("state_key"), event.get("content")
            if room_id == self.fleet_room and kind == rooms.FLEET_PROFILE and key == "":
                profile_file.apply(self._run_dir, content, self._log)
            if room_id == self.fleet_room and kind == OPERATOR_KEYS and key == "":
                raw = content.get("statements") if isinstance(content, dict) else None
                self.statements = [s for s in raw if isinstance(s, dict)] if raw else []
            if room_id == self.fleet_room and kind == rooms.CREDENTIALS and isinstance(key, str):
                if isinstance(content, dict) and content:
                    self.fleet_credentials[key] = dict(content)
                else:
                    self.fleet_credentials.pop(key, None)
            if room_id != self.config_room:
                continue
            if kind == rooms.MACHINE_CONFIG and key == self._machine_key:
                self.config = self._read_config(content)
            elif kind == rooms.CREDENTIALS and isinstance(key, str):
                try:
                    principal = names.UserRef.from_state_key(key).user_id
                except names.InvalidName:
                    continue  # not an account's key: no assignment can name it
                if content:
                    self.credentials[principal] = dict(content)
                else:
                    self.credentials.pop(principal, None)

    def _read_config(self, content: object) -> MachineConfig:
        """Keep running what ran: a typo must not stop a fleet, nor hold up the rest of
        it. An invalid assignment keeps that principal's last good one (if any); the
        others, revocations included, apply."""
        try:
            config, invalid = MachineConfig.from_json_each(content)
        except InputError as exc:
            self._log.error("ignoring invalid machine config", problem=str(exc))
            return self.config
        for unstarted in without_auto_start(content):
            self._log.warning(
                "assignment without auto_start: not started (absent means false)",
                principal=unstarted,
            )
        kept = []
        for principal, problem in invalid:
            previous = self.config.find(principal) if principal else None
            if previous is not None and config.find(previous.principal) is None:
                kept.append(previous)
            self._log.error(
                "ignoring an invalid assignment",
                principal=principal,
                problem=str(problem),
                kept_previous=previous is not None,
            )
        return MachineConfig((*config.principals, *kept))
