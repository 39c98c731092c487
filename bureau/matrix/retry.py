"""When to try the homeserver again: the one place for the backoff schedule and for reading
the server's own hint, used by the blocking client, the daemon's nio wrapper and loops, and
the launcher's first boot.

The schedule is jittered exponential backoff: 1 s doubling, capped at 30 s, each wait
between half and all of its step (so machines restarted together do not return together).
The server's hint is the ``Retry-After`` header (delta-seconds or an HTTP-date, RFC 9110
10.2.3), else the Matrix body's ``retry_after_ms``. A hint is honoured but capped at the
same 30 s: a misconfigured or hostile server must not park a caller for hours. A hint of
zero counts as none, so a server answering "now" every time gets the backoff's pace, not
a tight loop. Pure but for the clock an HTTP-date is read against.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from datetime import UTC

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0


def backoff_seconds(attempt: int, rng: Callable[[], float]) -> float:
    """The wait after failure number ``attempt`` (from 0): 1 s doubling, capped at 30 s,
    between half and all of that."""
    base = min(BACKOFF_FIRST_SECONDS * 2.0 ** min(attempt, 64), BACKOFF_CAP_SECONDS)
    return base / 2 + rng() * base / 2


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for, capped; None when absent or unreadable.
    ``now`` (Unix seconds) is what an HTTP-date is measured from; a date past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), BACKOFF_CAP_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime's form names no zone: HTTP-dates are all GMT
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now, 0.0), BACKOFF_CAP_SECONDS)


def parse_retry_after_ms(value: object) -> float | None:
    """Seconds a Matrix error body's ``retry_after_ms`` asks for, capped; None when absent,
    not a number of milliseconds, or negative."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value / 1000.0, BACKOFF_CAP_SECONDS)


def server_hint(
    retry_after: str | None, retry_after_ms: object, *, now: float | None = None
) -> float | None:
    """The server's hint in seconds, capped: the header first (HTTP's own), else the body's
    ``retry_after_ms``; None when it gave neither in a form we read."""
    header = parse_retry_after(retry_after, time.time() if now is None else now)
    return header if header is not None else parse_retry_after_ms(retry_after_ms)


def next_delay(attempt: int, hint: float | None, rng: Callable[[], float]) -> float:
    """The wait before the next try: the server's hint where it gave a positive one (capped
    again, whoever parsed it), else the backoff for this attempt."""
    if hint is not None and hint > 0:
        return min(hint, BACKOFF_CAP_SECONDS)
    return backoff_seconds(attempt, rng)
