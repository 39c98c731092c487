"""PostgreSQL for the embedded hub (`bureau hub up --database postgresql`): a server of its
own whose cluster lives in the hub's state directory, reachable only through a Unix
socket there (no TCP at all), with Synapse's database created in the C collation Synapse
requires. Clients authenticate by peer credentials: the hub's own user, and so Synapse,
is the cluster's superuser role of the same name; no password exists.

PostgreSQL refuses to run as root. When the hub runs as root the server runs as the
``postgres`` account that Debian's package creates (what an operator of a Debian host
expects to see running PostgreSQL); the cluster's directory is that account's, and the
state directory becomes root:postgres 0710 so that it can reach it, and nothing more.

Files, in the hub's state directory:
    postgresql/         the server's (0700): its socket and lock file
    postgresql/data/    the cluster (initdb), owned by the server's account
    postgres.pid        pid and kernel start time of the server we started
    postgres.out        the server's log
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from bureau.errors import HubError
from bureau.hub_process import Account, HubProcess, minimal_env

SERVER_ACCOUNT = "postgres"
DATABASE = "synapse"
# Names the socket file (.s.PGSQL.5432) only: nothing listens on TCP.
PORT = 5432


class Postgres:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / "postgresql"
        self.data = self.dir / "data"
        # SIGINT is PostgreSQL's fast shutdown: SIGTERM would wait for every client to leave.
        self.process = HubProcess(
            state_dir / "postgres.pid", state_dir / "postgres.out", signal.SIGINT
        )

    @property
    def role(self) -> str:
        return pwd.getpwuid(os.geteuid()).pw_name

    def synapse_config(self) -> dict[str, Any]:
        return {
            "name": "psycopg2",
            "args": {
                "user": self.role,
                "database": DATABASE,
                "host": str(self.dir),  # a directory: the Unix socket in it
                "port": PORT,
                "cp_min": 1,
                "cp_max": 10,
            },
        }

    def check(self) -> None:
        """What can be known before anything is generated: the programs are installed,
        and the server's account can reach the state directory."""
        _program("initdb")
        _program("postgres")
        account = _server_account()
        if account is not None:
            _open_to(self.state_dir, account)

    def start(self, wait_seconds: float) -> int:
        """Start the server unless it runs (creating the cluster and Synapse's database the
        first time), and wait until it accepts connections; returns its pid."""
        running = self.process.running_pid()
        if running is not None:
            return running
        account = _server_account()
        self._prepare(account)
        proc = self.process.spawn(
            [
                _program("postgres"),
                "-D",
                str(self.data),
                "-c",
                "listen_addresses=",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                f"port={PORT}",
            ],
            cwd=self.dir,
            env=minimal_env(),
            account=account,
        )
        try:
            self._wait_until_ready(proc, wait_seconds)
            self._create_database()
        except BaseException:
            self.process.stop(grace=10)
            raise
        return proc.pid

    def stop(self, grace: float = 30) -> int | None:
        return self.process.stop(grace)

    def _prepare(self, account: Account | None) -> None:
        if account is not None:
            _open_to(self.state_dir, account)
        if not self.dir.is_dir():
            self.dir.mkdir(mode=0o700)
            self.dir.chmod(0o700)
            if account is not None:
                os.chown(self.dir, account.uid, account.gid)
        if (self.data / "PG_VERSION").exists():
            return
        result = subprocess.run(
            [
                _program("initdb"),
                "-D",
                str(self.data),
                "-U",
                self.role,
                "--auth-local=peer",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            cwd=self.dir,
            env=minimal_env(LANG="C"),
            capture_output=True,
            text=True,
            check=False,
            umask=0o077,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else [],
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise HubError(f"initdb could not create the hub's PostgreSQL cluster: {last}")

    def _wait_until_ready(self, proc: subprocess.Popen[bytes], wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        while not self._ready(proc.pid):
            if proc.poll() is not None:
                raise HubError(
                    f"postgres exited with status {proc.returncode}: {self.process.last_output()}"
                )
            if time.monotonic() > deadline:
                raise HubError(
                    f"postgres was not ready within {wait_seconds:.0f} s; "
                    f"see {self.process.out_file}"
                )
            time.sleep(0.1)

    def _ready(self, pid: int) -> bool:
        """The server's own word: postmaster.pid's first line is its pid and its eighth
        its state, "ready" once it accepts connections. A stale file left by a crash
        names another pid."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) > 7 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _create_database(self) -> None:
        with contextlib.closing(self.connect("postgres")) as db:
            if db.scalar("SELECT count(*) FROM pg_database WHERE datname = ?", (DATABASE,)):
                return
            # Synapse refuses any collation but C: its queries sort by byte order.
            db.execute(
                f"CREATE DATABASE {DATABASE} ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C'"
                " TEMPLATE template0"
            )

    def connect(self, database: str = DATABASE) -> PostgresSQL:
        return PostgresSQL(self.dir, self.role, database)


class PostgresSQL:
    """One autocommit connection through the socket, with ``?`` placeholders as sqlite3
    has them, so that the hub's few statements read the same on either database."""

    def __init__(self, socket_dir: Path, role: str, database: str) -> None:
        # Synapse's dependency, installed with the hub extra: imported by name, untyped.
        self._psycopg2 = importlib.import_module("psycopg2")
        try:
            self._db = self._psycopg2.connect(
                host=str(socket_dir), port=PORT, user=role, dbname=database
            )
        except self._psycopg2.Error as exc:
            raise HubError(f"cannot connect to the hub's PostgreSQL: {_first_line(exc)}") from None
        self._db.autocommit = True

    def scalar(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        return self._run(sql, params, fetch=True)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        self._run(sql, params, fetch=False)

    def _run(self, sql: str, params: tuple[object, ...], *, fetch: bool) -> Any:
        try:
            with self._db.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return cursor.fetchone()[0] if fetch else None
        except self._psycopg2.Error as exc:
            raise HubError(f"the hub's PostgreSQL: {_first_line(exc)}") from None

    def close(self) -> None:
        self._db.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _server_account() -> Account | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise HubError(
            f"PostgreSQL does not run as root and there is no {SERVER_ACCOUNT!r} account to "
            "run it as: install Debian's postgresql, or run the hub as another user"
        ) from None
    return Account(SERVER_ACCOUNT, entry.pw_uid, entry.pw_gid)


def _program(name: str) -> str:
    """Debian keeps the server's programs out of PATH, under its major version."""
    found = shutil.which(name)
    if found is not None:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else -1,
    )
    if not versions:
        raise HubError(f"--database postgresql needs PostgreSQL's {name}: install postgresql")
    return str(versions[-1])


def _open_to(state_dir: Path, account: Account) -> None:
    """Let the server's account reach its directory, and check that it can: the state
    directory's group becomes the account's, with traverse (not read) permission, and
    every directory above it must already let the account through."""
    st = state_dir.stat()
    if st.st_gid != account.gid or stat.S_IMODE(st.st_mode) & 0o070 != 0o010:
        os.chown(state_dir, -1, account.gid)
        state_dir.chmod(stat.S_IMODE(st.st_mode) & 0o700 | 0o010)
    for parent in state_dir.parents:
        pst = parent.stat()
        if pst.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif pst.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not pst.st_mode & bit:
            raise HubError(
                f"{parent}: PostgreSQL runs as {account.name!r}, which cannot pass through "
                "this directory to the hub's; choose a --state-dir it can reach "
                "(e.g. under /var/lib)"
            )
