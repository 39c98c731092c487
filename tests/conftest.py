"""Shared fixtures: one real Synapse for the whole session (bureau.hub, the same code as
`bureau hub up`), and fresh fleet and machine names for every test so tests never see
each other's rooms."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hub_fleet import (
    Fleet,
    RunningHub,
    fresh,
    make_fleet,
    postgres_reachable_dir,
    quiet_structlog,
    running_hub,
    session_database,
)
from processes import BIN, free_port, run

# The harness the bench shares lives in tests/support; tests import these from here too.
__all__ = [
    "BIN",
    "Fleet",
    "RunningHub",
    "fill_up",
    "free_port",
    "fresh",
    "make_fleet",
    "one_line_error",
    "run",
]

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
    "node",
    "npm",
    "systemd-nspawn",
    "nsenter",
    "pgrep",
    "turnserver",
    "turnutils_uclient",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing tool fails the run; nothing quietly skips.
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"tools the tests need are missing: {', '.join(missing)}")


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    # Synapse's minimum hashing cost: every test logs in and rotates passwords, and at the
    # default cost (0.27 s a hash here) hashing alone took minutes of the run.
    database = session_database()
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            state = stack.enter_context(postgres_reachable_dir())
        else:
            state = tmp_path_factory.mktemp("hub")
        yield stack.enter_context(running_hub(state, bcrypt_rounds=4, database=database))


@pytest.fixture
def fleet(hub: RunningHub, tmp_path: Path) -> Fleet:
    """A fleet of its own (fresh namespace) set up on the session hub."""
    return make_fleet(hub, tmp_path)


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


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the shape every user error must have and return the line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1, result.stderr
    return lines[0]


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
