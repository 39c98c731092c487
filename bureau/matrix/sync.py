"""The daemon's Matrix connection, and the only module that imports matrix-nio.

nio ships no types and logs whole responses (tokens included) at DEBUG; this module keeps
both contained: callers see plain dicts and MatrixError, and bureau.log holds nio's loggers
at WARNING. nio's own retries are switched off (max_limit_exceeded=0, max_timeouts=0) so
that the daemon's backoff (bureau.matrix.retry) is the only one; an error carries the
server's hint, read as retry.py reads it, for that backoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nio

from bureau.errors import MatrixError, MatrixUnreachable
from bureau.matrix.retry import server_hint
from bureau.wire.files import Session

SYNC_TIMEOUT_MS = 30_000


@dataclass
class SyncBatch:
    next_batch: str
    # (room ID, raw event) for state events, in the order the server sent them.
    state: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    left: set[str] = field(default_factory=set)


def _raise_for(resp: Any, what: str) -> Any:
    if not isinstance(resp, nio.ErrorResponse):
        return resp
    transport = resp.transport_response
    status = int(getattr(transport, "status", 0) or 0)
    header = transport.headers.get("Retry-After") if transport is not None else None
    raise MatrixError(
        what,
        status,
        resp.status_code or "",
        str(resp.message)[:200],
        retry_after=server_hint(header, resp.retry_after_ms),
        soft_logout=bool(resp.soft_logout),
    )


def sync_filter(state_types: list[str]) -> dict[str, Any]:
    types = [*state_types, "m.room.member"]
    return {
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "state": {"types": types, "lazy_load_members": True},
            "timeline": {"types": types, "limit": 100},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
    }


class MachineMatrix:
    def __init__(self, session: Session, homeserver_url: str | None = None) -> None:
        self._session = session
        config = nio.AsyncClientConfig(
            max_limit_exceeded=0, max_timeouts=0, request_timeout=60, store_sync_tokens=False
        )
        self._client = nio.AsyncClient(
            homeserver_url or session.homeserver_url,
            user=session.user_id,
            device_id=session.device_id or "",
            config=config,
        )
        self._client.restore_login(
            session.user_id, session.device_id or "", session.access_token.reveal()
        )

    def restore(self, session: Session) -> None:
        """Use a renewed session (same user and device, new token) from now on."""
        self._session = session
        self._client.restore_login(
            session.user_id, session.device_id or "", session.access_token.reveal()
        )

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return _raise_for(await coro, what)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise MatrixUnreachable(
                what, error=f"cannot reach homeserver: {type(exc).__name__}"
            ) from None
        except nio.exceptions.LocalProtocolError:
            # nio forgets the token on a soft logout; until the session is restored every
            # call is the same soft logout, for whichever task makes it.
            raise MatrixError(
                what, 401, "M_UNKNOWN_TOKEN", "logged out (soft)", soft_logout=True
            ) from None

    async def whoami(self) -> str:
        resp = await self._call("check the access token", self._client.whoami())
        return str(resp.user_id)

    async def resolve_alias(self, alias: str) -> str:
        resp = await self._call(f"resolve {alias}", self._client.room_resolve_alias(alias))
        return str(resp.room_id)

    async def join(self, room: str) -> str:
        resp = await self._call(f"join {room}", self._client.join(room))
        return str(resp.room_id)

    async def put_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> None:
        await self._call(
            f"publish {event_type}",
            self._client.room_put_state(room_id, event_type, content, state_key=state_key),
        )

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        """The room's current state as the homeserver resolved it."""
        resp = await self._call(
            f"read the state of {room_id}", self._client.room_get_state(room_id)
        )
        return [event for event in resp.events if isinstance(event, dict)]

    async def state_event(self, room_id: str, event_type: str, state_key: str) -> dict[str, Any]:
        """One state event's content as the homeserver resolved it; {} when there is none."""
        try:
            resp = await self._call(
                f"read {event_type} {state_key!r} in {room_id}",
                self._client.room_get_state_event(room_id, event_type, state_key),
            )
        except MatrixError as exc:
            if exc.status == 404:
                return {}
            raise
        content = resp.content
        return dict(content) if isinstance(content, dict) else {}

    async def sync(self, since: str | None, state_types: list[str]) -> SyncBatch:
        resp = await self._call(
            "sync",
            self._client.sync(
                timeout=SYNC_TIMEOUT_MS if since else 0,
                sync_filter=sync_filter(state_types),
                since=since,
            ),
        )
        batch = SyncBatch(next_batch=str(resp.next_batch))
        for room_id, room in resp.rooms.join.items():
            for event in [*room.state, *room.timeline.events]:
                source = getattr(event, "source", None)
                if isinstance(source, dict) and "state_key" in source:
                    batch.state.append((room_id, source))
        batch.left.update(resp.rooms.leave)
        return batch

    async def close(self) -> None:
        await self._client.close()
