"""The launcher's first boot against the real Synapse: the result, convergence after an
interruption at every step, key storage, later starts, and bad bootstrap files."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, Fleet, fill_up, one_line_error, run
from fault_front import FaultFront
from machine_helpers import Provisioned, boot, point_at, provision
from processes import SUPPORT

from bureau import key_store
from bureau.errors import MatrixError
from bureau.launcher import first_boot
from bureau.matrix.client import MatrixHTTP
from bureau.operator import credentials
from bureau.secret import Secret
from bureau.wire import names, rooms


def _assert_enrolled(
    machine: Provisioned, one_time_password: str, homeserver_url: str | None = None
) -> None:
    """Everything a completed first boot leaves behind."""
    hub = machine.fleet.hub
    assert not machine.bootstrap.exists()
    with pytest.raises(MatrixError) as refused:
        MatrixHTTP(hub.url).login_password(machine.localpart, Secret(one_time_password))
    assert refused.value.errcode == "M_FORBIDDEN"

    session_file = machine.state_dir / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    session = json.loads(session_file.read_text())
    assert session["user_id"] == machine.user_id
    assert session["homeserver_url"] == (homeserver_url or hub.url)
    client = MatrixHTTP(hub.url, Secret(session["access_token"]))
    assert client.whoami() == (machine.user_id, session["device_id"])

    public_key = (machine.state_dir / "machine-key.pub").read_text().strip()
    assert stat.S_IMODE((machine.state_dir / "machine-key.pub").stat().st_mode) == 0o644
    admin = credentials.admin_client(machine.fleet.creds)
    machine_room = admin.resolve_alias(
        names.room_alias(f"{machine.fleet.name}/machine", hub.server_name)
    )
    assert machine_room is not None
    key_events = [
        e
        for e in admin.room_state_events(machine_room)
        if e["type"] == rooms.MACHINE_KEY
        and e["state_key"] == names.state_key(machine.localpart, hub.server_name)
    ]
    assert len(key_events) == 1
    assert key_events[0]["sender"] == machine.user_id
    assert key_events[0]["content"] == {"algorithm": "age-x25519", "public_key": public_key}

    config_alias = names.room_alias(machine.localpart, hub.server_name)
    for alias in (machine.fleet.name, f"{machine.fleet.name}/service", machine.localpart):
        room_id = admin.resolve_alias(names.room_alias(alias, hub.server_name))
        assert room_id is not None, config_alias
        members = {
            e["state_key"]: e["content"]["membership"]
            for e in admin.room_state_events(room_id)
            if e["type"] == "m.room.member"
        }
        assert members[machine.user_id] == "join"


def test_first_boot_enrolls_the_machine(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    otp = machine.one_time_password
    result = boot(machine)
    assert result.returncode == 0, result.stderr
    _assert_enrolled(machine, otp)


@pytest.mark.parametrize("killed_after", list(first_boot.Step))
@pytest.mark.slow
def test_sigkill_after_each_first_boot_step_converges_on_rerun(
    fleet: Fleet, tmp_path: Path, killed_after: first_boot.Step
) -> None:
    """A real launcher process SIGKILLed right after each step: nothing unwinds, and the
    next run still converges to a fully enrolled machine."""
    machine = provision(fleet, tmp_path)
    otp = machine.one_time_password
    _kill_after(killed_after, machine)
    assert machine.bootstrap.exists() is (killed_after is not first_boot.Step.BOOTSTRAP_DELETED)
    # A kill in the middle of a write leaves a temporary file; the next run clears it.
    stale = machine.state_dir / ".session.json.tmp-0badf00d"
    stale.write_text('{"access_tok')

    rerun = boot(machine)
    assert rerun.returncode == 0, rerun.stderr
    _assert_enrolled(machine, otp)
    assert [p.name for p in machine.state_dir.iterdir() if ".tmp-" in p.name] == []


def _boot_args(machine: Provisioned, *extra: str) -> list[str]:
    return [
        "--bootstrap-file",
        str(machine.bootstrap),
        "--machine-name",
        machine.short_name,
        "--state-dir",
        str(machine.state_dir),
        "--first-boot-only",
        *extra,
    ]


def _booting(machine: Provisioned) -> subprocess.Popen[str]:
    """First boot as a background process whose log the test reads."""
    return subprocess.Popen(
        [str(BIN / "bureau-launcher"), *_boot_args(machine)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _log_events(stderr: str, event: str) -> list[dict[str, object]]:
    lines = [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]
    return [ln for ln in lines if ln.get("event") == event]


def _kill_after(step: first_boot.Step, machine: Provisioned) -> None:
    killed = subprocess.run(
        [
            str(BIN / "python"),
            str(SUPPORT / "kill_at_step.py"),
            step.value,
            *_boot_args(machine),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "first boot complete" not in killed.stderr


def test_disk_full_while_storing_the_key(fleet: Fleet, tmp_path: Path, small_tmpfs: Path) -> None:
    machine = dataclasses.replace(provision(fleet, tmp_path), state_dir=small_tmpfs)
    otp = machine.one_time_password
    bootstrap = machine.bootstrap.read_bytes()
    filler = fill_up(small_tmpfs)

    full = boot(machine)
    assert full.returncode == 1
    line = one_line_error(full)
    assert f"{small_tmpfs}/machine-key" in line
    assert "cannot write it: No space left on device" in line
    assert machine.bootstrap.read_bytes() == bootstrap
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]

    filler.unlink()
    assert boot(machine).returncode == 0
    _assert_enrolled(machine, otp)


def test_disk_full_while_rewriting_session_json(
    fleet: Fleet, tmp_path: Path, small_tmpfs: Path
) -> None:
    """Killed after session.json was written, then re-run on a full disk: the rewrite
    fails, session.json is intact, and the run after that (with room again) converges."""
    machine = dataclasses.replace(provision(fleet, tmp_path), state_dir=small_tmpfs)
    otp = machine.one_time_password
    _kill_after(first_boot.Step.SESSION_SAVED, machine)
    session = (small_tmpfs / "session.json").read_bytes()
    filler = fill_up(small_tmpfs)

    full = boot(machine)
    assert full.returncode == 1
    line = one_line_error(full)
    assert f"{small_tmpfs}/session.json: cannot write it: No space left on device" in line
    assert (small_tmpfs / "session.json").read_bytes() == session
    assert machine.bootstrap.exists()

    filler.unlink()
    assert boot(machine).returncode == 0
    _assert_enrolled(machine, otp)


@pytest.mark.slow
def test_homeserver_down_at_first_boot_is_waited_out(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    otp = machine.one_time_password
    with FaultFront(fleet.hub.url) as front:
        point_at(machine, front.url)
        front.fault("refuse")
        with _booting(machine) as proc:
            time.sleep(3)
            front.fault("pass")
            _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        waits = _log_events(stderr, "homeserver unavailable; first boot will resume")
        # Jittered doubling from 1 s: 0.5-1, 1-2, 2-4 s... so 3 s of outage is 2 or 3 waits.
        assert 2 <= len(waits) <= 3, stderr
        delays = [float(str(w["retry_in"])) for w in waits]
        for attempt, delay in enumerate(delays):
            assert 2**attempt / 2 - 0.05 <= delay <= 2**attempt + 0.05, delays
        assert all("cannot reach homeserver" in str(w["problem"]) for w in waits)
        assert "Traceback" not in stderr
        _assert_enrolled(machine, otp, homeserver_url=front.url)


def test_homeserver_wait_bounds_first_boot(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    before = machine.bootstrap.read_bytes()
    with FaultFront(fleet.hub.url) as front:
        point_at(machine, front.url)
        before = machine.bootstrap.read_bytes()
        front.fault("status", 500, {"errcode": "M_UNKNOWN", "error": "database is down"})
        result = run("bureau-launcher", *_boot_args(machine, "--homeserver-wait", "2"))
    assert result.returncode == 1
    line = one_line_error(result)
    assert "500 M_UNKNOWN database is down" in line
    assert "still failing after 2 s of retries; --homeserver-wait" in line
    assert machine.bootstrap.read_bytes() == before
    assert not (machine.state_dir / "session.json").exists()


@pytest.mark.parametrize(
    ("path", "skip"),
    [
        ("/_matrix/client/v3/login", 0),
        # The first POST only asks which auth flows there are; the second one changes it.
        ("/_matrix/client/v3/account/password", 1),
    ],
)
@pytest.mark.slow
def test_answer_lost_after_the_homeserver_acted_converges(
    fleet: Fleet, tmp_path: Path, path: str, skip: int
) -> None:
    """The homeserver logs in or rotates the password, then the answer is cut mid-body:
    the launcher cannot know it happened, and must still converge in the same run."""
    machine = provision(fleet, tmp_path)
    otp = machine.one_time_password
    with FaultFront(fleet.hub.url) as front:
        point_at(machine, front.url)
        front.fault("cut", paths=(path,), skip=skip, count=1)
        result = run("bureau-launcher", *_boot_args(machine))
        assert result.returncode == 0, result.stderr
        assert [s.outcome for s in front.requests_to(path)][skip] == "cut"
        assert (
            len(_log_events(result.stderr, "homeserver unavailable; first boot will resume")) == 1
        )
        _assert_enrolled(machine, otp, homeserver_url=front.url)


@pytest.mark.parametrize(
    ("path", "skip"),
    [
        # Logging in with the one-time password; rotating it (the second POST, the first
        # asks for the auth flows); joining the rooms once the password is the derived one.
        ("/_matrix/client/v3/login", 0),
        ("/_matrix/client/v3/account/password", 1),
        ("/_matrix/client/v3/join", 0),
    ],
)
@pytest.mark.slow
def test_sigterm_during_first_boot_then_rerun(
    fleet: Fleet, tmp_path: Path, path: str, skip: int
) -> None:
    """A real process stopped by SIGTERM while first boot waits on the homeserver (the
    front holds that request unanswered, so the boot cannot have finished): exit 143 with
    one line saying so, no temporary file left, bootstrap.json kept, and the re-run
    converges from wherever it was stopped."""
    machine = provision(fleet, tmp_path)
    otp = machine.one_time_password
    with FaultFront(fleet.hub.url) as front:
        point_at(machine, front.url)
        front.fault("hang", paths=(path,), skip=skip, count=1)
        with _booting(machine) as proc:
            deadline = time.monotonic() + 60
            while not [s for s in front.requests_to(path) if s.outcome == "hang"]:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, f"first boot never reached {path}"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        front.fault("pass")
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert "Traceback" not in stderr
        assert stderr.splitlines()[-1] == (
            "bureau-launcher: stopped by SIGTERM; run it again to resume"
        )
        assert sorted(p.name for p in machine.state_dir.iterdir() if ".tmp-" in p.name) == []
        assert machine.bootstrap.exists()
        rerun = boot(machine)
        assert rerun.returncode == 0, rerun.stderr
        _assert_enrolled(machine, otp, homeserver_url=front.url)


def test_systemd_creds_storage_keeps_no_plaintext_key(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    result = boot(machine, "--key-storage", "systemd-creds")
    assert result.returncode == 0, result.stderr
    names_in_dir = sorted(p.name for p in machine.state_dir.iterdir())
    assert names_in_dir == [
        "machine-key.cred",
        "machine-key.pub",
        "operator-keys.json",  # public keys, pinned at first boot
        "session.json",
    ]
    sealed = machine.state_dir / "machine-key.cred"
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    for path in machine.state_dir.iterdir():
        assert b"AGE-SECRET-KEY" not in path.read_bytes()
    opened = subprocess.run(
        ["systemd-creds", "decrypt", "--name=machine-key", str(sealed), "-"],
        capture_output=True,
        check=True,
    )
    secret_key = opened.stdout.decode().strip()
    assert secret_key.startswith("AGE-SECRET-KEY-1")
    # The unit's LoadCredentialEncrypted= hands the key over in $CREDENTIALS_DIRECTORY;
    # the launcher prefers it to the sealed file.
    delivered = tmp_path / "creds"
    delivered.mkdir()
    (delivered / "machine-key").write_text(secret_key)
    loaded = key_store.load(machine.state_dir, str(delivered))
    assert loaded == (Secret(secret_key), str(delivered / "machine-key"))


def test_plain_storage_interoperates_with_age(fleet: Fleet, tmp_path: Path) -> None:
    machine = provision(fleet, tmp_path)
    result = boot(machine, "--key-storage", "plain")
    assert result.returncode == 0, result.stderr
    plain = machine.state_dir / "machine-key.txt"
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600
    raw = plain.read_bytes()
    assert raw.startswith(b"AGE-SECRET-KEY-1")
    assert not raw.endswith(b"\n")
    # The real age CLI derives the same public key that was published.
    public = subprocess.run(["age-keygen", "-y", str(plain)], capture_output=True, check=True)
    assert public.stdout.decode().strip() == (
        (machine.state_dir / "machine-key.pub").read_text().strip()
    )


def test_later_start_needs_no_bootstrap_and_serves_until_sigterm(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = provision(fleet, tmp_path)
    assert boot(machine).returncode == 0
    # The same command line as first boot (a unit may keep --bootstrap-file): no-op.
    again = boot(machine)
    assert again.returncode == 0, again.stderr
    assert "first boot already complete" in again.stderr
    with subprocess.Popen(
        [
            str(BIN / "bureau-launcher"),
            "--machine-name",
            machine.localpart,
            "--state-dir",
            str(machine.state_dir),
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        while "launcher serving" not in (line := proc.stderr.readline()):
            assert line, "launcher exited early"
        assert (run_dir / "launcher.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not (run_dir / "launcher.sock").exists()


def test_start_without_anything_says_what_to_pass(tmp_path: Path) -> None:
    result = run(
        "bureau-launcher",
        "--machine-name",
        "machine/w",
        "--state-dir",
        tmp_path / "s",
        "--first-boot-only",
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert "first boot needs --bootstrap-file (from `bureau machine provision`)" in line


UNSAFE_BOOTSTRAP = ("symlink", "other-owner", "world-readable")


def _bootstrap_text(fleet: Fleet, **change: object) -> str:
    data: dict[str, object] = {
        "homeserver_url": fleet.hub.url,
        "server_name": fleet.hub.server_name,
        "machine_name": f"{fleet.name}/machine/bad",
        "password": "ab" * 32,
        "fleet_prefix": fleet.name,
        **change,
    }
    return json.dumps({k: v for k, v in data.items() if v is not None}, indent=2)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not-json", "not JSON"),
        ("truncated", "not JSON"),
        ("missing-field", "password: missing"),
        ("mistyped-field", "server_name: expected a non-empty string"),
        ("not-an-object", "expected a JSON object"),
        ("one-mebibyte", "is 1048576 bytes; at most 65536"),
        ("symlink", "is a symbolic link; give the file itself"),
        ("other-owner", "is owned by uid 65534, not by this user (uid 0) or root"),
        ("other-machine", "this bootstrap file is for another machine"),
        ("world-readable", "mode 0644 lets other users read it"),
        ("directory", "is a directory"),
        ("unreachable", "cannot reach homeserver http://127.0.0.1:1"),
    ],
)
@pytest.mark.slow
def test_bad_bootstrap_files(fleet: Fleet, tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "bootstrap.json"
    mode = 0o600
    if case == "not-json":
        path.write_text("{not json")
    elif case == "truncated":
        path.write_text(_bootstrap_text(fleet)[:-20])
    elif case == "mistyped-field":
        path.write_text(_bootstrap_text(fleet, server_name=8448))
    elif case == "not-an-object":
        path.write_text("[]")
    elif case == "one-mebibyte":
        path.write_text(" " * (1 << 20))
    elif case == "symlink":
        real = tmp_path / "real-bootstrap.json"
        real.write_text(_bootstrap_text(fleet))
        real.chmod(0o600)
        path.symlink_to(real)
    elif case == "other-owner":
        path.write_text(_bootstrap_text(fleet))
        os.chown(path, 65534, 65534)
    elif case == "missing-field":
        path.write_text(_bootstrap_text(fleet, password=None))
    elif case == "other-machine":
        path.write_text(_bootstrap_text(fleet, machine_name=f"{fleet.name}/machine/other"))
    elif case == "world-readable":
        path.write_text(_bootstrap_text(fleet))
        mode = 0o644
    elif case == "directory":
        path.mkdir()
        mode = 0o700
    elif case == "unreachable":
        path.write_text(_bootstrap_text(fleet, homeserver_url="http://127.0.0.1:1"))
    if not path.is_symlink():
        path.chmod(mode)
    before = b"" if path.is_dir() else path.read_bytes()

    result = run(
        "bureau-launcher",
        "--bootstrap-file",
        path,
        "--machine-name",
        "machine/bad",
        "--state-dir",
        tmp_path / "state",
        "--first-boot-only",
        "--homeserver-wait",
        "0",
    )
    # A file someone else could have written is a configuration error (2: the units do
    # not restart after it); the others are failures (1).
    assert result.returncode == (2 if case in UNSAFE_BOOTSTRAP else 1)
    line = one_line_error(result)
    assert line.startswith("bureau-launcher: ")
    assert expected in line
    if case != "unreachable":
        assert str(path) in line
    assert path.exists()
    if not path.is_dir():
        assert path.read_bytes() == before
        assert "ab" * 32 not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--registration-token-file", "-"), "--registration-token-file"),
        (("--registration-token-file",), "--registration-token-file"),
        (
            ("--homeserver", "http://127.0.0.1:1", "--server-name", "x", "--fleet", "a/fleet/b"),
            "--homeserver",
        ),
        (("--fleet", "a/fleet/b"), "--fleet"),
        (
            ("--bootstrap-file", "bootstrap.json", "--registration-token-file", "-"),
            "--registration-token-file",
        ),
    ],
)
def test_the_registration_token_first_boot_is_gone(
    tmp_path: Path, flags: tuple[str, ...], named: str
) -> None:
    """The launcher never holds the hub's registration token: the old flags fail in one
    line saying what replaced them, before anything is read or written."""
    state = tmp_path / "state"
    result = run(
        "bureau-launcher",
        *flags,
        "--machine-name",
        "machine/w",
        "--state-dir",
        state,
        "--first-boot-only",
        stdin="registration-token-canary\n",
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith(f"bureau-launcher: {named}: the registration-token first boot was")
    assert "`bureau machine provision`" in line
    assert "--bootstrap-file" in line
    assert not state.exists()
    assert "--registration-token-file" not in run("bureau-launcher", "--help").stdout
