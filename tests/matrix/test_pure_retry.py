"""bureau.matrix.retry: the backoff schedule and the reading of the server's hint."""

from __future__ import annotations

import pytest

from bureau.matrix.retry import (
    BACKOFF_CAP_SECONDS,
    backoff_seconds,
    next_delay,
    parse_retry_after,
    parse_retry_after_ms,
    server_hint,
)

# 2023-11-14T22:13:20Z
NOW = 1_700_000_000.0


def _all() -> float:
    return 1.0


def _half() -> float:
    return 0.0


def test_backoff_doubles_from_one_second_to_the_cap_with_jitter() -> None:
    assert [backoff_seconds(n, _all) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    # Jitter: between half and all of the step.
    assert [backoff_seconds(n, _half) for n in range(7)] == [0.5, 1, 2, 4, 8, 15, 15]
    assert backoff_seconds(3, lambda: 0.5) == 6
    # However long the outage, no overflow and no wait beyond the cap.
    assert backoff_seconds(10_000, _all) == BACKOFF_CAP_SECONDS


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("30", 30.0),
        ("900", 30.0),  # honoured, capped
        ("9" * 400, 30.0),
        # RFC 9110 HTTP-date, measured from now; a date past means now.
        ("Tue, 14 Nov 2023 22:13:32 GMT", 12.0),
        ("Tue, 14 Nov 2023 23:13:20 GMT", 30.0),
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),
        # The obsolete forms a recipient must still read: RFC 850's, and asctime's (GMT).
        ("Tuesday, 14-Nov-23 22:13:25 GMT", 5.0),
        ("Tue Nov 14 22:13:23 2023", 3.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),  # delta-seconds are digits only
        ("soon", None),
        ("٣", None),  # a digit to str.isdigit, not to HTTP
        ("Tue, 99 Nov 2023 22:13:32 GMT", None),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (2500, 2.5),
        (0, 0.0),
        (1500.0, 1.5),
        (3_600_000, 30.0),
        (10**30, 30.0),
        (-1, None),
        (True, None),
        ("2500", None),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        ([2500], None),
    ],
)
def test_retry_after_ms_in_the_body(value: object, seconds: float | None) -> None:
    assert parse_retry_after_ms(value) == seconds


def test_the_header_comes_before_the_body() -> None:
    assert server_hint("7", 100, now=NOW) == 7
    assert server_hint(None, 1500, now=NOW) == 1.5
    assert server_hint("garbage", 1500, now=NOW) == 1.5
    assert server_hint("garbage", "garbage", now=NOW) is None
    assert server_hint(None, None) is None


def test_next_delay_takes_a_positive_hint_else_the_backoff() -> None:
    assert next_delay(0, 7.0, _all) == 7
    assert next_delay(5, 0.25, _all) == 0.25
    # Capped again: an exception's hint may come from anywhere.
    assert next_delay(0, 900.0, _all) == 30
    # "Now", every time, would be a tight loop: the backoff's pace instead.
    assert next_delay(4, 0.0, _all) == 16
    assert next_delay(4, None, _all) == 16
    assert next_delay(4, -3.0, _all) == 16
    assert next_delay(2, float("nan"), _all) == 4
