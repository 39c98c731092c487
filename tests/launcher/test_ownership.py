"""Directories and files someone else could have written are refused, with one line that
says what to fix: the state dir and the key and session in it (first boot runs as root;
a key planted there would be published and derive the machine's password), the run dir
and what the launcher keeps in it, the peer on the launcher socket (the daemon sends
credentials events there), and FIFOs where a file is expected. "Someone else" is a real
process of another uid (4242, or nobody); the launcher, daemon and CLI are the real ones."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import BIN, Fleet, one_line_error, run
from launcher_proc import daemon_argv, kill_proxies_under, service
from machine_helpers import Enrolled, Provisioned, boot, enroll, provision

from bureau.daemon.launcher_client import LauncherClient, LauncherUnavailable

OTHER = 4242  # a uid with no account: nobody we trust
NOBODY = 65534
# The system's python: any uid can run it (the venv's may sit under a private home).
SYSTEM_PYTHON = "/usr/bin/python3"
GUARD_SECONDS = 30  # a refusal takes well under a second; only a hang reaches this


def as_other(script: str, *args: str | Path, uid: int = OTHER) -> None:
    """A shell script run by another user, as an attacker on the host would."""
    subprocess.run(
        ["sh", "-c", script, "sh", *map(str, args)],
        user=uid,
        group=uid,
        extra_groups=[],
        check=True,
        timeout=GUARD_SECONDS,
    )


def launcher_once(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """bureau-launcher, which must refuse and exit; one still running after the guard
    (it accepted what it should have refused, and serves) is a failure, not a hang."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDENTIALS_")}
    try:
        return subprocess.run(
            [str(BIN / "bureau-launcher"), *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=GUARD_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bureau-launcher did not refuse; still running after {exc.timeout} s")


def assert_refused(result: subprocess.CompletedProcess[str], path: Path, *parts: str) -> str:
    """Exit 2 (the units' do-not-restart status), one line naming ``path``."""
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert line.startswith(f"bureau-launcher: {path}: "), line
    for part in parts:
        assert part in line, line
    return line


@pytest.fixture
def loose_parent() -> Iterator[Path]:
    """A directory under /tmp where anyone may create a run dir, as a 0777 /run would."""
    path = Path(tempfile.mkdtemp(prefix="bureau-own-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        kill_proxies_under(path)
        shutil.rmtree(path, ignore_errors=True)


# -- the state dir ---------------------------------------------------------------------


def new_key() -> bytes:
    """A fresh age secret key, as the launcher stores it (the key line alone)."""
    generated = subprocess.run(["age-keygen"], check=True, capture_output=True).stdout
    return next(ln for ln in generated.splitlines() if ln.startswith(b"AGE-SECRET-KEY-1"))


def write_key(path: Path, key: bytes) -> None:
    path.write_bytes(key)
    path.chmod(0o600)


def _plant(case: str, state: Path, machine: Provisioned) -> Path:
    """Arrange ``case`` in the state dir; returns the path the refusal must name."""
    if case == "dir-0777-of-another-user-with-a-planted-key":
        as_other(
            'umask 0; mkdir -m 777 "$1" && umask 077 && '
            'age-keygen | grep "^AGE-SECRET-KEY-1" | tr -d "\\n" > "$1/machine-key.txt"',
            state,
        )
        return state
    if case == "dir-0777-of-root":
        state.mkdir(mode=0o777)
        state.chmod(0o777)
        return state
    if case == "dir-0700-of-another-user":
        state.mkdir()
        os.chown(state, OTHER, OTHER)
        return state
    state.mkdir(mode=0o700)
    if case == "key-planted-before-the-dir-was-repaired":
        key = state / "machine-key.txt"
        write_key(key, new_key())
        os.chown(key, OTHER, OTHER)
        return key
    if case == "sealed-key-of-another-user":
        sealed = state / "machine-key.cred"
        subprocess.run(
            ["systemd-creds", "encrypt", "--name=machine-key", "-", str(sealed)],
            input=new_key(),
            check=True,
            capture_output=True,
        )
        os.chown(sealed, OTHER, OTHER)
        return sealed
    if case == "key-a-symlink":
        real = state.parent / "elsewhere.txt"
        write_key(real, new_key())
        (state / "machine-key.txt").symlink_to(real)
        return state / "machine-key.txt"
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "dir-0777-of-another-user-with-a-planted-key",
            ("--state-dir is owned by uid 4242", "has mode 0777", "&& chmod 700"),
        ),
        ("dir-0777-of-root", ("--state-dir has mode 0777 (group or others may write to it)",)),
        ("dir-0700-of-another-user", ("owned by uid 4242, not by this user (uid 0) or root",)),
        ("key-planted-before-the-dir-was-repaired", ("is owned by uid 4242",)),
        ("sealed-key-of-another-user", ("is owned by uid 4242",)),
        ("key-a-symlink", ("is a symbolic link",)),
    ],
)
@pytest.mark.slow
def test_first_boot_refuses_a_state_dir_or_key_someone_else_could_have_written(
    fleet: Fleet, tmp_path: Path, loose_parent: Path, case: str, expected: tuple[str, ...]
) -> None:
    # In a directory anyone may create in, as a state dir's parent would be on a host
    # whose /var/lib (or wherever --state-dir points) is open.
    machine = replace(provision(fleet, tmp_path), state_dir=loose_parent / "state")
    named = _plant(case, machine.state_dir, machine)
    before = {p.name: p.read_bytes() for p in machine.state_dir.iterdir() if p.is_file()}

    result = boot(machine)

    assert_refused(result, named, *expected)
    # Nothing happened: no key of ours, no session, the bootstrap file kept, and the
    # fleet sees no key for the machine (its password was not rotated to a planted one).
    assert machine.bootstrap.exists()
    after = {p.name: p.read_bytes() for p in machine.state_dir.iterdir() if p.is_file()}
    assert after == before
    listed = run("bureau", "machine", "list", "--credential-file", fleet.credential_file, "--json")
    record = next(r for r in json.loads(listed.stdout) if r["user_id"] == machine.user_id)
    assert record["public_key"] is None, record


def test_a_later_start_refuses_a_session_someone_else_wrote(fleet: Fleet, tmp_path: Path) -> None:
    machine = enroll(fleet, tmp_path).machine
    session = machine.state_dir / "session.json"
    planted = json.loads(session.read_text())
    planted["access_token"] = "syt_planted"  # a token the planter holds
    session.write_text(json.dumps(planted))
    os.chown(session, OTHER, OTHER)
    args: list[str | Path] = [
        "--machine-name",
        machine.short_name,
        "--state-dir",
        machine.state_dir,
    ]

    result = launcher_once(*args, "--first-boot-only")

    assert_refused(result, session, "is owned by uid 4242", "someone else could have written it")


# -- the run dir -----------------------------------------------------------------------


RUN_DIR_CASES = {
    # case: (arrange it under run dir R, the path the refusal names relative to R)
    "run-dir-0777-of-another-user": ('umask 0; mkdir -m 777 "$1"', ""),
    "run-dir-0777-of-root": ("", ""),
    "launcher-dir-of-another-user": ('mkdir -m 755 "$1/launcher"', "launcher"),
    "adoption-record-of-another-user": (
        'echo "{}" > "$1/launcher/proxies/0badf00d.json"',
        "launcher/proxies/0badf00d.json",
    ),
    "proxy-dir-0777": ("", "fleet/prod"),
    "proxy-socket-bound-by-another-user": (
        f"exec {SYSTEM_PYTHON} -c "
        "'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' \"$1/fleet/x\"",
        "fleet/x",
    ),
    "fleet-a-symlink": ("", "fleet"),
}


def _arrange_run_dir(case: str, run_dir: Path) -> None:
    script, _ = RUN_DIR_CASES[case]
    if case == "run-dir-0777-of-another-user":
        as_other(script, run_dir)
        return
    run_dir.mkdir(mode=0o750)
    if case == "run-dir-0777-of-root":
        run_dir.chmod(0o777)
        return
    # The run dir itself is as it should be now; what is below was planted while it was
    # loose (made writable for the planter here, then tightened again).
    for part in ("launcher/proxies", "fleet"):
        (run_dir / part).mkdir(parents=True, mode=0o755)
    if case == "proxy-dir-0777":
        (run_dir / "fleet/prod").mkdir(mode=0o777)
        (run_dir / "fleet/prod").chmod(0o777)
        return
    if case == "fleet-a-symlink":
        (run_dir / "fleet").rmdir()
        (run_dir / "fleet").symlink_to(run_dir.parent)
        return
    if case == "launcher-dir-of-another-user":
        shutil.rmtree(run_dir / "launcher")
    loosened = [run_dir, run_dir / "launcher/proxies", run_dir / "fleet"]
    for directory in loosened:
        if directory.exists():
            directory.chmod(0o777)
    as_other(script, run_dir)
    for directory in loosened:
        if directory.exists():
            directory.chmod(0o755)
    run_dir.chmod(0o750)


@pytest.mark.slow
def test_launcher_refuses_a_run_dir_someone_else_could_write(
    fleet: Fleet, tmp_path: Path, loose_parent: Path
) -> None:
    """With the run dir open to others, one can rename launcher.sock away and bind their
    own (the daemon would send them every credentials event), or plant an adoption record
    or a proxy socket that outlives the run dir's repair. Each case on the real launcher."""
    machine = enroll(fleet, tmp_path).machine
    args: list[str | Path] = [
        "--machine-name",
        machine.short_name,
        "--state-dir",
        machine.state_dir,
    ]
    for case, (_, named) in RUN_DIR_CASES.items():
        run_dir = loose_parent / case
        _arrange_run_dir(case, run_dir)
        result = launcher_once(*args, "--run-dir", run_dir)
        path = run_dir / named if named else run_dir
        line = assert_refused(result, path)
        if named:
            assert f"in --run-dir {run_dir}" in line, line
        else:
            assert f"{run_dir}: --run-dir " in line, line
            assert f"chmod 750 {run_dir}" in line, line
        assert not (run_dir / "launcher.sock").exists(), case


# -- the launcher socket's peer --------------------------------------------------------

IMPOSTOR = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        got = conn.recv(65536)
        print("received", got.hex(), flush=True)
        conn.sendall(b'{"ok": true, "principals": [], "running": 0, "principals_count": 0}\\n')
    except OSError:
        pass
    conn.close()
"""


def _impostor(socket_path: Path, uid: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", IMPOSTOR, str(socket_path)],
        user=uid,
        group=uid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "listening\n"
    return proc


def _heard(proc: subprocess.Popen[str]) -> list[str]:
    proc.kill()
    out, _ = proc.communicate(timeout=GUARD_SECONDS)
    return [
        line for line in out.splitlines() if line.startswith("received") and line != "received "
    ]


def test_daemon_sends_nothing_to_a_launcher_socket_of_another_uid(
    fleet: Fleet, tmp_path: Path, loose_parent: Path
) -> None:
    """The real daemon, its run dir 0777 and launcher.sock bound by nobody: it refuses to
    talk (one log line naming the uid) and retries; the impostor hears nothing."""
    machine: Enrolled = enroll(fleet, tmp_path)
    run_dir = loose_parent / "run"
    run_dir.mkdir(mode=0o777)
    run_dir.chmod(0o777)
    impostor = _impostor(run_dir / "launcher.sock", NOBODY)
    try:
        argv = daemon_argv(machine.machine.short_name, machine.state_dir, run_dir)
        with service(argv, f"is answered by uid {NOBODY}") as daemon:
            line = next(ln for ln in daemon.lines if f"is answered by uid {NOBODY}" in ln)
            assert "launcher unavailable; will retry" in line, line
            assert "nothing sent to it" in line, line
    finally:
        heard = _heard(impostor)
    assert heard == []


def test_launcher_client_checks_the_peer_before_it_sends(loose_parent: Path) -> None:
    """The daemon's client against a socket served by nobody (refused, nothing sent) and
    by root (answered): the check is the peer's uid, not the socket file's owner."""
    for uid, trusted in ((NOBODY, False), (0, True)):
        path = loose_parent / f"uid{uid}.sock"
        impostor = _impostor(path, uid)
        try:
            client = LauncherClient(path)
            if trusted:
                assert asyncio.run(client.list()) == []
            else:
                with pytest.raises(LauncherUnavailable, match=f"answered by uid {uid} "):
                    asyncio.run(client.list())
        finally:
            heard = _heard(impostor)
        assert bool(heard) is trusted, heard


def test_doctor_reports_a_launcher_socket_answered_by_another_uid(empty_root: Path) -> None:
    run_dir = empty_root / "run/bureau"
    run_dir.mkdir(parents=True)
    for directory in (empty_root, empty_root / "run", run_dir):
        directory.chmod(0o755)
    run_dir.chmod(0o777)
    impostor = _impostor(run_dir / "launcher.sock", NOBODY)
    try:
        result = run("bureau", "machine", "doctor", "--root", empty_root)
    finally:
        heard = _heard(impostor)
    assert heard == []
    line = next(ln for ln in result.stdout.splitlines() if "launcher socket" in ln)
    assert line.startswith("FAIL  launcher socket /run/bureau/launcher.sock: "), line
    assert f"is answered by uid {NOBODY}" in line, line
    assert "directory /run/bureau: is 0777 root:root" in result.stdout


# -- FIFOs where a file is expected ------------------------------------------------------


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path, 0o600)
    return path


def _promptly(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(map(str, argv)), capture_output=True, text=True, timeout=GUARD_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[0]} blocked on a FIFO for {GUARD_SECONDS} s")


def test_a_fifo_as_credential_file_is_refused_promptly(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path, "creds")
    result = _promptly(BIN / "bureau", "machine", "list", "--credential-file", fifo)
    assert result.returncode != 0
    assert one_line_error(result) == f"bureau: {fifo}: is a FIFO, not a regular file"


def test_a_fifo_as_bootstrap_file_is_refused_promptly(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path, "bootstrap.json")
    result = _promptly(
        BIN / "bureau-launcher",
        "--bootstrap-file",
        fifo,
        "--machine-name",
        "machine/w",
        "--state-dir",
        tmp_path / "state",
        "--first-boot-only",
    )
    assert result.returncode != 0
    assert one_line_error(result) == f"bureau-launcher: {fifo}: is a FIFO, not a regular file"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # kept, as every refused bootstrap file is
