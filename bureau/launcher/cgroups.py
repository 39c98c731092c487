"""A cgroup per sandbox for its memory, pids and CPU share, under the launcher's own cgroup:
the unit's delegated cgroup v2 subtree (``Delegate=yes``), or the v1 memory, pids and cpu
hierarchies where those are mounted and writable. Where neither is, sandboxes run with
their pids and open-file rlimits only, and the launcher says so once at start.

cgroup v2 forbids processes in a cgroup whose controllers are enabled for its children, so
the launcher first moves itself (and proxies an earlier launcher left) into ``supervisor``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
_V2_NEEDED = {"memory", "pids", "cpu"}


def _own_paths() -> dict[str, str]:
    """controller ("" for v2) -> this process's cgroup path."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144, 1024 default) to v2 cpu.weight (1..10000, 100
    default), as systemd converts them."""
    shares = min(max(shares, 2), 262144)
    if shares == 1024:
        return 100
    return max(1, min(10000, 1 + ((shares - 2) * 9999) // 262142))


class Group:
    """One sandbox's cgroup (a directory per hierarchy)."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    def add(self, pid: int) -> None:
        for directory in self.dirs:
            _write(directory / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in self.dirs[:1]:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return sorted(found)

    def kill(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def memory_bytes(self) -> int | None:
        for directory in self.dirs:
            for name in ("memory.current", "memory.usage_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    return int((directory / name).read_text())
        return None

    def remove(self) -> None:
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()


class Cgroups:
    def __init__(self, root: Path = ROOT) -> None:
        self.mode = "none"
        self._bases: dict[str, Path] = {}
        paths = _own_paths()
        if (root / "cgroup.controllers").exists():
            self._setup_v2(root / paths.get("", "/").lstrip("/"))
        elif all(c in paths and (root / c).is_dir() for c in V1_CONTROLLERS):
            bases = {c: root / c / paths[c].lstrip("/") for c in V1_CONTROLLERS}
            if all(os.access(b, os.W_OK) for b in bases.values()):
                self._bases, self.mode = bases, "v1"

    def _setup_v2(self, base: Path) -> None:
        try:
            available = set((base / "cgroup.controllers").read_text().split())
            if not available >= _V2_NEEDED or not os.access(base, os.W_OK):
                return
            supervisor = base / "supervisor"
            supervisor.mkdir(exist_ok=True)
            for _ in range(100):  # processes forked meanwhile are moved on the next round
                pids = (base / "cgroup.procs").read_text().split()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, OSError):
                        _write(supervisor / "cgroup.procs", pid)
            _write(base / "cgroup.subtree_control", "+memory +pids +cpu")
        except OSError:
            return
        self._bases, self.mode = {"": base}, "v2"

    def create(self, name: str, *, memory: int, pids: int, cpu_shares: int) -> Group | None:
        """The sandbox's cgroup with its limits (0: none), or None without cgroups."""
        if self.mode == "none":
            return None
        dirs = []
        for controller, base in self._bases.items():
            directory = base / name
            directory.mkdir(exist_ok=True)
            dirs.append(directory)
            if self.mode == "v2":
                _write(directory / "memory.max", str(memory) if memory else "max")
                with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                    _write(directory / "memory.swap.max", "0" if memory else "max")
                _write(directory / "pids.max", str(pids))
                _write(directory / "cpu.weight", str(shares_to_weight(cpu_shares or 1024)))
            elif controller == "memory":
                _write(directory / "memory.limit_in_bytes", str(memory) if memory else "-1")
                with contextlib.suppress(OSError):
                    _write(
                        directory / "memory.memsw.limit_in_bytes", str(memory) if memory else "-1"
                    )
            elif controller == "pids":
                _write(directory / "pids.max", str(pids))
            else:
                _write(directory / "cpu.shares", str(cpu_shares or 1024))
        # memory first: pids() reads the first directory, and every process is in each.
        return Group(sorted(dirs, key=lambda d: "memory" not in d.parts))

    def existing(self, name: str) -> Group | None:
        dirs = [base / name for base in self._bases.values() if (base / name).is_dir()]
        return Group(dirs) if dirs else None
