"""Keeping the proxy's secrets out of what an upstream sends back. Pure.

Upstreams echo what they are sent: in error messages, debug endpoints, a token in a
redirect's Location or a WWW-Authenticate challenge. Every value the proxy holds or
derived (injected header values, basic-auth pairs, minted access tokens, signing keys)
is a *needle*, in each spelling a text body may carry it: as sent, JSON-escaped,
percent-encoded (``quote`` and ``quote_plus``), XML-escaped and base64. Each occurrence
in a response header value or a text body is overwritten with ``*`` of the same length,
so that Content-Length and chunk framing stay true and nothing is re-framed.

A body streams through ``BodyScrubber``: each chunk is searched together with the bytes
held back from the one before, and only a tail that could still be the start of a needle
is held back (a streaming answer, such as server-sent events, is delayed only while its
last bytes look like the beginning of a secret). Needles shorter than MIN_NEEDLE bytes
are not searched for: they would mangle ordinary text, and a credential that short is
not worth hiding.

What it cannot see through (the README lists these): compressed bodies (the proxy asks
upstreams for ``identity``; one that compresses anyway is passed as it is), encodings
other than the spellings above, and a secret split across two header values.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus
from xml.sax.saxutils import escape

MIN_NEEDLE = 6

# Bytes of ordinary text (English, JSON, HTML, logs), most common first; any byte not
# listed counts as rarer than all of them. A needle is searched for by its rarest byte
# with memchr (bytes.find of one byte), so text that lacks that byte is passed over at
# memory speed, where a substring search would walk it a few bytes at a time.
_COMMON = (
    b' e"taoinsrhldcu\n:,mfpgwyb.v0-1k_2/{}3=Tx5A4S8C97I6jEMNRPLODB\r\tZ<>FHWUGqz'
    b"[]'VYKJ;()Q&X+%#@*!?$|~^`\\"
)
_RANK = {byte: rank for rank, byte in enumerate(_COMMON)}
# Data this short (a response head, a small JSON answer) is first searched for every
# needle at once with one regular expression: one call where the needles' searches are
# one each. Longer data is not: the expression walks it byte by byte, memchr does not.
_SMALL = 256
# Once a needle's rarest byte turns out common in a body, a plain search is cheaper.
# ("Z" ranks with the common bytes: every ISO 8601 timestamp in a JSON answer ends in one.)
_MAX_CANDIDATES = 16

TEXT_TYPES = (
    b"text/",
    b"application/json",
    b"application/problem+json",
    b"application/xml",
    b"application/x-www-form-urlencoded",
    b"application/javascript",
    b"application/x-ndjson",
)


# Content-Type values seen, and whether each is text: an upstream sends the same few.
_TEXT: dict[bytes, bool] = {}


def is_text(content_type: bytes) -> bool:
    """Whether a body of this Content-Type is scrubbed (text, JSON, XML, form; any
    ``+json``/``+xml`` type). An absent type is treated as text."""
    known = _TEXT.get(content_type)
    if known is not None:
        return known
    kind = content_type.split(b";", 1)[0].strip().lower()
    text = not kind or kind.startswith(TEXT_TYPES) or kind.endswith((b"+json", b"+xml"))
    if len(_TEXT) < 256:  # bounded: an upstream may vary its parameters without end
        _TEXT[content_type] = text
    return text


def spellings(secret: bytes) -> set[bytes]:
    """The ways a text body may spell ``secret``."""
    text = secret.decode("utf-8", "surrogateescape")
    forms = {
        secret,
        json.dumps(text)[1:-1].encode("utf-8", "surrogateescape"),
        json.dumps(text)[1:-1].replace("/", "\\/").encode("utf-8", "surrogateescape"),
        quote(secret, safe="").encode(),
        quote_plus(secret, safe="").encode(),
        escape(text, {'"': "&quot;", "'": "&apos;"}).encode("utf-8", "surrogateescape"),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    }
    return {f for f in forms if len(f) >= MIN_NEEDLE}


class _Needle:
    __slots__ = ("anchor", "offset", "value")

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.offset = max(range(len(value)), key=lambda i: _RANK.get(value[i], 1 << 16))
        self.anchor = value[self.offset : self.offset + 1]

    def __repr__(self) -> str:
        return f"_Needle({len(self.value)})"

    def spans(self, data: bytes | bytearray, start: int) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        length, offset = len(self.value), self.offset
        at = data.find(self.anchor, start + offset)
        candidates = 0
        while at >= 0:
            candidates += 1
            if candidates > _MAX_CANDIDATES:
                return found + self._searched(data, at - offset)
            begin = at - offset
            if data.startswith(self.value, begin):
                found.append((begin, begin + length))
            at = data.find(self.anchor, at + 1)
        return found

    def _searched(self, data: bytes | bytearray, start: int) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        at = data.find(self.value, start)
        while at >= 0:
            found.append((at, at + len(self.value)))
            at = data.find(self.value, at + 1)
        return found


class Needles:
    """Every spelling of every secret, ready to search for."""

    __slots__ = ("_any", "_searchers", "longest", "shortest", "values")

    def __init__(self, secrets: Iterable[bytes]) -> None:
        found: set[bytes] = set()
        for secret in secrets:
            found |= spellings(secret)
        self.values = tuple(sorted(found, key=len, reverse=True))
        self.longest = len(self.values[0]) if self.values else 0
        # Text shorter than this holds no needle (no needles: nothing does).
        self.shortest = len(self.values[-1]) if self.values else 1 << 62
        self._searchers = tuple(_Needle(v) for v in self.values)
        self._any = re.compile(b"|".join(re.escape(v) for v in self.values) or b"(?!)")

    def __repr__(self) -> str:
        return f"Needles({len(self.values)})"

    def __bool__(self) -> bool:
        return bool(self.values)

    def found(self, data: bytes | bytearray) -> bool:
        """Whether a needle is anywhere in ``data``."""
        if len(data) <= _SMALL:
            return self._any.search(data) is not None
        return bool(self.spans(data))

    def spans(self, data: bytes | bytearray, start: int = 0) -> list[tuple[int, int]]:
        """Where a needle is in ``data``, at or after ``start``."""
        if len(data) - start <= _SMALL and self._any.search(data, start) is None:
            return []
        found = []
        for searcher in self._searchers:
            found += searcher.spans(data, start)
        return found

    def overwrite(self, data: bytearray, start: int = 0) -> None:
        """Overwrite every needle found in ``data`` at or after ``start``. Matches are
        all found before any is overwritten, so overlapping needles are covered whole."""
        for begin, end in self.spans(data, start):
            data[begin:end] = b"*" * (end - begin)

    def held_tail(self, data: bytes | bytearray) -> int:
        """How many bytes at the end of ``data`` could begin a needle: the earliest
        position within a needle's length of the end from which the rest of ``data`` is
        that needle's start."""
        held = 0
        for needle in self.values:
            first = needle[:1]
            at = data.find(first, max(len(data) - len(needle) + 1, 0))
            while at >= 0:
                if len(data) - at > held and needle.startswith(data[at:]):
                    held = len(data) - at
                    break
                at = data.find(first, at + 1)
        return held

    def clean(self, value: bytes) -> bytes:
        """A whole value (a header's), cleaned: the value itself when it holds no needle."""
        spans = self.spans(value)
        if not spans:
            return value
        data = bytearray(value)
        for begin, end in spans:
            data[begin:end] = b"*" * (end - begin)
        return bytes(data)


class BodyScrubber:
    """One response body, chunk by chunk: ``feed`` returns what may go to the client now,
    ``finish`` the rest at the body's end."""

    __slots__ = ("_held", "_left", "_needles")

    def __init__(self, needles: Needles, length: int | None = None) -> None:
        """``length``: the body's Content-Length, if it has one: nothing is held back
        from the piece that ends the body (a small answer, most often its only piece)."""
        self._needles = needles
        self._held = b""
        self._left = length

    def __repr__(self) -> str:
        return f"BodyScrubber(held={len(self._held)})"

    def feed(self, chunk: bytes) -> bytes:
        # Bytes already held were searched, but a needle may start inside them and end in
        # this chunk: search from the start of the held bytes.
        data: bytes | bytearray = self._held + chunk if self._held else chunk
        spans = self._needles.spans(data)
        if spans:  # copied only to be overwritten: most bodies hold no secret
            data = bytearray(data)
            for begin, end in spans:
                data[begin:end] = b"*" * (end - begin)
        if self._left is not None:
            self._left -= len(chunk)
            if self._left <= 0:  # the body's last piece: no more to wait for
                self._held = b""
                return bytes(data)
        keep = self._needles.held_tail(data)
        if not keep:
            self._held = b""
            return bytes(data)  # the chunk itself when nothing was found
        self._held = bytes(data[len(data) - keep :])
        return bytes(data[: len(data) - keep])

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held
