"""The operator side of a mixed fleet, against the real Synapse: a hub set up the upstream
way (tests/upstream_shapes.py, transcribed from upstream's Go source) is read, checked and
left alone by our commands, and what ours write is what upstream's tools read."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import RunningHub, fresh, one_line_error, run
from upstream_shapes import (
    STANDARD_ROOMS,
    UpstreamHub,
    credential_file_text,
    read_credential_file,
    setup_hub,
)

from bureau.cli.main import build_parser
from bureau.errors import InputError
from bureau.operator import credentials
from bureau.schema import OperatorCredentials

ROOM_IDS = {suffix: f"!{suffix}room:example.org" for suffix, _, _, _ in STANDARD_ROOMS}


def _upstream_file(directory: Path, **change: str) -> Path:
    text = credential_file_text(
        homeserver="http://127.0.0.1:6167",
        admin_user="@bureau-admin:example.org",
        admin_token="syt_YWRtaW4_token",
        registration_token="0123abcd",
        space_room="!space:example.org",
        room_ids=ROOM_IDS,
    )
    for key, value in change.items():
        text = "".join(
            f"{key}={value}\n" if line.startswith(f"{key}=") else f"{line}\n"
            for line in text.splitlines()
        )
    path = directory / "upstream-creds"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def upstream(hub: RunningHub, tmp_path: Path) -> UpstreamHub:
    return setup_hub(hub.url, hub.server_name, hub.token.reveal(), fresh("u"), tmp_path)


def test_upstream_credential_file_is_read(tmp_path: Path) -> None:
    path = _upstream_file(tmp_path)
    creds = credentials.load(path)
    assert creds.server_name == "example.org"  # from MATRIX_ADMIN_USER, as upstream does
    assert creds.fleet == "bureau/fleet/prod"
    assert not creds.recorded_fleet
    assert creds.space_room == "!space:example.org"
    assert creds.namespace_rooms == ROOM_IDS
    assert credentials.load(path, "acme/fleet/edge").fleet == "acme/fleet/edge"
    # Written back, upstream's keys keep their values and order; ours follow.
    env = creds.to_env()
    upstream_keys = list(read_credential_file(path.read_text()))
    assert list(env)[: len(upstream_keys)] == upstream_keys
    assert {k: env[k] for k in upstream_keys} == read_credential_file(path.read_text())
    assert list(env)[len(upstream_keys) :] == ["BUREAU_SERVER_NAME", "BUREAU_FLEET"]


def test_a_key_this_version_does_not_know_is_kept(tmp_path: Path) -> None:
    path = _upstream_file(tmp_path)
    path.write_text(path.read_text() + "MATRIX_OBSERVE_ROOM=!observe:example.org\n")
    creds = credentials.load(path)
    assert creds.to_env()["MATRIX_OBSERVE_ROOM"] == "!observe:example.org"
    again = OperatorCredentials.from_env(creds.to_env(), "again")
    assert again == replace(creds, recorded_fleet=True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"MATRIX_SYSTEM_ROOM": "#bureau/system:example.org"}, "MATRIX_SYSTEM_ROOM: '#bureau"),
        ({"MATRIX_SPACE_ROOM": "space"}, "MATRIX_SPACE_ROOM: 'space' is not a room ID"),
        ({"MATRIX_ADMIN_USER": "bureau-admin"}, "MATRIX_ADMIN_USER: 'bureau-admin' is not"),
        ({"MATRIX_REGISTRATION_TOKEN": ""}, "MATRIX_REGISTRATION_TOKEN: missing"),
    ],
)
def test_a_bad_upstream_credential_file_is_one_line_naming_the_key(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    path = _upstream_file(tmp_path, **change)
    with pytest.raises(InputError) as caught:
        credentials.load(path)
    assert str(caught.value).startswith(f"{path}: {expected}")
    result = run("bureau", "machine", "list", "--credential-file", path)
    assert result.returncode == 1
    assert one_line_error(result).startswith(f"bureau: {path}: {expected}")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    if not parser._subparsers:
        options = {o for a in parser._actions for o in a.option_strings}
        if "--credential-file" in options:
            found.append(path if "--fleet" in options else (*path, "WITHOUT --fleet"))
    return found


def test_every_command_that_reads_a_credential_file_takes_fleet() -> None:
    """Upstream's file names no fleet: every command must be able to be told one."""
    commands = _commands(build_parser())
    assert len(commands) > 15
    assert [c for c in commands if c[-1] == "WITHOUT --fleet"] == []


def test_commands_work_with_upstreams_credential_file(
    upstream: UpstreamHub, tmp_path: Path
) -> None:
    creds = ("--credential-file", str(upstream.credential_file), "--fleet", upstream.fleet)
    for argv in (
        ("machine", "list", "--json"),
        ("template", "list"),
        ("agent", "list"),
        ("machine", "provision", "machine/w1", "--output", str(tmp_path / "bootstrap.json")),
    ):
        result = run("bureau", *argv, *creds)
        assert result.returncode == 0, (argv, result.stderr)
    bootstrap = json.loads((tmp_path / "bootstrap.json").read_text())
    assert bootstrap["machine_name"] == f"{upstream.fleet}/machine/w1"
    listed = run("bureau", "machine", "list", "--json", *creds)
    assert [r["name"] for r in json.loads(listed.stdout)] == [f"{upstream.fleet}/machine/w1"]
