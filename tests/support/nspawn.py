"""A throwaway systemd machine made of this one: systemd-nspawn boots this machine's own
/usr with systemd as PID 1 in a root that is a tmpfs (``--volatile=yes``: /etc and /var
start empty), and everything in it goes when it stops. Driven from the host: commands
run inside through nsenter (``--register=no`` leaves no machined to ask), files are read
and written through ``/proc/<its PID 1>/root``.

What differs from a real machine, each for a reason:
- It shares the host's network, so its services reach the tests' hub and upstreams on
  127.0.0.1. nspawn then withholds CAP_NET_ADMIN: a unit's ``PrivateNetwork=`` gets a
  loopback that stays down ("Failed to configure loopback network device").
- ``SYSTEMD_NSPAWN_API_VFS_WRITABLE=1``: nspawn mounts /proc/sys read-only otherwise, and
  bwrap's ``--disable-userns`` (every sandbox) writes its own user namespace's
  /proc/sys/user/max_user_namespaces, as it can on a real host. Nothing in the container
  may then write the host's kernel settings: the units that would (sysctl.d, binfmt,
  udev) are masked.
- /usr/local is a tmpfs of its own (/usr is the host's, read-only), where
  ``bureau machine doctor --fix`` links the programs the units run, as on a fresh host.
- /var/lib/systemd is a directory of the host's disk: systemd-creds refuses a host key
  on a temporary filesystem ("host key located on temporary file system"), as it would
  on a real machine whose /var were a tmpfs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Units that would change the host's kernel through the writable /proc/sys and /sys.
MASKED = (
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
)
BOOT_SECONDS = 90.0
HALT_SECONDS = 60.0


@dataclass(frozen=True)
class Container:
    name: str
    leader: int  # its PID 1, as the host numbers it

    def path(self, inside: str) -> Path:
        """A path of the container's, as the host reaches it."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def run(
        self, *argv: str | Path, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container: its namespaces, its root, a clean environment."""
        environment = [
            f"{k}={v}" for k, v in {"PATH": PATH, "HOME": "/root", **(env or {})}.items()
        ]
        return subprocess.run(
            ["nsenter", f"--target={self.leader}", "--all", "env", "-i", *environment]
            + [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def check(self, *argv: str | Path, timeout: float = 120) -> str:
        done = self.run(*argv, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(map(str, argv))}: {done.stdout}{done.stderr}"
        return done.stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of a unit: property -> value."""
        out = self.check("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        """The journal's entries matching ``matches`` (journalctl's FIELD=value)."""
        out = self.check("journalctl", "--no-pager", "--output=json", "--all", *matches)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def uid_of(self, user: str) -> int:
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2])
        raise AssertionError(f"no user {user} in the container")


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _boot_state(box: Container) -> str | None:
    """systemd's state once it has finished booting (``running``, ``degraded``), or None
    while its manager does not answer yet."""
    done = box.run("systemctl", "is-system-running", "--wait", timeout=BOOT_SECONDS)
    state = done.stdout.strip()
    return state if state in {"running", "degraded"} else None


@contextlib.contextmanager
def booted(
    workdir: Path, *, bind_ro: tuple[Path, ...] = (), boot_log: Path | None = None
) -> Iterator[Container]:
    """A container booted to multi-user (``bind_ro``: host directories it sees read-only at
    the same paths); halted, and everything it left on the host removed, on exit."""
    name = f"bureau-{secrets.token_hex(3)}"
    var_lib_systemd = workdir / "var-lib-systemd"
    var_lib_systemd.mkdir(parents=True)
    log_path = boot_log or workdir / "nspawn.log"
    command = [
        "systemd-nspawn",
        "--directory=/",
        "--volatile=yes",
        "--register=no",
        "--keep-unit",  # no systemd on the host to make a scope with
        "--boot",
        f"--machine={name}",
        "--console=passive",  # a console for systemd-firstboot, nothing typed into it
        "--tmpfs=/usr/local",
        f"--bind={var_lib_systemd}:/var/lib/systemd",
        *(f"--bind-ro={path}" for path in bind_ro),
        "--",
        "systemd.firstboot=off",
        *(f"systemd.mask={unit}" for unit in MASKED),
    ]
    env = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1"}
    with log_path.open("w") as log:
        nspawn = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        box = _wait_booted(name, nspawn, log_path)
        yield box
    finally:
        _halt(nspawn)
        shutil.rmtree(var_lib_systemd, ignore_errors=True)
        # nspawn will not remove a directory on a disk-backed /run, where this host has it.
        with contextlib.suppress(OSError):
            Path("/run/systemd/nspawn/propagate", name).rmdir()


def _wait_booted(name: str, nspawn: subprocess.Popen[bytes], log_path: Path) -> Container:
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        assert nspawn.poll() is None, f"systemd-nspawn exited: {log_path.read_text()}"
        children = _children(nspawn.pid)
        if children:
            box = Container(name, children[0])
            if _boot_state(box) is not None:
                return box
        assert time.monotonic() < deadline, f"no booted container: {log_path.read_text()}"
        time.sleep(0.2)


def _halt(nspawn: subprocess.Popen[bytes]) -> None:
    """SIGTERM asks nspawn to halt the container (SIGRTMIN+3 to its PID 1); SIGKILL to its
    PID 1 ends its pid namespace, and everything in it, if it does not halt in time."""
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(timeout=HALT_SECONDS)
        except subprocess.TimeoutExpired:
            for child in _children(nspawn.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            nspawn.kill()
            nspawn.wait(timeout=HALT_SECONDS)
