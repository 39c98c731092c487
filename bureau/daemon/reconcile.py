"""The daemon's decision: from the machine's config, the credentials events and what the
launcher runs, the actions that make them agree. Pure.

Desired principals are the assignments with auto_start whose credentials event exists and
is not a tombstone. A credentials event for a principal that is not assigned is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bureau.credentials_event import content_digest
from bureau.machine_config import MachineConfig


@dataclass(frozen=True)
class Ensure:
    principal: str
    content: dict[str, Any]


@dataclass(frozen=True)
class Stop:
    principal: str


Action = Ensure | Stop


def desired(config: MachineConfig, credentials: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        a.principal: credentials[a.principal]
        for a in config.principals
        if a.auto_start and credentials.get(a.principal)
    }


def plan(
    config: MachineConfig, credentials: dict[str, dict[str, Any]], running: dict[str, str]
) -> list[Action]:
    """``running`` maps principal -> content digest, as the launcher reports it."""
    wanted = desired(config, credentials)
    actions: list[Action] = [
        Ensure(principal, content)
        for principal, content in sorted(wanted.items())
        if running.get(principal) != content_digest(content)
    ]
    actions += [Stop(principal) for principal in sorted(running) if principal not in wanted]
    return actions
