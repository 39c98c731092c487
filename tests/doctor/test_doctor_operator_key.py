"""A machine enrolled before operator signatures pins no operator key, and its launcher
refuses every ensure: `bureau machine doctor` says so, and `--fix --operator-key FILE` pins
the key in FILE there, locally (#19 part 1). A key the machine revoked stays revoked."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Fleet, run
from machine_helpers import boot, provision

from bureau.launcher.operator_trust import load_pinned, save_pinned
from bureau.operator.signed import public_key_file
from bureau.wire.operator_keys import TrustedKeys


@pytest.fixture
def root(empty_root: Path) -> Path:
    return empty_root


def _doctor(root: Path, *flags: str | Path):  # type: ignore[no-untyped-def]
    return run("bureau", "machine", "doctor", "--root", root, *flags)


def _line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line[6:].startswith(name))


def test_doctor_pins_the_operator_key_locally(fleet: Fleet, root: Path, tmp_path: Path) -> None:
    machine = replace(provision(fleet, tmp_path), state_dir=root / "var/lib/bureau")
    booted = boot(machine, "--key-storage", "plain")
    assert booted.returncode == 0, booted.stderr
    pinned = machine.state_dir / "operator-keys.json"
    key = fleet.creds.signing_key
    assert key is not None
    assert set(json.loads(pinned.read_text())["keys"]) == {key.key_id}
    pinned.unlink()  # as on a machine enrolled before signatures

    before = _doctor(root)
    assert _line(before.stdout, "operator keys").startswith("FAIL  operator keys: none pinned")
    assert "--operator-key FILE" in _line(before.stdout, "operator keys")
    assert "the launcher refuses them" in _line(before.stdout, "unsigned events")

    pub = public_key_file(fleet.credential_file)
    assert pub.read_text() == key.public.to_text()
    fixed = _doctor(root, "--fix", "--operator-key", pub)
    assert "fixed operator keys" in fixed.stdout
    assert set(json.loads(pinned.read_text())["keys"]) == {key.key_id}
    assert stat.S_IMODE(pinned.stat().st_mode) == 0o644
    assert pinned.stat().st_uid == machine.state_dir.stat().st_uid
    after = _doctor(root)
    assert _line(after.stdout, "operator keys") == f"ok    operator keys: pinned {key.key_id}"

    # A key this machine revoked is not pinned again, whoever asks.
    save_pinned(machine.state_dir, TrustedKeys({}, {key.key_id: key.public}))
    again = _doctor(root, "--fix", "--operator-key", pub)
    assert f"{key.key_id} was revoked on this machine" in _line(again.stdout, "operator keys")
    assert load_pinned(machine.state_dir).keys == {}


def test_a_bad_operator_key_file_is_one_line(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "key.pub"
    bad.write_text("not a key\n")
    result = _doctor(root, "--fix", "--operator-key", bad)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "--operator-key" in result.stderr
