"""The launcher socket's wire format (OURS): one JSON object per line, one request and one
response per connection. Pure.

    {"action": "status"}
    {"action": "list"}
    {"action": "ensure", "principal": "@<lp>:<server>",
     "credentials": {<the m.bureau.credentials content, verbatim>}}
    {"action": "stop", "principal": "@<lp>:<server>"}
    {"action": "relogin"}     after the homeserver soft-logged the machine out

Every response has "ok": true|false; failures carry "error", a one-line message that never
holds credential content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 256 * 1024
ACTIONS = ("status", "list", "ensure", "stop", "relogin")


class ProtocolError(Exception):
    pass


@dataclass(frozen=True)
class Request:
    action: str
    principal: str | None = None
    credentials: dict[str, Any] | None = None

    def to_line(self) -> bytes:
        body: dict[str, Any] = {"action": self.action}
        if self.principal is not None:
            body["principal"] = self.principal
        if self.credentials is not None:
            body["credentials"] = self.credentials
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_request(line: bytes) -> Request:
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("request is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("request is not a JSON object")
    action = obj.get("action")
    if action not in ACTIONS:
        raise ProtocolError(f"action must be one of {', '.join(ACTIONS)}")
    principal = obj.get("principal")
    if action in ("ensure", "stop") and not isinstance(principal, str):
        raise ProtocolError(f"{action} needs a principal")
    credentials = obj.get("credentials")
    if action == "ensure" and not isinstance(credentials, dict):
        raise ProtocolError("ensure needs the credentials event content")
    return Request(action, principal, credentials if action == "ensure" else None)


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def failure(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def encode_response(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"
