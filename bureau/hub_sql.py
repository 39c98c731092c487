"""The few statements the embedded hub runs on Synapse's database itself (seeding its
registration token, waiting out schema updates), on SQLite or PostgreSQL alike: one
connection, ``?`` placeholders, every failure a HubError."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from bureau.errors import HubError


class SQL(Protocol):
    def scalar(self, sql: str, params: tuple[object, ...] = ()) -> Any: ...
    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None: ...
    def close(self) -> None: ...


class SqliteSQL:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, timeout=30)

    def scalar(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        try:
            return self._db.execute(sql, params).fetchone()[0]
        except sqlite3.Error as exc:
            raise HubError(f"the hub's SQLite database: {exc}") from None

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        try:
            with self._db:
                self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise HubError(f"the hub's SQLite database: {exc}") from None

    def close(self) -> None:
        self._db.close()
