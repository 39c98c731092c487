"""Arrangement shared by the machine tests: provision through the real CLI, then boot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conftest import Fleet, fresh, run

from bureau import names


@dataclass(frozen=True)
class Provisioned:
    fleet: Fleet
    short_name: str
    localpart: str
    bootstrap: Path
    state_dir: Path

    @property
    def user_id(self) -> str:
        return names.user_id(self.localpart, self.fleet.hub.server_name)

    @property
    def one_time_password(self) -> str:
        return str(json.loads(self.bootstrap.read_text())["password"])


def provision(fleet: Fleet, tmp_path: Path) -> Provisioned:
    tmp_path.mkdir(parents=True, exist_ok=True)
    short = f"machine/{fresh('w')}"
    bootstrap = tmp_path / "bootstrap.json"
    result = run(
        "bureau", "machine", "provision", short,
        "--credential-file", fleet.credential_file, "--output", bootstrap,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Provisioned(fleet, short, f"{fleet.name}/{short}", bootstrap, tmp_path / "state")


def boot(machine: Provisioned, *extra: str):  # type: ignore[no-untyped-def]
    return run(
        "bureau-launcher", "--bootstrap-file", machine.bootstrap,
        "--machine-name", machine.short_name, "--state-dir", machine.state_dir,
        "--first-boot-only", *extra,
    )  # fmt: skip
