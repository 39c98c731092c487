"""``bureau template push|list|show``: templates in the namespace's template room, one
``m.bureau.template`` state event per template (state key = its name), and the two that
ship with bureau (``<ns>/template:base`` and ``:agent-base``), pushed by ``bureau matrix
setup`` when absent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from bureau.errors import BureauError, InputError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import template_room
from bureau.operator.signed import sign_as
from bureau.template_resolve import Fetch, resolve
from bureau.wire import names
from bureau.wire.files import OperatorCredentials
from bureau.wire.signing import template_target
from bureau.wire.template import EVENT_TYPE, Template
from bureau.wire.template_parts import TemplateRef

BUILTIN = ("base", "agent-base")
_BUILTIN_ROOM = "bureau/template"  # as the shipped files name their parents


def namespace_ref(creds: OperatorCredentials, name: str) -> TemplateRef:
    """``name`` in this fleet's namespace, or a full ref as given."""
    text = name if ":" in name else f"{names.template_room_localpart(creds.fleet)}:{name}"
    return TemplateRef.parse(text)


def _room(admin: MatrixHTTP, creds: OperatorCredentials) -> str:
    room = template_room(admin, creds.fleet, creds.server_name)
    if room is None:
        alias = names.room_alias(names.template_room_localpart(creds.fleet), creds.server_name)
        raise BureauError(
            f"{alias}: no such room; run `bureau matrix setup` (or matrix doctor --fix)"
        )
    return room


def signed_template(
    creds: OperatorCredentials, ref: TemplateRef, template: Template
) -> dict[str, Any]:
    target = template_target(ref.room, ref.name, ref.server or creds.server_name)
    return sign_as(creds, EVENT_TYPE, target, template.to_json())


def push(admin: MatrixHTTP, creds: OperatorCredentials, name: str, template: Template) -> bool:
    """Publish ``template`` as ``name`` in this namespace; False when it was already so.
    Its parents must resolve (a template that can never run is not published)."""
    ref = namespace_ref(creds, name)
    if ref.room != names.template_room_localpart(creds.fleet) or ref.server:
        raise InputError("--name", None, f"{ref}: templates are pushed to this fleet's namespace")
    resolve(ref, fetcher(admin, creds, pending={ref: template}))
    room = _room(admin, creds)
    content = signed_template(creds, ref, template)
    if admin.get_state(room, EVENT_TYPE, ref.state_key) == content:
        return False
    admin.put_state(room, EVENT_TYPE, ref.state_key, content)
    return True


@dataclass(frozen=True)
class Listed:
    ref: TemplateRef
    template: Template | None
    problem: str | None  # why it does not parse


def list_templates(admin: MatrixHTTP, creds: OperatorCredentials) -> list[Listed]:
    room = _room(admin, creds)
    found = []
    for event in admin.room_state_events(room):
        if event.get("type") != EVENT_TYPE or not event.get("content"):
            continue
        ref = namespace_ref(creds, str(event.get("state_key")))
        try:
            found.append(Listed(ref, Template.from_json(event["content"], str(ref)), None))
        except InputError as exc:
            found.append(Listed(ref, None, str(exc)))
    return sorted(found, key=lambda item: str(item.ref))


def fetcher(
    admin: MatrixHTTP,
    creds: OperatorCredentials,
    pending: dict[TemplateRef, Template] | None = None,
) -> Fetch:
    """Templates as the hub holds them (``pending`` first: one about to be pushed)."""
    rooms: dict[str, str | None] = {}

    def fetch(ref: TemplateRef) -> Template | None:
        if pending and ref in pending:
            return pending[ref]
        alias = ref.room_alias(creds.server_name)
        if alias not in rooms:
            rooms[alias] = admin.resolve_alias(alias)
        room = rooms[alias]
        content = admin.get_state(room, EVENT_TYPE, ref.state_key) if room else None
        return Template.from_json(content, str(ref)) if content else None

    return fetch


def builtin(creds: OperatorCredentials, name: str) -> Template:
    """A shipped template, its parents named in this fleet's namespace."""
    text = resources.files("bureau.builtin_templates").joinpath(f"{name}.json").read_text()
    raw: dict[str, Any] = json.loads(text)
    own = names.template_room_localpart(creds.fleet)
    raw["inherits"] = [r.replace(_BUILTIN_ROOM, own, 1) for r in raw.get("inherits", [])]
    return Template.from_json(raw, f"builtin template {name}")


def push_builtins(admin: MatrixHTTP, creds: OperatorCredentials) -> list[str]:
    """The shipped templates this namespace lacks, pushed; an operator's own version of
    one is left as it is. Returns the refs pushed."""
    room = _room(admin, creds)
    pushed = []
    for name in BUILTIN:
        ref = namespace_ref(creds, name)
        if admin.get_state(room, EVENT_TYPE, ref.state_key):
            continue
        admin.put_state(
            room, EVENT_TYPE, ref.state_key, signed_template(creds, ref, builtin(creds, name))
        )
        pushed.append(str(ref))
    return pushed
