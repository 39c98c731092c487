"""Pure rules behind the doctors and scripts: nix.conf trust, power-level drift, the
machine.conf and fleet-cache wire types, account databases, the tmpfiles entry, bwrap's
version and the sandbox probe's options."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bureau import nix_conf, unit_files
from bureau.doctor import sandbox_checks
from bureau.errors import InputError
from bureau.host import Account, parse_accounts
from bureau.launcher import sandbox_policy
from bureau.wire import rooms
from bureau.wire.files import FleetCache, MachineConf

KEY = "bureau:" + "A" * 43 + "="
URL = "http://attic.internal:5580/bureau"


def test_nix_conf_trust_is_added_once_and_kept() -> None:
    text = "sandbox = true\n"
    trusted = nix_conf.with_trust(text, URL, KEY)
    assert (
        trusted
        == f"sandbox = true\nextra-substituters = {URL}\nextra-trusted-public-keys = {KEY}\n"
    )
    assert nix_conf.trusts(trusted, URL, KEY)
    assert nix_conf.with_trust(trusted, URL, KEY) is trusted


def test_nix_conf_base_settings_count_and_comments_are_not_values() -> None:
    assert nix_conf.trusts(f"substituters = {URL}\ntrusted-public-keys = {KEY}\n", URL, KEY)
    assert not nix_conf.trusts(f"substituters = x # {URL}\ntrusted-public-keys = {KEY}\n", URL, KEY)


def test_power_level_drift_names_each_difference_and_the_merge_mends_it() -> None:
    expected = rooms.fleet_power_levels("@admin:x")
    actual = {**expected, "state_default": 0, "users": {"@admin:x": 50, "@other:x": 100}}
    assert rooms.power_level_drift(actual, expected) == [
        "users.@admin:x is 50, not 100",
        "state_default is 0, not 100",
    ]
    merged = rooms.with_power_levels(actual, expected)
    assert rooms.power_level_drift(merged, expected) == []
    assert merged["users"]["@other:x"] == 100  # other operators are kept


def test_machine_conf_round_trip_and_located_errors() -> None:
    env = {
        "BUREAU_HOMESERVER_URL": "https://m.example",
        "BUREAU_MACHINE_NAME": "bureau/fleet/prod/machine/w1",
        "BUREAU_SERVER_NAME": "example",
        "BUREAU_FLEET": "bureau/fleet/prod",
    }
    assert MachineConf.from_env(env, "machine.conf").to_env() == env
    with pytest.raises(InputError, match=r"machine\.conf: BUREAU_MACHINE_NAME: expected the full"):
        MachineConf.from_env({**env, "BUREAU_MACHINE_NAME": "machine/w1"}, "machine.conf")
    with pytest.raises(InputError, match=r"machine\.conf: BUREAU_FLEET: missing"):
        MachineConf.from_env({**env, "BUREAU_FLEET": ""}, "machine.conf")


def test_fleet_cache_validates_its_keys() -> None:
    cache = FleetCache.from_json({"url": URL, "name": "bureau", "public_keys": [KEY]})
    assert FleetCache.from_json(cache.to_json()) == cache
    with pytest.raises(InputError, match=r"public_keys\[0\]: 'x' is not a Nix public key"):
        FleetCache.from_json({"url": URL, "name": "bureau", "public_keys": ["x"]})
    with pytest.raises(InputError, match="url: 'ftp://x' is not an http"):
        FleetCache.from_json({"url": "ftp://x", "name": "bureau", "public_keys": [KEY]})


def test_account_databases_and_tmpfiles_entry() -> None:
    assert parse_accounts("root:x:0:0::/root:/bin/sh\nbad line\nbureau:x:999:998::/:/x\n") == {
        "root": Account("root", 0),
        "bureau": Account("bureau", 999),
    }
    assert unit_files.directories("# c\nd /x 0750 a b -\nL /y - - - - /z\n") == [
        unit_files.Directory(Path("/x"), 0o750, "a", "b")
    ]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("bubblewrap 0.8.0\n", (0, 8, 0)),
        ("bubblewrap 0.11.0", (0, 11, 0)),
        ("bubblewrap 0.4.1", (0, 4, 1)),
        ("", None),
        ("bubblewrap\n", None),
    ],
)
def test_bwrap_version_is_read_as_numbers(text: str, version: tuple[int, ...] | None) -> None:
    assert sandbox_checks.bwrap_version(text) == version


def test_bwrap_before_0_8_is_too_old_and_0_11_is_not() -> None:
    assert (0, 4, 1) < sandbox_checks.MIN_BWRAP <= (0, 8, 0) < (0, 11, 0)


def test_the_doctors_probe_uses_the_launchers_namespace_options() -> None:
    """The doctor tries what the launcher will ask of bwrap, not something milder."""
    spec = sandbox_policy.parse({"template": "t/t:s", "command": ["true"]})
    checked = sandbox_policy.check(spec, sandbox_policy.Machine(protected=()), [])
    argv = sandbox_policy.bwrap_argv(
        checked, workspace_fd=3, socket_dir_fd=4, block_fd=5, status_fd=6
    )
    options = argv[: argv.index("--")]
    pairs = set(itertools.pairwise(options))
    probe = sandbox_checks.PROBE_OPTIONS
    for i, token in enumerate(probe):
        if token.startswith("--"):
            assert token in options, token
        else:  # an option's value
            assert (probe[i - 1], token) in pairs, token
