"""script/configure-substituter, script/setup-nix and script/bootstrap-machine as an
operator runs them, under a root prefix (BUREAU_ROOT, NIX_CONF_DIR) so the real host is
untouched: idempotent, one-line errors, and a worker that ends up enrolled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cache_settings import CACHE_KEY, CACHE_URL, set_cache
from conftest import Fleet, run
from machine_helpers import provision

from bureau import nix_conf, unit_files

SCRIPTS = Path(__file__).resolve().parents[2] / "script"
VENV = Path(sys.executable).parent.parent


@pytest.fixture
def root(empty_root: Path) -> Path:
    return empty_root


def _script(name: str, *args: str | Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [SCRIPTS / name, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("name", ["configure-substituter", "setup-nix", "bootstrap-machine"])
def test_every_script_has_help(name: str) -> None:
    result = _script(name, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: script/{name}")


def test_configure_substituter_twice_leaves_one_line_of_each(tmp_path: Path) -> None:
    env = {"NIX_CONF_DIR": str(tmp_path / "nix")}
    first = _script("configure-substituter", CACHE_URL, CACHE_KEY, env=env)
    assert first.returncode == 0, first.stderr
    second = _script("configure-substituter", CACHE_URL, CACHE_KEY, env=env)
    assert second.returncode == 0
    assert "already trusts" in second.stdout
    conf = tmp_path / "nix" / "nix.conf"
    assert conf.read_text() == (
        f"extra-substituters = {CACHE_URL}\nextra-trusted-public-keys = {CACHE_KEY}\n"
    )
    assert oct(conf.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in conf.parent.iterdir()] == ["nix.conf"]  # no temporaries left


@pytest.mark.parametrize(
    "existing",
    [
        "",
        "substituters = https://cache.nixos.org\n",
        "extra-substituters = http://other  # ours\nsandbox = true\n",
        f"substituters = {CACHE_URL}\ntrusted-public-keys = {CACHE_KEY}\n",
        f"extra-trusted-public-keys = other:{'B' * 43}=\n",
    ],
)
def test_script_and_doctor_apply_the_same_rule(tmp_path: Path, existing: str) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text(existing)
    result = _script(
        "configure-substituter", CACHE_URL, CACHE_KEY, env={"NIX_CONF_DIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == nix_conf.with_trust(existing, CACHE_URL, CACHE_KEY)
    assert nix_conf.trusts(conf.read_text(), CACHE_URL, CACHE_KEY)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://x", CACHE_KEY], "URL: 'ftp://x' is not an http:// or https:// URL"),
        ([CACHE_URL, "bureau:short"], "PUBLIC_KEY: 'bureau:short' is not a Nix public key"),
        ([CACHE_URL], "expected URL and PUBLIC_KEY"),
    ],
)
def test_configure_substituter_refuses_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _script("configure-substituter", *args, env={"NIX_CONF_DIR": str(tmp_path)})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"configure-substituter: {message}")
    assert not (tmp_path / "nix.conf").exists()


def test_setup_nix_checks_and_leaves_an_installed_nix_alone(tmp_path: Path) -> None:
    installed = _script("setup-nix", "--check")
    assert installed.returncode == 0, installed.stderr
    assert "is installed" in installed.stdout
    again = _script("setup-nix")
    assert again.returncode == 0
    assert "installing" not in again.stdout
    # A PATH without nix: the check says so in one line and installs nothing.
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "env"):
        (bare / tool).symlink_to(shutil.which(tool) or tool)
    missing = _script("setup-nix", "--check", env={"PATH": str(bare)})
    assert missing.returncode == 1
    assert missing.stderr == "setup-nix: Nix is not installed (script/setup-nix installs it)\n"


@pytest.mark.slow
def test_bootstrap_machine_enrolls_a_worker_and_runs_again_harmlessly(
    fleet: Fleet,
    root: Path,
    tmp_path: Path,
) -> None:
    published = set_cache(fleet, CACHE_KEY)
    assert published.returncode == 0, published.stderr
    machine = provision(fleet, tmp_path)
    env = {"BUREAU_ROOT": str(root), "BUREAU_VENV": str(VENV)}
    args: list[str | Path] = [
        "--substituter-url",
        CACHE_URL,
        "--cache-public-key",
        CACHE_KEY,
        "--no-start",
        machine.bootstrap,
    ]
    first = _script("bootstrap-machine", *args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"first boot of {machine.localpart}" in first.stdout
    assert "all " in first.stdout
    assert "checks pass" in first.stdout
    assert not machine.bootstrap.exists()
    state = root / "var/lib/bureau"
    assert (state / "machine-key.cred").exists()
    assert not (state / "machine-key.txt").exists()
    conf = (root / "etc/bureau/machine.conf").read_text()
    assert f"BUREAU_MACHINE_NAME={machine.localpart}\n" in conf
    for name in unit_files.SERVICES:
        assert (root / "etc/systemd/system" / name).read_text() == unit_files.packaged(name)
    nix = (root / "etc/nix/nix.conf").read_text()
    assert nix.count(CACHE_URL) == 1
    assert nix.count(CACHE_KEY) == 1
    listed = run("bureau", "machine", "list", "--json", "--credential-file", fleet.credential_file)
    (record,) = [r for r in json.loads(listed.stdout) if r["name"] == machine.localpart]
    assert record["state"] == "enrolled"

    again = _script("bootstrap-machine", *args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "first boot already done" in again.stdout
    assert "already trusts" in again.stdout
    assert "fixed" not in again.stdout


def test_bootstrap_machine_refuses_a_half_given_substituter(tmp_path: Path) -> None:
    result = _script("bootstrap-machine", "--substituter-url", CACHE_URL, tmp_path / "b.json")
    assert result.returncode == 2
    assert result.stderr == (
        "bootstrap-machine: --substituter-url and --cache-public-key go together\n"
    )
