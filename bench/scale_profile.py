"""Where Synapse's time goes during a rotation: py-spy (if installed: PY_SPY, or py-spy on
the PATH) samples Synapse's threads, non-blocking, while the rotation runs; the collapsed
stacks are summed by the client API servlet each sample is under (sync, room state, state
PUT, ...) and by a few parts of Synapse worth naming (the database, JSON encoding, event
persistence, the notifier waking syncs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RATE = 200  # samples a second
# A sample whose leaf is the reactor waiting in epoll is idle (py-spy's --nonblocking
# cannot always tell): counted apart, the shares are of the busy samples.
IDLE_LEAVES = ("synapse/metrics/_reactor_metrics.py", "twisted/internet/epollreactor.py")
# (label, what a frame of the stack holds): each sample counts once per label it matches.
PARTS = [
    ("database (storage/database.py)", "synapse/storage/database.py"),
    ("JSON encoding", "encode_json"),
    ("event persistence (persist_events)", "synapse/storage/controllers/persist_events.py"),
    ("notifier (waking syncs)", "synapse/notifier.py"),
    ("sync handler", "synapse/handlers/sync.py"),
    ("state reads (handlers/message.py get_state_events)", "get_state_events "),
    ("event serialization (events/utils.py)", "synapse/events/utils.py"),
    ("access token auth", "synapse/api/auth/"),
]


def py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


@contextlib.contextmanager
def sampling(pid: int, out: Path) -> Iterator[None]:
    """py-spy recording ``pid`` into ``out`` (collapsed stacks) while the block runs; a
    no-op when py-spy is not installed."""
    tool = py_spy()
    if tool is None:
        yield
        return
    proc = subprocess.Popen(
        [tool, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking",
         "--threads", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _servlet(stack: str) -> str:
    """The client or admin API servlet a sample is under, else what kind of work it is."""
    for frame in stack.split(";"):
        if "synapse/rest/" in frame:
            name, _, where = frame.partition(" (")
            return f"{name} ({where.split(':')[0].split('synapse/')[-1]})"
    if "synapse/storage/database.py" in stack:
        return "database thread pool"
    if "synapse/notifier.py" in stack:
        return "notifier"
    return "other"


def _module(frame: str) -> str:
    """``name (path/to/module.py:line)`` -> the module's path below site-packages."""
    where = frame.partition(" (")[2].rsplit(":", 1)[0]
    return where.split("site-packages/")[-1].split("lib/python3.11/")[-1]


def _nearest_synapse(stack: str) -> str:
    """The Synapse module nearest the leaf: where the time is spent, or called from."""
    for frame in reversed(stack.split(";")):
        module = _module(frame)
        if module.startswith("synapse/"):
            return module
    return "(no synapse frame)"


def summarize(path: Path, top: int = 10) -> dict[str, Any]:
    """Shares of the samples: by servlet, by the Synapse module nearest the leaf, by the
    leaf's package (the ``top`` biggest of each), and by the named parts."""
    if not path.exists():
        return {}
    servlets: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = idle = 0
    # py-spy writes some names as the process's bytes, not always UTF-8.
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        if _module(stack.rsplit(";", 1)[-1]).endswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        servlets[_servlet(stack)] += count
        modules[_nearest_synapse(stack)] += count
        leaves[_module(stack.rsplit(";", 1)[-1]).split("/")[0]] += count
        for label, marker in PARTS:
            if marker in stack:
                parts[label] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "idle_samples": idle,
        "rate": RATE,
        "by_servlet": {k: round(v / total, 3) for k, v in servlets.most_common(top)},
        "by_synapse_module": {k: round(v / total, 3) for k, v in modules.most_common(top)},
        "by_leaf_package": {k: round(v / total, 3) for k, v in leaves.most_common(top)},
        "by_part": {label: round(parts[label] / total, 3) for label, _ in PARTS},
    }
