"""Shared fixtures: one real Synapse for the whole session (bureau.hub, the same code as
`bureau hub up`), and fresh fleet and machine names for every test so tests never see
each other's rooms."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from bureau.hub import Hub, HubStatus
from bureau.operator import credentials
from bureau.operator.setup import setup
from bureau.secret import Secret
from bureau.wire.files import OperatorCredentials

BIN = Path(sys.executable).parent
# Every program a test runs (script/setup installs them).
REQUIRED_TOOLS = (
    "age",
    "age-keygen",
    "curl",
    "openssl",
    "bwrap",
    "prlimit",
    "unshare",
    "jq",
    "strace",
    "systemd-creds",
    "systemd-analyze",
    "systemctl",
    "nix-instantiate",
    "useradd",
    "groupadd",
    "setpriv",
    "git",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing tool fails the run; nothing quietly skips.
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"tools the tests need are missing: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunningHub:
    hub: Hub
    status: HubStatus
    server_name: str

    @property
    def url(self) -> str:
        return self.status.url

    @property
    def token_file(self) -> Path:
        return self.hub.token_file

    @property
    def token(self) -> Secret:
        return Secret(self.token_file.read_text().strip())


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state = tmp_path_factory.mktemp("hub")
    # Synapse's minimum hashing cost: every test logs in and rotates passwords, and at the
    # default cost (0.27 s a hash here) hashing alone took minutes of the run.
    the_hub = Hub(state, bcrypt_rounds=4)
    status, started = the_hub.up(port=free_port())
    assert started
    try:
        yield RunningHub(the_hub, status, status.server_name)
    finally:
        the_hub.down()


def fresh(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Fleet:
    hub: RunningHub
    name: str
    credential_file: Path
    creds: OperatorCredentials


@pytest.fixture
def fleet(hub: RunningHub, tmp_path: Path) -> Fleet:
    """A fleet of its own (fresh namespace) set up on the session hub."""
    return make_fleet(hub, tmp_path)


def make_fleet(hub: RunningHub, directory: Path) -> Fleet:
    """What ``fleet`` makes, for fixtures of a wider scope: its credential file in
    ``directory``."""
    name = f"{fresh('t')}/fleet/prod"
    cred_file = directory / "bureau-creds"
    setup(
        homeserver=hub.url,
        server_name=hub.server_name,
        registration_token=hub.token,
        credential_file=cred_file,
        fleet=name,
        report=lambda line: None,
    )
    return Fleet(hub, name, cred_file, credentials.load(cred_file))


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short runtime directory: socket paths must fit in 107 bytes, which pytest's own
    temporary paths do not leave room for."""
    path = Path(tempfile.mkdtemp(prefix="bureau-run-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 256 KiB tmpfs of its own, to fill up: a disk that is really full (ENOSPC from the
    kernel), not a simulated one. Needs CAP_SYS_ADMIN, as the suite's other root-only
    tests need root."""
    path = Path(tempfile.mkdtemp(prefix="bureau-full-", dir="/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
        path.rmdir()


def fill_up(directory: Path) -> Path:
    """Write a file until the filesystem has no space left; delete it to make room."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def empty_root(run_dir: Path) -> Path:
    """A machine's filesystem with nothing of bureau on it: /etc holds the account
    databases every Linux has, nothing else. Short (under /tmp), so socket paths fit."""
    etc = run_dir / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    for name in ("shadow", "gshadow"):
        (etc / name).write_text("")
        (etc / name).chmod(0o600)
    return run_dir


def run(
    program: str, *args: str | Path, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts as a user would, capturing its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDENTIALS_")}
    return subprocess.run(
        [str(BIN / program), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=90,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the shape every user error must have and return the line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def quiet_structlog() -> None:
    """In-process arrangement (setup, provisioning) logs only warnings and worse."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def pytest_configure(config: pytest.Config) -> None:
    quiet_structlog()


@pytest.fixture(autouse=True)
def _restore_world() -> Iterator[None]:
    environ = dict(os.environ)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.umask(umask)
        structlog.reset_defaults()
        quiet_structlog()
