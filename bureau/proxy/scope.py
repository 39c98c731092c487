"""What a service's credential may be used for: ``allow`` and ``deny`` rules over
``"<METHOD> <path pattern>"`` (bureau/wire/scope_rules.py), checked before anything is
injected. Pure. ``deny`` wins; given an ``allow`` list (even an empty
one), a request no rule allows is refused.

The path checked is the one the upstream will act on, made canonical so that no spelling
slips past a rule:
  * percent-encoded unreserved characters (RFC 3986 section 2.3: letters, digits,
    ``-._~``) are decoded, as every server decodes them (``/%61dmin`` is ``/admin``);
  * empty segments are collapsed (``/a//b`` is checked as ``/a/b``), since many servers
    collapse them;
  * a path that still holds a dot segment (``.`` or ``..``, spelt plainly or encoded), an
    encoded ``/`` or ``\\`` (``%2F``, ``%5C``), a backslash, or a malformed escape is
    refused outright: servers disagree on what those mean, so no rule can be sure what
    it matches;
  * the method is compared in upper case, so ``delete`` cannot slip past ``DELETE``.
The bytes forwarded are the request's own; only the check sees the canonical form.
"""

from __future__ import annotations

from dataclasses import dataclass

from bureau.wire.scope_rules import Rule

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class AmbiguousPath(ValueError):
    """A request path the check refuses to interpret."""


def canonical_path(target: bytes) -> tuple[str, ...]:
    """The segments of an origin-form request target's path, canonical as described
    above; raises AmbiguousPath for what the check refuses to interpret."""
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/"):
        raise AmbiguousPath("not an absolute path")
    out = bytearray()
    i = 0
    while i < len(path):
        byte = path[i]
        if byte == 0x25:  # %
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise AmbiguousPath("a malformed percent escape")
            value = int(pair, 16)
            if value in _UNRESERVED:
                out.append(value)
            elif value in (0x2F, 0x5C):
                raise AmbiguousPath("an encoded / or \\")
            else:
                out += b"%" + pair.upper()
            i += 3
            continue
        if byte == 0x5C:
            raise AmbiguousPath("a backslash")
        out.append(byte)
        i += 1
    segments = tuple(s for s in out.decode("latin-1")[1:].split("/"))
    inner, last = segments[:-1], segments[-1:]
    # Collapse empty segments, keeping a trailing "/" (an empty last segment) distinct.
    kept = tuple(s for s in inner if s) + last
    if any(s in (".", "..") for s in kept):
        raise AmbiguousPath("a dot segment")
    return kept


@dataclass(frozen=True)
class Scope:
    allow: tuple[Rule, ...] | None  # None: no allow list, anything not denied passes
    deny: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, allow: list[str] | None, deny: list[str] | None) -> Scope:
        return cls(
            None if allow is None else tuple(Rule.parse(r) for r in allow),
            tuple(Rule.parse(r) for r in deny or ()),
        )

    @property
    def unrestricted(self) -> bool:
        return self.allow is None and not self.deny

    def refusal(self, method: bytes, target: bytes) -> str | None:
        """None when the request may go; otherwise which check refused it: "deny",
        "allow" or "path" (a path the check will not interpret)."""
        if self.unrestricted:
            return None
        try:
            path = canonical_path(target)
        except AmbiguousPath:
            return "path"
        verb = method.decode("latin-1").upper()
        if any(rule.matches(verb, path) for rule in self.deny):
            return "deny"
        if self.allow is not None and not any(rule.matches(verb, path) for rule in self.allow):
            return "allow"
        return None
