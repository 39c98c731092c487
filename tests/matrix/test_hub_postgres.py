"""`bureau hub up --database postgresql`: a PostgreSQL server of the hub's own, its
cluster in the state directory and its only way in a Unix socket there, Synapse's
database in the C collation, and `down` leaving none of its processes (nor Synapse's,
nor coturn's) behind. The suite runs as root, so the server runs as Debian's postgres
account, as it would for an operator running the hub as root."""

from __future__ import annotations

import contextlib
import json
import pwd
import stat
from pathlib import Path

import pytest
from conftest import free_port, one_line_error, run
from hub_fleet import postgres_reachable_dir

from bureau.hub_postgres import Postgres
from bureau.launcher.processes import process_start_time


def _pid(path: Path) -> int:
    return int(json.loads(path.read_text())["pid"])


def _tree(root: int) -> set[int]:
    """``root`` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            parents[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    found = {root}
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def _tcp_listeners(pids: set[int]) -> list[str]:
    """Listening TCP sockets held by any of ``pids``, from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = str(fd.readlink())
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.append(fields[1])
    return found


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    return int(line.split()[1])


@pytest.mark.slow
def test_up_status_down_on_postgresql(tmp_path: Path) -> None:
    with postgres_reachable_dir() as state:
        port, turn_port = free_port(), free_port()
        up = run("bureau", "hub", "up", "--state-dir", state, "--port", str(port),
                 "--server-name", "pg.test", "--database", "postgresql",
                 "--turn-port", str(turn_port))  # fmt: skip
        try:
            assert up.returncode == 0, up.stderr
            pids = {name: _pid(state / f"{name}.pid") for name in ("hub", "postgres", "turn")}
            status = run("bureau", "hub", "status", "--state-dir", state)
            assert status.returncode == 0, status.stdout
            assert status.stdout.splitlines()[1:] == [
                f"database postgresql running pid={pids['postgres']}",
                f"turn 127.0.0.1:{turn_port} udp+tcp running pid={pids['turn']}",
            ]
            server = _tree(pids["postgres"])
            assert len(server) > 1  # the postmaster and its workers
            # Run as Debian's postgres account, reachable through a socket only.
            assert {_uid(pid) for pid in server} == {pwd.getpwnam("postgres").pw_uid}
            assert _tcp_listeners(server) == []
            assert stat.S_ISSOCK((state / "postgresql" / ".s.PGSQL.5432").stat().st_mode)
            # What the account may do in the hub's directory: pass through it, no more.
            st = state.stat()
            assert (st.st_uid, st.st_gid) == (0, pwd.getpwnam("postgres").pw_gid)
            assert stat.S_IMODE(st.st_mode) == 0o710

            # Synapse runs on it: an operator's setup lands in PostgreSQL, not in SQLite.
            registered = run("bureau", "matrix", "setup", "--homeserver", up.stdout.strip(),
                             "--server-name", "pg.test", "--registration-token-file",
                             state / "registration-token", "--credential-file",
                             tmp_path / "bureau-creds")  # fmt: skip
            assert registered.returncode == 0, registered.stderr
            assert not (state / "homeserver.db").exists()
            with contextlib.closing(Postgres(state).connect()) as db:
                admins = "SELECT count(*) FROM users WHERE name = ? AND admin = 1"
                assert db.scalar(admins, ("@bureau-admin:pg.test",)) == 1
                collation = (
                    "SELECT datcollate || ' ' || datctype FROM pg_database WHERE datname = ?"
                )
                assert db.scalar(collation, ("synapse",)) == "C C"

            other = run("bureau", "hub", "up", "--state-dir", state, "--database", "sqlite")
            assert other.returncode == 1
            assert "generated on postgresql, not sqlite" in one_line_error(other)
        finally:
            down = run("bureau", "hub", "down", "--state-dir", state)
        assert down.returncode == 0, down.stderr
        assert down.stdout.splitlines() == [
            f"stopped (pid {pids['hub']})",
            f"stopped coturn (pid {pids['turn']})",
            f"stopped postgres (pid {pids['postgres']})",
        ]
        # None of them is left, nor any of PostgreSQL's workers (a zombie waiting for its
        # new parent to reap it counts as gone).
        assert [pid for pid in server | set(pids.values()) if process_start_time(pid)] == []
        stopped = run("bureau", "hub", "status", "--state-dir", state)
        assert (stopped.returncode, stopped.stdout.strip()) == (3, "stopped")


def test_a_state_dir_the_server_account_cannot_reach_is_refused_first(tmp_path: Path) -> None:
    """pytest's directories (under /tmp/pytest-of-root, 0700) are such a place: said in one
    line naming the directory, before anything is generated."""
    state = tmp_path / "hub"
    result = run("bureau", "hub", "up", "--state-dir", state, "--port", str(free_port()),
                 "--database", "postgresql")  # fmt: skip
    assert result.returncode == 1
    line = one_line_error(result)
    assert "PostgreSQL runs as 'postgres', which cannot pass through this directory" in line
    assert not (state / "homeserver.yaml").exists()
