"""Canary scan: the one-time password, the permanent password and the machine's private
key appear in no log line, no argv or environment of any process (traced with strace),
and no file other than their own store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from conftest import BIN, Fleet, fresh


def _traced(trace: Path, program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUREAU_LOG_LEVEL": "debug"}
    return subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-v",
            "-s",
            "1000000",
            "-e",
            "trace=execve",
            "-o",
            str(trace),
            str(BIN / program),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_first_boot_leaks_no_secret(fleet: Fleet, tmp_path: Path) -> None:
    # Provisioning under trace too: the one-time password may only reach bootstrap.json.
    work = tmp_path / "work"
    work.mkdir()
    bootstrap = work / "bootstrap.json"
    short = f"machine/{fresh('leak')}"
    provisioned = _traced(
        tmp_path / "provision.trace",
        "bureau",
        "machine",
        "provision",
        short,
        "--credential-file",
        fleet.credential_file,
        "--output",
        bootstrap,
    )
    assert provisioned.returncode == 0, provisioned.stderr
    one_time = json.loads(bootstrap.read_text())["password"]

    state = work / "state"
    booted = _traced(
        tmp_path / "boot.trace",
        "bureau-launcher",
        "--bootstrap-file",
        bootstrap,
        "--machine-name",
        short,
        "--state-dir",
        state,
        "--first-boot-only",
        "--key-storage",
        "systemd-creds",
    )
    assert booted.returncode == 0, booted.stderr
    # systemd-creds really ran (so its argv and environment were traced).
    assert "systemd-creds" in (tmp_path / "boot.trace").read_text()

    opened = subprocess.run(
        ["systemd-creds", "decrypt", "--name=machine-key", str(state / "machine-key.cred"), "-"],
        capture_output=True,
        check=True,
    )
    private_key = opened.stdout.decode().strip()
    localpart = f"{fleet.name}/{short}"
    permanent = hashlib.sha256(
        f"bureau-machine-permanent:{localpart}:{private_key}".encode()
    ).hexdigest()
    canaries = {
        "one-time password": one_time,
        "permanent password": permanent,
        "private key": private_key,
    }

    outputs = {
        "provision stderr": provisioned.stderr,
        "provision stdout": provisioned.stdout,
        "boot stderr": booted.stderr,
        "boot stdout": booted.stdout,
        "provision argv/env": (tmp_path / "provision.trace").read_text(),
        "boot argv/env": (tmp_path / "boot.trace").read_text(),
        "hub log": (fleet.hub.hub.dir / "homeserver.log").read_text(errors="replace"),
    }
    assert '"level": "debug"' in booted.stderr or "debug" in booted.stderr.lower()
    for what, text in outputs.items():
        for canary, value in canaries.items():
            assert value not in text, f"{canary} leaked into {what}"
    for path, data in _files_under(work).items():
        for canary, value in canaries.items():
            assert value.encode() not in data, f"{canary} leaked into {path}"
    # And the key is sealed, never plain, in its store.
    assert not (state / "machine-key.txt").exists()
