"""Scope rules, as a service route carries them (``allow``/``deny``, WIRE.md "Service
routes"): ``"<METHOD> <path pattern>"``, parsed and matched against a path's segments.
Pure. How a request's path becomes segments the rules can trust is the proxy's
(bureau/proxy/scope.py); the grammar is here so that a route is checked when it is read.

METHOD is a token (``GET``, ``POST``, ...) or ``*`` for any; the pattern is an absolute
path in which ``*`` matches any characters within one segment and a segment ``**``
matches zero or more whole segments (``/repos/**`` matches ``/repos``, ``/repos/`` and
``/repos/a/b``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RuleError(ValueError):
    """A rule that cannot be read; the message names what is wrong with it."""


@dataclass(frozen=True)
class Rule:
    method: str  # upper case, or "*"
    segments: tuple[str, ...]  # the pattern's segments after the leading "/"
    text: str  # as written, for messages and the wire

    @classmethod
    def parse(cls, text: str) -> Rule:
        method, space, pattern = text.partition(" ")
        if not space or not method or not pattern:
            raise RuleError(f"{text!r}: expected '<METHOD> <path pattern>'")
        if method != "*" and not _TOKEN.fullmatch(method):
            raise RuleError(f"{text!r}: {method!r} is not an HTTP method")
        if not pattern.startswith("/") or any(c.isspace() for c in pattern):
            raise RuleError(f"{text!r}: the path pattern must start with / and hold no spaces")
        segments = tuple(pattern[1:].split("/"))
        for segment in segments:
            if "**" in segment and segment != "**":
                raise RuleError(f"{text!r}: ** must be a whole segment")
            if segment in (".", ".."):
                raise RuleError(f"{text!r}: dot segments never match a checked path")
        return cls(method.upper(), segments, text)

    def matches(self, method: str, path: tuple[str, ...]) -> bool:
        if self.method not in ("*", method):
            return False
        return _match(self.segments, path)


def _segment_matches(pattern: str, segment: str) -> bool:
    if "*" not in pattern:
        return pattern == segment
    parts = pattern.split("*")
    if not segment.startswith(parts[0]) or not segment.endswith(parts[-1]):
        return False
    if len(parts[0]) + len(parts[-1]) > len(segment):
        return False
    position = len(parts[0])
    end = len(segment) - len(parts[-1])
    for middle in parts[1:-1]:
        found = segment.find(middle, position, end)
        if found < 0:
            return False
        position = found + len(middle)
    return True


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    # Iterative glob over segments: at most one backtrack point per "**", so the cost is
    # bounded by len(pattern) * len(path), whatever the workload sends.
    p = s = 0
    star_p, star_s = -1, 0
    while s < len(path):
        if p < len(pattern) and pattern[p] == "**":
            star_p, star_s = p, s
            p += 1
        elif p < len(pattern) and _segment_matches(pattern[p], path[s]):
            p += 1
            s += 1
        elif star_p >= 0:
            star_s += 1
            s = star_s
            p = star_p + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == "**":
        p += 1
    return p == len(pattern)
