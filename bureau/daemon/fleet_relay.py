"""The fleet bundle shard each principal's ``ensure`` carries: its template's
``credential_ref`` names a bundle in the machine's fleet room, and of that bundle's shards
the one whose ``encrypted_for`` names this machine goes, as published. Pure apart from the
log.

A principal whose bundle cannot be served here (a ref to another room, a bundle not
published, or one that names no shard for this machine, as when the operator took the
machine out of it) is not started, and one running is stopped: the operator who removed a
machine from a bundle expects its principals to lose that credential. Its reason goes to
machine_status and the log, once as it appears or changes, naming principal and bundle,
never content."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bureau.errors import InputError
from bureau.template_policy import fleet_ref
from bureau.wire import names
from bureau.wire.fleet_bundle import shard_for


def fleet_relays(
    refs: Mapping[str, str],
    events: Mapping[str, dict[str, Any]],
    machine_user: str,
    previous: Mapping[str, str],
    log: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(principal -> ``{"state_key", "content"}``, principal -> why none can be served).
    ``refs``: principal -> credential_ref; ``events``: the fleet room's credentials events
    by state key; ``previous``: the problems of the last pass (each is logged once)."""
    machine = names.MachineRef.from_user_id(machine_user)
    relays: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for principal, value in sorted(refs.items()):
        bundle = ""
        try:
            ref = fleet_ref(value, machine.fleet, machine.server, f"template of {principal}")
            bundle = ref.name
            key = shard_for(events, ref.name, machine_user)
        except InputError as exc:
            problems[principal] = str(exc)
            key = None
        if key is not None:
            relays[principal] = {"state_key": key, "content": events[key]}
            continue
        if principal not in problems:
            problems[principal] = (
                f"fleet bundle {bundle} names no shard for this machine; not served here"
                if events.get(bundle)
                else f"fleet bundle {bundle} is not published in the fleet room"
            )
        if previous.get(principal) != problems[principal]:
            log.warning(
                "principal not run: its fleet bundle is not served here",
                principal=principal,
                bundle=bundle or value[:80],
                problem=problems[principal],
            )
    return relays, problems
