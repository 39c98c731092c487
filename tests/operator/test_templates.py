"""`bureau template push|list|show` against the real Synapse: the shipped templates are
there after setup, a template pushed from a file resolves with where each field came
from, an upstream template's fields are published and shown unchanged (with a note of
what this bureau's machines would do with them), and a bad file is one line naming what
is wrong, with nothing published."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, one_line_error, run


def _template(fleet: Fleet, *args: str | Path) -> Any:
    return run("bureau", "template", *args, "--credential-file", fleet.credential_file)


def _write(tmp_path: Path, content: dict[str, Any], name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


def test_builtins_are_pushed_and_a_child_resolves_with_provenance(
    fleet: Fleet, tmp_path: Path
) -> None:
    ns = fleet.name.split("/")[0]
    listed = _template(fleet, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    refs = {item["ref"] for item in json.loads(listed.stdout)}
    assert {f"{ns}/template:base", f"{ns}/template:agent-base"} <= refs

    child = {
        "description": "an echo agent",
        "inherits": [f"{ns}/template:agent-base"],
        "command": ["/usr/bin/env"],
        "environment_variables": {"MODE": "echo", "HOME": "/workspace/home"},
        "resources": {"memory_limit_mb": 128, "pids_limit": 32},
    }
    pushed = _template(fleet, "push", _write(tmp_path, child), "--name", "echo")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"pushed: {ns}/template:echo"
    again = _template(fleet, "push", _write(tmp_path, child), "--name", "echo")
    assert again.stdout.strip() == f"unchanged: {ns}/template:echo"

    shown = _template(fleet, "show", "echo", "--resolved")
    assert shown.returncode == 0, shown.stderr
    resolved = json.loads(shown.stdout)
    template, origin = resolved["template"], resolved["from"]
    assert template["command"] == ["/usr/bin/env"]
    assert template["namespaces"] == {"pid": True, "net": True, "ipc": True, "uts": True}
    assert template["environment_variables"]["MODE"] == "echo"
    assert template["environment_variables"]["TMPDIR"] == "/tmp"  # noqa: S108 -- in the sandbox
    assert origin["command"] == f"{ns}/template:echo"
    assert origin["namespaces"] == f"{ns}/template:base"
    assert origin["environment_variables.TMPDIR"] == f"{ns}/template:agent-base"
    assert origin["environment_variables.HOME"] == f"{ns}/template:echo"
    assert resolved["sources"] == [
        f"{ns}/template:base",
        f"{ns}/template:agent-base",
        f"{ns}/template:echo",
    ]
    plain = json.loads(_template(fleet, "show", "echo").stdout)
    assert plain == child


def test_upstream_fields_are_published_unchanged_with_a_note(fleet: Fleet, tmp_path: Path) -> None:
    """Upstream's machines may run what ours would not: pushed as written, and said so on
    stderr, stdout saying only what was pushed."""
    ns = fleet.name.split("/")[0]
    ignored = {
        "description": "upstream's fields this bureau runs without",
        "inherits": [f"{ns}/template:agent-base"],
        "command": ["/usr/bin/env"],
        "roles": {"shell": ["/bin/sh"]},
        "required_services": ["ticket"],
        "allowed_pipelines": [],
    }
    pushed = _template(fleet, "push", _write(tmp_path, ignored), "--name", "roles")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout == f"pushed: {ns}/template:roles\n"
    assert pushed.stderr.splitlines() == [
        f"note: this bureau's machines run it without {field} (from {ns}/template:roles) "
        f"is ignored: {why}"
        for field, why in (
            ("roles", "observation roles (layout panes) are not provided here"),
            (
                "required_services",
                "service sockets (/run/bureau/service/<role>.sock) are not mounted here",
            ),
        )
    ]
    assert json.loads(_template(fleet, "show", "roles").stdout) == ignored

    secrets = {
        "inherits": [f"{ns}/template:roles"],
        "secrets": [{"key": "API_TOKEN", "env": "API_TOKEN"}],
        "credential_ref": "${FLEET_ROOM}:nix-builder",
    }
    pushed = _template(fleet, "push", _write(tmp_path, secrets), "--name", "secrets")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr == (
        f"note: this bureau's machines refuse a principal on it: {ns}/template:secrets: "
        "secrets: hands API_TOKEN to the workload; a credential never enters the sandbox "
        "here; use proxy_services\n"
    )
    assert json.loads(_template(fleet, "show", "secrets").stdout) == secrets
    resolved = json.loads(_template(fleet, "show", "secrets", "--resolved").stdout)
    assert resolved["template"]["roles"] == {"shell": ["/bin/sh"]}
    assert resolved["from"]["credential_ref"] == f"{ns}/template:secrets"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"command": ["/bin/sh"], "privileged": True}, "privileged: unknown field"),
        ({"secrets": {"TOKEN": {"env": "TOKEN"}}}, "secrets: expected a list"),
        ({"command": "/bin/sh"}, "command"),
        ({"inherits": ["NS/template:missing"]}, "not found"),
    ],
)
@pytest.mark.slow
def test_a_bad_template_is_one_line_and_publishes_nothing(
    fleet: Fleet, tmp_path: Path, content: dict[str, Any], problem: str
) -> None:
    ns = fleet.name.split("/")[0]
    raw = json.loads(json.dumps(content).replace("NS/", f"{ns}/"))
    result = _template(fleet, "push", _write(tmp_path, raw), "--name", "bad")
    assert result.returncode != 0
    assert problem in one_line_error(result)
    assert "Traceback" not in result.stderr
    assert _template(fleet, "show", "bad").returncode != 0


def test_a_fifo_or_a_missing_file_is_refused_at_once(fleet: Fleet, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = _template(fleet, "push", fifo, "--name", "x")
    assert "is a FIFO, not a regular file" in one_line_error(refused)
    missing = _template(fleet, "push", tmp_path / "nope.json", "--name", "x")
    assert "no such file" in one_line_error(missing)
