"""The daemon's side of the launcher socket: one request, one response, per connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bureau.errors import BureauError
from bureau.launcher.protocol import MAX_MESSAGE, Request

TIMEOUT = 60.0  # an ensure waits for a proxy to start


class LauncherUnavailable(BureauError):
    pass


class LauncherRefused(BureauError):
    pass


class LauncherClient:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def call(self, request: Request) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_MESSAGE)
        except OSError as exc:
            raise LauncherUnavailable(
                f"launcher socket {self.socket_path}: {exc.strerror or exc}"
            ) from None
        try:
            writer.write(request.to_line())
            await writer.drain()
            async with asyncio.timeout(TIMEOUT):
                line = await reader.readline()
        except (OSError, TimeoutError) as exc:
            raise LauncherUnavailable(f"launcher did not answer: {type(exc).__name__}") from None
        finally:
            writer.close()
        try:
            response = json.loads(line)
        except ValueError:
            raise LauncherUnavailable("launcher answered with something that is not JSON") from None
        if not isinstance(response, dict) or not response.get("ok"):
            error = response.get("error") if isinstance(response, dict) else None
            raise LauncherRefused(str(error or "launcher refused the request"))
        return response

    async def list(self) -> list[dict[str, Any]]:
        response = await self.call(Request("list"))
        return list(response.get("principals", []))

    async def ensure(self, principal: str, credentials: dict[str, Any]) -> dict[str, Any]:
        return await self.call(Request("ensure", principal, credentials))

    async def stop(self, principal: str) -> dict[str, Any]:
        return await self.call(Request("stop", principal))

    async def relogin(self) -> bool:
        """Ask the launcher to log the machine in again (after a soft logout); True when
        it did, False when the session still worked."""
        response = await self.call(Request("relogin"))
        return bool(response.get("renewed"))
