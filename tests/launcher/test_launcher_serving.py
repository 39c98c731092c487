"""bureau-launcher serving its socket, against real proxies, a real upstream, a real
Synapse for the credentials events, and the real age CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, one_line_error, run
from launcher_proc import UNSIGNED, launcher, proxies_under
from machine_helpers import (
    credentials_event,
    enroll,
    list_credentials,
    masked,
    provision,
    provision_credentials,
    services_file,
)
from processes import echo_exchange, echo_upstream, launcher_call, launcher_ensure

from bureau.operator import credentials
from bureau.wire import names, rooms

PRINCIPAL = "agent/alpha"


def _principal_id(fleet: Fleet, principal: str = PRINCIPAL) -> str:
    return f"@{fleet.name}/{principal}:{fleet.hub.server_name}"


def _wait(predicate: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _seen_token(socket: Path) -> str:
    """The Authorization the echo upstream received through the proxy on ``socket`` (its
    record); what the workload saw of it, the echo, is checked to be `*`s."""
    reply, received = echo_exchange(socket, "GET", "/http/api/x")
    assert reply.json()["headers"] == masked(received["headers"])
    return str(received["headers"]["authorization"])


@pytest.mark.slow
def test_ensure_serves_rotates_restarts_and_stops(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        assert (
            provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=first-canary-1\n"
            ).returncode
            == 0
        )
        first = credentials_event(fleet, machine)
        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:
            assert (running.socket.stat().st_mode & 0o777) == 0o660
            principal = _principal_id(fleet)
            reply = launcher_ensure(running.socket, principal, first)
            assert reply["ok"], (reply, running.log())
            socket = Path(reply["socket"])
            assert socket == run_dir / "fleet" / "prod" / "agent" / "alpha.proxy.sock"
            assert _seen_token(socket) == "Bearer first-canary-1"
            again = launcher_ensure(running.socket, principal, first)
            assert again == {"ok": True, "changed": False, "socket": str(socket)}
            (listed,) = launcher_call(running.socket, {"action": "list"})["principals"]
            assert listed["principal"] == principal
            assert listed["keys"] == ["TOKEN"]
            assert listed["services"] == ["api"]

            # Rotation under continuous load: no request fails, and after the swap every
            # request carries the new value.
            assert (
                provision_credentials(
                    fleet, machine, PRINCIPAL, services, "TOKEN=second-canary-2\n"
                ).returncode
                == 0
            )
            second = credentials_event(fleet, machine)
            failures: list[str] = []
            seen: list[str] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    try:
                        seen.append(_seen_token(socket))
                    except Exception as exc:
                        failures.append(repr(exc))

            threads = [threading.Thread(target=load) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            swapped = launcher_ensure(running.socket, principal, second)
            mark = len(seen)
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join()
            assert swapped["ok"], swapped
            assert swapped["changed"], swapped
            assert failures == []
            assert "Bearer first-canary-1" in seen[:mark]
            assert set(seen[mark + 8 :]) == {"Bearer second-canary-2"}
            old_proxies = proxies_under(run_dir)
            assert len(old_proxies) == 1

            # Proxies are forked by the template and orphaned at once: the launcher, a
            # child subreaper, is their parent. ps names each by its socket.
            (pid,) = old_proxies
            stat = Path(f"/proc/{pid}/stat").read_text()
            assert int(stat[stat.rindex(")") + 2 :].split()[1]) == running.main_pid()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            assert title[:2] == [b"bureau-proxy", b"--socket"]
            bound = Path(title[2].decode())  # the temporary name it bound, since renamed
            assert bound.parent == socket.parent
            assert bound.name.startswith(f".{socket.name}.")
            assert Path(f"/proc/{pid}/comm").read_text() == "bureau-proxy\n"

            # A proxy killed with SIGKILL comes back, with the same credentials, and the
            # launcher says how it ended.
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: proxies_under(run_dir) not in ([], [pid]))
            _wait(lambda: socket.exists() and _try(lambda: _seen_token(socket)))
            assert _seen_token(socket) == "Bearer second-canary-2"
            (listed,) = launcher_call(running.socket, {"action": "list"})["principals"]
            assert listed["restarts"] == 1
            running.wait_for("signal SIGKILL")

            stopped = launcher_call(running.socket, {"action": "stop", "principal": principal})
            assert stopped == {"ok": True, "stopped": True}
            assert not socket.exists()
            _wait(lambda: proxies_under(run_dir) == [])
            log = running.log()
        for canary in ("first-canary-1", "second-canary-2"):
            assert canary not in log


def _try(call: Any) -> bool:
    try:
        call()
    except Exception:
        return False
    return True


@pytest.mark.slow
def test_refusals_keep_the_running_proxy(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    machine = enroll(fleet, tmp_path)
    other = enroll(fleet, tmp_path / "other")
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        assert (
            provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=kept-canary\n"
            ).returncode
            == 0
        )
        good = credentials_event(fleet, machine)
        assert (
            provision_credentials(
                fleet, other, PRINCIPAL, services, "TOKEN=other-canary\n"
            ).returncode
            == 0
        )
        for_other = credentials_event(fleet, other)
        principal = _principal_id(fleet)
        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:

            def ensure(content: dict[str, Any], who: str = principal) -> dict[str, Any]:
                reply: dict[str, Any] = launcher_ensure(running.socket, who, content)
                return reply

            socket = Path(ensure(good)["socket"])
            assert _seen_token(socket) == "Bearer kept-canary"

            # Ciphertext for another machine, even when it claims to be for this one.
            claimed = {**for_other, "encrypted_for": good["encrypted_for"]}
            refusals = {
                "not encrypted for this machine": for_other,
                "not encrypted to this machine's key": claimed,
                "does not match this event's principal and services": {
                    **good,
                    "services": {
                        "api": {
                            "upstream_url": "http://evil.invalid",
                            "auth_scheme": "Bearer",
                            "inject_headers": {"Authorization": "TOKEN"},
                        }
                    },
                },
                "damaged": {
                    **good,
                    "ciphertext": base64.b64encode(
                        base64.b64decode(good["ciphertext"])[:-20]
                    ).decode(),
                },
            }
            for message, content in refusals.items():
                # Unsigned, as upstream writes them (this launcher takes those): a signature
                # would refuse the altered ones first, and these checks are what is left.
                reply = ensure({k: v for k, v in content.items() if k != "signatures"})
                assert not reply["ok"]
                assert message in reply["error"]
                assert _seen_token(socket) == "Bearer kept-canary"
            # Signed for PRINCIPAL, its signature would refuse these first: unsigned.
            unsigned = {k: v for k, v in good.items() if k != "signatures"}
            assert (
                "not in this machine's fleet"
                in ensure(unsigned, "@other/fleet/x/agent/a:bureau.local")["error"]
            )
            elsewhere = f"@{fleet.name}/machine/x:bureau.local"
            assert "is a machine" in ensure(unsigned, elsewhere)["error"]
            bad = launcher_call(running.socket, {"action": "explode"})
            assert bad == {
                "ok": False,
                "error": "action must be one of status, list, ensure, stop, relogin, trust",
            }

            # Only the launcher's uid and the daemon's may talk to it.
            # Only the launcher's uid and the daemon's may talk to it. The socket's 0660 mode
            # already keeps other users out; open it up to show the uid check on its own.
            as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            # curl is a client nobody can run; --http0.9 prints the raw JSON line back.
            client = ["curl", "-s", "--http0.9", "--unix-socket", str(running.socket), "http://l/"]
            run_dir.chmod(0o755)  # mkdtemp made it 0700: let the socket's mode decide
            closed = subprocess.run([*as_nobody, *client], capture_output=True, check=False)
            assert closed.returncode == 7  # could not connect
            running.socket.chmod(0o666)
            refused = subprocess.run(
                [*as_nobody, *client], capture_output=True, text=True, check=False
            )
            assert json.loads(refused.stdout) == {"ok": False, "error": "permission denied"}, (
                refused
            )
            running.wait_for("refused a connection")
            log = running.log()
        assert "kept-canary" not in log
        assert "other-canary" not in log


@pytest.mark.slow
def test_restarted_launcher_adopts_running_proxies(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        assert (
            provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=adopt-canary\n"
            ).returncode
            == 0
        )
        content = credentials_event(fleet, machine)
        principal = _principal_id(fleet)
        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as first:
            socket = Path(launcher_ensure(first.socket, principal, content)["socket"])
            (pid,) = proxies_under(run_dir)
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=10)
            # The launcher is gone; the proxy goes on serving.
            assert _seen_token(socket) == "Bearer adopt-canary"
            with launcher(
                machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED
            ) as second:
                (listed,) = launcher_call(second.socket, {"action": "list"})["principals"]
                assert listed["pid"] == pid
                reply = launcher_ensure(second.socket, principal, content)
                assert reply["changed"] is False
                # An adopted proxy that dies is restarted too.
                os.kill(pid, signal.SIGKILL)
                _wait(lambda: proxies_under(run_dir) not in ([], [pid]))
                _wait(lambda: _try(lambda: _seen_token(socket)))
                assert _seen_token(socket) == "Bearer adopt-canary"


def test_age_cli_interoperability(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        assert (
            provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=by-bureau\n"
            ).returncode
            == 0
        )
        published = credentials_event(fleet, machine)
        # age -d with the plain key opens what `bureau credentials provision` published.
        opened = subprocess.run(
            ["age", "-d", "-i", str(machine.plain_key)],
            input=base64.b64decode(published["ciphertext"]),
            capture_output=True,
            check=True,
        )
        plaintext = json.loads(opened.stdout)
        assert plaintext["TOKEN"] == "by-bureau"
        assert plaintext["bureau.binding"] == published["signature"]

        # A bundle made by hand with `age -r` and published as-is is served.
        principal = _principal_id(fleet, "agent/handmade")
        routes = json.loads(services.read_text())
        canonical = json.dumps(
            {"principal": principal, "services": routes}, sort_keys=True, separators=(",", ":")
        )
        binding = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
        body = json.dumps({"TOKEN": "by-hand", "bureau.binding": binding}).encode()
        sealed = subprocess.run(
            ["age", "-r", machine.public_key], input=body, capture_output=True, check=True
        ).stdout
        content = {
            "version": 1,
            "principal": principal,
            "encrypted_for": [machine.machine.user_id],
            "keys": ["TOKEN"],
            "ciphertext": base64.b64encode(sealed).decode(),
            "provisioned_by": fleet.creds.admin_user,
            "provisioned_at": "2026-01-01T00:00:00Z",
            "signature": binding,
            "services": routes,
        }
        admin = credentials.admin_client(fleet.creds)
        room = admin.resolve_alias(
            names.room_alias(machine.machine.localpart, fleet.hub.server_name)
        )
        assert room is not None
        admin.put_state(room, rooms.CREDENTIALS, principal[1:], content)
        fetched = admin.get_state(room, rooms.CREDENTIALS, principal[1:])
        assert fetched is not None
        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:
            reply = launcher_ensure(running.socket, principal, fetched)
            assert reply["ok"], (reply, running.log())
            assert _seen_token(Path(reply["socket"])) == "Bearer by-hand"


def test_credentials_provision_and_list(fleet: Fleet, tmp_path: Path) -> None:
    machine = enroll(fleet, tmp_path)
    services = services_file(tmp_path, "http://127.0.0.1:9")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("TOKEN=list-canary\nEXTRA=x\n")
    secrets.chmod(0o600)
    # The operator's escrow identity: an age key of its own, never the machine's.
    escrow_identity = tmp_path / "escrow.key"
    subprocess.run(["age-keygen", "-o", str(escrow_identity)], check=True, capture_output=True)
    escrow_public = subprocess.run(
        ["age-keygen", "-y", str(escrow_identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert escrow_public != machine.public_key
    result = run(
        "bureau",
        "credentials",
        "provision",
        "--credential-file",
        fleet.credential_file,
        "--machine",
        machine.machine.short_name,
        "--principal",
        PRINCIPAL,
        "--services",
        services,
        "--secrets-file",
        secrets,
        "--expires-at",
        "2099-01-01T00:00:00Z",
        "--escrow-recipient",
        escrow_public,
    )
    assert result.returncode == 0, result.stderr
    content = credentials_event(fleet, machine)
    assert content["keys"] == ["EXTRA", "TOKEN"]
    assert content["encrypted_for"] == [machine.machine.user_id, "escrow:operator"]
    # Each recipient opens the bundle with its own identity alone: the escrow with the
    # age CLI and its key, the machine with its key.
    for identity in (escrow_identity, machine.plain_key):
        opened = subprocess.run(
            ["age", "-d", "-i", str(identity)],
            input=base64.b64decode(content["ciphertext"]),
            capture_output=True,
            check=False,
        )
        assert opened.returncode == 0, (identity.name, opened.stderr)
        plaintext = json.loads(opened.stdout)
        assert (plaintext["TOKEN"], plaintext["EXTRA"]) == ("list-canary", "x")
        assert plaintext["bureau.binding"] == content["signature"]
    assert content["provisioned_by"] == fleet.creds.admin_user
    assert content["expires_at"] == "2099-01-01T00:00:00Z"
    assert content["version"] == 1
    listed = list_credentials(fleet, machine, "--json")
    (item,) = json.loads(listed.stdout)
    assert item["principal"] == _principal_id(fleet)
    assert item["keys"] == ["EXTRA", "TOKEN"]
    assert item["services"] == {"api": "http://127.0.0.1:9"}
    table = list_credentials(fleet, machine)
    for output in (listed.stdout, table.stdout, result.stdout, result.stderr):
        assert "list-canary" not in output

    missing = provision_credentials(fleet, machine, PRINCIPAL, services, "OTHER=1\n")
    assert missing.returncode == 1
    assert "names credentials that the secrets do not hold: TOKEN" in one_line_error(missing)
    loose = tmp_path / "loose.env"
    loose.write_text("TOKEN=x\n")
    loose.chmod(0o644)
    refused = run(
        "bureau",
        "credentials",
        "provision",
        "--credential-file",
        fleet.credential_file,
        "--machine",
        machine.machine.short_name,
        "--principal",
        PRINCIPAL,
        "--services",
        services,
        "--secrets-file",
        loose,
    )
    assert refused.returncode == 1
    assert "lets other users read it" in one_line_error(refused)
    big = provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=" + "x" * 49152 + "\n")
    assert big.returncode == 1
    assert "a Matrix state event holds at most" in one_line_error(big)
    fits = provision_credentials(fleet, machine, PRINCIPAL, services, "TOKEN=" + "y" * 46000 + "\n")
    assert fits.returncode == 0, fits.stderr


@pytest.mark.parametrize("how", ["unprovisioned", "foreign-key"])
@pytest.mark.slow
def test_provision_refuses_machines_without_their_own_key(
    fleet: Fleet, tmp_path: Path, how: str
) -> None:
    services = services_file(tmp_path, "http://127.0.0.1:9")
    if how == "unprovisioned":
        pending = provision(fleet, tmp_path)
        name, expected = pending.short_name, "has published no key"
    else:
        machine = enroll(fleet, tmp_path)
        name, expected = machine.machine.short_name, "not by the machine itself"
        admin = credentials.admin_client(fleet.creds)
        room = admin.resolve_alias(names.room_alias(f"{fleet.name}/machine", fleet.hub.server_name))
        assert room is not None
        admin.put_state(
            room,
            rooms.MACHINE_KEY,
            machine.machine.user_id[1:],
            {"algorithm": "age-x25519", "public_key": machine.public_key},
        )
    result = run(
        "bureau",
        "credentials",
        "provision",
        "--credential-file",
        fleet.credential_file,
        "--machine",
        name,
        "--principal",
        PRINCIPAL,
        "--services",
        services,
        stdin="TOKEN=x\n",
    )
    assert result.returncode == 1
    assert expected in one_line_error(result)
