"""The fleet profile through a Bureau fleet, against the real Synapse: `bureau fleet
profile set` publishes it (refusing tokens and contradictions), the worker's daemon
materializes it to <run-dir>/profile.env within seconds of every change, and
flywheel-verify and the machine doctor read it there."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

from conftest import BIN, Fleet, one_line_error, run
from launcher_proc import Service, daemon, launcher
from machine_helpers import enroll
from profile_values import CACHE, EXECUTOR, JWT

from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.operator import credentials
from bureau.profile import model, sources
from bureau.wire import rooms


def _set(fleet: Fleet, *flags: str):  # type: ignore[no-untyped-def]
    return run(
        "bureau", "fleet", "profile", "set", "--credential-file", fleet.credential_file, *flags
    )


def _eventually_file(path: Path, want: model.Profile, seconds: float = 30) -> float:
    """Seconds until ``path`` holds ``want``."""
    started = time.monotonic()
    while True:
        try:
            if sources.parse_env_file(path.read_text()) == want:
                return time.monotonic() - started
        except FileNotFoundError:
            pass
        assert time.monotonic() - started < seconds, f"{path} never held {want}"
        time.sleep(0.1)


def _publish_unchecked(fleet: Fleet, content: dict[str, str]) -> None:
    """``m.bureau.fleet_profile`` put in the fleet room as is, without the operator
    command's checks."""
    admin = credentials.admin_client(fleet.creds)
    room = resolve_fleet_rooms(admin, fleet.name, fleet.hub.server_name).fleet
    admin.put_state(room, rooms.FLEET_PROFILE, "", content)


# What the daemon logs once it has read a fleet profile event: refused, or written out.
OUTCOMES = ("ignoring invalid fleet profile", "fleet profile materialized")


def _next_outcome(daemon: Service, start: int, path: Path, seconds: float = 30) -> str:
    """The daemon's verdict on the next fleet profile it reads (its log from line
    ``start``); a file that changes without a log line counts as materialized."""
    before = path.read_bytes()
    deadline = time.monotonic() + seconds
    while True:
        for line in daemon.lines[start:]:
            for outcome in OUTCOMES:
                if outcome in line:
                    return outcome
        if path.read_bytes() != before:
            return "fleet profile materialized"
        assert time.monotonic() < deadline, f"the daemon never read the profile:\n{daemon.log()}"
        time.sleep(0.05)


def test_published_profile_reaches_the_worker_and_verifies(
    fleet: Fleet, tmp_path: Path, empty_root: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    run_dir = empty_root / "run/bureau"
    run_dir.mkdir(parents=True)
    profile_env = run_dir / "profile.env"
    with launcher(name, state, run_dir), daemon(name, state, run_dir) as the_daemon:
        published = _set(fleet, "shared-cache-backed", "--cache-endpoint", CACHE)
        assert published.returncode == 0, published.stderr
        assert published.stdout.startswith("published: shared-cache-backed")
        _eventually_file(
            profile_env,
            {model.STATE: model.SHARED_CACHE, model.MODE: model.SHARED_CACHE, model.CACHE: CACHE},
        )
        assert stat.S_IMODE(profile_env.stat().st_mode) == 0o644

        changed = _set(
            fleet, "executor-backed", "--cache-endpoint", CACHE, "--executor-endpoint", EXECUTOR
        )
        assert changed.returncode == 0, changed.stderr
        _eventually_file(
            profile_env,
            {
                model.STATE: model.EXECUTOR_BACKED,
                model.MODE: model.EXECUTOR_BACKED,
                model.CACHE: CACHE,
                model.EXECUTOR: EXECUTOR,
            },
        )
        assert "fleet profile materialized" in the_daemon.log()

        # A token is refused by the operator command, and the worker keeps what it had.
        refused = _set(
            fleet, "shared-cache-backed", "--cache-endpoint", CACHE, "--instance-name", JWT
        )
        assert refused.returncode == 2
        assert "must never hold a token" in one_line_error(refused)
        assert JWT not in refused.stderr
        # Nothing was published, so the worker has nothing to refuse yet: the same event
        # put in the fleet room by a publisher that skips the command (another tool, a
        # hand-written event) must be refused by the daemon too, which keeps what it had.
        mark = len(the_daemon.lines)
        _publish_unchecked(
            fleet,
            {model.STATE: model.SHARED_CACHE, model.MODE: model.SHARED_CACHE, model.CACHE: CACHE,
             model.INSTANCE: JWT},
        )  # fmt: skip
        outcome = _next_outcome(the_daemon, mark, profile_env)
        assert outcome == "ignoring invalid fleet profile", the_daemon.log()[-2000:]
        assert sources.parse_env_file(profile_env.read_text())[model.STATE] == "executor-backed"
        assert JWT not in profile_env.read_text()

        # What the machine's tools read: flywheel-verify finds the materialized profile.
        verified = subprocess.run(
            [BIN / "flywheel-verify", "--root", empty_root],
            env={"PATH": os.environ["PATH"]},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.strip().endswith("from /run/bureau/profile.env: consistent")
        the_daemon.stop()
    assert JWT not in the_daemon.log()


def test_fleet_profile_set_refuses_contradictions(fleet: Fleet) -> None:
    result = _set(fleet, "executor-backed", "--cache-endpoint", CACHE)
    assert result.returncode == 2
    assert one_line_error(result) == (
        "bureau: refused: GF_BAZEL_REMOTE_EXECUTOR: required by executor-backed"
    )
