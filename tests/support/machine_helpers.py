"""Arrangement shared by the machine tests and the bench: provision through the real CLI,
then boot."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub_fleet import Fleet, fresh
from processes import echo_received, run, unix_request

from bureau.operator import credentials
from bureau.proxy.scrub import MIN_NEEDLE
from bureau.wire import names, rooms


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


def provision(fleet: Fleet, tmp_path: Path, short: str | None = None) -> Provisioned:
    """``short``: the machine's name in the fleet (``machine/NAME``), a fresh one unless
    given; its bootstrap file and state directory go in ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    short = short or f"machine/{fresh('w')}"
    bootstrap = tmp_path / "bootstrap.json"
    result = run(
        "bureau",
        "machine",
        "provision",
        short,
        "--credential-file",
        fleet.credential_file,
        "--output",
        bootstrap,
    )
    assert result.returncode == 0, result.stderr
    return Provisioned(fleet, short, f"{fleet.name}/{short}", bootstrap, tmp_path / "state")


def boot(machine: Provisioned, *extra: str) -> subprocess.CompletedProcess[str]:
    """The machine's first boot, as run."""
    return run(
        "bureau-launcher",
        "--bootstrap-file",
        machine.bootstrap,
        "--machine-name",
        machine.short_name,
        "--state-dir",
        machine.state_dir,
        "--first-boot-only",
        *extra,
    )


@dataclass(frozen=True)
class Enrolled:
    """A machine past first boot, with plain key storage so tests can use the age CLI."""

    machine: Provisioned

    @property
    def state_dir(self) -> Path:
        return self.machine.state_dir

    @property
    def plain_key(self) -> Path:
        return self.machine.state_dir / "machine-key.txt"

    @property
    def public_key(self) -> str:
        return (self.machine.state_dir / "machine-key.pub").read_text().strip()


def point_at(machine: Provisioned, url: str) -> None:
    """Send this machine's first boot, and so its session, through ``url`` (a fault
    front) instead of the hub."""
    data = json.loads(machine.bootstrap.read_text())
    data["homeserver_url"] = url
    machine.bootstrap.write_text(json.dumps(data))


def enroll(fleet: Fleet, tmp_path: Path, homeserver_url: str | None = None) -> Enrolled:
    machine = provision(fleet, tmp_path)
    if homeserver_url is not None:
        point_at(machine, homeserver_url)
    result = boot(machine, "--key-storage", "plain")
    assert result.returncode == 0, result.stderr
    return Enrolled(machine)


def services_file(tmp_path: Path, upstream: str, name: str = "services.json") -> Path:
    path = tmp_path / name
    path.write_text(
        json.dumps(
            {
                "api": {
                    "upstream_url": upstream,
                    "auth_scheme": "Bearer",
                    "inject_headers": {"Authorization": "TOKEN"},
                },
            }
        )
    )
    return path


def provision_credentials(
    fleet: Fleet, machine: Enrolled, principal: str, services: Path, secrets: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    return run(
        "bureau",
        "credentials",
        "provision",
        "--credential-file",
        fleet.credential_file,
        "--machine",
        machine.machine.short_name,
        "--principal",
        principal,
        "--services",
        services,
        *flags,
        stdin=secrets,
    )


def proxy_socket(run_dir: Path, principal: str = "agent/alpha") -> Path:
    return run_dir / "fleet" / "prod" / f"{principal}.proxy.sock"


def served_headers(socket: Path) -> dict[str, str] | None:
    """What the echo upstream received through the proxy on ``socket``, read from its
    record (processes.echo_received); None if the request did not go through. What the
    workload saw, the echo in the reply, is checked on the way: the same headers, with
    the injected credential ``*``s of the same length (``masked``)."""
    request_id = uuid.uuid4().hex
    try:
        reply = unix_request(
            socket, "GET", "/http/api/x", headers={"X-Request-Id": request_id}, timeout=5
        )
    except OSError:
        return None
    if reply.status != 200:
        return None
    received = echo_received(request_id)
    assert received is not None, "the echo upstream recorded no such request"
    headers: dict[str, str] = received["headers"]
    assert reply.json()["headers"] == masked(headers), "the workload saw a credential"
    return headers


def masked(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` as the workload sees them echoed: the credential in each header the
    tests' routes inject (Authorization after its scheme, X-Api-Key and X-Generation
    whole) overwritten with ``*`` of its length, when long enough to be looked for
    (scrub.MIN_NEEDLE)."""
    out = dict(headers)
    for name in ("authorization", "x-api-key", "x-generation"):
        value = out.get(name)
        if value is None:
            continue
        scheme, space, token = value.rpartition(" ") if name == "authorization" else ("", "", value)
        if len(token) >= MIN_NEEDLE:
            out[name] = scheme + space + "*" * len(token)
    return out


def served_token(socket: Path) -> str | None:
    headers = served_headers(socket)
    return None if headers is None else str(headers.get("authorization"))


def eventually(check: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def assign(fleet: Fleet, machine: Enrolled, principal: str = "agent/alpha", *flags: str) -> None:
    result = run(
        "bureau",
        "machine",
        "assign",
        machine.machine.short_name,
        "--principal",
        principal,
        "--credential-file",
        fleet.credential_file,
        *flags,
    )
    assert result.returncode == 0, result.stderr


def credentials_event(
    fleet: Fleet, machine: Enrolled, principal: str = "agent/alpha"
) -> dict[str, Any]:
    """The m.bureau.credentials content published for a principal on this machine."""
    admin = credentials.admin_client(fleet.creds)
    server = fleet.hub.server_name
    room = admin.resolve_alias(names.room_alias(machine.machine.localpart, server))
    assert room is not None
    content = admin.get_state(room, rooms.CREDENTIALS, f"{fleet.name}/{principal}:{server}")
    assert content is not None
    return content


def list_credentials(fleet: Fleet, machine: Enrolled, *flags: str):  # type: ignore[no-untyped-def]
    """`bureau credentials list` for this machine, as run."""
    return run(
        "bureau",
        "credentials",
        "list",
        "--credential-file",
        fleet.credential_file,
        "--machine",
        machine.machine.short_name,
        *flags,
    )


def credentials_listed(fleet: Fleet, machine: Enrolled) -> list[dict[str, Any]]:
    """What `bureau credentials list --json` shows for this machine."""
    listed = list_credentials(fleet, machine, "--json")
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, Any]] = json.loads(listed.stdout)
    return result
