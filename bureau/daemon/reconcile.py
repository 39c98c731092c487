"""The daemon's decision: from the machine's config, the credentials events and what the
launcher runs, the actions that make them agree. Pure.

Desired principals are the assignments with auto_start whose credentials event exists and
is not a tombstone. A credentials event for a principal that is not assigned is ignored.
A principal whose assignment names a template also gets its sandbox spec (resolved by the
daemon, checked again by the launcher); one whose template cannot be resolved and that has
no last good spec is ``held``: nothing is started or stopped for it.

Each principal stands alone: stops come first (revocation never waits behind a start that
hangs or fails), and a principal whose last action failed is retried on its own backoff
while the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError
from bureau.wire.credentials import content_digest
from bureau.wire.launcher_protocol import running_digest
from bureau.wire.machine_config import MachineConfig
from bureau.wire.service_route import services_json
from bureau.wire.template_parts import ProxyService


@dataclass(frozen=True)
class Ensure:
    principal: str
    content: dict[str, Any]
    sandbox: dict[str, Any] | None = None  # a SandboxSpec's JSON
    # What the operator signed, as published, for the launcher to check: the principal's
    # machine-config entry, and the templates its sandbox resolves from (ref -> content).
    assignment: dict[str, Any] | None = None
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The fleet bundle shard its template names ({"state_key", "content"} as published;
    # daemon/fleet_relay.py), served beside its own credentials.
    fleet_credentials: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stop:
    principal: str


Action = Ensure | Stop


def relayed(
    credentials: Mapping[str, dict[str, Any]],
    template_services: Mapping[str, Mapping[str, ProxyService]],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """What each principal's ``ensure`` carries, and the principals it cannot be made for
    (principal -> why). An event as bureau writes it goes as published: its services are
    bound to it. One without ``services`` (upstream's; unbound) goes with its principal's
    template ``proxy_services`` as its routes, which the launcher uses only where the
    machine serves unbound bundles; nothing binds those, so this is where a subverted
    daemon could reroute them (WIRE.md)."""
    out: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for principal, content in credentials.items():
        services = template_services.get(principal)
        if "services" in content or not services:
            out[principal] = content
            continue
        try:
            routes = {
                name: service.to_route(f"template: proxy_services.{name}")
                for name, service in sorted(services.items())
            }
        except InputError as exc:
            problems[principal] = f"unbound bundle: {exc}"
            continue
        out[principal] = {**content, "services": services_json(routes)}
    return out, problems


def desired(config: MachineConfig, credentials: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        a.principal: credentials[a.principal]
        for a in config.principals
        if a.auto_start and credentials.get(a.principal)
    }


def plan(
    config: MachineConfig,
    credentials: dict[str, dict[str, Any]],
    running: dict[str, str],
    *,
    specs: Mapping[str, dict[str, Any]] | None = None,
    sandboxes: Mapping[str, str] | None = None,
    held: Collection[str] = (),
    templates: Mapping[str, dict[str, dict[str, Any]]] | None = None,
    fleet: Mapping[str, dict[str, Any]] | None = None,
) -> list[Action]:
    """``running`` maps principal -> running digest (launcher_protocol.running_digest), and
    ``sandboxes`` principal -> spec digest, as the launcher reports them; ``specs``:
    principal -> the spec it should run (absent: no sandbox); ``templates``: principal ->
    the templates it resolves from, as published; ``fleet``: principal -> the fleet
    bundle shard it is served with."""
    specs, sandboxes, templates = specs or {}, sandboxes or {}, templates or {}
    fleet = fleet or {}
    wanted = {p: c for p, c in desired(config, credentials).items() if p not in held}
    actions: list[Action] = [
        Stop(principal)
        for principal in sorted(running)
        if principal not in wanted and principal not in held
    ]
    for principal, content in sorted(wanted.items()):
        spec = specs.get(principal)
        spec_digest = content_digest(spec) if spec is not None else None
        shard = fleet.get(principal)
        if running.get(principal) != running_digest(content, shard) or (
            sandboxes.get(principal) != spec_digest
        ):
            entry = config.find(principal)
            actions.append(
                Ensure(
                    principal,
                    content,
                    spec,
                    (entry.raw or None) if entry is not None else None,
                    templates.get(principal, {}) if spec is not None else {},
                    shard,
                )
            )
    return actions


# A refusal is the launcher's verdict on that content: asked again rarely, since only a new
# event (which is tried at once) or a change on the machine can change it. A launcher that
# did not answer is asked again sooner.
REFUSED_CAP_SECONDS = 300.0
UNANSWERED_CAP_SECONDS = 30.0
# A reason goes into machine_status, one state event of at most 64 KiB for the machine.
MAX_REASON = 200


@dataclass(frozen=True)
class Failure:
    """The last action for a principal failed; not tried again before ``retry_at``
    (monotonic seconds) unless what is wanted of it changed."""

    tried: str  # "stop", or the digest of the credentials an ensure carried
    reason: str
    attempts: int
    retry_at: float


def tried(action: Action) -> str:
    if isinstance(action, Stop):
        return "stop"
    return content_digest(
        {
            "credentials": action.content,
            "sandbox": action.sandbox,
            "assignment": action.assignment,
            "templates": action.templates,
            "fleet_credentials": action.fleet_credentials,
        }
    )


def is_due(failure: Failure | None, action: Action, now: float) -> bool:
    return failure is None or failure.tried != tried(action) or now >= failure.retry_at


def failed(
    previous: Failure | None,
    action: Action,
    reason: str,
    *,
    refused: bool,
    now: float,
    rng: Callable[[], float],
) -> Failure:
    """The failure to record: attempts count up while the same thing keeps failing; the
    delay doubles from 1 s to its cap, jittered between half and all of it."""
    what = tried(action)
    attempts = previous.attempts + 1 if previous and previous.tried == what else 1
    cap = REFUSED_CAP_SECONDS if refused else UNANSWERED_CAP_SECONDS
    base = min(2.0 ** (attempts - 1), cap)
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    return Failure(what, reason, attempts, now + base / 2 + rng() * base / 2)
