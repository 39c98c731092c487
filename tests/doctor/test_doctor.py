"""`bureau machine doctor` in a root of its own (--root), against the real Synapse and a
real launcher: an empty machine fails with one line per missing piece, --fix mends what it
can, a running launcher makes every check pass, and a second --fix changes nothing.
`bureau matrix doctor` finds and puts back power levels; `bureau fleet cache set`
publishes what the machine doctor then trusts in nix.conf. The sandbox checks look at this
machine itself: bwrap found and run, missing, and refused by the kernel."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cache_settings import CACHE_KEY, CACHE_URL, set_cache
from conftest import Fleet, one_line_error, run
from launcher_proc import launcher
from machine_helpers import Provisioned, boot, provision

from bureau import unit_files
from bureau.doctor import sandbox_checks
from bureau.doctor.findings import Status
from bureau.doctor.sandbox_checks import SandboxChecks
from bureau.host import Host
from bureau.matrix.client import segment
from bureau.operator import credentials
from bureau.wire import names, rooms


@pytest.fixture
def root(empty_root: Path) -> Path:
    return empty_root


def _first_boot(fleet: Fleet, tmp_path: Path, root: Path, storage: str) -> tuple[Provisioned, Path]:
    """First boot as script/bootstrap-machine runs it: into the root's state directory."""
    machine = replace(provision(fleet, tmp_path), state_dir=root / "var/lib/bureau")
    booted = boot(machine, "--key-storage", storage)
    assert booted.returncode == 0, booted.stderr
    return machine, machine.state_dir


def _doctor(root: Path, *flags: str):  # type: ignore[no-untyped-def]
    return run("bureau", "machine", "doctor", "--root", root, *flags)


def _failing(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAIL")]


def test_empty_root_fails_with_one_line_per_missing_piece(root: Path) -> None:
    result = _doctor(root)
    assert result.returncode == 1
    assert result.stderr == ""
    failing = _failing(result.stdout)
    for piece in (
        "user bureau: missing",
        "group bureau-operators: missing",
        "directory /etc/bureau: missing",
        "directory /var/lib/bureau: missing",
        "directory /run/bureau: missing",
        "program /usr/local/bin/bureau-launcher: missing",
        "program /usr/local/bin/bureau-daemon: missing",
        "unit file /etc/systemd/system/bureau-launcher.service: missing",
        "unit file /etc/systemd/system/bureau-daemon.service: missing",
        "unit file /etc/tmpfiles.d/bureau.conf: missing",
        "machine key: no machine-key.pub",
        "file /etc/bureau/machine.conf: missing",
        "session: no /var/lib/bureau/session.json",
        "launcher socket /run/bureau/launcher.sock",
    ):
        assert sum(piece in line for line in failing) == 1, (piece, result.stdout)
    assert all("(fix: " in line for line in failing)
    assert "n/a   bureau-launcher.service active: systemd is not running here" in result.stdout
    # This host's kernel and packages say nothing about another root.
    for check in ("sandbox programs (bwrap, prlimit)", "sandboxes start"):
        assert f"n/a   {check}" in result.stdout, result.stdout
    assert "directory /var/lib/bureau-sandbox: missing" in result.stdout
    report = json.loads(_doctor(root, "--json").stdout)
    assert report["passed"] is False
    assert {c["status"] for c in report["checks"]} == {"fail", "n/a"}


def test_fix_makes_an_enrolled_machine_pass_and_a_second_fix_changes_nothing(
    fleet: Fleet, root: Path, tmp_path: Path
) -> None:
    published = set_cache(fleet, CACHE_KEY)
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published: ")
    profile = run(
        "bureau",
        "fleet",
        "profile",
        "set",
        "--credential-file",
        fleet.credential_file,
        "shared-cache-backed",
        "--cache-endpoint",
        "grpcs://bazel-cache.example.internal:9092",
    )
    assert profile.returncode == 0, profile.stderr

    # As script/bootstrap-machine does it: first boot as root, the key sealed with
    # systemd-creds, before the doctor gives the state directory to bureau (root trusts
    # a directory of its own, not one of an account this host's NSS does not know).
    machine, state = _first_boot(fleet, tmp_path, root, "systemd-creds")

    first = _doctor(root, "--fix")
    assert first.returncode == 1  # the launcher is not running yet
    assert "fixed user bureau" in first.stdout
    assert "fixed directory /var/lib/bureau" in first.stdout
    assert "fixed file /var/lib/bureau/session.json" in first.stdout
    assert "fixed file /etc/bureau/machine.conf" in first.stdout
    assert "fixed nix.conf trusts the fleet cache" in first.stdout
    assert "fixed fleet profile /run/bureau/profile.env" in first.stdout
    assert _failing(first.stdout) == [
        "FAIL  launcher socket /run/bureau/launcher.sock: No such file or directory "
        "(fix: start bureau-launcher)"
    ]

    # What systemd would do next: start the launcher on the root's directories.
    with launcher(machine.short_name, state, root / "run/bureau", program=_on_this_host(root)):
        passing = _doctor(root, "--fix")
        assert passing.returncode == 0, passing.stdout
        assert "fixed" not in passing.stdout
        assert passing.stdout.splitlines()[-1].startswith("all ")
        again = _doctor(root, "--fix")
        assert again.returncode == 0
        assert again.stdout == passing.stdout  # nothing left to change

    assert (state / "session.json").stat().st_uid == _bureau_uid(root)
    assert stat.S_IMODE((state / "machine-key.cred").stat().st_mode) == 0o600
    conf = (root / "etc/bureau/machine.conf").read_text()
    assert f"BUREAU_MACHINE_NAME={machine.localpart}\n" in conf
    assert f"BUREAU_HOMESERVER_URL={fleet.hub.url}\n" in conf
    for name in unit_files.SERVICES:
        assert (root / "etc/systemd/system" / name).read_text() == unit_files.packaged(name)
        assert (root / "etc/systemd/system/multi-user.target.wants" / name).is_symlink()
    nix = (root / "etc/nix/nix.conf").read_text()
    assert nix.count(f"extra-substituters = {CACHE_URL}\n") == 1
    assert nix.count(f"extra-trusted-public-keys = {CACHE_KEY}\n") == 1
    launcher_binary = root / "usr/local/bin/bureau-launcher"
    assert launcher_binary.resolve() == (Path(sys.executable).parent / "bureau-launcher").resolve()


def _bureau_uid(root: Path) -> int:
    return {
        line.split(":")[0]: int(line.split(":")[2])
        for line in (root / "etc/passwd").read_text().splitlines()
    }["bureau"]


def _on_this_host(root: Path) -> list[str]:
    """bureau-launcher as root with the root's account database as its own (in a mount
    namespace of its own): the files the doctor gave to the root's bureau account are
    the launcher's, as they are on the host itself (first boot or a launcher run by root
    trusts root, itself and bureau)."""
    bind = 'mount --bind "$0" /etc/passwd && exec "$@"'
    launcher_binary = str(Path(sys.executable).parent / "bureau-launcher")
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        bind,
        str(root / "etc/passwd"),
        launcher_binary,
    ]


def test_edited_unit_is_drift_and_fix_restores_it(root: Path) -> None:
    _doctor(root, "--fix")
    unit = root / "etc/systemd/system/bureau-daemon.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=30", "WatchdogSec=0"))
    result = _doctor(root)
    assert (
        "FAIL  unit file /etc/systemd/system/bureau-daemon.service: differs from the one this "
        "bureau ships" in result.stdout
    )
    assert (
        "fixed unit file /etc/systemd/system/bureau-daemon.service" in _doctor(root, "--fix").stdout
    )
    assert unit.read_text() == unit_files.packaged("bureau-daemon.service")


def test_plain_key_is_sealed_by_fix(fleet: Fleet, root: Path, tmp_path: Path) -> None:
    _, state = _first_boot(fleet, tmp_path, root, "plain")
    found = _doctor(root)
    assert "FAIL  machine key: stored plain in machine-key.txt" in found.stdout
    fixed = _doctor(root, "--fix")
    assert "fixed machine key" in fixed.stdout
    assert "ok    machine key: sealed, decrypts to age1" in fixed.stdout
    assert not (state / "machine-key.txt").exists()
    # The sealed key is the same key: the machine still logs in with its session and the
    # published key matches.
    assert "ok    published key" in fixed.stdout


def test_fix_repairs_owners_and_modes_but_adopts_nothing_someone_else_wrote(
    fleet: Fleet, root: Path, tmp_path: Path
) -> None:
    """The state dir opened to another user (4242) who swapped in a key of their own, a
    session readable by all, and a record and a proxy directory planted in the run dir:
    --fix gives the directories back to bureau with their modes and tightens the session,
    removes what was planted in the run dir, and neither hands the planted key to bureau
    nor seals it (the launcher would then publish it); that stays a failure to act on."""
    _, state = _first_boot(fleet, tmp_path, root, "plain")
    os.chown(state, 4242, 4242)
    state.chmod(0o777)
    (state / "session.json").chmod(0o644)
    cache = state / "offline-cache.json"  # the daemon's: ciphertext, but 0600 all the same
    cache.write_text("{}")
    cache.chmod(0o644)
    key, public = state / "machine-key.txt", state / "machine-key.pub"
    generated = subprocess.run(["age-keygen"], check=True, capture_output=True).stdout
    key.write_bytes(next(ln for ln in generated.splitlines() if ln.startswith(b"AGE-SECRET")))
    derived = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True)
    public.write_bytes(derived.stdout)
    for planted in (key, public):
        os.chown(planted, 4242, 4242)
    records = root / "run/bureau/launcher/proxies"
    records.mkdir(parents=True)
    (records / "0badf00d.json").write_text("{}")
    os.chown(records / "0badf00d.json", 4242, 4242)
    proxies = root / "run/bureau/fleet/prod"
    proxies.mkdir(parents=True)
    os.chown(proxies, 4242, 4242)
    proxies.chmod(0o777)

    fixed = _doctor(root, "--fix")
    assert "fixed directory /var/lib/bureau" in fixed.stdout
    assert "fixed file /var/lib/bureau/session.json" in fixed.stdout
    assert "fixed file /var/lib/bureau/offline-cache.json" in fixed.stdout
    assert "fixed contents of /run/bureau" in fixed.stdout
    assert "fixed file /var/lib/bureau/machine-key.txt" not in fixed.stdout
    assert "fixed machine key" not in fixed.stdout
    failing = _failing(fixed.stdout)
    assert (
        "FAIL  file /var/lib/bureau/machine-key.txt: is 0600 4242: 4242 could have written it "
        "(fix: if it is not this machine's, remove it and provision the machine again; else "
        "chown bureau: /var/lib/bureau/machine-key.txt)"
    ) in failing
    assert any(
        line.startswith("FAIL  machine key: cannot be read: ") and "owned by uid 4242" in line
        for line in failing
    ), failing

    bureau = _bureau_uid(root)
    for path, mode in (
        (state, 0o700),
        (state / "session.json", 0o600),
        (cache, 0o600),
        (proxies, 0o755),
    ):
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (bureau, mode), path
    assert key.stat().st_uid == 4242
    assert not (state / "machine-key.cred").exists()
    assert not (records / "0badf00d.json").exists()
    again = _doctor(root, "--fix")
    assert "fixed" not in again.stdout
    assert _failing(again.stdout) == _failing(fixed.stdout)


def test_matrix_doctor_finds_and_restores_power_levels(fleet: Fleet) -> None:
    doctor = ["matrix", "doctor", "--credential-file", str(fleet.credential_file)]
    healthy = run("bureau", *doctor)
    assert healthy.returncode == 0, healthy.stdout
    assert "ok    server admin" in healthy.stdout
    admin = credentials.admin_client(fleet.creds)
    alias = names.room_alias(names.fleet_room_localpart(fleet.name), fleet.hub.server_name)
    room = admin.resolve_alias(alias)
    assert room is not None
    levels = admin.get_state(room, "m.room.power_levels", "") or {}
    admin.put_state(room, "m.room.power_levels", "", {**levels, "state_default": 0})
    broken = run("bureau", *doctor)
    assert broken.returncode == 1
    assert f"FAIL  power levels of {alias}: state_default is 0, not 100" in broken.stdout
    fixed = run("bureau", *doctor, "--fix")
    assert fixed.returncode == 0, fixed.stdout
    assert f"fixed power levels of {alias}" in fixed.stdout
    expected = rooms.fleet_power_levels(fleet.creds.admin_user)
    restored = admin.get_state(room, "m.room.power_levels", "") or {}
    assert rooms.power_level_drift(restored, expected) == []
    assert "fixed" not in run("bureau", *doctor, "--fix").stdout


def test_fleet_cache_set_refuses_a_bad_key_in_one_line(fleet: Fleet) -> None:
    result = set_cache(fleet, "not-a-key")
    assert result.returncode == 2
    assert one_line_error(result).startswith("bureau: --public-key: 'not-a-key' is not a Nix")


def test_systemctl_offline_enable_is_what_doctor_uses(root: Path) -> None:
    """The doctor enables units offline under --root; systemctl agrees they are enabled."""
    _doctor(root, "--fix")
    state = subprocess.run(
        ["systemctl", f"--root={root}", "is-enabled", "bureau-daemon.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert state.stdout.strip() == "enabled"


def test_a_hub_without_the_template_room_gets_it_and_machines_are_invited(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A hub set up before the template room existed (its alias gone): `matrix doctor`
    names it, `--fix` creates it, and a machine provisioned afterwards is invited."""
    admin = credentials.admin_client(fleet.creds)
    alias = names.room_alias(names.template_room_localpart(fleet.name), fleet.hub.server_name)
    assert admin.resolve_alias(alias) is not None
    admin.send("DELETE", f"/_matrix/client/v3/directory/room/{segment(alias)}", what="unalias")
    doctor = ["matrix", "doctor", "--credential-file", str(fleet.credential_file)]
    missing = run("bureau", *doctor)
    assert missing.returncode == 1
    assert f"FAIL  room {alias}: missing" in missing.stdout
    assert run("bureau", *doctor, "--fix").returncode == 0
    room = admin.resolve_alias(alias)
    assert room is not None
    machine = provision(fleet, tmp_path)
    member = admin.get_state(room, "m.room.member", machine.user_id)
    assert member is not None
    assert member["membership"] == "invite"


# -- sandboxes, on this machine itself -------------------------------------------------------

# Runs argv[1:] as root of a new user namespace (uids and gids 0-65535 mapped as they are,
# written by real root so that setgroups stays allowed) in which the kernel allows no
# further user namespace, as on a host with user.max_user_namespaces = 0.
WITHOUT_USER_NAMESPACES = """
import ctypes, os, sys
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(100)
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    with open("/proc/sys/user/max_user_namespaces", "w") as limit:
        limit.write("0")
    os.execv(sys.argv[1], sys.argv[1:])
os.read(ready_r, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as mapping:
        mapping.write("0 0 65536")
os.write(go_w, b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
# The user-namespace check, as uid 65534 (mapped there): what the doctor reports.
NAMESPACE_CHECK = """
from pathlib import Path
from bureau.doctor.sandbox_checks import SandboxChecks
from bureau.host import Host
for finding in SandboxChecks(Host(Path("/")), probe_uid=65534).user_namespaces():
    print(finding.line())
"""


def test_sandbox_checks_pass_where_bwrap_starts_sandboxes() -> None:
    """This machine: bubblewrap installed, and bwrap run with the launcher's namespace
    options as a sandbox's uid (the doctor runs as root) starts."""
    checks = SandboxChecks(Host(Path("/")))
    (programs,) = checks.programs()
    (namespaces,) = checks.user_namespaces()
    assert programs.status is Status.OK, programs.line()
    assert programs.detail.startswith("bubblewrap 0.")
    assert namespaces.line() == (
        "ok    sandboxes start (unprivileged user namespaces): bwrap starts one as uid "
        f"{sandbox_checks.PROBE_UID}"
    )


def test_missing_bwrap_fails_with_its_package_as_the_fix(tmp_path: Path) -> None:
    """Where the launcher looks there is prlimit and no bwrap: the one package missing, and
    --fix would install it with apt-get; sandboxes are not tried."""
    prlimit = shutil.which("prlimit")
    assert prlimit is not None
    (tmp_path / "prlimit").symlink_to(prlimit)
    checks = SandboxChecks(Host(Path("/")), search=str(tmp_path))
    (programs,) = checks.programs()
    assert programs.line() == (
        f"FAIL  sandbox programs (bwrap, prlimit): bwrap not found in {tmp_path} "
        "(fix: apt-get install bubblewrap)"
    )
    assert programs.fix is not None
    (namespaces,) = checks.user_namespaces()
    assert namespaces.status is Status.NOT_APPLICABLE


def test_a_kernel_without_user_namespaces_fails_naming_the_sysctl() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_USER_NAMESPACES, sys.executable, "-c", NAMESPACE_CHECK],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("FAIL  sandboxes start (unprivileged user namespaces): bwrap: "), line
    assert "max_" in line  # bwrap's own words: ENOSPC, the namespace limit
    assert line.endswith(
        "(fix: user.max_user_namespaces is 0: set it above 0 "
        "(sysctl -w user.max_user_namespaces=65536, and in /etc/sysctl.d))"
    )


def test_the_uid_map_moves_to_bureau_sandboxd_with_every_uid_kept(tmp_path: Path) -> None:
    """Left where the launcher kept it, bureau-sandboxd (which cannot see the launcher's
    state dir) would give every principal a new uid."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("bureau:x:64999:64998::/:/bin/false\n")
    (tmp_path / "etc/group").write_text("bureau:x:64998:\n")
    old = tmp_path / "var/lib/bureau/sandbox-uids.json"
    old.parent.mkdir(parents=True)
    uids = {"@bureau/fleet/prod/agent/alpha:test": 2_000_000_007}
    old.write_text(json.dumps(uids))
    old.chmod(0o600)
    checks = SandboxChecks(Host(tmp_path))
    (found,) = checks.uid_map()
    assert found.status is Status.FAIL
    assert "where bureau-sandboxd cannot see it" in found.line()
    assert found.fix is not None
    found.fix()
    new = tmp_path / "var/lib/bureau-sandbox/sandbox-uids.json"
    assert json.loads(new.read_text()) == uids
    st = new.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 64999, 64998)
    assert not old.exists()
    (again,) = checks.uid_map()
    assert again.status is Status.OK
    # A leftover beside the map in use is removed, the map in use kept.
    old.write_text("{}")
    (leftover,) = checks.uid_map()
    assert "is left over beside" in leftover.line()
    assert leftover.fix is not None
    leftover.fix()
    assert not old.exists()
    assert json.loads(new.read_text()) == uids
