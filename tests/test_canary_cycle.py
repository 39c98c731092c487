"""A machine's whole life with a canary in every secret, then a search for them.

Setup, provisioning, first boot, credentials, a rotation, the Bazel credential helper and
decommission all run as an operator runs them: the real commands, every process at debug
level, under umask 000. Then no canary may be found in any log or stderr, in the argv or
environment of any program executed (strace) or running (/proc sampled throughout), or in
any file outside the store made for it; and every file created has its intended mode.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import BIN, RunningHub, fresh
from launcher_proc import (
    DAEMON_READY,
    daemon_argv,
    kill_proxies_under,
    proxies_under,
    service,
)
from machine_helpers import eventually, proxy_socket, served_headers
from processes import echo_upstream

from bureau import passwords

HOST = "bazel-cache.example.internal"


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


def _modes(roots: dict[str, Path]) -> dict[str, str]:
    """Every path the run created -> its type and permission bits, e.g. "f 0600"; a proxy's
    record (named by a hash) as "*.json"."""
    found = {}
    for label, root in roots.items():
        for path in [root, *root.rglob("*")]:
            name = f"{label}/{path.relative_to(root)}".removesuffix("/.")
            if path.parent.name == "proxies" and path.suffix == ".json":
                name = f"{label}/{path.parent.relative_to(root)}/*.json"
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
    "run": "d 0755",
    "run/launcher.sock": "s 0660",
    "run/launcher": "d 0700",
    "run/launcher/proxies": "d 0700",
    "run/launcher/proxies/*.json": "f 0600",
    "run/fleet": "d 0755",
    "run/fleet/prod": "d 0755",
    "run/fleet/prod/agent": "d 0755",
    "run/fleet/prod/agent/alpha.proxy.sock": "s 0660",
    "run/profile.env": "f 0644",
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
    run_dir, state, repo = base / "run", base / "state", base / "repo"
    env = {**os.environ, "BUREAU_LOG_LEVEL": "debug", "HOME": str(base)}
    cycle = Cycle(work, env)
    fleet = f"{fresh('c')}/fleet/prod"
    short = f"machine/{fresh('cy')}"
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

                modes = {
                    name: mode
                    for name, mode in _modes({"state": state, "run": run_dir, "repo": repo}).items()
                    if name != "repo" and not name.startswith("repo/.git/") and name != "repo/.git"
                }
                modes["bureau-creds"] = f"f {stat.S_IMODE(creds_file.stat().st_mode):04o}"
                assert modes == INTENDED

                cycle.run("decommission", "bureau", "machine", "decommission", short, *operator)
                assert daemon.proc.wait(timeout=60) == 77
                assert proxies_under(run_dir) == []
                cycle.outputs["daemon log"] = daemon.log()
            cycle.outputs["launcher log"] = launcher.log()

        # The secrets the run made, read back from their stores.
        session = json.loads((state / "session.json").read_text())
        private_key = subprocess.run(
            [
                "systemd-creds",
                "decrypt",
                "--name=machine-key",
                str(state / "machine-key.cred"),
                "-",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        localpart = f"{fleet}/{short}"
        canaries = {
            **values,
            "Bazel token": bazel_token,
            "registration token": hub.token.reveal(),
            "admin password": passwords.admin_password(hub.token).reveal(),
            "admin token": _env_value(creds_file, "MATRIX_ADMIN_TOKEN"),
            "one-time password": one_time,
            "permanent password": hashlib.sha256(
                f"bureau-machine-permanent:{localpart}:{private_key}".encode()
            ).hexdigest(),
            "private key": private_key,
            "session token": session["access_token"],
        }
        # Where each may rest: its store (0600 or sealed), or the test's own input file.
        stores = {
            creds_file: {"admin token", "registration token"},
            token_file: {"registration token"},
            state / "session.json": {"session token"},
            bazel_token_file: {"Bazel token"},
        }
        texts = {
            **cycle.outputs,
            **{f"execve {t.stem}": t.read_text(errors="replace") for t in cycle.traces},
            "hub log": (hub.hub.dir / "homeserver.log").read_text(errors="replace"),
        }
        running = b"\n".join(watch.seen)
        assert b"bureau-proxy" in running, "the sampler never saw a proxy"
        assert any("systemd-creds" in text for name, text in texts.items() if "launcher" in name)
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
        for root in (state, run_dir, repo, work, base):
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
        kill_proxies_under(run_dir)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _env_value(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{path} has no {key}")
