"""The daemon's offline cache, read and written on a real filesystem (bureau/daemon/
offline_cache.py); the reboot it serves is tests/system/test_offline_start.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bureau.daemon.offline_cache import (
    FILE_NAME,
    CacheWriter,
    OfflineCache,
    entry_from_json,
    entry_json,
    load,
    startable,
)
from bureau.daemon.reconcile import Ensure
from bureau.errors import InputError

MACHINE = "@bureau/fleet/prod/machine/w1:hub.test"
ALPHA = "@bureau/fleet/prod/agent/alpha:hub.test"
BETA = "@bureau/fleet/prod/agent/beta:hub.test"
SIGNED = {"signatures": {"bureau.operator": {"ed25519:k": "sig"}}}


def credentials(principal: str, generation: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "principal": principal,
        "encrypted_for": [MACHINE],
        "keys": ["TOKEN"],
        "ciphertext": base64.b64encode(f"age {generation}".encode()).decode(),
        "provisioned_by": "@admin:hub.test",
        "provisioned_at": "2026-11-28T10:00:00Z",
        "signature": "",
        **SIGNED,
        **extra,
    }


def ensure(principal: str, generation: str = "1", **extra: Any) -> Ensure:
    return Ensure(
        principal,
        credentials(principal, generation, **extra),
        None,
        {"principal": principal, **SIGNED},
        {},
    )


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, message: str, **fields: Any) -> None:
        self.lines.append(("info", message, fields))

    def warning(self, message: str, **fields: Any) -> None:
        self.lines.append(("warning", message, fields))

    def said(self, text: str) -> bool:
        return any(text in message for _, message, _ in self.lines)


def test_an_entry_round_trips() -> None:
    original = ensure(ALPHA)
    assert entry_from_json(json.loads(json.dumps(entry_json(original))), "cache") == original


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"principal": "alpha"}, "principal"),
        ({"credentials": {"version": 1}}, "principal"),
        ({"assignment": []}, "assignment"),
        ({"templates": {"ns/t:x": 5}}, "templates"),
        ({"surprise": {}}, "surprise"),
    ],
)
def test_a_bad_entry_names_its_field(change: dict[str, Any], named: str) -> None:
    obj = {**entry_json(ensure(ALPHA)), **change}
    with pytest.raises(InputError) as caught:
        entry_from_json(obj, "cache")
    assert named in str(caught.value)


def test_written_0600_only_signed_and_only_on_change(tmp_path: Path) -> None:
    log = Log()
    writer = CacheWriter(tmp_path, MACHINE, log)
    unsigned = Ensure(BETA, {k: v for k, v in credentials(BETA).items() if k != "signatures"})
    writer.record([ensure(ALPHA), unsigned], held=())
    path = tmp_path / FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    cache = load(tmp_path, MACHINE, log)
    assert cache is not None
    assert [e.principal for e in cache.principals] == [ALPHA]
    before = path.stat().st_mtime_ns
    writer.record([ensure(ALPHA)], held=())
    assert path.stat().st_mtime_ns == before  # nothing changed: not written again
    writer.record([ensure(ALPHA, "2")], held=())
    cache = load(tmp_path, MACHINE, log)
    assert cache is not None
    assert cache.principals == (ensure(ALPHA, "2"),)


def test_a_held_principal_keeps_its_last_entry_and_a_dropped_one_goes(tmp_path: Path) -> None:
    log = Log()
    writer = CacheWriter(tmp_path, MACHINE, log)
    writer.record([ensure(ALPHA), ensure(BETA)], held=())
    # A new writer (a restarted daemon) starts from the file.
    writer = CacheWriter(tmp_path, MACHINE, log)
    writer.record([], held=[ALPHA])
    cache = load(tmp_path, MACHINE, log)
    assert cache is not None
    assert [e.principal for e in cache.principals] == [ALPHA]


def test_another_machines_or_a_broken_cache_is_not_used(tmp_path: Path) -> None:
    log = Log()
    CacheWriter(tmp_path, MACHINE, log).record([ensure(ALPHA)], held=())
    assert load(tmp_path, "@bureau/fleet/prod/machine/w2:hub.test", log) is None
    assert log.said("another machine's")
    (tmp_path / FILE_NAME).write_text("{not json")
    assert load(tmp_path, MACHINE, log) is None
    assert log.said("offline cache unreadable")


def test_an_unreadable_entry_is_skipped_by_name(tmp_path: Path) -> None:
    log = Log()
    good = entry_json(ensure(ALPHA))
    data = {
        "version": 1,
        "machine": MACHINE,
        "saved_at": "2026-11-28T10:00:00Z",
        "principals": [good, {**good, "principal": "nobody"}],
    }
    cache = OfflineCache.from_json(data, "cache", log)
    assert [e.principal for e in cache.principals] == [ALPHA]
    assert log.said("entry unreadable")
    with pytest.raises(InputError, match="version"):
        OfflineCache.from_json({**data, "version": 2}, "cache", log)


def test_expired_bundles_are_not_startable() -> None:
    log = Log()
    cache = OfflineCache(
        MACHINE,
        "2026-11-28T10:00:00Z",
        (
            ensure(ALPHA, expires_at="2026-11-28T11:00:00Z"),
            ensure(BETA, expires_at="2026-11-28T13:00:00Z"),
        ),
    )
    noon = 1795867200.0  # 2026-11-28T12:00:00Z
    assert [e.principal for e in startable(cache, noon, log)] == [BETA]
    assert log.said("expired")


def test_a_machine_that_runs_nothing_writes_no_cache(tmp_path: Path) -> None:
    writer = CacheWriter(tmp_path, MACHINE, Log())
    writer.record([], held=())
    assert not (tmp_path / FILE_NAME).exists()
    writer.record([ensure(ALPHA)], held=())
    writer.record([], held=())  # then unassigned: the cache says so
    cache = load(tmp_path, MACHINE, Log())
    assert cache is not None
    assert cache.principals == ()
