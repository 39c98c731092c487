"""bureau.launcher.first_boot.until_done: first boot waits out what waiting can mend (the
schedule itself: tests/matrix/test_pure_retry.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import structlog

from bureau.errors import BureauError, MatrixError, MatrixUnreachable
from bureau.launcher import first_boot
from bureau.secret import Secret
from bureau.wire.files import Session


class _Clock:
    """Time that passes only when slept through."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _failing(errors: list[MatrixError]) -> Callable[[], Session]:
    def boot() -> Session:
        if errors:
            raise errors.pop(0)
        return Session("https://hub.example", "@m:example", Secret("t"), "D")

    return boot


def test_first_boot_retries_only_what_waiting_can_mend() -> None:
    assert first_boot.transient(MatrixUnreachable("log in"))
    assert first_boot.transient(MatrixError("log in", 503))
    assert first_boot.transient(MatrixError("log in", 429, "M_LIMIT_EXCEEDED"))
    assert not first_boot.transient(MatrixError("log in", 403, "M_FORBIDDEN"))

    clock = _Clock()
    errors = [
        MatrixUnreachable("log in"),
        MatrixError("log in", 502),
        MatrixError("log in", 429, retry_after=900),
        MatrixUnreachable("log in"),
    ]
    waits: list[str] = []
    session = first_boot.until_done(
        _failing(errors),
        wait_seconds=600,
        log=structlog.get_logger(),
        waiting=lambda seconds, why: waits.append(why),
        sleep=clock.sleep,
        clock=lambda: clock.now,
        rng=lambda: 1.0,
    )
    assert session.user_id == "@m:example"
    # Doubling from 1 s; the server's 900 s hint is honoured but capped at 30 s.
    assert clock.slept == [1, 2, 30, 8]
    assert waits[2] == "homeserver unavailable (log in); retrying in 30 s"

    with pytest.raises(MatrixError, match="M_FORBIDDEN"):
        first_boot.until_done(
            _failing([MatrixError("log in", 403, "M_FORBIDDEN")]),
            wait_seconds=600,
            log=structlog.get_logger(),
            waiting=lambda seconds, why: None,
            sleep=clock.sleep,
        )


def test_first_boot_gives_up_after_the_wait() -> None:
    clock = _Clock()
    with pytest.raises(BureauError, match=r"after 10 s of retries; --homeserver-wait") as given_up:
        first_boot.until_done(
            _failing([MatrixUnreachable("log in")] * 20),
            wait_seconds=10,
            log=structlog.get_logger(),
            waiting=lambda seconds, why: None,
            sleep=clock.sleep,
            clock=lambda: clock.now,
            rng=lambda: 1.0,
        )
    assert not isinstance(given_up.value, MatrixError)  # not transient to an outer loop
    assert clock.slept == [1, 2, 4]
    with pytest.raises(MatrixUnreachable):
        first_boot.until_done(
            _failing([MatrixUnreachable("log in")]),
            wait_seconds=0,
            log=structlog.get_logger(),
            waiting=lambda seconds, why: None,
            sleep=clock.sleep,
        )
