"""deploy/: the production hub's configure script renders every piece's configuration from
one set of secrets (made once, 0600, consistent across pieces, re-runs change nothing),
compose.yaml carries no secret, and machine.conf.example is a valid machine.conf."""

from __future__ import annotations

import stat
import subprocess
import tomllib
from pathlib import Path

import yaml

from bureau.files import parse_env
from bureau.wire.files import MachineConf

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FLAGS = [
    "--server-name",
    "bureau.example",
    "--public-url",
    "https://matrix.bureau.example",
    "--turn-host",
    "turn.bureau.example",
    "--attic-url",
    "https://cache.bureau.example",
]


def _configure(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DEPLOY / "hub" / "configure", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_configure_renders_one_consistent_private_hub(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    first = _configure("--dir", hub, *FLAGS)
    assert first.returncode == 0, first.stderr
    env = parse_env((hub / "hub.env").read_text(), "hub.env")
    synapse = yaml.safe_load((hub / "synapse/homeserver.yaml").read_text())
    continuwuity = tomllib.loads((hub / "continuwuity/continuwuity.toml").read_text())
    attic = tomllib.loads((hub / "attic/server.toml").read_text())
    coturn_lines = (hub / "coturn/turnserver.conf").read_text().splitlines()
    coturn = dict(ln.split("=", 1) for ln in coturn_lines if "=" in ln and ln[0] != "#")

    assert synapse["server_name"] == continuwuity["global"]["server_name"] == "bureau.example"
    assert synapse["registration_requires_token"] is True
    assert synapse["database"]["args"]["password"] == env["POSTGRES_PASSWORD"]
    # One TURN secret, known to the homeserver and coturn only.
    assert synapse["turn_shared_secret"] == env["TURN_SECRET"]
    assert continuwuity["global"]["turn_secret"] == env["TURN_SECRET"]
    assert coturn["static-auth-secret"] == env["TURN_SECRET"]
    assert continuwuity["global"]["registration_token"] == env["REGISTRATION_TOKEN"]
    assert (hub / "registration-token").read_text() == env["REGISTRATION_TOKEN"] + "\n"
    assert attic["jwt"]["signing"]["token-hs256-secret-base64"] == env["ATTIC_JWT_SECRET"]
    assert env["COMPOSE_PROFILES"] == "synapse"
    secrets = [env[k] for k in ("TURN_SECRET", "REGISTRATION_TOKEN", "POSTGRES_PASSWORD")]
    assert len(set(secrets)) == 3
    assert all(len(s) >= 40 for s in secrets)
    for path in hub.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = {p: p.read_bytes() for p in hub.rglob("*") if p.is_file()}

    again = _configure("--dir", hub)
    assert again.returncode == 0, again.stderr
    assert "wrote" not in again.stdout
    assert {p: p.read_bytes() for p in hub.rglob("*") if p.is_file()} == before


def test_configure_refuses_to_change_a_configured_hub_in_one_line(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    assert _configure("--dir", hub, *FLAGS).returncode == 0
    result = _configure("--dir", hub, "--server-name", "other.example")
    assert result.returncode == 2
    assert result.stderr == (
        "configure: --server-name: this hub was configured with 'bureau.example'; "
        "use another --dir\n"
    )
    missing = _configure("--dir", tmp_path / "new", "--server-name", "x.example")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert "is required on the first run" in missing.stderr


def test_compose_takes_every_secret_from_hub_env() -> None:
    text = (DEPLOY / "hub" / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {"postgres", "synapse", "continuwuity", "coturn", "attic"}
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == (
        "${POSTGRES_PASSWORD}"
    )
    for name in ("synapse", "continuwuity", "coturn", "attic"):
        volumes = compose["services"][name]["volumes"]
        assert any(v.startswith("${HUB_DIR}/") and v.endswith(":ro") for v in volumes)


def test_machine_conf_example_is_a_valid_machine_conf() -> None:
    path = DEPLOY / "systemd" / "machine.conf.example"
    conf = MachineConf.from_env(parse_env(path.read_text(), str(path)), str(path))
    assert conf.machine_name == "bureau/fleet/prod/machine/worker-01"
