"""``m.bureau.machine_status`` content (WIRE.md): machine CPU and memory, uptime, and one
entry per principal, from /proc. Integers only, as Matrix canonical JSON requires."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bureau.wire.launcher_protocol import PrincipalState

PROC = Path("/proc")
_CLOCK_TICKS = 100  # USER_HZ; fixed at 100 on Linux for /proc/<pid>/stat


def _machine_ticks(proc: Path) -> tuple[int, int]:
    """(busy, total) jiffies since boot."""
    fields = [int(x) for x in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _process_ticks(proc: Path, pid: int) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(proc: Path, pid: int) -> int:
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def memory_used_mb(proc: Path = PROC) -> int:
    info = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0])
    return (info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))) // 1024


def uptime_seconds(proc: Path = PROC) -> int:
    return int(float((proc / "uptime").read_text().split()[0]))


def _percent(delta: int, total: int) -> int:
    return round(100 * delta / total) if total > 0 else 0


@dataclass
class CpuSampler:
    """CPU use between two samples: machine-wide, and per process."""

    proc: Path = PROC
    _machine: tuple[int, int] | None = None
    _processes: dict[int, int] = field(default_factory=dict)
    _sandboxes: dict[str, int] = field(default_factory=dict)

    def machine_percent(self) -> int:
        busy, total = _machine_ticks(self.proc)
        previous, self._machine = self._machine, (busy, total)
        if previous is None:
            return _percent(busy, total)
        return _percent(busy - previous[0], total - previous[1])

    def sandbox_percent(self, principal: str, cpu_seconds: float, elapsed_ticks: int) -> int:
        """A sandbox's CPU use since the last sample, from the seconds the launcher
        reports for all of its processes."""
        ticks = round(cpu_seconds * _CLOCK_TICKS)
        previous = self._sandboxes.get(principal)
        self._sandboxes[principal] = ticks
        return 0 if previous is None else _percent(max(ticks - previous, 0), elapsed_ticks)

    def process_percent(self, pid: int, elapsed_ticks: int) -> int:
        ticks = _process_ticks(self.proc, pid)
        if ticks is None:
            return 0
        previous = self._processes.get(pid)
        self._processes[pid] = ticks
        return 0 if previous is None else _percent(ticks - previous, elapsed_ticks)


def _entry(p: PrincipalState, sampler: CpuSampler, ticks: int) -> dict[str, Any]:
    """A principal with a sandbox is as its workload is (running, restarting, exited),
    with ``restarts`` and the last ``exit`` (OURS); one with its proxy only, as that."""
    if p.sandbox is None:
        return {
            "cpu_percent": sampler.process_percent(p.pid, ticks),
            "memory_mb": _rss_mb(sampler.proc, p.pid),
            "status": "running" if p.running else "starting",
        }
    box = p.sandbox
    entry: dict[str, Any] = {
        "cpu_percent": sampler.sandbox_percent(p.principal.user_id, box.cpu_seconds, ticks),
        "memory_mb": round(box.memory_mb),
        "status": box.status if p.running else "starting",
        "restarts": box.restarts,
        "template": box.template,
    }
    if box.last_exit:
        entry["exit"] = box.last_exit
    return entry


def status_content(
    machine_user: str,
    principals: list[PrincipalState],
    sampler: CpuSampler,
    elapsed_seconds: float,
    failures: dict[str, str] | None = None,
    *,
    last_activity_at: str | None = None,
) -> dict[str, Any]:
    """``principals`` as the launcher lists them; ``failures``: principal -> why the
    daemon's last request for it failed. A failed principal that is not running is
    ``failed``; one still serving its previous credentials stays ``running``; both carry
    the reason in ``error`` (OURS). ``last_activity_at``: when the daemon last started,
    stopped or replaced a principal (upstream's field, absent before the first; upstream's
    ``bureau machine list`` shows it as the machine's last activity)."""
    failures = failures or {}
    ticks = max(1, round(elapsed_seconds * _CLOCK_TICKS))
    entries = {p.principal.user_id: _entry(p, sampler, ticks) for p in principals}
    for principal, reason in sorted(failures.items()):
        entry = entries.setdefault(
            principal, {"cpu_percent": 0, "memory_mb": 0, "status": "failed"}
        )
        entry["error"] = reason
    content: dict[str, Any] = {
        "principal": machine_user,
        "cpu_percent": sampler.machine_percent(),
        "memory_used_mb": memory_used_mb(sampler.proc),
        "sandboxes": {"running": sum(1 for p in principals if p.running), "idle": 0},
        "uptime_seconds": uptime_seconds(sampler.proc),
        "principals": entries,
    }
    if last_activity_at:
        content["last_activity_at"] = last_activity_at
    return content
