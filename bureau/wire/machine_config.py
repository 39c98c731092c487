"""``m.bureau.machine_config`` (WIRE.md, PRINCIPALS.md): which principals a machine runs,
from which template, with which overrides. Pure.

Fields this version does not know (upstream's newer ones, an operator's own) are kept:
an Assignment carries them in ``extra`` and writes them back, and the operator's
read-modify-write (``with_entry``/``without_entry``) edits the event's JSON in place, so
that every entry and field it does not change goes back byte for byte."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError
from bureau.wire import names

RESTART_POLICIES = ("always", "on-failure", "never")
_KNOWN = (
    "principal",
    "template",
    "auto_start",
    "labels",
    "command",
    "command_override",
    "extra_environment_variables",
    "extra_inherits",
    "restart_policy",
)


def _strings(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise InputError(where, key, "expected a list of strings")
    return tuple(value)


def _string_map(obj: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = obj.get(key) if obj.get(key) is not None else {}  # Go writes a nil map as null
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InputError(where, key, "expected an object of string -> string")
    return dict(value)


@dataclass(frozen=True)
class Assignment:
    principal: str
    auto_start: bool = False  # absent means false, as upstream
    labels: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None  # OURS, before templates; command_override wins
    template: str | None = None  # a template ref, e.g. bureau/template:agent-base
    command_override: tuple[str, ...] | None = None
    extra_environment_variables: dict[str, str] = field(default_factory=dict)
    extra_inherits: tuple[str, ...] = ()
    restart_policy: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know
    # The entry as read, for the launcher to check its operator signature (wire/signing.py).
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

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
        auto_start = obj.get("auto_start", False)
        if not isinstance(auto_start, bool):
            raise InputError(where, "auto_start", "expected true or false")
        command = _strings(obj, "command", where)
        override = _strings(obj, "command_override", where)
        for key, argv in (("command", command), ("command_override", override)):
            if argv is not None and not argv:
                raise InputError(where, key, "expected a non-empty list of strings")
        # Upstream always writes "template" (no omitempty; events_template.go:141): ""
        # is an assignment without one, as its daemon reads it (reconcile.go:1091).
        # Typed before "" is taken as none: 0, false or [] is a mistake, not "none".
        template = obj.get("template")
        if template is not None and not isinstance(template, str):
            raise InputError(where, "template", "expected a template ref such as ns/template:name")
        policy = obj.get("restart_policy")
        if policy is not None and policy not in ("", *RESTART_POLICIES):
            raise InputError(where, "restart_policy", f"expected {', '.join(RESTART_POLICIES)}")
        return cls(
            principal,
            auto_start,
            _string_map(obj, "labels", where),
            command,
            template or None,
            override,
            _string_map(obj, "extra_environment_variables", where),
            _strings(obj, "extra_inherits", where) or (),
            policy or None,
            {k: v for k, v in obj.items() if k not in _KNOWN},
            raw=dict(obj),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"principal": self.principal, "auto_start": self.auto_start}
        optional: dict[str, Any] = {
            "template": self.template,
            "labels": self.labels or None,
            "command": list(self.command) if self.command is not None else None,
            "command_override": list(self.command_override) if self.command_override else None,
            "extra_environment_variables": self.extra_environment_variables or None,
            "extra_inherits": list(self.extra_inherits) or None,
            "restart_policy": self.restart_policy,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return {**self.extra, **out}


@dataclass(frozen=True)
class MachineConfig:
    principals: tuple[Assignment, ...] = ()
    # Top-level fields this version does not know (upstream's default_policy,
    # bureau_version, ...), written back by to_json.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str = "m.bureau.machine_config") -> MachineConfig:
        config, invalid = cls.from_json_each(obj, where)
        if invalid:
            raise invalid[0][1]
        return config

    @classmethod
    def from_json_each(
        cls, obj: object, where: str = "m.bureau.machine_config"
    ) -> tuple[MachineConfig, list[tuple[str | None, InputError]]]:
        """The valid assignments, and for each invalid one its principal (when it names
        one) and the problem: one bad entry must not stand in for the whole machine. An
        event that is not a config at all raises InputError."""
        valid, invalid = [], []
        for i, item in enumerate(_entries(obj, where)):
            try:
                valid.append(Assignment.from_json(item, f"{where}: principals[{i}]"))
            except InputError as exc:
                named = item.get("principal") if isinstance(item, dict) else None
                invalid.append((named if isinstance(named, str) else None, exc))
        top = {k: v for k, v in obj.items() if k != "principals"} if isinstance(obj, dict) else {}
        return cls(tuple(valid), top), invalid

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "principals": [a.to_json() for a in self.principals]}

    def find(self, principal: str) -> Assignment | None:
        return next((a for a in self.principals if a.principal == principal), None)


def _entries(obj: object, where: str) -> list[Any]:
    if obj is None or obj == {}:
        return []
    # Go writes an empty (nil) slice as null: MachineConfig{} is {"principals": null}.
    entries = obj.get("principals") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not isinstance(entries if entries is not None else [], list):
        raise InputError(where, "principals", "expected a list")
    return list(entries or [])


def without_auto_start(content: object) -> list[str]:
    """Principals whose entry has no ``auto_start``: not started (absent means false, as
    upstream). Every bureau CLI writes it; an entry written by hand may not."""
    try:
        entries = _entries(content, "m.bureau.machine_config")
    except InputError:
        return []
    return [
        str(e["principal"])
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("principal"), str) and "auto_start" not in e
    ]


def with_entry(content: object, principal: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The event's content with ``principal``'s entry given ``fields`` (added when it has
    none); every other entry, and every other field of this one, as it was."""
    entries = _entries(content, "m.bureau.machine_config")
    top = dict(content) if isinstance(content, dict) else {}
    found = False
    updated = []
    for entry in entries:
        mine = isinstance(entry, dict) and entry.get("principal") == principal
        updated.append({**entry, **fields} if mine else entry)
        found = found or mine
    if not found:
        updated.append({"principal": principal, **fields})
    return {**top, "principals": updated}


def without_entry(content: object, principal: str) -> dict[str, Any]:
    """The event's content without ``principal``'s entries, whatever shape they have."""
    entries = _entries(content, "m.bureau.machine_config")
    top = dict(content) if isinstance(content, dict) else {}
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("principal") == principal)]
    if len(kept) == len(entries):
        return top  # nothing of it there: nothing to write
    return {**top, "principals": kept}
