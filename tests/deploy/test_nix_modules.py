"""deploy/nix: the flake and its NixOS and Home Manager modules parse with Debian's
nix-instantiate, and the profile they write (evaluated for real from the shared
profile-env.nix) uses exactly the Python model's variable names and verifies with it."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from bureau.profile import model, sources

NIX = Path(__file__).resolve().parents[2] / "deploy" / "nix"
FILES = sorted(NIX.rglob("*.nix"))

# The seed's NixOS example.
SEED_EXAMPLE = {
    "state": "shared-cache-backed",
    "substrateMode": "shared-cache-backed",
    "remoteCache": "grpcs://bazel-cache.example.internal:9092",
    "instanceName": "default",
    "credentialHelper": (
        "bazel-cache.example.internal=/run/current-system/sw/bin/gf-reapi-credhelper"
    ),
    "credentialHelperTokenFile": "/run/user/1000/gloriousflywheel/gf-reapi-token.jwt",
    "attic": {
        "server": "https://nix-cache.example.internal",
        "cache": "main",
        "publicKey": "main:" + "A" * 43 + "=",
    },
}


def _evaluate(cfg: Mapping[str, object]) -> dict[str, object]:
    expression = (
        f"import {NIX / 'modules/profile-env.nix'} (builtins.fromJSON ''{json.dumps(cfg)}'')"
    )
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    evaluated: dict[str, object] = json.loads(result.stdout)
    return evaluated


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(NIX)) for p in FILES])
def test_every_nix_file_parses(path: Path) -> None:
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_seed_example_writes_a_profile_the_model_verifies() -> None:
    evaluated = _evaluate(SEED_EXAMPLE)
    variables = evaluated["variables"]
    assert isinstance(variables, dict)
    assert set(variables) <= set(model.VARIABLES)
    assert model.violations(variables) == []
    assert variables[model.CACHE] == SEED_EXAMPLE["remoteCache"]
    # Both files the modules write read back as the same profile.
    assert sources.parse_env_file(str(evaluated["shellScript"])) == variables
    assert sources.parse_env_file(str(evaluated["envFile"])) == variables
    assert evaluated["atticSubstituter"] == {
        "url": "https://nix-cache.example.internal/main",
        "publicKey": SEED_EXAMPLE["attic"]["publicKey"],  # type: ignore[index]
    }


def test_every_option_maps_to_exactly_the_models_variables() -> None:
    everything = {
        **SEED_EXAMPLE,
        "state": "local-proof",
        "substrateMode": "executor-backed",
        "executor": "grpcs://executor.example.internal:8980",
    }
    variables = _evaluate(everything)["variables"]
    assert isinstance(variables, dict)
    assert sorted(variables) == sorted(model.VARIABLES)
    assert variables[model.LOCAL_PROOF] == "port-forward"
    assert model.violations(variables) == []


def test_unattached_writes_only_the_state_and_no_trust() -> None:
    evaluated = _evaluate({"state": "unattached"})
    assert evaluated["variables"] == {model.STATE: "unattached"}
    assert evaluated["atticSubstituter"] is None


def test_modules_name_only_model_variables_and_the_seed_options() -> None:
    names = set()
    for path in FILES:
        names |= set(re.findall(r"\b((?:GF|BAZEL)_[A-Z_]+)\b", path.read_text()))
    assert names == set(model.VARIABLES)
    options = (NIX / "modules/options.nix").read_text()
    for option in (
        "enable",
        "state",
        "substrateMode",
        "remoteCache",
        "executor",
        "instanceName",
        "credentialHelper",
        "credentialHelperTokenFile",
        "toolsPackage",
        "server",
        "cache",
        "publicKey",
    ):
        assert re.search(rf"^\s+{option} = ", options, re.MULTILINE), option


def test_nixos_trusts_attic_and_home_manager_does_not() -> None:
    nixos = (NIX / "modules/nixos.nix").read_text()
    home = (NIX / "modules/home-manager.nix").read_text()
    assert 'environment.etc."profile.d/gloriousflywheel.sh"' in nixos
    assert "environment.sessionVariables" in nixos
    assert "extra-trusted-public-keys" in nixos
    assert 'home.file.".config/gloriousflywheel/profile.env"' in home
    assert "home.sessionVariables" in home
    assert "nix.settings" not in home
    assert "trusted-public-keys" not in home
    flake = (NIX / "flake.nix").read_text()
    for output in (
        "nixosModules.flywheel-profile",
        "homeManagerModules.flywheel-profile",
        "gloriousflywheel-profile-tools",
    ):
        assert output in flake
