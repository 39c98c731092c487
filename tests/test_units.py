"""The systemd units as shipped in the package: `systemd-analyze verify` accepts them (in a
root of their own that holds the binaries they name), they are the files in systemd/, and
they say what the design needs: notify with a watchdog, the sealed key, the hardening."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bureau import unit_files as units

REPO = Path(__file__).resolve().parent.parent
UNITS = ("bureau-launcher.service", "bureau-daemon.service")


def _settings(name: str) -> list[tuple[str, str]]:
    """(key, value) pairs of a unit, continuation lines joined."""
    text = units.packaged(name).replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), " ".join(value.split())))
    return pairs


def _value(name: str, key: str) -> str:
    return " ".join(v for k, v in _settings(name) if k == key)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A filesystem root with the host's systemd units, ours installed as doctor --fix
    installs them, the binaries at the paths ExecStart names, and machine.conf."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in UNITS:
        target = root / "etc/systemd/system" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(units.packaged(name))
    for binary in units.binaries():
        path = root / binary.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    conf = root / "etc/bureau/machine.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("BUREAU_MACHINE_NAME=bureau/fleet/prod/machine/w1\n")
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_systemd_analyze_verify_passes(unit_root: Path) -> None:
    result = _verify(unit_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_verify_catches_a_missing_binary(unit_root: Path) -> None:
    (unit_root / "usr/local/bin/bureau-daemon").unlink()
    result = _verify(unit_root)
    assert result.returncode != 0
    assert "bureau-daemon" in result.stderr


def test_units_in_the_tree_are_the_packaged_ones() -> None:
    for name in (*UNITS, units.TMPFILES):
        assert (REPO / "systemd" / name).read_text() == units.packaged(name)


def test_units_name_our_console_scripts() -> None:
    assert units.binaries() == ["/usr/local/bin/bureau-launcher", "/usr/local/bin/bureau-daemon"]


@pytest.mark.parametrize("name", UNITS)
def test_both_units_notify_watchdog_restart_and_harden(name: str) -> None:
    assert _value(name, "Type") == "notify"
    assert _value(name, "NotifyAccess") == "main"
    assert _value(name, "WatchdogSec") == "30"
    assert _value(name, "Restart") == "on-failure"
    assert _value(name, "EnvironmentFile") == "/etc/bureau/machine.conf"
    assert _value(name, "User") == "bureau"
    assert _value(name, "LimitCORE") == "0"
    assert _value(name, "ProtectSystem") == "strict"
    assert _value(name, "PrivateTmp") == "yes"
    assert _value(name, "NoNewPrivileges") == "yes"
    assert _value(name, "CapabilityBoundingSet") == ""


def test_launcher_loads_the_sealed_key_and_keeps_proxies_across_restarts() -> None:
    name = "bureau-launcher.service"
    assert _value(name, "LoadCredentialEncrypted") == "machine-key:/var/lib/bureau/machine-key.cred"
    assert _value(name, "ReadWritePaths") == "/var/lib/bureau /run/bureau"
    assert _value(name, "KillMode") == "process"


def test_daemon_requires_the_launcher_and_cannot_see_the_key() -> None:
    name = "bureau-daemon.service"
    assert _value(name, "Requires") == "bureau-launcher.service"
    assert "bureau-launcher.service" in _value(name, "After").split()
    assert _value(name, "ReadWritePaths") == "/run/bureau"
    hidden = _value(name, "InaccessiblePaths")
    assert "-/var/lib/bureau/machine-key.txt" in hidden.split()
    assert "-/run/credentials/bureau-launcher.service" in hidden.split()
    # Lost standing (77) must not be restarted into a loop.
    assert "77" in _value(name, "RestartPreventExitStatus").split()


def test_tmpfiles_entry_is_what_doctor_checks() -> None:
    assert units.directories() == [
        units.Directory(Path("/etc/bureau"), 0o755, "root", "root"),
        units.Directory(Path("/var/lib/bureau"), 0o700, "bureau", "bureau"),
        units.Directory(Path("/run/bureau"), 0o750, "bureau", "bureau-operators"),
    ]
