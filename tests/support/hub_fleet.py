"""A real Synapse (bureau.hub, the same code as `bureau hub up`) and fleets set up on it
with the code of `bureau matrix setup`: what the tests' session hub and the bench's fleet
both stand on. Plain functions, no pytest: the bench runs them as well."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
from processes import free_port

from bureau.hub import DATABASES, Hub, HubStatus
from bureau.operator import credentials
from bureau.operator.setup import setup
from bureau.secret import Secret
from bureau.wire.files import OperatorCredentials


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


@contextlib.contextmanager
def running_hub(
    state: Path,
    *,
    bcrypt_rounds: int | None = None,
    database: str | None = None,
    turn_port: int | None = None,
) -> Iterator[RunningHub]:
    """A hub of its own in ``state``, on a free port, stopped on exit. ``bcrypt_rounds``:
    Synapse's password hashing cost, its default unless given (the bench times logins and
    password changes at the real cost; the tests, whose subject is not hashing, ask for
    the minimum). ``database``: SQLite unless given; ``turn_port``: coturn beside it."""
    the_hub = Hub(state) if bcrypt_rounds is None else Hub(state, bcrypt_rounds=bcrypt_rounds)
    status, started = the_hub.up(port=free_port(), database=database, turn_port=turn_port)
    assert started, f"a hub already ran in {state}"
    try:
        yield RunningHub(the_hub, status, status.server_name)
    finally:
        the_hub.down()


def session_database() -> str:
    """The database the tests' session hub runs on: $BUREAU_TEST_DATABASE, SQLite unless
    set (script/test runs the enrollment, credentials and decommission tests on each)."""
    chosen = os.environ.get("BUREAU_TEST_DATABASE", "sqlite")
    assert chosen in DATABASES, f"BUREAU_TEST_DATABASE={chosen}: one of {DATABASES}"
    return chosen


@contextlib.contextmanager
def postgres_reachable_dir() -> Iterator[Path]:
    """A directory for a hub on PostgreSQL, removed on exit. Run as root, the server runs
    as the postgres account, which must pass through every directory above the hub's:
    pytest's own (/tmp/pytest-of-root, 0700) does not let it."""
    path = Path(tempfile.mkdtemp(prefix="bureau-hub-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fresh(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Fleet:
    hub: RunningHub
    name: str
    credential_file: Path
    creds: OperatorCredentials


def make_fleet(hub: RunningHub, directory: Path, name: str | None = None) -> Fleet:
    """A fleet set up on ``hub``, its credential file in ``directory``; ``name`` (a fresh
    namespace unless given) is its localpart prefix, ``NAMESPACE/fleet/prod``."""
    name = name or f"{fresh('t')}/fleet/prod"
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


def quiet_structlog() -> None:
    """In-process arrangement (setup, provisioning) logs only warnings and worse."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
