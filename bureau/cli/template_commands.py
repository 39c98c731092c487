"""`bureau template push|list|show`: the namespace's templates (PRINCIPALS.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bureau import template_policy
from bureau.cli.common import Subparsers, add_credential_file, load_credentials, say
from bureau.errors import InputError, UsageError
from bureau.files import read_private_bytes
from bureau.operator import credentials
from bureau.operator import templates as operator_templates
from bureau.template_resolve import resolve
from bureau.wire.template import Template
from bureau.wire.template_parts import TemplateRef

MAX_TEMPLATE_BYTES = 60 * 1024  # a state event holds 64 KiB with its envelope


def _read_template(path: Path) -> Template:
    raw = read_private_bytes(path, MAX_TEMPLATE_BYTES, private=False)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(str(path), None, f"not JSON ({type(exc).__name__})") from None
    template = Template.from_json(obj, str(path))
    template.check_known(str(path))  # liberal in what we read, strict in what we write
    return template


def _ref(args: argparse.Namespace, value: str, flag: str) -> TemplateRef:
    creds = load_credentials(args)
    try:
        return operator_templates.namespace_ref(creds, value)
    except ValueError as exc:  # InvalidName
        raise UsageError(f"{flag}: {exc}") from None


def template_push(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    template = _read_template(args.file)
    ref = _ref(args, args.name, "--name")
    admin = credentials.admin_client(creds)
    changed = operator_templates.push(admin, creds, ref.name, template)
    say(f"{'pushed' if changed else 'unchanged'}: {ref}")
    # Upstream's machines may run what ours would not: published, and said so.
    for note in template_policy.notes(resolve(ref, operator_templates.fetcher(admin, creds))):
        sys.stderr.write(f"note: {note}\n")
    return 0


def template_list(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    listed = operator_templates.list_templates(credentials.admin_client(creds), creds)
    if args.json:
        out = [
            {
                "ref": str(item.ref),
                **({"invalid": item.problem} if item.problem else {}),
                **({"template": item.template.to_json()} if item.template else {}),
            }
            for item in listed
        ]
        say(json.dumps(out, indent=2))
        return 0
    for item in listed:
        if item.template is None:
            say(f"{item.ref}: invalid: {item.problem}")
            continue
        parents = ", ".join(str(r) for r in item.template.inherits) or "nothing"
        say(f"{item.ref}: inherits {parents}; {item.template.description}".rstrip("; "))
    return 0


def template_show(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    ref = _ref(args, args.ref, "REF")
    fetch = operator_templates.fetcher(credentials.admin_client(creds), creds)
    if not args.resolved:
        template = fetch(ref)
        if template is None:
            raise InputError("REF", None, f"{ref}: no such template")
        say(json.dumps(template.to_json(), indent=2))
        return 0
    resolved = resolve(ref, fetch)
    shown = {
        "template": resolved.template.to_json(),
        "from": dict(sorted(resolved.provenance.items())),
        "sources": [str(ref) for ref in resolved.sources],
    }
    say(json.dumps(shown, indent=2))
    return 0


def register(groups: Subparsers) -> None:
    group = groups.add_parser("template", help="templates: what principals run, and how")
    cmds = group.add_subparsers(dest="command", metavar="ACTION", required=True)
    push = cmds.add_parser("push", help="publish a template (JSON) in this namespace")
    push.add_argument("file", type=Path, metavar="FILE", help="the template, JSON")
    push.add_argument("--name", required=True, help="its name, e.g. my-agent")
    push.set_defaults(handler=template_push)
    lst = cmds.add_parser("list", help="this namespace's templates")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=template_list)
    show = cmds.add_parser("show", help="one template as stored, or --resolved")
    show.add_argument("ref", metavar="REF", help="NAME, or a full ref such as bureau/template:base")
    show.add_argument(
        "--resolved",
        action="store_true",
        help="its parents applied, with the template each field came from",
    )
    show.set_defaults(handler=template_show)
    for sub in (push, lst, show):
        add_credential_file(sub)
