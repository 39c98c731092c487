"""`bureau operator-key show|rotate|add|revoke`: the operator's signing keys
(operator/signed.py). The private key stays in the credential file; these commands print
key IDs and public keys only."""

from __future__ import annotations

import argparse
from pathlib import Path

from bureau.cli.common import Subparsers, add_credential_file, load_credentials, say
from bureau.errors import BureauError
from bureau.operator import signed
from bureau.wire.signing import PublicKey

PUBLIC_KEY_MAX = 4096


def read_public_key(path: Path, flag: str) -> PublicKey:
    """A public key file (``ed25519:<version> <base64>``, as `bureau matrix setup` writes
    beside the credential file); public, so any mode will do."""
    try:
        raw = path.read_bytes()[:PUBLIC_KEY_MAX]
    except OSError as exc:
        raise BureauError(f"{flag} {path}: {exc.strerror or type(exc).__name__}") from None
    return PublicKey.from_text(raw.decode(errors="replace"), f"{flag} {path}")


def show(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    if creds.signing_key is None:
        raise BureauError(signed.UNSIGNED_NOTE.format(file=args.credential_file))
    say(f"signing with {creds.signing_key.public.to_text().strip()}")
    for _, key in sorted(signed.published_keys(creds).items()):
        say(f"in force: {key.to_text().strip()}")
    return 0


def rotate(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    signed.rotate(args.credential_file, creds, revoke_old=args.revoke_old, report=say)
    return 0


def add(args: argparse.Namespace) -> int:
    key = read_public_key(args.public_key, "--public-key")
    changed = signed.add_key(load_credentials(args), key)
    say(f"{'added' if changed else 'already in force'}: {key.key_id}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    key = signed.revoke_key(load_credentials(args), args.key_id)
    say(f"revoked {key.key_id}: machines refuse what it signed from now on")
    return 0


def register(groups: Subparsers) -> None:
    group = groups.add_parser(
        "operator-key", help="the operator signing keys machines trust (m.bureau.operator_keys)"
    )
    cmds = group.add_subparsers(dest="command", metavar="ACTION", required=True)
    shown = cmds.add_parser("show", help="this credential file's key and the keys in force")
    turn = cmds.add_parser(
        "rotate", help="a new key stated by the old one, kept in the credential file"
    )
    turn.add_argument(
        "--revoke-old",
        action="store_true",
        help="also revoke the old key (re-sign what it signed first: assign, template push, "
        "credentials provision)",
    )
    adding = cmds.add_parser("add", help="trust another operator's key, stated by this one")
    adding.add_argument("--public-key", type=Path, required=True, metavar="FILE")
    removing = cmds.add_parser(
        "revoke", help="revoke a key in force; machines never trust it again"
    )
    removing.add_argument("key_id", metavar="KEY_ID", help="ed25519:...")
    for parser, handler in ((shown, show), (turn, rotate), (adding, add), (removing, revoke)):
        add_credential_file(parser)
        parser.set_defaults(handler=handler)
