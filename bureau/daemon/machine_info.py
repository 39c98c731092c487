"""``m.bureau.machine_info`` (upstream's MachineInfo, lib/schema/events_machine.go:179-261):
the machine's static inventory, published by the daemon once per start in the fleet's
machine room (state key: the machine's), as upstream's daemon does
(cmd/bureau-daemon/main.go publishMachineInfo), so that upstream's ``bureau machine list``
shows this machine's hardware. Probed like upstream's lib/hwinfo/hwinfo_linux.go; anything
unreadable is zero or absent, never an error. Fields with Go's ``omitempty`` are left out
when empty; the others are always written.

GPUs are read from sysfs as upstream reads them (daemon/gpu_probe.py). ``labels`` are the
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
from bureau.daemon.gpu_probe import probe_gpus
from bureau.errors import InputError, MatrixError
from bureau.matrix.sync import MachineMatrix
from bureau.wire import rooms
from bureau.wire.machine_info import CPUInfo, MachineInfo

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


def _cpu(proc: Path, sys_root: Path) -> CPUInfo:
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
    l3 = _read(sys_root / "devices/system/cpu/cpu0/cache/index3/size").removesuffix("K")
    return CPUInfo(
        model=model,
        sockets=sockets,
        cores_per_socket=len(cores) // sockets if sockets else 0,
        # As upstream counts them: "0,96" is 2; an unreadable list is 1.
        threads_per_core=siblings.count(",") + 1 if siblings else 1,
        l3_cache_kb=int(l3) if l3.isdigit() else 0,
    )


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
    extra: dict[str, Any] | None = None,
) -> MachineInfo:
    """This host's inventory; ``extra``: fields of the published event this version does
    not know, kept."""
    return MachineInfo(
        principal=machine_user,
        hostname=socket.gethostname(),
        kernel_version=os.uname().release,
        board_vendor=_read(sys_root / "class/dmi/id/sys_vendor"),
        board_name=_read(sys_root / "class/dmi/id/board_name"),
        cpu=_cpu(proc, sys_root),
        memory_total_mb=_meminfo_mb(proc, "MemTotal"),
        swap_total_mb=_meminfo_mb(proc, "SwapTotal"),
        numa_nodes=_numa_nodes(sys_root),
        gpus=probe_gpus(sys_root, proc),
        labels=dict(labels or {}),
        daemon_version=f"bureau {bureau.__version__}",
        extra=dict(extra or {}),
    )


def published_info(content: object) -> MachineInfo | None:
    """The event already published, if it is readable: its labels (an operator's, from
    upstream's `bureau machine label`) and the fields this version does not know are
    kept when it is published again."""
    try:
        return MachineInfo.from_json(content)
    except InputError:
        return None


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
        before = published_info(published)
        info = probe(
            machine_user,
            before.labels if before else None,
            extra=before.extra if before else None,
        )
        await retrying(
            "publishing machine info",
            partial(matrix.put_state, room, rooms.MACHINE_INFO, key, info.to_json()),
        )
    except MatrixError as exc:
        log.warning("could not publish machine info", error=str(exc))
        return
    log.info(
        "machine info published",
        cpu=info.cpu.model,
        memory_mb=info.memory_total_mb,
        gpus=len(info.gpus),
    )
