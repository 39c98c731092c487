"""``m.bureau.machine_config`` (WIRE.md): which principals a machine runs. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bureau import names
from bureau.errors import InputError


@dataclass(frozen=True)
class Assignment:
    principal: str
    auto_start: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, obj: object, where: str) -> Assignment:
        if not isinstance(obj, dict):
            raise InputError(where, None, "expected an object")
        principal = obj.get("principal")
        if not isinstance(principal, str):
            raise InputError(where, "principal", "expected a user ID")
        try:
            names.validate_localpart(names.parse_user_id(principal)[0])
        except names.InvalidName as exc:
            raise InputError(where, "principal", str(exc)) from None
        auto_start = obj.get("auto_start", True)
        if not isinstance(auto_start, bool):
            raise InputError(where, "auto_start", "expected true or false")
        labels = obj.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InputError(where, "labels", "expected an object of string -> string")
        command = obj.get("command")
        if command is not None and (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            raise InputError(where, "command", "expected a non-empty list of strings")
        return cls(principal, auto_start, dict(labels), tuple(command) if command else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"principal": self.principal, "auto_start": self.auto_start}
        if self.labels:
            out["labels"] = self.labels
        if self.command is not None:
            out["command"] = list(self.command)
        return out


@dataclass(frozen=True)
class MachineConfig:
    principals: tuple[Assignment, ...] = ()

    @classmethod
    def from_json(cls, obj: object, where: str = "m.bureau.machine_config") -> MachineConfig:
        if obj is None or obj == {}:
            return cls()
        if not isinstance(obj, dict) or not isinstance(obj.get("principals", []), list):
            raise InputError(where, "principals", "expected a list")
        items = [
            Assignment.from_json(item, f"{where}: principals[{i}]")
            for i, item in enumerate(obj.get("principals", []))
        ]
        return cls(tuple(items))

    @classmethod
    def from_json_each(
        cls, obj: object, where: str = "m.bureau.machine_config"
    ) -> tuple[MachineConfig, list[tuple[str | None, InputError]]]:
        """The valid assignments, and for each invalid one its principal (when it names
        one) and the problem: one bad entry must not stand in for the whole machine. An
        event that is not a config at all raises InputError."""
        if obj is None or obj == {}:
            return cls(), []
        if not isinstance(obj, dict) or not isinstance(obj.get("principals", []), list):
            raise InputError(where, "principals", "expected a list")
        valid, invalid = [], []
        for i, item in enumerate(obj.get("principals", [])):
            try:
                valid.append(Assignment.from_json(item, f"{where}: principals[{i}]"))
            except InputError as exc:
                named = item.get("principal") if isinstance(item, dict) else None
                invalid.append((named if isinstance(named, str) else None, exc))
        return cls(tuple(valid)), invalid

    def to_json(self) -> dict[str, Any]:
        return {"principals": [a.to_json() for a in self.principals]}

    def with_assignment(self, assignment: Assignment) -> MachineConfig:
        """Replace the principal's assignment in place, or append it."""
        if self.find(assignment.principal) is None:
            return MachineConfig((*self.principals, assignment))
        return MachineConfig(
            tuple(assignment if a.principal == assignment.principal else a for a in self.principals)
        )

    def without(self, principal: str) -> MachineConfig:
        return MachineConfig(tuple(a for a in self.principals if a.principal != principal))

    def find(self, principal: str) -> Assignment | None:
        return next((a for a in self.principals if a.principal == principal), None)
