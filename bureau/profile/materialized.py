"""The fleet profile on a worker: bureau-daemon writes ``m.bureau.fleet_profile`` to
``<run-dir>/profile.env`` (0644, atomically) whenever it changes, and removes it when the
fleet withdraws it (``{}``). An invalid event leaves the last good file in place."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from bureau.files import atomic_write
from bureau.profile import model

FILE_NAME = "profile.env"
HEADER = "The fleet's profile, materialized by bureau-daemon from m.bureau.fleet_profile."


def apply(run_dir: Path, content: dict[str, Any] | None, log: Any) -> None:
    path = run_dir / FILE_NAME
    if not content:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("fleet profile withdrawn", path=str(path))
        return
    try:
        profile = model.from_event(content)
    except ValueError as exc:
        log.error("ignoring invalid fleet profile; keeping the last good one", problem=str(exc))
        return
    body = model.materialize(profile, HEADER).encode()
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == body:
            return
    atomic_write(path, body, 0o644)
    log.info("fleet profile materialized", path=str(path), profile=model.summary(profile))
