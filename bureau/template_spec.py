"""The sandbox an assignment asks for: its template resolved (parents, the assignment's
overrides), judged by this worker's policy, and made a sandbox spec. Pure apart from
``is_dir``. The daemon resolves it from the template rooms it reads; the launcher resolves
it again from the signed assignment and templates the daemon relays, and runs only what
both agree on (launcher/operator_trust.py).

Anything wrong (a cycle, a missing parent, a template that does not parse, no command, an
upstream field this worker refuses to run without: ``template_policy``) is an InputError
that names it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bureau import template_policy
from bureau.errors import InputError
from bureau.template_policy import Ignored
from bureau.template_resolve import Fetch, apply_assignment, resolve
from bureau.wire import names
from bureau.wire.machine_config import Assignment
from bureau.wire.sandbox_spec import SandboxSpec
from bureau.wire.template_parts import ProxyService, TemplateRef


@dataclass(frozen=True)
class Found:
    """What an assignment resolves to: the sandbox, its template's ``proxy_services``
    (the routes of an unbound bundle), the template fields it runs without, and every
    template that took part (``sources``)."""

    spec: SandboxSpec
    services: dict[str, ProxyService]
    ignored: tuple[Ignored, ...] = ()
    sources: tuple[TemplateRef, ...] = ()
    credential_ref: str = ""  # the fleet bundle it names (template_policy.fleet_ref)


def assignment_spec(
    assignment: Assignment, fetch: Fetch, is_dir: Callable[[str], bool]
) -> Found | None:
    """What ``assignment`` asks for; None when it names no template. ``is_dir``: whether a
    template's Nix ``environment`` is on this machine."""
    if assignment.template is None:
        return None
    where = f"assignment of {assignment.principal}"
    try:
        ref = TemplateRef.parse(assignment.template)
        extra = [TemplateRef.parse(r) for r in assignment.extra_inherits]
    except names.InvalidName as exc:
        raise InputError(where, "template", str(exc)) from None
    resolved = resolve(ref, fetch, extra)
    resolved = apply_assignment(
        resolved,
        assignment.command_override or (),
        assignment.extra_environment_variables,
        assignment.extra,
    )
    refused = template_policy.refusal(resolved)
    if refused is not None:
        raise refused
    template = resolved.template
    if template.environment and not is_dir(template.environment):
        raise InputError(
            resolved.provenance["environment"],
            "environment",
            f"{template.environment} is not on this machine (Nix closures are not fetched)",
        )
    spec = SandboxSpec.from_template(
        str(ref), template_policy.honour(template), assignment.restart_policy
    )
    return Found(
        spec,
        dict(template.proxy_services),
        template_policy.ignored(resolved),
        resolved.sources,
        template.credential_ref,
    )
