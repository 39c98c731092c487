"""``m.bureau.machine_info`` (upstream's MachineInfo, lib/schema/events_machine.go:179-261):
the machine's static inventory, published by the daemon once per start in the fleet's
machine room (state key: the machine's), as upstream's daemon does
(cmd/bureau-daemon/main.go publishMachineInfo), so that upstream's ``bureau machine list``
shows this machine's hardware. Probed like upstream's lib/hwinfo/hwinfo_linux.go; anything
unreadable is zero or absent, never an error. Fields with Go's ``omitempty`` are left out
when empty; the others are always written.

GPUs are not probed (``gpus`` absent: upstream's "no GPUs detected"). ``labels`` are the
operator's (upstream's ``bureau machine label`` writes them into this event): the ones
already published are kept, where upstream's daemon would drop them."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import bureau
from bureau.errors import MatrixError
from bureau.matrix.sync import MachineMatrix
from bureau.wire import rooms

Retrying = Callable[[str, Callable[[], Any]], Awaitable[Any]]

PROC = Path("/proc")
SYS = Path("/sys")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _cpu_dirs(sys_root: Path) -> list[Path]:
    base = sys_root / "devices/system/cpu"
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    return [e for e in entries if e.name.startswith("cpu") and e.name[3:4].isdigit()]


def _cpu(proc: Path, sys_root: Path) -> dict[str, Any]:
    model = ""
    for line in _read(proc / "cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    cpus = _cpu_dirs(sys_root)
    packages = {_read(c / "topology/physical_package_id") for c in cpus} - {""}
    cores = {
        (_read(c / "topology/physical_package_id"), _read(c / "topology/core_id")) for c in cpus
    }
    cores = {(p, c) for p, c in cores if p and c}
    sockets = len(packages)
    siblings = _read(sys_root / "devices/system/cpu/cpu0/topology/thread_siblings_list")
    out: dict[str, Any] = {
        "model": model,
        "sockets": sockets,
        "cores_per_socket": len(cores) // sockets if sockets else 0,
        # As upstream counts them: "0,96" is 2; an unreadable list is 1.
        "threads_per_core": siblings.count(",") + 1 if siblings else 1,
    }
    l3 = _read(sys_root / "devices/system/cpu/cpu0/cache/index3/size").removesuffix("K")
    if l3.isdigit() and int(l3):
        out["l3_cache_kb"] = int(l3)
    return out


def _meminfo_mb(proc: Path, key: str) -> int:
    for line in _read(proc / "meminfo").splitlines():
        name, _, rest = line.partition(":")
        if name == key and rest.split() and rest.split()[0].isdigit():
            return int(rest.split()[0]) // 1024
    return 0


def _numa_nodes(sys_root: Path) -> int:
    try:
        entries = list((sys_root / "devices/system/node").iterdir())
    except OSError:
        return 0
    return sum(1 for e in entries if e.is_dir() and e.name[4:5].isdigit() and e.name[:4] == "node")


def probe(
    machine_user: str,
    labels: dict[str, str] | None = None,
    *,
    proc: Path = PROC,
    sys_root: Path = SYS,
) -> dict[str, Any]:
    """The event's content for this host."""
    info: dict[str, Any] = {
        "principal": machine_user,
        "hostname": socket.gethostname(),
        "kernel_version": os.uname().release,
    }
    for key, name in (("board_vendor", "sys_vendor"), ("board_name", "board_name")):
        value = _read(sys_root / "class/dmi/id" / name)
        if value:
            info[key] = value
    info["cpu"] = _cpu(proc, sys_root)
    info["memory_total_mb"] = _meminfo_mb(proc, "MemTotal")
    optional = {
        "swap_total_mb": _meminfo_mb(proc, "SwapTotal"),
        "numa_nodes": _numa_nodes(sys_root),
        "labels": labels,
    }
    info |= {k: v for k, v in optional.items() if v}
    info["daemon_version"] = f"bureau {bureau.__version__}"
    return info


def kept_labels(published: object) -> dict[str, str] | None:
    """The operator's labels in the event already published, if any are readable."""
    if not isinstance(published, dict):
        return None
    labels = published.get("labels")
    if not isinstance(labels, dict):
        return None
    kept = {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
    return kept or None


async def publish(
    matrix: MachineMatrix,
    room: str,
    key: str,
    machine_user: str,
    *,
    retrying: Retrying,
    log: Any,
) -> None:
    """Once per start (as upstream's daemon publishes it), with the labels an operator
    already gave it. Inventory is a courtesy to the fleet's tools: failing to publish it
    is logged, never fatal."""
    try:
        events = await retrying("reading machine info", partial(matrix.room_state, room))
        published = next(
            (
                e.get("content")
                for e in events
                if e.get("type") == rooms.MACHINE_INFO and e.get("state_key") == key
            ),
            None,
        )
        content = probe(machine_user, kept_labels(published))
        await retrying(
            "publishing machine info",
            partial(matrix.put_state, room, rooms.MACHINE_INFO, key, content),
        )
    except MatrixError as exc:
        log.warning("could not publish machine info", error=str(exc))
        return
    log.info(
        "machine info published", cpu=content["cpu"]["model"], memory_mb=content["memory_total_mb"]
    )
