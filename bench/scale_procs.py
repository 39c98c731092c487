"""A few bench/scale_sim.py processes sharing the simulated machines, and what they report:
each machine's readiness and every value it opened, with the times of each step."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scale_enroll import SimMachine

SIM = Path(__file__).resolve().parent / "scale_sim.py"
Record = dict[str, Any]


class Simulators:
    def __init__(self, spec: dict[str, Any], machines: list[SimMachine], processes: int,
                 logs: Path) -> None:  # fmt: skip
        self.records: list[Record] = []
        self.ready: set[int] = set()
        self.errors: list[str] = []
        self._counts: dict[int, dict[str, int]] = {}  # pid -> its latest totals
        self._changed = threading.Condition()
        self.procs: list[subprocess.Popen[str]] = []
        self._readers: list[threading.Thread] = []
        logs.mkdir(parents=True, exist_ok=True)
        for n in range(processes):
            share = machines[n::processes]
            if not share:
                continue
            with (logs / f"sim-{len(machines)}-{n}.log").open("w") as err:
                proc = subprocess.Popen(
                    [sys.executable, str(SIM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=err, text=True,
                )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({**spec, "machines": [m.to_json() for m in share]}) + "\n")
            proc.stdin.flush()
            self.procs.append(proc)
            reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
            reader.start()
            self._readers.append(reader)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            with self._changed:
                if "counts" in record:
                    self._counts[proc.pid] = record["counts"]
                elif record.get("ready"):
                    self.ready.add(int(record["m"]))
                else:
                    self.records.append(record)
                self._changed.notify_all()
        with self._changed:
            self.errors.append(f"simulator {proc.pid} exited ({proc.wait()})")
            self._changed.notify_all()

    def counts(self) -> dict[str, int]:
        """Syncs, state reads and state events read so far, over every simulator."""
        with self._changed:
            total: dict[str, int] = {}
            for counts in self._counts.values():
                for key, value in counts.items():
                    total[key] = total.get(key, 0) + value
            return total

    def _until(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                if self.errors:
                    raise RuntimeError(f"{what}: {'; '.join(self.errors)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{what}: not within {timeout:g} s")
                self._changed.wait(min(left, 1.0))

    def wait_ready(self, count: int, timeout: float) -> None:
        self._until(lambda: len(self.ready) >= count, f"{count} machines ready", timeout)

    def opened(self, kind: str, value: str) -> dict[int, Record]:
        """Each machine's first record of having opened ``value`` (a digest)."""
        with self._changed:
            found: dict[int, Record] = {}
            for record in self.records:
                if record.get(kind) == value:
                    found.setdefault(int(record["m"]), record)
            return found

    def wait_opened(self, kind: str, value: str, count: int, timeout: float) -> dict[int, Record]:
        self._until(
            lambda: len(self.opened(kind, value)) >= count,
            f"{count} machines opening their {kind} credential",
            timeout,
        )
        return self.opened(kind, value)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()  # EOF: the simulator stops its machines and exits
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def simulators(spec: dict[str, Any], machines: list[SimMachine], processes: int,
               logs: Path) -> Iterator[Simulators]:  # fmt: skip
    sims = Simulators(spec, machines, processes, logs)
    try:
        yield sims
    finally:
        sims.stop()
