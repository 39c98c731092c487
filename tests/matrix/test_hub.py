"""`bureau hub up|status|down` against real Synapse processes."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import Fleet, RunningHub, free_port, one_line_error, run

from bureau.files import make_dirs
from bureau.hub import Hub, HubSettings
from bureau.operator import credentials


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _, state = line.split()[1:4]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_session_hub_is_loopback_only_and_token_protected(hub: RunningHub) -> None:
    port = int(hub.url.rsplit(":", 1)[1])
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; nothing on 0.0.0.0 or ::.
    assert _listening_addresses(port) == {"0100007F"}
    assert stat.S_IMODE(hub.token_file.stat().st_mode) == 0o600
    request = f"{hub.url}/_matrix/client/v3/register"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, data=b'{"username": "x", "password": "y"}')
    assert info.value.code == 401
    flows = json.load(info.value)["flows"]
    assert all("m.login.registration_token" in flow["stages"] for flow in flows)


def test_up_on_running_hub_changes_nothing(hub: RunningHub) -> None:
    config = hub.hub.dir / "homeserver.yaml"
    before = (config.read_bytes(), hub.token_file.read_bytes())
    result = run("bureau", "hub", "up", "--state-dir", hub.hub.dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hub.url
    assert "already running" in result.stderr
    assert (config.read_bytes(), hub.token_file.read_bytes()) == before
    status = run("bureau", "hub", "status", "--state-dir", hub.hub.dir)
    assert status.returncode == 0
    assert hub.url in status.stdout


def test_conflicting_server_name_is_refused(hub: RunningHub) -> None:
    result = run("bureau", "hub", "up", "--state-dir", hub.hub.dir, "--server-name", "other.test")
    assert result.returncode == 1
    assert "generated for server name 'bureau.local'" in one_line_error(result)


@pytest.mark.slow
def test_full_cycle_up_status_down(tmp_path: Path) -> None:
    """Also under umask 000: what the hub and Synapse write (the database holds every
    access token) is the hub user's alone, and its log holds no registration token."""
    state = tmp_path / "hub"
    port = free_port()
    umask = os.umask(0)
    try:
        up = run(
            "bureau",
            "hub",
            "up",
            "--state-dir",
            state,
            "--port",
            str(port),
            "--server-name",
            "cycle.test",
        )
    finally:
        os.umask(umask)
    try:
        assert up.returncode == 0, up.stderr
        token = (state / "registration-token").read_text().strip()
        registered = run(
            "bureau",
            "matrix",
            "setup",
            "--homeserver",
            up.stdout.strip(),
            "--server-name",
            "cycle.test",
            "--registration-token-file",
            state / "registration-token",
            "--credential-file",
            tmp_path / "bureau-creds",
        )
        assert registered.returncode == 0, registered.stderr
        assert token not in (state / "homeserver.log").read_text()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        public = {"hub.json", "hub.pid"}  # port, server name and pid: `bureau hub status`
        assert {modes[name] for name in public} == {0o644}
        private = {name: mode for name, mode in modes.items() if name not in public}
        assert {name: mode & 0o077 for name, mode in private.items()} == dict.fromkeys(
            private, 0
        ), private
        assert {"homeserver.db", "homeserver.log", "synapse.out", "signing.key"} <= set(private)
        url = up.stdout.strip()
        assert url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/_matrix/client/versions") as resp:
            assert "versions" in json.load(resp)
        pid = json.loads((state / "hub.pid").read_text())["pid"]
        assert Path(f"/proc/{pid}").exists()
    finally:
        down = run("bureau", "hub", "down", "--state-dir", state)
    assert down.returncode == 0
    assert f"stopped (pid {pid})" in down.stdout
    assert (
        not Path(f"/proc/{pid}/cmdline").exists()
        or b"synapse" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    status = run("bureau", "hub", "status", "--state-dir", state)
    assert status.returncode == 3
    assert status.stdout.strip() == "stopped"
    again = run("bureau", "hub", "down", "--state-dir", state)
    assert again.returncode == 0
    assert again.stdout.strip() == "not running"


def test_rooms_created_without_a_version_get_11(hub: RunningHub, fleet: Fleet) -> None:
    """Upstream's tools create rooms without a room_version and list the creator in the
    power levels (upstream cmd/bureau/matrix/setup.go:336 ensureRoom), which version 12
    refuses: the hub's default must be a version where that works."""
    admin = credentials.admin_client(fleet.creds)
    room = admin.create_room(
        {
            "preset": "private_chat",
            "power_level_content_override": {"users": {fleet.creds.admin_user: 100}},
        },
        what="create a room the upstream way",
    )
    create = admin.get_state(room, "m.room.create", "") or {}
    assert create.get("room_version") == "11"


def test_a_hub_generated_before_the_room_default_gets_it(tmp_path: Path) -> None:
    """Regenerating is never needed: the next `up` adds what an older bureau did not
    write, and keeps an operator's own value."""
    the_hub = Hub(tmp_path / "hub", bcrypt_rounds=4)
    make_dirs(the_hub.dir, 0o700)
    settings = HubSettings("old.test", free_port())
    the_hub._generate_once(settings)
    config = the_hub.dir / "homeserver.yaml"
    generated = yaml.safe_load(config.read_text())
    assert generated["default_room_version"] == "11"
    del generated["default_room_version"]
    config.write_text(yaml.safe_dump(generated, sort_keys=False))
    the_hub._generate_once(settings)
    assert yaml.safe_load(config.read_text()) == {**generated, "default_room_version": "11"}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    config.write_text(yaml.safe_dump({**generated, "default_room_version": "10"}))
    the_hub._generate_once(settings)
    assert yaml.safe_load(config.read_text())["default_room_version"] == "10"
