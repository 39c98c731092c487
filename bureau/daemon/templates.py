"""The daemon's templates: the ``m.bureau.template`` state of the template rooms it has
joined (the namespace's ``#<ns>/template``, and any other room a template ref names), and
the sandbox spec each assignment resolves to. Pure apart from what the caller feeds it.

A ref to a room not yet joined raises NeedRoom: the caller joins it and resolves again.
Anything else wrong (a cycle, a missing parent, depth over 8, a template that does not
parse, no command, an upstream field this worker refuses to run without: see
``template_policy``) is an InputError that names it, kept as that principal's problem."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bureau.errors import InputError
from bureau.template_spec import Found, assignment_spec
from bureau.wire.machine_config import Assignment
from bureau.wire.sandbox_spec import SandboxSpec
from bureau.wire.template import EVENT_TYPE, Template
from bureau.wire.template_parts import TemplateRef

MAX_ROOMS = 16  # template rooms one machine follows


__all__ = ["Found", "NeedRoom", "TemplateStore"]


class NeedRoom(Exception):
    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self.alias = alias


class TemplateStore:
    def __init__(self, server: str, is_dir: Callable[[str], bool] = os.path.isdir) -> None:
        """``is_dir``: whether a template's Nix ``environment`` is on this machine."""
        self._server = server
        self._is_dir = is_dir
        self.room_ids: dict[str, str] = {}  # alias -> room ID
        self.unreachable: set[str] = set()  # aliases that could not be joined
        self._contents: dict[str, dict[str, Any]] = {}  # room ID -> state key -> content

    def add_room(self, alias: str, room_id: str) -> None:
        self.room_ids[alias] = room_id
        self.unreachable.discard(alias)

    def drop_room(self, room_id: str) -> list[str]:
        """Stop following a room and forget its templates; the aliases it was followed
        by."""
        aliases = [a for a, r in self.room_ids.items() if r == room_id]
        for alias in aliases:
            del self.room_ids[alias]
        self._contents.pop(room_id, None)
        return aliases

    def follows(self, room_id: str) -> bool:
        return room_id in self.room_ids.values()

    def set_state(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """The room's whole state, as read back from the homeserver."""
        self._contents[room_id] = {
            str(e.get("state_key")): e.get("content")
            for e in events
            if e.get("type") == EVENT_TYPE and isinstance(e.get("state_key"), str)
        }

    def _fetch(self, ref: TemplateRef) -> Template | None:
        alias = ref.room_alias(self._server)
        room_id = self.room_ids.get(alias)
        if room_id is None:
            if alias in self.unreachable or len(self.room_ids) >= MAX_ROOMS:
                raise InputError(str(ref), None, f"{alias} cannot be read by this machine")
            raise NeedRoom(alias)
        content = self._contents.get(room_id, {}).get(ref.state_key)
        return Template.from_json(content, str(ref)) if content else None

    def spec(self, assignment: Assignment) -> SandboxSpec | None:
        """The sandbox an assignment asks for; None when it names no template."""
        found = self.resolved(assignment)
        return None if found is None else found.spec

    def resolved(self, assignment: Assignment) -> Found | None:
        """What an assignment asks for; None when it names no template."""
        return assignment_spec(assignment, self._fetch, self._is_dir)

    def signed_sources(self, found: Found) -> dict[str, dict[str, Any]]:
        """The templates ``found`` was resolved from, as published (signatures included),
        by ref: what the launcher resolves the spec from again."""
        out = {}
        for ref in found.sources:
            room_id = self.room_ids.get(ref.room_alias(self._server), "")
            content = self._contents.get(room_id, {}).get(ref.state_key)
            if isinstance(content, dict):
                out[str(ref)] = content
        return out
