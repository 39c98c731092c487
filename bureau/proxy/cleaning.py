"""A route's response cleaning at run time: the needles (scrub.py) of every secret the
route's requests carry or were derived from, kept current as access tokens are minted, and
what the upstream side asks of them per response: the head's values cleaned, and a body
scrubber when the body is text it can see.

Which routes are cleaned is route_kinds.py's choice (``cleans``); on the others none of
this runs. Scrubbing overwrites in place, same length, so a response's framing (its
Content-Length or its chunks) is never touched.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from bureau.proxy.scrub import BodyScrubber, Needles, is_text

# Minted values kept as needles besides the current ones: a response may still be on its
# way for a request that carried an access token since replaced.
MINTED_KEPT = 8


class Cleaner:
    """One route's needles. ``needles`` is replaced, never changed, when a value is added:
    a body already streaming keeps the needles it started with."""

    __slots__ = ("_minted", "_static", "needles")

    def __init__(self, secrets: Iterable[bytes]) -> None:
        # Revealed values: slots, never shown (repr below).
        self._static = tuple(secrets)
        self._minted: collections.deque[bytes] = collections.deque(maxlen=MINTED_KEPT)
        self.needles = Needles(self._static)

    def __repr__(self) -> str:
        return f"Cleaner({self.needles!r})"

    def minted(self, *values: bytes | None) -> None:
        """Values the proxy came to hold (an access token, a rotated refresh token):
        hidden from every response from now on."""
        new = [v for v in values if v and v not in self._minted and v not in self._static]
        if new:
            self._minted.extend(new)
            self.needles = Needles((*self._static, *self._minted))

    def head(self, reason: bytes, lines: list[bytes]) -> tuple[bytes, list[bytes]]:
        """The response's reason phrase and header lines (name, ": ", value, CRLF,
        repeated), cleaned. One search over the whole head, reason included, when a value
        is long enough to hold a needle; only a head that holds one is cleaned value by
        value (a needle never spans two values)."""
        needles = self.needles
        # Most heads hold no value as long as the shortest needle: not searched at all.
        longest = max(len(reason), max(map(len, lines[2::4]), default=0))
        if longest < needles.shortest or not needles.found(b"".join([reason, b"\r\n", *lines])):
            return reason, lines
        lines = list(lines)
        for i in range(2, len(lines), 4):
            lines[i] = needles.clean(lines[i])
        return needles.clean(reason), lines

    def scrubber(self, lines: list[bytes], length: int | None = None) -> BodyScrubber | None:
        """A scrubber for the body of a response with these header lines, or None when it
        is not text, or is encoded (compressed despite ``Accept-Encoding: identity``):
        scrubbing what it cannot read would only risk corrupting it; or None when the
        body's ``length`` (its Content-Length, when it has one) is too short to hold one."""
        if length is not None and length < self.needles.shortest:
            return None  # too short to hold a needle: nothing to scrub
        content_type = b""
        for i in range(0, len(lines), 4):
            name = lines[i]
            if len(name) not in (12, 16):  # neither Content-Type nor Content-Encoding
                continue
            name = name.lower()
            if name == b"content-type":
                content_type = lines[i + 2]
            elif name == b"content-encoding" and lines[i + 2].strip().lower() != b"identity":
                return None
        return BodyScrubber(self.needles, length) if is_text(content_type) else None
