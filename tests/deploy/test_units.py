"""The systemd units as shipped in the package: `systemd-analyze verify` accepts them (in a
root of their own that holds the binaries they name), they are the files in systemd/, and
they say what the design needs: notify (with a watchdog), the sealed key, the hardening. The
launcher, which holds the key, holds no capability; bureau-sandboxd's hardening leaves
exactly what starting a sandbox takes: its capabilities, the system calls a real sandbox
start makes (traced), a /proc that bwrap can mount anew."""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bureau import unit_files as units

REPO = Path(__file__).resolve().parents[2]
UNITS = ("bureau-sandboxd.service", "bureau-launcher.service", "bureau-daemon.service")
LAUNCHER = "bureau-launcher.service"
SANDBOXD = "bureau-sandboxd.service"
SANDBOX_CAPABILITIES = {"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"}
# `systemd-analyze security`: the launcher was 2.3 before sandboxes, 3.8 while it started
# them itself; with bureau-sandboxd starting them it holds no capability and may create no
# namespace. bureau-sandboxd pays what no setting wins back: four capabilities, @privileged
# and @mount calls, user and other namespaces, netlink, a delegated cgroup, /proc left as
# bwrap needs it, MemoryDenyWriteExecute= off for JITs; it has no network but its own
# loopback. More than either bound is a regression.
MAX_EXPOSURE = {LAUNCHER: 1.5, SANDBOXD: 3.3}
# Outside the default --sandbox-uids range: no sandbox of a running test shares it.
PROBE_UID = 2_000_070_000


def _settings(name: str) -> list[tuple[str, str]]:
    """(key, value) pairs of a unit, continuation lines joined."""
    text = units.packaged(name).replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), " ".join(value.split())))
    return pairs


def _value(name: str, key: str) -> str:
    return " ".join(v for k, v in _settings(name) if k == key)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A filesystem root with the host's systemd units, ours installed as doctor --fix
    installs them, the binaries at the paths ExecStart names, and machine.conf."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in UNITS:
        target = root / "etc/systemd/system" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(units.packaged(name))
    for binary in units.binaries():
        path = root / binary.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    conf = root / "etc/bureau/machine.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("BUREAU_MACHINE_NAME=bureau/fleet/prod/machine/w1\n")
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_systemd_analyze_verify_passes(unit_root: Path) -> None:
    result = _verify(unit_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_verify_catches_a_missing_binary(unit_root: Path) -> None:
    (unit_root / "usr/local/bin/bureau-daemon").unlink()
    result = _verify(unit_root)
    assert result.returncode != 0
    assert "bureau-daemon" in result.stderr


def test_units_in_the_tree_are_the_packaged_ones() -> None:
    for name in (*UNITS, units.TMPFILES):
        assert (REPO / "systemd" / name).read_text() == units.packaged(name)


def test_units_name_our_console_scripts() -> None:
    assert units.binaries() == [
        "/usr/local/bin/bureau-sandboxd",
        "/usr/local/bin/bureau-launcher",
        "/usr/local/bin/bureau-daemon",
    ]


@pytest.mark.parametrize("name", UNITS)
def test_every_unit_notifies_restarts_and_hardens(name: str) -> None:
    assert _value(name, "Type") == "notify"
    assert _value(name, "NotifyAccess") == "main"
    # bureau-sandboxd waits in accept(): each request has a thread of its own, and no
    # stuck request keeps the next from being served.
    assert _value(name, "WatchdogSec") == ("" if name == SANDBOXD else "30")
    assert _value(name, "Restart") == "on-failure"
    assert _value(name, "EnvironmentFile") == "/etc/bureau/machine.conf"
    assert _value(name, "User") == "bureau"
    assert _value(name, "LimitCORE") == "0"
    assert _value(name, "ProtectSystem") == "strict"
    assert _value(name, "PrivateTmp") == "yes"
    assert _value(name, "NoNewPrivileges") == "yes"


def test_launcher_loads_the_sealed_key_and_keeps_proxies_across_restarts() -> None:
    name = LAUNCHER
    assert _value(name, "LoadCredentialEncrypted") == "machine-key:/var/lib/bureau/machine-key.cred"
    assert _value(name, "ReadWritePaths") == "/var/lib/bureau /run/bureau"
    assert _value(name, "KillMode") == "process"


def test_the_daemon_holds_no_capability() -> None:
    assert _value("bureau-daemon.service", "CapabilityBoundingSet") == ""
    assert _value("bureau-daemon.service", "AmbientCapabilities") == ""


def test_the_launcher_holds_no_capability_and_asks_sandboxd() -> None:
    assert _value(LAUNCHER, "CapabilityBoundingSet") == ""
    assert _value(LAUNCHER, "AmbientCapabilities") == ""
    assert _value(LAUNCHER, "RestrictNamespaces") == "yes"
    assert _value(LAUNCHER, "MemoryDenyWriteExecute") == "yes"
    assert _value(LAUNCHER, "Delegate") == ""
    assert "AF_NETLINK" not in _value(LAUNCHER, "RestrictAddressFamilies").split()
    assert _value(LAUNCHER, "Wants") == _value(LAUNCHER, "After") == SANDBOXD
    command = _value(LAUNCHER, "ExecStart").split()
    assert command[command.index("--sandbox-broker") + 1] == "/run/bureau/sandboxd/sandboxd.sock"
    assert "--sandbox-dir" not in command


def test_sandboxd_holds_what_sandboxes_need_and_nothing_more() -> None:
    assert set(_value(SANDBOXD, "AmbientCapabilities").split()) == SANDBOX_CAPABILITIES
    assert set(_value(SANDBOXD, "CapabilityBoundingSet").split()) == SANDBOX_CAPABILITIES
    assert _value(SANDBOXD, "Delegate") == "yes"
    # Its sandboxes stop with it: a delegated unit whose sub-cgroups hold processes does
    # not start again on systemd 252.
    assert _value(SANDBOXD, "KillMode") == "control-group"
    assert _value(SANDBOXD, "PrivateNetwork") == "yes"
    assert _value(SANDBOXD, "LoadCredentialEncrypted") == ""
    assert _value(SANDBOXD, "ReadWritePaths") == "/run/bureau /var/lib/bureau-sandbox"
    # The launcher's state, the sealed key with it, is no sandbox's to see.
    assert _value(SANDBOXD, "InaccessiblePaths").split() == [
        "-/var/lib/bureau",
        "-/run/credentials/bureau-launcher.service",
    ]
    assert _value(SANDBOXD, "ProtectProc") == "default"  # sandboxes are other uids
    assert "AF_NETLINK" in _value(SANDBOXD, "RestrictAddressFamilies").split()
    assert _value(SANDBOXD, "ProtectHostname") == "yes"  # bwrap is given no --hostname
    # Each would break bwrap (see test_a_mount_over_proc_keeps_bwrap_from_mounting_its_own
    # and test_a_proc_of_pids_alone_keeps_bwrap_from_starting) or the delegated cgroup;
    # MemoryDenyWriteExecute= would break JITs in sandboxes.
    for key in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProcSubset",
        "MemoryDenyWriteExecute",
        "PrivateUsers",
        "RestrictNamespaces",
    ):
        assert _value(SANDBOXD, key) == "", key


def test_machine_conf_carries_each_units_own_options() -> None:
    assert _value(LAUNCHER, "ExecStart").split()[-1] == "$BUREAU_LAUNCHER_OPTIONS"
    command = _value(SANDBOXD, "ExecStart").split()
    assert command[-1] == "$BUREAU_SANDBOX_OPTIONS"  # unbraced: empty adds no argument
    assert command[command.index("--sandbox-dir") + 1] == "/var/lib/bureau-sandbox"
    assert command[command.index("--run-dir") + 1] == "/run/bureau"
    assert command[command.index("--state-dir") + 1] == "/var/lib/bureau"
    assert command[command.index("--fleet") + 1] == "${BUREAU_FLEET}"
    assert command[command.index("--server-name") + 1] == "${BUREAU_SERVER_NAME}"


def test_daemon_requires_the_launcher_and_cannot_see_the_key() -> None:
    name = "bureau-daemon.service"
    assert _value(name, "Requires") == "bureau-launcher.service"
    assert "bureau-launcher.service" in _value(name, "After").split()
    assert _value(name, "ReadWritePaths") == "/run/bureau"
    hidden = _value(name, "InaccessiblePaths")
    assert "-/var/lib/bureau/machine-key.txt" in hidden.split()
    assert "-/run/credentials/bureau-launcher.service" in hidden.split()
    assert "-/run/bureau/sandboxd" in hidden.split()  # bureau-sandboxd's socket
    # Lost standing (77) must not be restarted into a loop.
    assert "77" in _value(name, "RestartPreventExitStatus").split()


def test_tmpfiles_entry_is_what_doctor_checks() -> None:
    assert units.directories() == [
        units.Directory(Path("/etc/bureau"), 0o755, "root", "root"),
        units.Directory(Path("/var/lib/bureau"), 0o700, "bureau", "bureau"),
        units.Directory(Path("/run/bureau"), 0o751, "bureau", "bureau-operators"),
        units.Directory(Path("/run/bureau/sandboxd"), 0o700, "bureau", "bureau"),
        units.Directory(Path("/var/lib/bureau-sandbox"), 0o711, "bureau", "bureau"),
    ]


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_exposure_stays_within_its_bound(unit_root: Path, name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={unit_root}", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    overall = rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)"
    found = re.search(overall, result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE[name], result.stdout


# -- bureau-sandboxd's system-call filter, against what starting a sandbox calls ---------------


@functools.cache
def _group(name: str) -> frozenset[str]:
    """The system calls of a systemd filter set, nested sets expanded."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    found: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.partition("#")[0].strip()
        if item:
            found |= _group(item) if item.startswith("@") else {item}
    return frozenset(found)


def _allowed(filters: list[str]) -> set[str]:
    """What SystemCallFilter= lines allow, read as systemd does: the first line is an
    allow list, then each line adds (or, with ~, removes) in order."""
    allowed: set[str] = set()
    for line in filters:
        for item in line.removeprefix("~").split():
            calls = _group(item) if item.startswith("@") else {item}
            allowed = allowed - calls if line.startswith("~") else allowed | calls
    return allowed


def _sandboxd_allows() -> set[str]:
    filters = [v for k, v in _settings(SANDBOXD) if k == "SystemCallFilter"]
    assert filters
    assert not filters[0].startswith("~")
    return _allowed(filters)


# Starts one sandbox as bureau-sandboxd does (sandbox_host.py): the spec checked and made
# into bwrap's arguments by its own code, prlimit, Popen as the sandbox's uid.
START_A_SANDBOX = """
import os, subprocess, sys
from pathlib import Path
from bureau.launcher import sandbox_policy as policy
uid, base = int(sys.argv[1]), Path(sys.argv[2])
workspace, links = base / "workspace", base / "links"
workspace.mkdir(mode=0o700)
os.chown(workspace, uid, uid)
links.mkdir(mode=0o710)
os.chown(links, -1, uid)
system = [{"source": s, "dest": s, "mode": "ro", "optional": s != "/usr"}
          for s in ("/usr", "/bin", "/lib", "/lib64")]
spec = policy.parse({"template": "t/t:s", "environment": {"PATH": "/usr/bin:/bin"},
                     "command": ["/bin/sh", "-c", "echo started as $(id -u) on $(hostname)"],
                     "filesystem": system + [{"dest": "/tmp", "type": "tmpfs"}]})
checked = policy.check(spec, policy.Machine(protected=()), [])
flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
ws_fd, links_fd = os.open(workspace, flags), os.open(links, flags)
block_r, block_w = os.pipe2(os.O_CLOEXEC)
status_r, status_w = os.pipe2(os.O_CLOEXEC)
argv = policy.bwrap_argv(checked, workspace_fd=ws_fd, socket_dir_fd=links_fd,
                         block_fd=block_r, status_fd=status_w)
limits = [f"--nproc={checked.pids + 4}", f"--nofile={policy.OPEN_FILES}", "--core=0"]
process = subprocess.Popen(["prlimit", *limits, "--", *argv], user=uid, group=uid,
                           extra_groups=[], pass_fds=(ws_fd, links_fd, block_r, status_w),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, cwd="/",
                           env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, start_new_session=True)
for fd in (ws_fd, links_fd, block_r, status_w):
    os.close(fd)
os.read(status_r, 4096)
try:
    os.write(block_w, b"go")
except BrokenPipeError:  # bwrap gave up before it waited: its output says why
    pass
output, _ = process.communicate(timeout=30)
print(output.decode().strip())
sys.exit(process.returncode)
"""


@pytest.fixture
def sandbox_base() -> Iterator[Path]:
    """A directory others may pass through (bwrap sets the sandbox up as its uid)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        Path(name).chmod(0o711)
        yield Path(name)


def _start_a_sandbox(base: Path, *wrapper: str) -> subprocess.CompletedProcess[str]:
    command = [*wrapper, sys.executable, "-c", START_A_SANDBOX, str(PROBE_UID), str(base)]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=60, cwd=REPO
    )


def test_sandboxd_filter_allows_every_call_a_sandbox_start_makes(sandbox_base: Path) -> None:
    """Every system call of a sandbox's start, traced: bureau-sandboxd's Python, its Popen as
    the sandbox's uid (setgroups, setregid, setreuid), chown, prlimit, bwrap (mount,
    pivot_root, capset, a netlink socket) and the workload; no sethostname (the unit has
    ProtectHostname=)."""
    trace = sandbox_base / "trace"
    started = _start_a_sandbox(sandbox_base, "strace", "-f", "-qq", "-o", str(trace))
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip() == f"started as {PROBE_UID} on {socket.gethostname()}"
    called = set(re.findall(r"^\d+ +(?:<\.\.\. )?([a-z0-9_]+)[( ]", trace.read_text(), re.M))
    assert {"setgroups", "setreuid", "chown", "mount", "pivot_root"} <= called
    assert "sethostname" not in called
    assert called - _sandboxd_allows() == set()


def test_sandboxd_filter_still_denies_what_no_part_needs() -> None:
    allowed = _sandboxd_allows()
    for call in (
        "ptrace",  # @debug: no sandbox traces another process
        "perf_event_open",
        "init_module",
        "finit_module",
        "kexec_load",
        "reboot",
        "swapon",
        "settimeofday",
        "clock_settime",
        "iopl",
        "modify_ldt",
        "bpf",
        "acct",
        "open_by_handle_at",
        "setdomainname",
        "chroot",  # of @mount, only what bwrap calls
        "fsopen",
        "open_tree",
        "move_mount",
        "syslog",
    ):
        assert call not in allowed, call


def test_a_mount_over_proc_keeps_bwrap_from_mounting_its_own(sandbox_base: Path) -> None:
    """Why bureau-sandboxd has no ProtectKernelTunables= (nor ProtectKernelLogs=): in a user
    namespace the kernel mounts a new /proc only while nothing hides part of the inherited
    one, and both settings mount over files in /proc."""
    hide = 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"'
    started = _start_a_sandbox(
        sandbox_base, "unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh"
    )
    assert started.returncode != 0
    assert "Can't mount proc on /newroot/proc" in started.stdout, started.stdout + started.stderr
    assert os.geteuid() == 0  # the probe ran as a sandbox uid, as bureau-sandboxd starts one


def test_a_proc_of_pids_alone_keeps_bwrap_from_starting(sandbox_base: Path) -> None:
    """Why bureau-sandboxd has no ProcSubset=pid: bwrap reads /proc/sys/kernel/overflowuid
    to map its user namespace, and a /proc of processes alone has no /proc/sys."""
    pids_only = 'mount -t proc -o subset=pid proc /proc && exec "$@"'
    started = _start_a_sandbox(
        sandbox_base, "unshare", "--mount", "--propagation", "private", "sh", "-c", pids_only, "sh"
    )
    assert started.returncode != 0
    assert "/proc/sys/kernel/overflowuid" in started.stdout, started.stdout + started.stderr
