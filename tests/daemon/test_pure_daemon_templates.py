"""The daemon's template store as plain functions: a ref to a room it does not follow asks
for that room; one it cannot read, a missing parent or a template without a command is an
InputError naming it; an assignment's overrides reach the spec."""

from __future__ import annotations

from typing import Any

import pytest

from bureau.daemon.templates import NeedRoom, TemplateStore
from bureau.errors import InputError
from bureau.wire.machine_config import Assignment
from bureau.wire.template import EVENT_TYPE

SERVER = "hub.example"
ROOM = "!templates:hub.example"
ALIAS = "#ns/template:hub.example"
PRINCIPAL = "@ns/fleet/prod/agent/a:hub.example"


def _state(**templates: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": EVENT_TYPE, "state_key": k, "content": v} for k, v in templates.items()]


def _store(**templates: dict[str, Any]) -> TemplateStore:
    store = TemplateStore(SERVER)
    store.add_room(ALIAS, ROOM)
    store.set_state(ROOM, _state(**templates))
    return store


def _assignment(**fields: Any) -> Assignment:
    return Assignment.from_json(
        {"principal": PRINCIPAL, "auto_start": True, **fields}, "m.bureau.machine_config"
    )


def test_an_assignment_resolves_with_its_overrides() -> None:
    store = _store(
        base={"environment_variables": {"A": "1"}, "resources": {"pids_limit": 8}},
        worker={"inherits": ["ns/template:base"], "command": ["/bin/worker"]},
    )
    spec = store.spec(
        _assignment(
            template="ns/template:worker",
            command_override=["/bin/other", "--flag"],
            extra_environment_variables={"B": "2"},
            restart_policy="always",
        )
    )
    assert spec is not None
    assert spec.template == "ns/template:worker"
    assert spec.command == ("/bin/other", "--flag")
    assert spec.environment == {"A": "1", "B": "2"}
    assert spec.resources.pids_limit == 8
    assert spec.restart_policy == "always"
    assert store.spec(_assignment()) is None  # no template: a proxy only


def test_a_ref_to_another_room_asks_for_it_then_names_it_when_unreadable() -> None:
    store = _store(worker={"inherits": ["other/template:x"], "command": ["/bin/w"]})
    with pytest.raises(NeedRoom) as need:
        store.spec(_assignment(template="ns/template:worker"))
    assert need.value.alias == "#other/template:hub.example"
    store.unreachable.add(need.value.alias)
    with pytest.raises(InputError, match="cannot be read by this machine"):
        store.spec(_assignment(template="ns/template:worker"))


@pytest.mark.parametrize(
    ("templates", "problem"),
    [
        ({"worker": {"inherits": ["ns/template:gone"], "command": ["/bin/w"]}}, "gone not found"),
        ({"worker": {"description": "no command"}}, "no command"),
        ({"worker": {"inherits": ["ns/template:worker"]}}, "cycle"),
        ({"worker": {"command": ["/bin/w"], "secrets": {}}}, "secrets"),
        ({}, "template not found"),
    ],
)
def test_what_does_not_resolve_is_named(templates: dict[str, Any], problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        _store(**templates).spec(_assignment(template="ns/template:worker"))


def test_a_bad_ref_names_the_assignment_field() -> None:
    with pytest.raises(InputError, match="template"):
        _store().spec(_assignment(template="no-colon"))


def test_a_dropped_room_is_asked_for_again() -> None:
    store = _store(worker={"command": ["/bin/w"]})
    assert store.spec(_assignment(template="ns/template:worker")) is not None
    assert store.drop_room(ROOM) == [ALIAS]
    assert not store.follows(ROOM)
    with pytest.raises(NeedRoom):
        store.spec(_assignment(template="ns/template:worker"))
