"""The embedded homeserver: a real Synapse bound to 127.0.0.1 only, for development, demos
and tests; on SQLite, or on a PostgreSQL server of its own (``--database postgresql``,
bureau/hub_postgres.py), with a coturn TURN relay beside it (``--turn``,
bureau/hub_turn.py).

State directory layout (all created by ``up``):
    hub.json            server name, port, database and TURN port this hub was generated for
    homeserver.yaml     Synapse's config, generated once (0600: it holds Synapse's secrets)
    registration-token  the hub's registration token (0600)
    hub.pid             pid and kernel start time of the Synapse process we started
    homeserver.log      Synapse's log; synapse.out its stdout/stderr
    homeserver.db       Synapse's database on SQLite
    postgresql/, postgres.pid, postgres.out     PostgreSQL's (see bureau/hub_postgres.py)
    turn-secret, turn.pid, turn/                coturn's (see bureau/hub_turn.py)
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau.errors import HubError, MatrixError
from bureau.files import atomic_write, make_dirs
from bureau.hub_config import (
    BIND_ADDRESS,
    DATABASES,
    HubSettings,
    log_config,
    missing_settings,
    synapse_config,
)
from bureau.hub_postgres import Postgres
from bureau.hub_process import HubProcess, minimal_env
from bureau.hub_sql import SQL, SqliteSQL
from bureau.hub_turn import Turn
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.synapse_admin import register_server_admin
from bureau.passwords import ADMIN_LOCALPART, admin_password
from bureau.secret import Secret

__all__ = ["DATABASES", "Hub", "HubSettings", "HubStatus"]

DEFAULT_PORT = 8008
DEFAULT_SERVER_NAME = "bureau.local"


@dataclass(frozen=True)
class HubStatus:
    url: str
    pid: int
    server_name: str
    database: str = "sqlite"
    database_pid: int | None = None  # PostgreSQL's server, when the hub runs on it
    turn_address: str | None = None  # host:port, udp and tcp, when the hub has TURN
    turn_pid: int | None = None

    @property
    def whole(self) -> bool:
        """Every part this hub has runs (Synapse does, or there would be no status)."""
        return (self.database != "postgresql" or self.database_pid is not None) and (
            self.turn_address is None or self.turn_pid is not None
        )


class Hub:
    def __init__(self, state_dir: Path, *, bcrypt_rounds: int = 12) -> None:
        """``bcrypt_rounds`` is Synapse's password hashing cost, written into a newly
        generated config; 12 (Synapse's default) unless a test suite, whose subject is
        not hashing, asks for its minimum of 4."""
        self.dir = Path(state_dir).absolute()
        self._bcrypt_rounds = bcrypt_rounds
        self._synapse = HubProcess(self.dir / "hub.pid", self.dir / "synapse.out")
        self._postgres = Postgres(self.dir)
        self._turn = Turn(self.dir)

    @property
    def token_file(self) -> Path:
        return self.dir / "registration-token"

    @property
    def turn_secret_file(self) -> Path:
        return self._turn.secret_file

    @property
    def _settings_file(self) -> Path:
        return self.dir / "hub.json"

    # -- status ------------------------------------------------------------------------

    def settings(self) -> HubSettings | None:
        try:
            return HubSettings.from_json(self._settings_file.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise HubError(f"{self._settings_file}: not a hub settings file") from None

    def status(self) -> HubStatus | None:
        settings = self.settings()
        pid = self._synapse.running_pid()
        if settings is None or pid is None:
            return None
        return self._status(settings, pid)

    def _status(self, settings: HubSettings, pid: int) -> HubStatus:
        postgres = settings.database == "postgresql"
        turn = settings.turn_port is not None
        return HubStatus(
            settings.url,
            pid,
            settings.server_name,
            settings.database,
            self._postgres.process.running_pid() if postgres else None,
            None if settings.turn_port is None else f"{BIND_ADDRESS}:{settings.turn_port}",
            self._turn.process.running_pid() if turn else None,
        )

    # -- up ----------------------------------------------------------------------------

    def up(
        self,
        port: int | None = None,
        server_name: str | None = None,
        wait_seconds: float = 180,
        *,
        database: str | None = None,
        turn_port: int | None = None,
    ) -> tuple[HubStatus, bool]:
        """Start the hub unless it runs, and any of its parts that does not. ``turn_port``
        turns TURN on (it stays on); ``database`` is chosen when the hub is generated.
        Returns its status and whether Synapse was started."""
        make_dirs(self.dir, 0o700)
        settings = self._settings_for(port, server_name, database, turn_port)
        pid = self._synapse.running_pid()
        if pid is not None:
            self._start_parts(settings, wait_seconds)
            return self._status(settings, pid), False
        self._check_parts(settings)
        self._generate_once(settings)
        try:
            self._start_parts(settings, wait_seconds)
            proc = self._spawn()
            self._wait_until_answering(settings, proc, wait_seconds)
            with contextlib.closing(self._sql(settings)) as db:
                self._ensure_registration_token(db)
                self._ensure_server_admin(settings)
                self._wait_for_schema_updates(db, proc, wait_seconds)
        except BaseException:
            self.down(grace=10)
            raise
        return self._status(settings, proc.pid), True

    def _settings_for(
        self, port: int | None, server_name: str | None, database: str | None, turn_port: int | None
    ) -> HubSettings:
        existing = self.settings()
        if existing is None:
            return HubSettings(
                server_name or DEFAULT_SERVER_NAME,
                port or DEFAULT_PORT,
                database or "sqlite",
                turn_port,
            )
        elsewhere = "; use another --state-dir for another"
        if server_name is not None and server_name != existing.server_name:
            raise HubError(
                f"{self.dir}: this hub was generated for server name {existing.server_name!r}, "
                f"not {server_name!r}{elsewhere} server name"
            )
        if port is not None and port != existing.port:
            raise HubError(
                f"{self.dir}: this hub listens on port {existing.port}, not {port}{elsewhere} port"
            )
        if database is not None and database != existing.database:
            raise HubError(
                f"{self.dir}: this hub was generated on {existing.database}, not "
                f"{database}{elsewhere} database"
            )
        if turn_port is None or turn_port == existing.turn_port:
            return existing
        if existing.turn_port is not None:
            raise HubError(
                f"{self.dir}: this hub's TURN listens on port {existing.turn_port}, not {turn_port}"
            )
        if self._synapse.running_pid() is not None:
            raise HubError(
                f"{self.dir}: this hub runs without TURN; `bureau hub down` it first, "
                "then `bureau hub up --turn`"
            )
        return HubSettings(existing.server_name, existing.port, existing.database, turn_port)

    def _check_parts(self, settings: HubSettings) -> None:
        if settings.database == "postgresql":
            self._postgres.check()
        if settings.turn_port is not None:
            self._turn.check()

    def _start_parts(self, settings: HubSettings, wait_seconds: float) -> None:
        if settings.database == "postgresql":
            self._postgres.start(wait_seconds)
        if settings.turn_port is not None:
            self._turn.start(settings.turn_port, settings.server_name, wait_seconds)

    def _database_config(self, settings: HubSettings) -> dict[str, Any]:
        if settings.database == "postgresql":
            return self._postgres.synapse_config()
        return {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}}

    def _turn_config(self, settings: HubSettings) -> dict[str, Any]:
        if settings.turn_port is None:
            return {}
        return self._turn.synapse_config(settings.turn_port)

    def _sql(self, settings: HubSettings) -> SQL:
        if settings.database == "postgresql":
            return self._postgres.connect()
        return SqliteSQL(self.dir / "homeserver.db")

    def _generate_once(self, settings: HubSettings) -> None:
        config = self.dir / "homeserver.yaml"
        if not config.exists():
            # Synapse's own dependency, present exactly where the hub extra is installed.
            import yaml  # noqa: PLC0415

            generated = synapse_config(
                self.dir,
                server_name=settings.server_name,
                port=settings.port,
                bcrypt_rounds=self._bcrypt_rounds,
                database=self._database_config(settings),
                turn=self._turn_config(settings),
            )
            body = yaml.safe_dump(generated, sort_keys=False)
            atomic_write(config, body.encode(), 0o600)
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.homeserver",
                    "-c",
                    str(config),
                    "--generate-keys",
                ],
                cwd=self.dir,
                capture_output=True,
                text=True,
                check=False,
                umask=0o077,
            )
            if result.returncode != 0:
                config.unlink()
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise HubError(f"synapse could not generate its signing key: {last}")
        else:
            self._upgrade_config(config, settings)
        if self.settings() != settings:
            atomic_write(self._settings_file, settings.to_json(), 0o644)
        if not self.token_file.exists():
            # Synapse limits tokens to [A-Za-z0-9._~-]; token_urlsafe stays inside that.
            atomic_write(self.token_file, secrets.token_urlsafe(32).encode() + b"\n", 0o600)

    def _upgrade_config(self, config: Path, settings: HubSettings) -> None:
        """A hub generated by an older bureau, or before TURN was turned on, gets the
        settings added since (an operator's own value for one is kept)."""
        import yaml  # noqa: PLC0415 -- as in _generate_once

        current = yaml.safe_load(config.read_text())
        if not isinstance(current, dict):
            return
        missing = missing_settings(current, self._turn_config(settings))
        if missing:
            body = yaml.safe_dump({**current, **missing}, sort_keys=False)
            atomic_write(config, body.encode(), 0o600)

    def _write_log_config(self) -> None:
        """Rewritten at every start, so that a hub generated by an older bureau logs as
        this one does."""
        import yaml  # noqa: PLC0415

        body = yaml.safe_dump(log_config(self.dir)).encode()
        path = self.dir / "log.config"
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == body:
                return
        atomic_write(path, body, 0o600)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._write_log_config()
        return self._synapse.spawn(
            [
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self.dir / "homeserver.yaml"),
            ],
            cwd=self.dir,
            env=minimal_env(),
        )

    def _wait_until_answering(
        self, settings: HubSettings, proc: subprocess.Popen[bytes], wait_seconds: float
    ) -> None:
        client = MatrixHTTP(settings.url, timeout=5, max_attempts=1)
        deadline = time.monotonic() + wait_seconds
        while True:
            if proc.poll() is not None:
                raise HubError(f"synapse exited with status {proc.returncode}: {self._last_log()}")
            try:
                client.versions()
                return
            except MatrixError:
                if time.monotonic() > deadline:
                    raise HubError(
                        f"synapse did not answer on {settings.url} within {wait_seconds:.0f} s; "
                        f"see {self.dir / 'homeserver.log'}"
                    ) from None
            # No readiness signal exists for a child Synapse: poll its versions endpoint.
            time.sleep(0.2)

    def _last_log(self) -> str:
        for name in ("synapse.out", "homeserver.log"):
            path = self.dir / name
            with contextlib.suppress(OSError):
                lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
                if lines:
                    return f"{lines[-1].strip()} (see {path})"
        return f"no output (see {self.dir})"

    def _ensure_registration_token(self, db: SQL) -> None:
        """Seed the token row directly: the embedded hub has no admin account to create
        it through the admin API, and Synapse reads the table on every registration."""
        token = self.token_file.read_text().strip()
        db.execute(
            "INSERT INTO registration_tokens"
            " (token, uses_allowed, pending, completed, expiry_time)"
            " VALUES (?, NULL, 0, 0, NULL) ON CONFLICT (token) DO NOTHING",
            (token,),
        )

    def _wait_for_schema_updates(
        self, db: SQL, proc: subprocess.Popen[bytes], wait_seconds: float
    ) -> None:
        """Ready means every background schema update of a new database is done."""
        deadline = time.monotonic() + wait_seconds
        while db.scalar("SELECT COUNT(*) FROM background_updates"):
            if proc.poll() is not None:
                raise HubError(f"synapse exited with status {proc.returncode}: {self._last_log()}")
            if time.monotonic() > deadline:
                raise HubError(
                    f"synapse's schema updates did not finish within {wait_seconds:.0f} s; "
                    f"see {self.dir / 'homeserver.log'}"
                )
            time.sleep(0.2)

    def _ensure_server_admin(self, settings: HubSettings) -> None:
        """Register bureau-admin as a *server* admin through Synapse's shared-secret admin
        registration (what register_new_matrix_user -a does), with the password that
        `bureau matrix setup` derives from the registration token. Decommissioning and
        re-provisioning a machine deactivate and reactivate its account through the
        server admin API."""
        import yaml  # noqa: PLC0415 -- Synapse's own dependency, as in _generate_once

        config = yaml.safe_load((self.dir / "homeserver.yaml").read_text())
        shared = config.get("registration_shared_secret") if isinstance(config, dict) else None
        if not isinstance(shared, str):
            return  # a hub generated before bureau made its admin a server admin
        token = Secret(self.token_file.read_text().strip())
        client = MatrixHTTP(settings.url)
        try:
            register_server_admin(client, ADMIN_LOCALPART, admin_password(token), Secret(shared))
        except MatrixError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise HubError(f"could not register the hub's server admin: {exc}") from None

    # -- down --------------------------------------------------------------------------

    def down(self, grace: float = 30) -> dict[str, int]:
        """Stop every process this hub started, Synapse first (PostgreSQL serves it to the
        end); returns the pid of each that ran, by name."""
        stopped = {
            "synapse": self._synapse.stop(grace),
            "coturn": self._turn.stop(grace),
            "postgres": self._postgres.stop(grace),
        }
        return {name: pid for name, pid in stopped.items() if pid is not None}
