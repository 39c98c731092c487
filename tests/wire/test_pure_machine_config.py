"""m.bureau.machine_config: the assignment fields of PRINCIPALS.md, auto_start absent as
false, and fields this version does not know kept on every read-modify-write."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bureau.errors import InputError
from bureau.wire.machine_config import (
    Assignment,
    MachineConfig,
    with_entry,
    without_auto_start,
    without_entry,
)

A = "@bureau/fleet/prod/agent/a:bureau.local"
B = "@bureau/fleet/prod/agent/b:bureau.local"
FULL: dict[str, Any] = {
    "principal": A,
    "auto_start": True,
    "template": "bureau/template:agent-base",
    "command_override": ["/bin/agent", "--fast"],
    "extra_environment_variables": {"MODE": "fast"},
    "extra_inherits": ["bureau/template:gpu"],
    "restart_policy": "on-failure",
    "labels": {"team": "infra"},
    "payload": {"from": "a later upstream", "n": [1, 2]},  # unknown to us
}


def test_every_field_round_trips_unknown_ones_included() -> None:
    assignment = Assignment.from_json(FULL, "config")
    assert assignment.template == "bureau/template:agent-base"
    assert assignment.command_override == ("/bin/agent", "--fast")
    assert assignment.extra_inherits == ("bureau/template:gpu",)
    assert assignment.restart_policy == "on-failure"
    assert assignment.extra == {"payload": {"from": "a later upstream", "n": [1, 2]}}
    assert assignment.to_json() == FULL


def test_auto_start_absent_is_false() -> None:
    assert Assignment.from_json({"principal": A}, "config").auto_start is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"restart_policy": "sometimes"}, "restart_policy"),
        ({"command_override": []}, "command_override"),
        ({"command_override": "/bin/sh"}, "command_override"),
        ({"extra_environment_variables": {"A": 1}}, "extra_environment_variables"),
        ({"extra_inherits": [1]}, "extra_inherits"),
        ({"template": 5}, "template"),  # "" is no template, as upstream writes it
        ({"auto_start": "yes"}, "auto_start"),
    ],
)
def test_a_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as refused:
        Assignment.from_json({**FULL, **change}, "config")
    assert refused.value.field == field


def test_read_modify_write_changes_one_entry_and_keeps_the_rest_byte_for_byte() -> None:
    content: dict[str, Any] = {
        "bureau_version": "0.9.0",  # top-level fields of a later upstream
        "default_policy": {"x": True},
        "principals": [FULL, {"principal": B, "auto_start": "not a bool", "weird": 1}, 7],
    }
    before = json.dumps(content, sort_keys=True)
    updated = with_entry(content, A, {"auto_start": False})
    assert json.dumps(content, sort_keys=True) == before  # the input is not modified
    assert updated["principals"][0] == {**FULL, "auto_start": False}
    assert updated["principals"][1:] == content["principals"][1:]
    assert {k: v for k, v in updated.items() if k != "principals"} == {
        "bureau_version": "0.9.0",
        "default_policy": {"x": True},
    }
    added = with_entry(content, "@bureau/fleet/prod/agent/c:bureau.local", {"auto_start": True})
    assert added["principals"][:3] == content["principals"]
    removed = without_entry(content, B)
    assert removed["principals"] == [FULL, 7]
    assert removed["bureau_version"] == "0.9.0"


def test_one_bad_entry_is_reported_alone() -> None:
    config, invalid = MachineConfig.from_json_each(
        {"principals": [FULL, {"principal": B, "auto_start": "yes"}]}
    )
    assert [a.principal for a in config.principals] == [A]
    assert [(p, e.field) for p, e in invalid] == [(B, "auto_start")]


def test_unassigning_what_is_not_there_changes_nothing() -> None:
    assert without_entry({}, A) == {}
    content = {"principals": [FULL], "extra": 1}
    assert without_entry(content, B) == content


def test_entries_without_auto_start_are_named() -> None:
    content = {"principals": [{"principal": A}, FULL, {"principal": B, "auto_start": False}, 3]}
    assert without_auto_start(content) == [A]
    assert without_auto_start({"principals": "nonsense"}) == []


# Upstream's top-level fields (lib/schema/events_machine.go MachineConfig), unknown to us.
TOP: dict[str, Any] = {
    "default_policy": {"grants": [{"actions": ["observe"]}]},
    "bureau_version": {"daemon_store_path": "/nix/store/x-bureau-daemon"},
}


def test_a_full_config_round_trips_both_ways_with_upstreams_top_level_fields() -> None:
    content = {
        "principals": [FULL, {"principal": B, "auto_start": False, "command": ["/bin/b"]}],
        **TOP,
    }
    config = MachineConfig.from_json(content)
    assert config.to_json() == content
    assert MachineConfig.from_json(config.to_json()) == config
    for assignment in config.principals:
        assert Assignment.from_json(assignment.to_json(), "config") == assignment
    # As upstream writes an empty one: principals null, template "", labels null.
    upstream = {"principals": [{"principal": A, "template": "", "auto_start": True}], **TOP}
    assert MachineConfig.from_json(upstream).principals[0].template is None
    assert MachineConfig.from_json({"principals": None}).principals == ()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"principal": None}, "principal"),
        ({"principal": 5}, "principal"),
        ({"principal": "bureau/fleet/prod/agent/a"}, "principal"),
        ({"principal": "@bureau/fleet/prod/agent/A:bureau.local"}, "principal"),
        ({"auto_start": 1}, "auto_start"),
        ({"labels": ["team"]}, "labels"),
        ({"labels": {"team": 1}}, "labels"),
        ({"command": []}, "command"),
        ({"command": [1]}, "command"),
        ({"command_override": [None]}, "command_override"),
        ({"extra_environment_variables": ["A=1"]}, "extra_environment_variables"),
        ({"extra_inherits": "bureau/template:gpu"}, "extra_inherits"),
        # The wrong type is refused even where it is falsy ("" and null are upstream's
        # "none", nothing else is).
        ({"template": 0}, "template"),
        ({"template": False}, "template"),
        ({"template": []}, "template"),
        ({"template": {}}, "template"),
        ({"restart_policy": 0}, "restart_policy"),
        ({"restart_policy": False}, "restart_policy"),
        ({"restart_policy": []}, "restart_policy"),
        ({"restart_policy": "Always"}, "restart_policy"),
    ],
)
def test_each_bad_field_is_named_in_one_line(change: dict[str, Any], field: str) -> None:
    entry = {k: v for k, v in {**FULL, **change}.items() if v is not None}
    with pytest.raises(InputError) as refused:
        MachineConfig.from_json({"principals": [FULL, entry]}, "config")
    assert str(refused.value).startswith(f"config: principals[1]: {field}: ")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([FULL], "principals: expected a list"),
        ({"principals": FULL}, "principals: expected a list"),
        ({"principals": [FULL, "x"]}, "principals[1]: expected an object"),
    ],
)
def test_a_config_that_is_not_one_is_named(content: object, problem: str) -> None:
    with pytest.raises(InputError) as refused:
        MachineConfig.from_json(content, "config")
    assert str(refused.value) == f"config: {problem}"
