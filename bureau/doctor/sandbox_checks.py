"""The doctor's checks that this machine can run principals' sandboxes: bwrap and prlimit
where bureau-sandboxd looks for them, a bwrap that knows the options it passes, and
unprivileged user namespaces that work (bwrap run with bureau-sandboxd's namespace
options, as a sandbox's uid when the doctor is root). --fix installs Debian's bubblewrap
(and util-linux, for prlimit) with apt-get; a kernel that refuses user namespaces is the
operator's to change (a sysctl), so that failure names the setting and has no fix.

Checked on the machine itself only: under --root, this host's kernel and packages say
nothing about the root's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from bureau.doctor.findings import Finding, fail, not_applicable, ok
from bureau.doctor.host_checks import USER, Fix
from bureau.errors import BureauError
from bureau.files import atomic_write, read_private_json
from bureau.host import Host, run_tool, tool_failed
from bureau.launcher.sandbox_uids import DEFAULT_RANGE

# Where bureau-sandboxd finds prlimit and bwrap (the PATH it starts sandboxes with).
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
PACKAGES = {"bwrap": "bubblewrap", "prlimit": "util-linux"}
# --disable-userns, which bureau-sandboxd passes, came with bubblewrap 0.8.0.
MIN_BWRAP = (0, 8, 0)
# The namespace options of bureau-sandboxd's bwrap command line (sandbox_policy.bwrap_argv).
PROBE_OPTIONS = (
    "--unshare-all",
    "--unshare-user",
    "--disable-userns",
    "--new-session",
    "--clearenv",
    "--cap-drop",
    "ALL",
)
# The last uid of the default --sandbox-uids: bureau-sandboxd hands out the lowest free one.
PROBE_UID = DEFAULT_RANGE[1]
PROBE_SECONDS = 30
PROGRAMS = "sandbox programs (bwrap, prlimit)"
UID_MAP = "sandbox uids (bureau-sandboxd's sandbox-uids.json)"
# Where the launcher kept which uid each principal's sandbox runs as, before
# bureau-sandboxd (which cannot see the launcher's state dir) kept it beside the workspaces.
OLD_UID_MAP = Path("/var/lib/bureau/sandbox-uids.json")
UID_MAP_PATH = Path("/var/lib/bureau-sandbox/sandbox-uids.json")
NAMESPACES = "sandboxes start (unprivileged user namespaces)"
ELSEWHERE = "checked on the machine itself, not under --root"


def bwrap_version(text: str) -> tuple[int, ...] | None:
    """``bwrap --version`` ("bubblewrap 0.8.0") as numbers, or None. Pure."""
    found = re.search(r"(\d+(?:\.\d+)+)", text)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


class SandboxChecks:
    def __init__(self, host: Host, search: str = SANDBOX_PATH, probe_uid: int = PROBE_UID) -> None:
        self.host = host
        self.search = search
        self.probe_uid = probe_uid

    def _find(self, program: str) -> str | None:
        return shutil.which(program, path=self.search)

    # -- the programs --------------------------------------------------------------------

    def programs(self) -> Iterator[Finding]:
        if not self.host.is_real_root:
            yield not_applicable(PROGRAMS, ELSEWHERE)
            return
        found = {program: self._find(program) for program in PACKAGES}
        missing = [program for program, path in found.items() if path is None]
        bwrap = found["bwrap"]
        if missing or bwrap is None:
            packages = sorted({PACKAGES[p] for p in missing})
            yield fail(
                PROGRAMS,
                f"{' and '.join(missing)} not found in {self.search}",
                self._remedy(packages),
                self._install(packages),
            )
            return
        result = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, check=False, timeout=30
        )
        version = bwrap_version(result.stdout)
        if version is None:
            yield fail(PROGRAMS, f"{bwrap} --version: {tool_failed(result)}", "reinstall it")
            return
        if version < MIN_BWRAP:
            yield fail(
                PROGRAMS,
                f"bubblewrap {_dotted(version)} is older than {_dotted(MIN_BWRAP)} "
                "(the launcher passes --disable-userns)",
                f"install bubblewrap {_dotted(MIN_BWRAP)} or newer (Debian 12 has it)",
                self._install(["bubblewrap"]),
            )
            return
        yield ok(PROGRAMS, f"bubblewrap {_dotted(version)} and prlimit")

    @staticmethod
    def _remedy(packages: list[str]) -> str:
        if shutil.which("apt-get") is None:
            return f"install {' and '.join(packages)} with this system's package manager"
        return f"apt-get install {' '.join(packages)}"

    @staticmethod
    def _install(packages: list[str]) -> Fix | None:
        if shutil.which("apt-get") is None:
            return None

        def fix() -> None:
            apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get")
            install = (*apt, "install", "-y", "-qq", "--no-install-recommends", *packages)
            if run_tool(*install).returncode == 0:
                return
            # Stale or missing package lists (a fresh image): fetch them once, try again.
            updated = run_tool(*apt, "update", "-qq")
            if updated.returncode != 0:
                raise BureauError(f"apt-get update: {tool_failed(updated)}")
            result = run_tool(*install)
            if result.returncode != 0:
                raise BureauError(f"apt-get install {' '.join(packages)}: {tool_failed(result)}")

        return fix

    # -- the kernel ----------------------------------------------------------------------

    def user_namespaces(self) -> Iterator[Finding]:
        if not self.host.is_real_root:
            yield not_applicable(NAMESPACES, ELSEWHERE)
            return
        bwrap, prlimit = self._find("bwrap"), self._find("prlimit")
        if bwrap is None or prlimit is None:
            yield not_applicable(NAMESPACES, "bwrap or prlimit is not installed")
            return
        as_root = os.geteuid() == 0
        uid = self.probe_uid if as_root else os.geteuid()
        argv = [prlimit, "--core=0", "--", bwrap, *PROBE_OPTIONS]
        argv += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        argv += ["--", self._find("true") or "/bin/true"]
        try:
            result = subprocess.run(
                argv,
                user=uid if as_root else None,
                group=uid if as_root else None,
                extra_groups=[] if as_root else None,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                timeout=PROBE_SECONDS,
                cwd="/",
                env={"PATH": self.search},
            )
        except subprocess.TimeoutExpired:
            yield fail(NAMESPACES, f"bwrap did not finish within {PROBE_SECONDS} s")
            return
        except OSError as exc:
            yield fail(NAMESPACES, f"cannot run bwrap as uid {uid}: {exc.strerror or exc}")
            return
        if result.returncode == 0:
            yield ok(NAMESPACES, f"bwrap starts one as uid {uid}")
            return
        yield fail(NAMESPACES, tool_failed(result), self._kernel_remedy())

    def _sysctl(self, name: str) -> str | None:
        try:
            return self.host.path(Path("/proc/sys") / name).read_text().strip()
        except OSError:
            return None

    def _kernel_remedy(self) -> str:
        """What this kernel's settings say keeps unprivileged user namespaces off."""
        if self._sysctl("user/max_user_namespaces") == "0":
            return (
                "user.max_user_namespaces is 0: set it above 0 "
                "(sysctl -w user.max_user_namespaces=65536, and in /etc/sysctl.d)"
            )
        if self._sysctl("kernel/unprivileged_userns_clone") == "0":
            return (
                "kernel.unprivileged_userns_clone is 0: "
                "sysctl -w kernel.unprivileged_userns_clone=1, and in /etc/sysctl.d"
            )
        if self._sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1":
            return (
                "AppArmor restricts unprivileged user namespaces: give /usr/bin/bwrap a "
                "profile that allows them, or sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0"
            )
        return "unprivileged user namespaces must work for bwrap: see its message"

    # -- the uid map ---------------------------------------------------------------------

    def uid_map(self) -> Iterator[Finding]:
        """The map moves with its owner: left in the launcher's state dir, bureau-sandboxd
        would give every principal a new uid, and its workspace's files would stop being
        its own."""
        old, new = self.host.path(OLD_UID_MAP), self.host.path(UID_MAP_PATH)
        if not old.exists():
            yield ok(UID_MAP) if new.exists() else not_applicable(UID_MAP, "none given yet")
        elif new.exists():
            yield fail(
                UID_MAP,
                f"{old} is left over beside {new}, which bureau-sandboxd reads",
                f"remove {old}",
                old.unlink,
            )
        else:
            yield fail(
                UID_MAP,
                f"kept in {old}, where bureau-sandboxd cannot see it",
                f"move it to {new} (0600, {USER})",
                partial(self._move_uid_map, old, new),
            )

    def _move_uid_map(self, old: Path, new: Path) -> None:
        data = read_private_json(old, strict=True)
        account, team = self.host.user(USER), self.host.group(USER)
        if account is None or team is None:
            raise BureauError(f"{new}: user or group {USER} does not exist yet")
        new.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        atomic_write(new, json.dumps(data, sort_keys=True).encode(), 0o600)
        os.chown(new, account.id, team.id)
        old.unlink()
