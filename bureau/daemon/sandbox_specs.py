"""The daemon's side of sandboxes: follow the template rooms (join, read their templates)
and turn each started assignment into the sandbox spec the launcher is sent.

An assignment whose template does not resolve keeps its last good spec (its workload runs
on), or, with none, is held: nothing starts for it. Either way its reason is a problem
shown in machine_status, logged once when it appears or changes. A template field the
workload runs without (template_policy) is a warning naming it, logged once for the
principal until its resolved template changes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bureau.daemon.templates import Found, NeedRoom, TemplateStore
from bureau.errors import InputError, MatrixError
from bureau.template_policy import Ignored
from bureau.wire.machine_config import Assignment, MachineConfig
from bureau.wire.template_parts import ProxyService

# A template room this machine could not join is tried again after this long (an operator
# may invite it meanwhile: `bureau matrix doctor --fix`).
RETRY_SECONDS = 60.0

Services = dict[str, ProxyService]
# A spec's JSON, its template's services, the templates it came from as published, and the
# fleet bundle its template names ("" for none).
Resolved = tuple[dict[str, Any], Services, dict[str, dict[str, Any]], str]
Join = Callable[[str], Awaitable[str]]  # alias -> room ID
ReadState = Callable[[str], Awaitable[None]]  # room ID -> (feeds set_state)


class SandboxSpecs:
    def __init__(self, server: str, join: Join, read_state: ReadState, log: Any) -> None:
        self.templates = TemplateStore(server)
        self._join = join
        self._read_state = read_state
        self._log = log
        self._failed_at: dict[str, float] = {}  # alias -> when joining it last failed
        self._good: dict[str, Resolved] = {}  # principal -> last spec resolved
        self.problems: dict[str, str] = {}  # principal -> why its template does not resolve
        self._warned: dict[str, tuple[Ignored, ...]] = {}  # principal -> last logged
        # principal -> its template's proxy_services (the last good ones while it does not
        # resolve): an unbound bundle's routes.
        self.services: dict[str, dict[str, ProxyService]] = {}
        # principal -> the templates its spec came from, as published: relayed to the
        # launcher, which checks their signatures and resolves the spec again.
        self.sources: dict[str, dict[str, dict[str, Any]]] = {}
        # principal -> its template's credential_ref (the last good one while it does not
        # resolve): the fleet bundle relayed with its credentials (daemon/fleet_relay.py).
        self.credential_refs: dict[str, str] = {}

    async def follow(self, alias: str) -> None:
        """Join a template room and read its templates; a room this machine may not join
        (not invited, or a hub from before template rooms) is logged and tried later."""
        try:
            room_id = await self._join(alias)
            self.templates.add_room(alias, room_id)
            await self._read_state(room_id)
        except MatrixError as exc:
            self.templates.unreachable.add(alias)
            self._failed_at[alias] = time.monotonic()
            self._log.warning("cannot follow a template room", room=alias, error=str(exc))

    async def refresh(self, room_id: str) -> None:
        """Read a followed room again. One the machine can no longer read is no reason to
        stop its principals: they keep their last good specs, and the room is joined
        again later."""
        try:
            await self._read_state(room_id)
        except MatrixError as exc:
            self._log.warning("cannot read a template room", room=room_id, error=str(exc))
            self.forget(room_id)

    def forget(self, room_id: str) -> None:
        """Stop following a room; it is joined (and read) again after RETRY_SECONDS."""
        for alias in self.templates.drop_room(room_id):
            self.templates.unreachable.add(alias)
            self._failed_at[alias] = time.monotonic()

    async def resolve(self, config: MachineConfig) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """(principal -> spec JSON, held principals) for the started assignments."""
        now = time.monotonic()
        for alias, when in list(self._failed_at.items()):
            if now - when >= RETRY_SECONDS:
                del self._failed_at[alias]
                self.templates.unreachable.discard(alias)
        specs: dict[str, dict[str, Any]] = {}
        held: set[str] = set()
        problems: dict[str, str] = {}
        services: dict[str, dict[str, ProxyService]] = {}
        sources: dict[str, dict[str, dict[str, Any]]] = {}
        refs: dict[str, str] = {}
        for assignment in config.principals:
            if not assignment.auto_start:
                continue
            principal = assignment.principal
            try:
                found = await self._spec(assignment)
            except InputError as exc:
                problems[principal] = f"template: {exc}"
                good = self._good.get(principal)
                if good is None:
                    held.add(principal)
                else:
                    specs[principal], services[principal], sources[principal], ref = good
                    if ref:
                        refs[principal] = ref
                if self.problems.get(principal) != problems[principal]:
                    self._log.error(
                        "cannot resolve a principal's template",
                        principal=principal,
                        problem=str(exc),
                        kept_previous=good is not None,
                    )
                continue
            if found is not None:
                signed = self.templates.signed_sources(found)
                ref = found.credential_ref
                self._good[principal] = (found.spec.to_json(), found.services, signed, ref)
                specs[principal], services[principal], sources[principal], _ = self._good[principal]
                if ref:
                    refs[principal] = ref
                self._warn(principal, found)
            else:
                self._good.pop(principal, None)
        self.problems = problems
        self.services = services
        self.sources = sources
        self.credential_refs = refs
        self._warned = {p: v for p, v in self._warned.items() if p in self._good}
        return specs, held

    def _warn(self, principal: str, found: Found) -> None:
        if self._warned.get(principal) == found.ignored:
            return
        self._warned[principal] = found.ignored
        for item in found.ignored:
            self._log.warning(
                "template field ignored by this worker",
                principal=principal,
                field=item.field,
                source=item.source,
                why=item.why,
            )

    async def _spec(self, assignment: Assignment) -> Found | None:
        for _ in range(4):  # each pass may name a room not followed yet
            try:
                return self.templates.resolved(assignment)
            except NeedRoom as need:
                await self.follow(need.alias)
        return self.templates.resolved(assignment)
