"""The daemon's template store as plain functions: a ref to a room it does not follow asks
for that room; one it cannot read, a missing parent or a template without a command is an
InputError naming it; an assignment's overrides reach the spec. Upstream's fields: a Nix
environment and prepend_variables reach the spec; a refused field holds the principal
with one line naming it; an ignored one is a warning naming it, logged once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bureau.daemon.sandbox_specs import SandboxSpecs
from bureau.daemon.templates import NeedRoom, TemplateStore
from bureau.errors import InputError
from bureau.wire.machine_config import Assignment, MachineConfig
from bureau.wire.template import EVENT_TYPE
from bureau.wire.template_parts import Mount

SERVER = "hub.example"
ROOM = "!templates:hub.example"
ALIAS = "#ns/template:hub.example"
PRINCIPAL = "@ns/fleet/prod/agent/a:hub.example"
OTHER = "@ns/fleet/prod/agent/b:hub.example"
NIX_ENV = "/nix/store/abc-agent-env"  # on this machine, as far as the store is told


def _state(**templates: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": EVENT_TYPE, "state_key": k, "content": v} for k, v in templates.items()]


def _store(**templates: dict[str, Any]) -> TemplateStore:
    store = TemplateStore(SERVER, is_dir=lambda path: path == NIX_ENV)
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
        ({"worker": {"command": ["/bin/w"], "secrets": {}}}, "secrets: expected a list"),
        (
            {"worker": {"command": ["/bin/w"], "secrets": [{"key": "K", "env": "K"}]}},
            "^ns/template:worker: secrets: hands K to the workload; a credential never enters",
        ),
        (
            {"worker": {"command": ["/bin/w"], "environment": "/nix/store/gone"}},
            r"^ns/template:worker: environment: /nix/store/gone is not on this machine \(Nix",
        ),
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


def test_an_upstream_nix_environment_and_prepend_variables_reach_the_spec() -> None:
    store = _store(
        worker={
            "command": ["agent"],
            "environment": "/nix/store/old-env",
            "prepend_variables": {"PATH": ["/opt/bin"]},
            "roles": {"shell": ["/bin/sh"]},
        }
    )
    # upstream's assignment field, kept in Assignment.extra: replaces the environment
    assignment = _assignment(template="ns/template:worker", environment_override=NIX_ENV)
    found = store.resolved(assignment)
    assert found is not None
    assert found.spec.environment == {
        "PATH": f"/opt/bin:{NIX_ENV}/bin:/usr/local/bin:/usr/bin:/bin"
    }
    assert Mount(dest="/nix/store", source="/nix/store", mode="ro") in found.spec.filesystem
    assert [(i.field, i.source) for i in found.ignored] == [("roles", "ns/template:worker")]


def _config(**templates: str) -> MachineConfig:
    principals = [
        {"principal": user, "template": f"ns/template:{name}", "auto_start": True}
        for user, name in templates.items()
    ]
    return MachineConfig.from_json({"principals": principals})


async def _never(_: str) -> Any:
    raise AssertionError("every room is followed already")


def test_a_refused_field_holds_the_principal_and_an_ignored_one_is_warned_once() -> None:
    worker: dict[str, Any] = {"command": ["/bin/w"], "required_services": ["ticket"]}
    templates: dict[str, dict[str, Any]] = {
        "worker": worker,
        "builder": {"command": ["/bin/b"], "credential_ref": "ns/template:nix-builder"},
    }
    with capture_logs() as logs:
        specs = SandboxSpecs(SERVER, _never, _never, structlog.get_logger())
        specs.templates.add_room(ALIAS, ROOM)
        specs.templates.set_state(ROOM, _state(**templates))
        config = _config(**{PRINCIPAL: "worker", OTHER: "builder"})
        for _ in range(2):  # the second pass logs nothing new
            resolved, held = asyncio.run(specs.resolve(config))
        assert set(resolved) == {PRINCIPAL}
        assert held == {OTHER}
        assert specs.problems == {
            OTHER: "template: ns/template:builder: credential_ref: names "
            "ns/template:nix-builder; only the fleet room's bundles (${FLEET_ROOM}:<name>) "
            "are served here"
        }
        warned = [e for e in logs if e["event"] == "template field ignored by this worker"]
        assert warned == [
            {
                "event": "template field ignored by this worker",
                "log_level": "warning",
                "principal": PRINCIPAL,
                "field": "required_services",
                "source": "ns/template:worker",
                "why": "service sockets (/run/bureau/service/<role>.sock) are not mounted here",
            }
        ]
        # Its template changes: what it runs without is told again.
        templates["worker"] = {**worker, "roles": {"shell": ["/bin/sh"]}}
        specs.templates.set_state(ROOM, _state(**templates))
        asyncio.run(specs.resolve(config))
        fields = [e["field"] for e in logs if e["event"] == "template field ignored by this worker"]
        assert fields == ["required_services", "roles", "required_services"]
