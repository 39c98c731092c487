"""A machine's whole life with a canary in every secret, then a search for them.

Setup, provisioning, first boot, credentials, a rotation, a principal created from a
pushed template whose workload, in its sandbox, is on Matrix through its proxy, the Bazel
credential helper and decommission all run as an operator runs them: the real commands,
every process at debug level, under umask 000. Then no canary may be found in any log or
stderr, in the argv or environment of any program executed (strace) or running (/proc
sampled throughout), or in any file outside the store made for it; and every file created
has its intended mode. The principal's Matrix token, which no one but its proxy is meant
to hold in plaintext, is read back from its encrypted bundle with the machine's key after
the run, and searched for like every other canary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, RunningHub, fresh
from launcher_proc import (
    DAEMON_READY,
    broker_args,
    daemon_argv,
    kill_proxies_under,
    proxies_under,
    service,
)
from machine_helpers import eventually, proxy_socket, served_headers
from processes import echo_upstream
from sandbox_helpers import PROXY_CLIENT, kill_sandboxes_under, python_template

from bureau import age_keys, passwords
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials as operator_credentials
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import CredentialsEvent, open_plaintext

HOST = "bazel-cache.example.internal"
SANDBOXED = "agent/beta"  # a principal created with `bureau agent create`, in a sandbox
GREETING = "hello from the sandbox"
# The sandboxed principal's workload: on Matrix as itself through its proxy's built-in
# `matrix` service (it never holds its token), then one line of output and asleep until
# decommission stops it.
WORKLOAD = (
    PROXY_CLIENT
    + r"""
MATRIX = "/http/matrix/_matrix/client/v3"
_, me = call("GET", MATRIX + "/account/whoami")
_, room = call("POST", MATRIX + "/createRoom", {"preset": "private_chat"})
sent, _ = call("PUT", MATRIX + "/rooms/%s/send/m.room.message/t1" % room["room_id"],
               {"msgtype": "m.text", "body": os.environ["GREETING"]})
print("RESULT", json.dumps({"user_id": me.get("user_id"), "room_id": room["room_id"],
                            "sent": sent}), flush=True)
while True: time.sleep(60)
"""
)


class ProcWatch:
    """Samples the argv and environment of every process on the machine until stopped.
    Long-lived processes (proxies forked by the template, which strace sees no exec for)
    are caught by sampling; short-lived ones by the execve trace."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProcWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                for name in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):  # gone meanwhile
                        self.seen.add((entry / name).read_bytes())


@dataclass
class Cycle:
    """What the run produced, to be searched."""

    work: Path
    env: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)
    traces: list[Path] = field(default_factory=list)

    def strace(self, label: str) -> list[str]:
        trace = self.work / "traces" / f"{label}.trace"
        self.traces.append(trace)
        return [
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
        ]

    def run(
        self, label: str, program: str, *args: str | Path, stdin: str = "", cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.strace(label), str(BIN / program), *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=cwd,
            timeout=120,
            check=False,
        )
        self.outputs[f"{label} stdout"] = result.stdout
        self.outputs[f"{label} stderr"] = result.stderr
        assert result.returncode == 0, f"{label}: {result.stderr}"
        return result


@pytest.fixture
def zero_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _services(path: Path, upstream: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "api": {
                    "upstream_url": upstream,
                    "auth_scheme": "Bearer",
                    "inject_headers": {"Authorization": "TOKEN", "X-Api-Key": "API_KEY"},
                }
            }
        )
    )
    return path


def _served(socket: Path) -> tuple[str | None, str | None] | None:
    headers = served_headers(socket)
    return None if headers is None else (headers.get("authorization"), headers.get("x-api-key"))


def _template(path: Path, namespace: str) -> Path:
    parent = f"{namespace}/template:agent-base"
    path.write_text(json.dumps(python_template(parent, WORKLOAD, GREETING=GREETING)))
    return path


def _workload_result(
    log: Path, launcher_log: Callable[[], str], seconds: float = 60
) -> dict[str, Any]:
    """What the workload printed, through its relay to the launcher's log file."""
    deadline = time.monotonic() + seconds
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            _, found, result = line.partition(": RESULT ")
            if found:
                return dict(json.loads(result))
        assert time.monotonic() < deadline, (
            f"no result from the workload:\n{text}\n{launcher_log()}"
        )
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _modes(roots: dict[str, Path], aliases: dict[str, str]) -> dict[str, str]:
    """Every path the run created -> its type and permission bits, e.g. "f 0600"; a proxy's
    or sandbox's record (named by a hash) as "*.json", and each of ``aliases`` (a principal's
    key) by its placeholder."""
    found = {}
    for label, root in roots.items():
        for path in [root, *root.rglob("*")]:
            name = f"{label}/{path.relative_to(root)}".removesuffix("/.")
            if path.parent.name in ("proxies", "sandboxes") and path.suffix == ".json":
                name = f"{label}/{path.parent.relative_to(root)}/*.json"
            for literal, placeholder in aliases.items():
                name = name.replace(literal, placeholder)
            st = path.lstat()
            kind = "d" if stat.S_ISDIR(st.st_mode) else "s" if stat.S_ISSOCK(st.st_mode) else "f"
            found[name] = f"{kind} {stat.S_IMODE(st.st_mode):04o}"
    return found


# What the run creates, under umask 000, and the mode each must have.
INTENDED = {
    "state": "d 0700",
    "state/session.json": "f 0600",
    "state/machine-key.cred": "f 0600",
    "state/machine-key.pub": "f 0644",
    "state/operator-keys.json": "f 0644",  # public keys, pinned at first boot
    # The daemon's offline cache: what it last asked the launcher to run (ciphertext).
    "state/offline-cache.json": "f 0600",
    "run": "d 0755",
    "run/launcher.sock": "s 0660",
    # bureau-sandboxd's: for its own uid (the launcher's) alone.
    "run/sandboxd": "d 0700",
    "run/sandboxd/sandboxd.sock": "s 0600",
    "run/launcher": "d 0700",
    "run/launcher/proxies": "d 0700",
    "run/launcher/proxies/*.json": "f 0600",
    "run/launcher/sandboxes": "d 0700",
    "run/launcher/sandboxes/*.json": "f 0600",
    # The sandbox's output, relayed to a file where there is no journal.
    "run/launcher/logs": "d 0700",
    "run/launcher/logs/<beta>.log": "f 0600",
    # bwrap's status, its workload's exit code last (the next launcher reads it).
    "run/launcher/exits": "d 0700",
    "run/launcher/exits/<beta>.json": "f 0600",
    # The sandbox's uid passes through to its own directory (group: the sandbox's gid),
    # which holds a hard link to its proxy's socket.
    "run/sandbox": "d 0711",
    "run/sandbox/<beta>": "d 0710",
    "run/sandbox/<beta>/proxy.sock": "s 0660",
    "run/fleet": "d 0755",
    "run/fleet/prod": "d 0755",
    "run/fleet/prod/agent": "d 0755",
    "run/fleet/prod/agent/alpha.proxy.sock": "s 0660",
    "run/fleet/prod/agent/beta.proxy.sock": "s 0660",
    "run/profile.env": "f 0644",
    # Workspaces: others pass through, see nothing; each the sandbox uid's own. The workload
    # writes nothing there.
    "sandbox": "d 0711",
    "sandbox/<beta>": "d 0700",
    # Which uid each principal's sandbox runs as (bureau-sandboxd's).
    "sandbox/sandbox-uids.json": "f 0600",
    "bureau-creds": "f 0600",
    "repo/.env.flywheel.local": "f 0644",
    "repo/.gitignore": "f 0644",
}


@pytest.mark.slow
def test_a_machines_whole_life_leaks_no_canary(
    hub: RunningHub, tmp_path: Path, zero_umask: None
) -> None:
    work = tmp_path / "work"
    (work / "traces").mkdir(parents=True)
    base = Path(tempfile.mkdtemp(prefix="bureau-cy-", dir="/tmp"))
    # bwrap sets a sandbox up as the sandbox's uid, which must pass through to its
    # workspace and its socket link, as under /var/lib and /run.
    base.chmod(0o711)
    run_dir, state, repo = base / "run", base / "state", base / "repo"
    sandbox_dir = base / "sandbox"
    env = {**os.environ, "BUREAU_LOG_LEVEL": "debug", "HOME": str(base)}
    cycle = Cycle(work, env)
    fleet = f"{fresh('c')}/fleet/prod"
    short = f"machine/{fresh('cy')}"
    localpart = f"{fleet}/{short}"
    sandboxed_user = names.user_id(f"{fleet}/{SANDBOXED}", hub.server_name)
    sandboxed_key = hashlib.sha256(sandboxed_user.encode()).hexdigest()[:32]
    creds_file = work / "bureau-creds"
    token_file = work / "registration-token"
    token_file.write_text(hub.token.reveal())
    token_file.chmod(0o600)
    bazel_token = f"bazel-canary-{secrets.token_hex(8)}"
    values = {
        f"{credential} v{n}": f"{credential.lower()}-canary-{n}-{secrets.token_hex(8)}"
        for credential in ("TOKEN", "API_KEY")
        for n in (1, 2)
    }
    # The sandboxed principal's secrets besides its Matrix token.
    sandboxed_values = {
        f"{SANDBOXED} {credential}": f"{credential.lower()}-canary-sb-{secrets.token_hex(8)}"
        for credential in ("TOKEN", "API_KEY")
    }
    try:
        with ProcWatch() as watch, echo_upstream() as upstream:
            cycle.run(
                "setup",
                "bureau",
                "matrix",
                "setup",
                "--homeserver",
                hub.url,
                "--server-name",
                hub.server_name,
                "--registration-token-file",
                token_file,
                "--credential-file",
                creds_file,
                "--fleet",
                fleet,
            )
            operator = ("--credential-file", creds_file)
            cycle.run(
                "provision",
                "bureau",
                "machine",
                "provision",
                short,
                *operator,
                "--output",
                work / "bootstrap.json",
            )
            one_time = json.loads((work / "bootstrap.json").read_text())["password"]
            bazel_token_file = base / "bazel.token"
            # The same profile fleet-wide (published) and on a developer's checkout (enrolled).
            profile = (
                "shared-cache-backed",
                "--cache-endpoint",
                f"grpcs://{HOST}:9092",
                "--credential-helper",
                f"{HOST}=/usr/bin/gf-reapi-credhelper",
                "--token-file",
                bazel_token_file,
            )
            cycle.run("fleet profile", "bureau", "fleet", "profile", "set", *profile, *operator)
            template = _template(work / "worker.json", names.namespace_of(fleet))
            push = ("template", "push", template, "--name", "worker", *operator)
            cycle.run("template push", "bureau", *push)

            launcher_argv = [
                str(BIN / "bureau-launcher"),
                "--bootstrap-file",
                str(work / "bootstrap.json"),
                "--machine-name",
                short,
                "--state-dir",
                str(state),
                "--run-dir",
                str(run_dir),
                "--key-storage",
                "systemd-creds",
                "--log-level",
                "debug",
                *broker_args(run_dir),
            ]
            sandboxd_argv = [
                str(BIN / "bureau-sandboxd"),
                "--fleet",
                fleet,
                "--server-name",
                hub.server_name,
                "--run-dir",
                str(run_dir),
                "--state-dir",
                str(state),
                "--sandbox-dir",
                str(sandbox_dir),
                "--log-level",
                "debug",
            ]
            services = _services(work / "services.json", upstream)
            socket = proxy_socket(run_dir)

            def credentials(n: int) -> None:
                cycle.run(
                    f"credentials v{n}",
                    "bureau",
                    "credentials",
                    "provision",
                    *operator,
                    "--machine",
                    short,
                    "--principal",
                    "agent/alpha",
                    "--services",
                    services,
                    stdin=f"TOKEN={values[f'TOKEN v{n}']}\nAPI_KEY={values[f'API_KEY v{n}']}\n",
                )
                wanted = (f"Bearer {values[f'TOKEN v{n}']}", values[f"API_KEY v{n}"])
                eventually(lambda: _served(socket) == wanted, 60)

            with (
                service(sandboxd_argv, "serving", prefix=cycle.strace("sandboxd")) as sandboxd,
                service(
                    launcher_argv, "launcher serving", prefix=cycle.strace("launcher")
                ) as launcher,
                # strace follows the proxies too and ends only with them: if the test fails
                # before decommission stops them, they go before the launcher is stopped.
                contextlib.ExitStack() as cleanup,
                service(
                    daemon_argv(short, state, run_dir), DAEMON_READY, prefix=cycle.strace("daemon")
                ) as daemon,
            ):
                cleanup.callback(kill_proxies_under, run_dir)
                cleanup.callback(kill_sandboxes_under, run_dir)
                cycle.run(
                    "assign",
                    "bureau",
                    "machine",
                    "assign",
                    short,
                    "--principal",
                    "agent/alpha",
                    *operator,
                )
                credentials(1)
                credentials(2)  # the rotation
                eventually((run_dir / "profile.env").exists)

                # A principal from the template, with its own Matrix account and token, in
                # its sandbox: on Matrix through its proxy.
                cycle.run(
                    "agent create",
                    "bureau",
                    "agent",
                    "create",
                    "worker",
                    "--machine",
                    short,
                    "--name",
                    SANDBOXED,
                    "--services",
                    services,
                    "--secrets-file",
                    "-",
                    *operator,
                    stdin="".join(
                        f"{what.split()[-1]}={value}\n" for what, value in sandboxed_values.items()
                    ),
                )
                relay_log = run_dir / "launcher" / "logs" / f"{sandboxed_key}.log"
                result = _workload_result(relay_log, launcher.log)
                assert result["user_id"] == sandboxed_user
                assert result["sent"] == 200
                admin = operator_credentials.admin_client(operator_credentials.load(creds_file))
                messages = admin.call(
                    "GET",
                    f"/_synapse/admin/v1/rooms/{result['room_id']}/messages?dir=b",
                    what="messages",
                )
                assert GREETING in [e["content"].get("body") for e in messages["chunk"]]
                # Its bundle, still encrypted (decommission tombstones it): opened after the run.
                config_room = admin.resolve_alias(names.room_alias(localpart, hub.server_name))
                assert config_room is not None
                bundle = admin.get_state(
                    config_room,
                    rooms.CREDENTIALS,
                    names.state_key(f"{fleet}/{SANDBOXED}", hub.server_name),
                )
                (record,) = (run_dir / "launcher" / "sandboxes").glob("*.json")
                bwrap_pid = int(json.loads(record.read_text())["pid"])

                # A developer's machine: the Bazel credential helper with its token file.
                repo.mkdir()
                subprocess.run(["git", "init", "-q", str(repo)], check=True)
                bazel_token_file.write_text(bazel_token + "\n")
                bazel_token_file.chmod(0o600)
                cycle.run("enroll", "flywheel-enroll", *profile, cwd=repo)
                helped = cycle.run(
                    "credential helper",
                    "gf-reapi-credhelper",
                    "get",
                    stdin=json.dumps({"uri": f"https://{HOST}:9092/x"}),
                    cwd=repo,
                )
                # Its answer to Bazel is the one place the token is meant to go.
                assert json.loads(helped.stdout)["headers"] == {
                    "Authorization": [f"Bearer {bazel_token}"]
                }
                del cycle.outputs["credential helper stdout"]
                cycle.run("doctor", "flywheel-doctor", "--json", cwd=repo)

                roots = {"state": state, "run": run_dir, "repo": repo, "sandbox": sandbox_dir}
                modes = {
                    name: mode
                    for name, mode in _modes(roots, {sandboxed_key: "<beta>"}).items()
                    if name != "repo" and not name.startswith("repo/.git/") and name != "repo/.git"
                }
                modes["bureau-creds"] = f"f {stat.S_IMODE(creds_file.stat().st_mode):04o}"
                assert modes == INTENDED

                # The permanent password, from the code that derives it, is the one the
                # machine set: the homeserver logs its account in with it.
                permanent = passwords.machine_permanent_password(localpart, _sealed_key(state))
                login = MatrixHTTP(hub.url).login_password(localpart, permanent)
                assert login.user_id == names.user_id(localpart, hub.server_name)
                MatrixHTTP(hub.url, login.access_token).logout()

                cycle.run("decommission", "bureau", "machine", "decommission", short, *operator)
                assert daemon.proc.wait(timeout=60) == 77
                assert proxies_under(run_dir) == []
                eventually(lambda: _gone(bwrap_pid), 30)
                assert list((run_dir / "launcher" / "sandboxes").glob("*.json")) == []
                cycle.outputs["daemon log"] = daemon.log()
            cycle.outputs["launcher log"] = launcher.log()
            cycle.outputs["sandboxd log"] = sandboxd.log()

        # The secrets the run made, read back from their stores.
        session = json.loads((state / "session.json").read_text())
        private_key = _sealed_key(state).reveal()
        # The sandboxed principal's Matrix token, from its bundle: held in the test's memory
        # only, never written or passed on.
        assert bundle, f"no bundle for {SANDBOXED}"
        event = CredentialsEvent.from_json(bundle)
        opened = open_plaintext(
            age_keys.decrypt(event.ciphertext, Secret(private_key)),
            event,
            "the bundle",
            unbound_allowed=False,
        ).credentials
        assert sorted(opened) == ["API_KEY", "MATRIX_TOKEN", "TOKEN"]
        canaries = {
            **values,
            **sandboxed_values,
            f"{SANDBOXED} MATRIX_TOKEN": opened["MATRIX_TOKEN"].reveal(),
            "Bazel token": bazel_token,
            "registration token": hub.token.reveal(),
            "admin password": passwords.admin_password(hub.token).reveal(),
            "admin token": _env_value(creds_file, "MATRIX_ADMIN_TOKEN"),
            # The operator's signing key: its seed, in the credential file alone.
            "operator signing key": _env_value(creds_file, "BUREAU_OPERATOR_SIGNING_KEY").split()[
                2
            ],
            "one-time password": one_time,
            "permanent password": permanent.reveal(),
            "private key": private_key,
            "session token": session["access_token"],
        }
        # Where each may rest: its store (0600 or sealed), or the test's own input file.
        stores = {
            creds_file: {"admin token", "registration token", "operator signing key"},
            token_file: {"registration token"},
            state / "session.json": {"session token"},
            bazel_token_file: {"Bazel token"},
        }
        texts = {
            **cycle.outputs,
            **{f"execve {t.stem}": t.read_text(errors="replace") for t in cycle.traces},
            "hub log": (hub.hub.dir / "homeserver.log").read_text(errors="replace"),
        }
        # What the run put in Matrix: the rooms that hold signed events and the keys.
        admin = MatrixHTTP(hub.url, Secret(_env_value(creds_file, "MATRIX_ADMIN_TOKEN")))
        for room_localpart in (
            names.fleet_room_localpart(fleet),
            names.template_room_localpart(fleet),
            localpart,
        ):
            alias = names.room_alias(room_localpart, hub.server_name)
            room_id = admin.resolve_alias(alias)
            assert room_id is not None
            texts[f"Matrix state of {alias}"] = json.dumps(admin.room_state_events(room_id))
        running = b"\n".join(watch.seen)
        assert b"bureau-proxy" in running, "the sampler never saw a proxy"
        assert b"WORKLOAD=" in running, "the sampler never saw the sandboxed workload"
        assert any("systemd-creds" in text for name, text in texts.items() if "launcher" in name)
        assert any("bwrap" in text for name, text in texts.items() if "sandboxd" in name)
        leaks = [
            f"{what} in {where}"
            for what, value in canaries.items()
            for where, text in texts.items()
            if value in text
        ]
        leaks += [
            f"{what} in a process's argv or environment"
            for what, value in canaries.items()
            if value.encode() in running
        ]
        for root in (state, run_dir, repo, work, sandbox_dir, base):
            for path in root.rglob("*"):
                if not path.is_file() or path.suffix == ".trace":
                    continue
                data = path.read_bytes()
                leaks += [
                    f"{what} in {path}"
                    for what, value in canaries.items()
                    if value.encode() in data and what not in stores.get(path, set())
                ]
        assert sorted(set(leaks)) == []
        assert not (work / "bootstrap.json").exists()
    finally:
        kill_sandboxes_under(run_dir)
        kill_proxies_under(run_dir)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _sealed_key(state: Path) -> Secret:
    """The machine key, unsealed from its store as the launcher reads it."""
    sealed = str(state / "machine-key.cred")
    unsealed = subprocess.run(
        ["systemd-creds", "decrypt", "--name=machine-key", sealed, "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Secret(unsealed.stdout.strip())


def _env_value(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{path} has no {key}")
