"""A value that must never be printed. Its repr, str, format and structlog rendering are
redacted; the value is read only through ``reveal()``, so every place that uses it is
greppable."""

from __future__ import annotations

import hmac
from typing import Any

REDACTED = "<redacted>"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __structlog__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        # Secrets are not dictionary keys; equality is constant-time, hashing would not be.
        raise TypeError("Secret is unhashable")

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("Secret cannot be pickled")
