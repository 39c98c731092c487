"""The launcher's own check of a sandbox spec, and the bwrap command line made from it.
Pure, apart from looking up mount sources on this machine.

Whoever wrote the template and whatever the daemon relays, a spec that passes here cannot
mount the machine's state (key, session, workspaces), the run dir (the launcher's socket,
other principals' proxy sockets), /etc/bureau, the credentials directory, a device, or the
kernel's /proc and /sys; it cannot share the host's pid, ipc or uts namespace, nor its
network unless this machine allows it. Every refusal is one line naming the field.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bureau.errors import InputError
from bureau.wire.sandbox_spec import SandboxSpec

PROXY_DIR = "/run/bureau"
PROXY_SOCKET = PROXY_DIR + "/proxy.sock"
WORKSPACE = "/workspace"
# Given by the launcher to every sandbox: a template may not mount over them.
RESERVED_DESTS = ("/", WORKSPACE, PROXY_DIR, "/proc", "/dev")
RESERVED_TREES = (PROXY_DIR, "/proc", "/dev")
NEVER_SOURCES = ("/dev", "/proc", "/sys")
ENV_SOCKET = "BUREAU_PROXY_SOCKET"
DEFAULT_PIDS = 4096  # when the template sets none: a fork bomb stops somewhere
OPEN_FILES = 4096
_SIZE = re.compile(r"size=([1-9][0-9]{0,12})([kmg]?)", re.IGNORECASE)
_MODE = re.compile(r"mode=([0-7]{3,4})")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class SpecRefused(Exception):
    """One line naming the field; the caller adds the principal."""


@dataclass(frozen=True)
class Machine:
    """What the check protects on this machine, and what it allows."""

    protected: tuple[str, ...]  # state dir, run dir, /etc/bureau, credentials dir
    host_network: bool = False


def _normal(path: str, field: str) -> str:
    if not path.startswith("/"):
        raise SpecRefused(f"{field}: {path!r} is not an absolute path")
    parts = path.split("/")[1:]
    if any(p in (".", "..") for p in parts) or "//" in path or "\0" in path:
        raise SpecRefused(f"{field}: {path!r} is not a normal path (no '.', '..' or '//')")
    return path.rstrip("/") or "/"


def _within(path: str, tree: str) -> bool:
    return tree in {"/", path} or path.startswith(tree + "/")


def _check_dest(path: str, field: str) -> str:
    dest = _normal(path, field)
    if dest in RESERVED_DESTS or any(_within(dest, tree) for tree in RESERVED_TREES):
        raise SpecRefused(f"{field}: {dest} is the launcher's to provide")
    return dest


def _check_source(path: str, field: str, machine: Machine, optional: bool) -> str | None:
    """The source as the kernel will find it (symlinks followed), or None for an optional
    one that is not here."""
    _normal(path, field)
    real = os.path.realpath(path)
    for tree in (*machine.protected, *NEVER_SOURCES):
        # Either way round: mounting /var/lib exposes /var/lib/bureau as surely as
        # mounting /var/lib/bureau/workspaces does. Checked before existence: a protected
        # path is refused whether or not it is there today.
        if _within(real, tree) or _within(tree, real):
            shown = path if real == path else f"{path} (which is {real})"
            raise SpecRefused(f"{field}: {shown} would expose {tree}")
    try:
        info = Path(real).stat()
    except FileNotFoundError:
        if optional:
            return None
        raise SpecRefused(f"{field}: {path} does not exist on this machine") from None
    except OSError as exc:
        raise SpecRefused(f"{field}: {path}: {exc.strerror}") from None
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        raise SpecRefused(f"{field}: {path} is a device")
    return real


def _tmpfs_options(options: str, field: str) -> list[str]:
    out: list[str] = []
    for option in filter(None, options.split(",")):
        size, mode = _SIZE.fullmatch(option), _MODE.fullmatch(option)
        if size:
            out += ["--size", str(int(size.group(1)) * _UNITS[size.group(2).lower()])]
        elif mode:
            out += ["--perms", mode.group(1).rjust(4, "0")]
        else:
            raise SpecRefused(f"{field}: {option!r}: a tmpfs takes size=N[kmg] and mode=NNN")
    return out


def _host_network(spec: SandboxSpec, machine: Machine) -> bool:
    namespaces = spec.namespaces
    if namespaces is None:
        return False
    for name in ("pid", "ipc", "uts"):
        if not getattr(namespaces, name):
            raise SpecRefused(f"namespaces.{name}: the host's {name} namespace is never shared")
    if namespaces.net:
        return False
    if not machine.host_network:
        raise SpecRefused(
            "namespaces.net: host network is not allowed on this machine "
            "(bureau-launcher --allow-host-network)"
        )
    return True


@dataclass(frozen=True)
class Checked:
    spec: SandboxSpec
    mounts: tuple[tuple[str, ...], ...]  # bwrap arguments, one mount each
    host_network: bool
    pids: int
    memory_bytes: int  # 0: no limit
    cpu_shares: int  # 0: the default


def check(spec: SandboxSpec, machine: Machine, credential_names: Sequence[str]) -> Checked:
    missing = [n for n in spec.required_credentials if n not in credential_names]
    if missing:
        raise SpecRefused(f"required_credentials: the bundle lacks {', '.join(missing)}")
    if "/" in spec.command[0]:
        _normal(spec.command[0], "command[0]")
    host_network = _host_network(spec, machine)
    if ENV_SOCKET in spec.environment:
        raise SpecRefused(f"environment.{ENV_SOCKET}: set by the launcher")
    mounts: list[tuple[str, ...]] = []
    for i, mount in enumerate(spec.filesystem):
        field = f"filesystem[{i}]"
        dest = _check_dest(mount.dest, f"{field}.dest")
        if mount.type == "tmpfs":
            mounts.append((*_tmpfs_options(mount.options, f"{field}.options"), "--tmpfs", dest))
            continue
        if mount.options:
            raise SpecRefused(f"{field}.options: only a tmpfs takes options")
        source = _check_source(mount.source, f"{field}.source", machine, mount.optional)
        if source is not None:
            mounts.append(("--bind" if mount.mode == "rw" else "--ro-bind", source, dest))
    for i, path in enumerate(spec.create_dirs):
        if _normal(path, f"create_dirs[{i}]") != WORKSPACE:
            mounts.append(("--dir", _check_dest(path, f"create_dirs[{i}]")))
    resources = spec.resources
    if resources.memory_limit_mb and resources.memory_limit_mb < 8:
        raise SpecRefused("resources.memory_limit_mb: at least 8")
    return Checked(
        spec,
        tuple(mounts),
        host_network,
        resources.pids_limit or DEFAULT_PIDS,
        resources.memory_limit_mb << 20,
        resources.cpu_shares,
    )


def parse(content: object) -> SandboxSpec:
    try:
        return SandboxSpec.from_json(content)
    except InputError as exc:
        raise SpecRefused(str(exc)) from None


def bwrap_argv(
    checked: Checked,
    *,
    workspace_fd: int,
    socket_dir_fd: int,
    block_fd: int,
    status_fd: int,
    info_fd: int | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """bwrap's options, in the order it applies them. Every namespace new (the network
    too unless checked says otherwise), no capabilities, no nested user namespaces, a
    session of its own (no TIOCSTI into a terminal), only the spec's environment, the
    root read-only once everything is in place, and the sandbox's seccomp filter
    (launcher/seccomp.py). No --hostname: setting one needs sethostname, which the unit
    denies (ProtectHostname=); the new uts namespace keeps the host's name."""
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    if checked.host_network:
        argv.append("--share-net")
    argv += ["--new-session", "--clearenv", "--cap-drop", "ALL"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for mount in checked.mounts:
        argv += mount
    argv += ["--bind-fd", str(workspace_fd), WORKSPACE]
    argv += ["--ro-bind-fd", str(socket_dir_fd), PROXY_DIR]
    for name, value in sorted(checked.spec.environment.items()):
        argv += ["--setenv", name, value]
    argv += ["--setenv", ENV_SOCKET, PROXY_SOCKET, "--chdir", WORKSPACE]
    argv += ["--remount-ro", "/"]
    argv += ["--block-fd", str(block_fd), "--json-status-fd", str(status_fd)]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--", *checked.spec.command]
