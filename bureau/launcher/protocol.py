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
import re
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 256 * 1024
# A credentials event nests five deep (request, content, services, service, headers); the
# bound leaves room and keeps json.loads far from the interpreter's recursion limit.
MAX_DEPTH = 16
ACTIONS = ("status", "list", "ensure", "stop", "relogin")
_SIGNIFICANT = re.compile(rb'[][{}"\\]')


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


def nesting_depth(line: bytes) -> int:
    """How deep the JSON's arrays and objects nest, brackets inside strings aside; one
    linear pass, so that it can run before the recursive parser sees the line."""
    depth = deepest = 0
    in_string = False
    escaped = -1  # the index a backslash escapes
    for match in _SIGNIFICANT.finditer(line):
        at = match.start()
        if at == escaped:
            continue
        char = line[at : at + 1]
        if in_string:
            if char == b"\\":
                escaped = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def parse_request(line: bytes) -> Request:
    if len(line) > MAX_MESSAGE:
        raise ProtocolError(f"request larger than {MAX_MESSAGE} bytes")
    if nesting_depth(line) > MAX_DEPTH:
        raise ProtocolError(f"request nests deeper than {MAX_DEPTH} levels")
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
