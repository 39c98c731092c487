"""A small synchronous Matrix client-server API client on the standard library only.

The launcher's first boot and the operator CLI make a short, ordered list of calls; a
blocking client keeps that code linear and keeps aiohttp and matrix-nio out of the
launcher's import closure (its audit surface). The daemon's long-lived sync uses nio.

Every failure becomes a MatrixError naming what was being done; request bodies (which
carry passwords) and access tokens never reach a message. 429 and gateway errors are
retried on bureau.matrix.retry's schedule (the server's hint, else jittered backoff), and
a final error carries the server's hint for an outer loop. Environment proxies are
deliberately not honoured: a token must only ever go to the homeserver the caller named.
The Synapse admin API is not here: bureau.matrix.synapse_admin, behind
bureau.matrix.homeserver_admin.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import structlog

from bureau import __version__
from bureau.errors import MatrixError, MatrixUnreachable
from bureau.matrix.retry import next_delay, server_hint
from bureau.secret import Secret

CLIENT = "/_matrix/client/v3"
_RETRY_STATUSES = (429, 502, 503, 504)
_MAX_BODY = 16 << 20
_log = structlog.get_logger("bureau.matrix")


def segment(value: str) -> str:
    """Quote one path segment (room aliases contain '/' and '#')."""
    return quote(value, safe="")


@dataclass(frozen=True)
class Login:
    user_id: str
    access_token: Secret
    device_id: str


@dataclass(frozen=True)
class Response:
    status: int
    data: Any  # parsed JSON: an object for almost every endpoint, an array for /state
    headers: dict[str, str]

    @property
    def body(self) -> dict[str, Any]:
        return self.data if isinstance(self.data, dict) else {}


class MatrixHTTP:
    def __init__(
        self,
        homeserver_url: str,
        access_token: Secret | None = None,
        *,
        timeout: float = 30.0,
        max_attempts: int = 6,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(homeserver_url)
        self.homeserver_url = homeserver_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._token = access_token
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._rng = rng

    def with_token(self, access_token: Secret) -> MatrixHTTP:
        return MatrixHTTP(
            self.homeserver_url,
            access_token,
            timeout=self._timeout,
            max_attempts=self._max_attempts,
            sleep=self._sleep,
            rng=self._rng,
        )

    # -- transport -----------------------------------------------------------------

    def _once(self, method: str, path: str, body: Any, what: str) -> Response:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        headers = {"User-Agent": f"bureau/{__version__}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            headers["Authorization"] = "Bearer " + self._token.reveal()
        try:
            conn.request(method, self._prefix + path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(_MAX_BODY)
            if resp.length:
                # Content-Length promised more than arrived before the connection ended.
                raise http.client.IncompleteRead(raw, resp.length)
            resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise MatrixUnreachable(
                what, error=f"cannot reach homeserver {self.homeserver_url}: {reason}"
            ) from None
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            if resp.status < 400:
                raise MatrixError(what, resp.status, "", "the answer is not JSON") from None
            parsed = {}
        return Response(resp.status, parsed, resp_headers)

    def send(self, method: str, path: str, body: Any = None, *, what: str) -> Response:
        """One request with rate-limit and gateway retries; returns any final status."""
        for attempt in range(self._max_attempts):
            started = time.monotonic()
            resp = self._once(method, path, body, what)
            # Method, path and status only: bodies carry passwords, headers the token.
            _log.debug(
                "matrix request",
                method=method,
                path=path,
                status=resp.status,
                ms=round((time.monotonic() - started) * 1000, 1),
            )
            if resp.status not in _RETRY_STATUSES or attempt == self._max_attempts - 1:
                return resp
            self._sleep(next_delay(attempt, _hint(resp), self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, method: str, path: str, body: Any = None, *, what: str) -> dict[str, Any]:
        resp = self.send(method, path, body, what=what)
        if resp.status >= 400:
            raise response_error(what, resp)
        return resp.body

    def _uia(
        self, path: str, body: dict[str, Any], stages: dict[str, dict[str, Any]], *, what: str
    ) -> dict[str, Any]:
        """User-interactive auth: ask for a session, then complete, one by one, the stages
        of the first flow we can satisfy (``stages`` maps a stage type to its auth fields;
        m.login.dummy is always satisfiable)."""
        known = {"m.login.dummy": {}, **stages}
        resp = self.send("POST", path, body, what=what)
        for _ in range(8):
            if resp.status < 400:
                return resp.body
            flows = resp.body.get("flows")
            if resp.status != 401 or not isinstance(flows, list):
                raise response_error(what, resp)
            if "errcode" in resp.body and resp.body.get("completed"):
                raise response_error(what, resp)  # a stage we sent was refused
            done = set(resp.body.get("completed") or [])
            pending = _next_stage(flows, known, done)
            if pending is None:
                raise MatrixError(what, 401, "", "no authentication flow that bureau can complete")
            auth = {"type": pending, **known[pending]}
            if isinstance(resp.body.get("session"), str):
                auth["session"] = resp.body["session"]
            resp = self.send("POST", path, {**body, "auth": auth}, what=what)
        raise response_error(what, resp)

    # -- the calls bureau makes --------------------------------------------------------

    def versions(self) -> dict[str, Any]:
        return self.call("GET", "/_matrix/client/versions", what="query homeserver versions")

    def login_password(
        self, localpart: str, password: Secret, *, device_id: str | None = None
    ) -> Login:
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password.reveal(),
            "initial_device_display_name": "bureau",
        }
        if device_id:
            body["device_id"] = device_id
        what = f"log in as {localpart}"
        data = self.call("POST", f"{CLIENT}/login", body, what=what)
        return Login(
            text_field(data, "user_id", what),
            Secret(text_field(data, "access_token", what)),
            text_field(data, "device_id", what),
        )

    def register_with_token(
        self, localpart: str, password: Secret, registration_token: Secret
    ) -> str:
        """Register an account (no login, so no device is left behind); return its ID."""
        body = {"username": localpart, "password": password.reveal(), "inhibit_login": True}
        stages = {"m.login.registration_token": {"token": registration_token.reveal()}}
        data = self._uia(f"{CLIENT}/register", body, stages, what=f"register {localpart}")
        return text_field(data, "user_id", f"register {localpart}")

    def kick(self, room_id: str, user_id: str, reason: str) -> bool:
        """Remove a member; False when the user was not in (or invited to) the room."""
        what = f"remove {user_id} from {room_id}"
        resp = self.send(
            "POST",
            f"{CLIENT}/rooms/{segment(room_id)}/kick",
            {"user_id": user_id, "reason": reason},
            what=what,
        )
        if resp.status < 400:
            return True
        if resp.status == 403 and "not in the room" in str(resp.body.get("error", "")).lower():
            return False
        raise response_error(what, resp)

    def whoami(self) -> tuple[str, str | None]:
        data = self.call("GET", f"{CLIENT}/account/whoami", what="check the access token")
        device = data.get("device_id")
        return text_field(data, "user_id", "check the access token"), (
            device if isinstance(device, str) else None
        )

    def change_password(self, user_id: str, current: Secret, new: Secret) -> None:
        body = {"new_password": new.reveal(), "logout_devices": False}
        stages = {
            "m.login.password": {
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": current.reveal(),
            }
        }
        what = f"change the password of {user_id}"
        self._uia(f"{CLIENT}/account/password", body, stages, what=what)

    def logout(self) -> None:
        self.call("POST", f"{CLIENT}/logout", {}, what="log out")

    def resolve_alias(self, alias: str) -> str | None:
        resp = self.send(
            "GET", f"{CLIENT}/directory/room/{segment(alias)}", what=f"resolve {alias}"
        )
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise response_error(f"resolve {alias}", resp)
        return text_field(resp.body, "room_id", f"resolve {alias}")

    def create_room(self, content: dict[str, Any], *, what: str) -> str:
        return text_field(
            self.call("POST", f"{CLIENT}/createRoom", content, what=what), "room_id", what
        )

    def join(self, room: str) -> str:
        data = self.call("POST", f"{CLIENT}/join/{segment(room)}", {}, what=f"join {room}")
        return text_field(data, "room_id", f"join {room}")

    def invite(self, room_id: str, user_id: str) -> None:
        what = f"invite {user_id} to {room_id}"
        resp = self.send(
            "POST", f"{CLIENT}/rooms/{segment(room_id)}/invite", {"user_id": user_id}, what=what
        )
        if resp.status < 400:
            return
        # Already invited or joined: the invite we wanted is in place.
        if resp.status == 403 and "already in the room" in str(resp.body.get("error", "")):
            return
        raise response_error(what, resp)

    def put_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        path = f"{CLIENT}/rooms/{segment(room_id)}/state/{segment(event_type)}/{segment(state_key)}"
        data = self.call("PUT", path, content, what=f"publish {event_type} in {room_id}")
        return str(data.get("event_id", ""))

    def get_state(self, room_id: str, event_type: str, state_key: str) -> dict[str, Any] | None:
        """One state event's content, or None when there is none."""
        path = f"{CLIENT}/rooms/{segment(room_id)}/state/{segment(event_type)}/{segment(state_key)}"
        what = f"read {event_type} in {room_id}"
        resp = self.send("GET", path, what=what)
        if resp.status == 404 and resp.body.get("errcode") == "M_NOT_FOUND":
            return None
        if resp.status >= 400:
            raise response_error(what, resp)
        return resp.body

    def room_state_events(self, room_id: str) -> list[dict[str, Any]]:
        what = f"read the state of {room_id}"
        resp = self.send("GET", f"{CLIENT}/rooms/{segment(room_id)}/state", what=what)
        if resp.status >= 400:
            raise response_error(what, resp)
        events = resp.data if isinstance(resp.data, list) else []
        return [e for e in events if isinstance(e, dict)]


def _next_stage(flows: list[Any], known: dict[str, dict[str, Any]], done: set[str]) -> str | None:
    for flow in flows:
        flow_stages = flow.get("stages") if isinstance(flow, dict) else None
        if not isinstance(flow_stages, list) or not all(s in known for s in flow_stages):
            continue
        for stage in flow_stages:
            if stage not in done:
                return str(stage)
    return None


def text_field(data: dict[str, Any], name: str, what: str) -> str:
    """A string field the homeserver's success answer must carry."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise MatrixError(what, 0, "", f"the homeserver's answer has no {name}")
    return value


def _hint(resp: Response) -> float | None:
    return server_hint(resp.headers.get("retry-after"), resp.body.get("retry_after_ms"))


def response_error(what: str, resp: Response) -> MatrixError:
    return MatrixError(
        what,
        resp.status,
        str(resp.body.get("errcode", "")),
        str(resp.body.get("error", ""))[:200],
        retry_after=_hint(resp),
        soft_logout=resp.body.get("soft_logout") is True,
    )
