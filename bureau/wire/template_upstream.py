"""The ``m.bureau.template`` fields upstream has and this bureau does not run the way
upstream does (lib/schema/events_template.go): read as upstream's decoder reads them,
kept, merged as upstream merges them, and written back unchanged. Pure.

What the daemon does with each (honour, ignore with a warning, or refuse the principal)
is ``template_policy``'s to decide, not the wire format's: a template is never refused
only because it carries one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bureau.errors import InputError
from bureau.wire.template_parts import (
    env_problem,
    is_text,
    read_count,
    read_flag,
    read_object,
    read_string,
    read_strings,
)


@dataclass(frozen=True)
class SecretBinding:
    """Upstream's ``SecretBinding``: a credential handed to the workload as an env var
    and/or a file under /run/bureau/secrets; checked as ValidateSecretBinding does."""

    key: str
    env: str = ""
    file: str = ""

    @classmethod
    def from_json(cls, obj: object, where: str) -> SecretBinding:
        data = read_object(obj, where, frozenset({"key", "env", "file"}))
        binding = cls(*(read_string(data, k, where) for k in ("key", "env", "file")))
        if not binding.key:
            raise InputError(where, "key", "required")
        if not binding.env and not binding.file:
            raise InputError(where, "env", "at least one of env or file must be set")
        name = binding.file
        if "/" in name or "\\" in name or name == "." or name.startswith(".."):
            raise InputError(where, "file", "expected a bare file name")
        return binding

    def to_json(self) -> dict[str, Any]:
        out = {"key": self.key, "env": self.env, "file": self.file}
        return {k: v for k, v in out.items() if v or k == "key"}


@dataclass(frozen=True)
class OutputCapture:
    """Upstream's ``OutputCapture``; ``retention`` is a Go time.Duration, nanoseconds."""

    enabled: bool = False
    retention: int = 0
    max_size: int = 0

    @classmethod
    def from_json(cls, obj: object, where: str) -> OutputCapture:
        data = read_object(obj, where, frozenset({"enabled", "retention", "max_size"}))
        return cls(
            read_flag(data, "enabled", where),
            read_count(data, "retention", where),
            read_count(data, "max_size", where),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.enabled}  # upstream writes it always
        if self.retention:
            out["retention"] = self.retention
        if self.max_size:
            out["max_size"] = self.max_size
        return out


def read_argv_map(obj: dict[str, Any], key: str, where: str) -> dict[str, tuple[str, ...]]:
    """name -> list of strings: upstream's ``map[string][]string`` (roles,
    prepend_variables)."""
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise InputError(where, key, "expected an object of name -> list of strings")
    out = {}
    for name in value:
        if not is_text(name) or not name:
            raise InputError(where, key, f"{name!r} is not a name")
        if key == "prepend_variables" and env_problem(name, ""):
            raise InputError(where, f"{key}.{name}", "not a variable name")
        out[name] = read_strings(value, name, f"{where}: {key}")
        if key == "prepend_variables" and any(":" in item for item in out[name]):
            # upstream's Validate: one path segment each, or PATH's order is a guess.
            raise InputError(where, f"{key}.{name}", "one path each, without ':'")
    return out


def read_secrets(obj: dict[str, Any], key: str, where: str) -> tuple[SecretBinding, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise InputError(where, key, "expected a list of {key, env?, file?}")
    return tuple(SecretBinding.from_json(b, f"{where}: {key}[{i}]") for i, b in enumerate(value))


def read_pipelines(obj: dict[str, Any], where: str) -> tuple[str, ...] | None:
    """None when absent (any pipeline), () for ``[]`` (none): upstream's ``*[]string``."""
    if obj.get("allowed_pipelines") is None:
        return None
    return read_strings(obj, "allowed_pipelines", where)


def read_payload(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise InputError(where, key, "expected an object")
    return dict(value)


def merge_secrets(
    base: tuple[SecretBinding, ...], top: tuple[SecretBinding, ...]
) -> tuple[SecretBinding, ...]:
    """upstream's mergeSecretBindings: a later binding of a key replaces the earlier one,
    which leaves its place."""
    replaced = {b.key for b in top}
    return (*(b for b in base if b.key not in replaced), *top)


def merge_prepend(
    base: dict[str, tuple[str, ...]], top: dict[str, tuple[str, ...]]
) -> dict[str, tuple[str, ...]]:
    """upstream's mergePrependVariables: per variable, the later layer's entries first,
    then the earlier's not already there."""
    out = dict(base)
    for name, items in top.items():
        out[name] = tuple(dict.fromkeys((*items, *base.get(name, ()))))
    return out


def intersect_pipelines(
    base: tuple[str, ...] | None, top: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """upstream's intersectAllowedPipelines: a later layer narrows, never widens."""
    if base is None or top is None:
        return top if base is None else base
    return tuple(p for p in top if p in base)
