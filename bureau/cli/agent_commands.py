"""`bureau agent create|list|show|destroy`: principals as a whole (PRINCIPALS.md)."""

from __future__ import annotations

import argparse
import json

from bureau.cli.common import (
    Subparsers,
    add_credential_file,
    load_credentials,
    machine_name,
    principal_name,
    say,
)
from bureau.cli.credential_commands import read_secrets, read_services
from bureau.errors import InputError, UsageError
from bureau.operator import agents, templates
from bureau.wire.names import PrincipalRef
from bureau.wire.service_route import parse_services


def agent_create(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    try:
        ref = templates.namespace_ref(creds, args.template)
    except ValueError as exc:
        raise UsageError(f"TEMPLATE-REF: {exc}") from None
    where = str(args.services) if args.services else "--services"
    request = agents.AgentRequest(
        template=ref,
        machine=machine_name(creds, args.machine, "--machine"),
        principal=principal_name(creds, args.name, flag="--name"),
        secrets=read_secrets(args.secrets_file, allow_empty=True) if args.secrets_file else {},
        services=parse_services(read_services(args.services), where) if args.services else {},
        services_where=where,
        auto_start=not args.no_auto_start,
    )
    agents.create(creds, request, say)
    say(f"agent {request.principal} on {request.machine} from {ref}")
    return 0


def agent_list(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    machine = machine_name(creds, args.machine, "--machine") if args.machine else None
    listed = agents.list_agents(creds, machine)
    if args.json:
        say(json.dumps([a.to_json() for a in listed], indent=2))
        return 0
    for agent in listed:
        start = "" if agent.auto_start else " (not started)"
        say(
            f"{agent.principal} on {agent.machine}: template {agent.template or '-'}; "
            f"credentials {', '.join(agent.keys) or 'none'}{start}"
        )
    return 0


def agent_show(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    principal = principal_name(creds, args.name, flag="NAME", to_run=False)
    user = PrincipalRef.from_localpart(principal, creds.server_name).user_id
    found = [a.to_json() for a in agents.list_agents(creds) if a.principal == user]
    if not found:
        raise InputError("NAME", None, f"{principal} is not assigned to any machine")
    say(json.dumps(found, indent=2))
    return 0


def agent_destroy(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    principal = principal_name(creds, args.name, flag="NAME", to_run=False)
    agents.destroy(creds, principal, say)
    return 0


def register(groups: Subparsers) -> None:
    group = groups.add_parser("agent", help="principals: account, credentials and assignment")
    cmds = group.add_subparsers(dest="command", metavar="ACTION", required=True)
    create = cmds.add_parser("create", help="a principal from a template, on a machine")
    create.add_argument("template", metavar="TEMPLATE-REF", help="NAME or a full template ref")
    create.add_argument("--machine", required=True, help="machine/NAME or the full name")
    create.add_argument("--name", required=True, help="agent/NAME or the full name")
    create.add_argument(
        "--secrets-file", help="NAME=VALUE lines besides MATRIX_TOKEN: a 0600 file, or -"
    )
    create.add_argument("--services", help="JSON: more services for its proxy")
    create.add_argument("--no-auto-start", action="store_true", help="assign, do not start")
    create.set_defaults(handler=agent_create)
    lst = cmds.add_parser("list", help="every agent assigned in this fleet")
    lst.add_argument("--machine", help="only this machine's")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=agent_list)
    show = cmds.add_parser("show", help="one agent: where it runs, from what, with what")
    show.add_argument("name", metavar="NAME", help="agent/NAME or the full name")
    show.set_defaults(handler=agent_show)
    destroy = cmds.add_parser("destroy", help="unassign, tombstone, deactivate (re-runnable)")
    destroy.add_argument("name", metavar="NAME", help="agent/NAME or the full name")
    destroy.set_defaults(handler=agent_destroy)
    for sub in (create, lst, show, destroy):
        add_credential_file(sub)
