"""`bureau fleet cache set`: fleet-wide state in the fleet room."""

from __future__ import annotations

import argparse

from bureau.cli.common import Subparsers, add_credential_file, load_credentials, say, valid
from bureau.errors import UsageError
from bureau.operator.fleet_state import set_cache, set_profile
from bureau.profile import commands as profile_commands
from bureau.profile import model
from bureau.wire.files import FleetCache, validate_cache_url, validate_nix_public_key


def cache_set(args: argparse.Namespace) -> int:
    url = valid(validate_cache_url, args.url, "--url")
    keys = tuple(valid(validate_nix_public_key, k, "--public-key") for k in args.public_key)
    if args.name is not None and (not args.name.strip() or any(c.isspace() for c in args.name)):
        raise UsageError("--name: expected a cache name without spaces")
    cache = FleetCache(url, args.name, keys)
    changed = set_cache(load_credentials(args), cache)
    say(f"{'published' if changed else 'already published'}: {url} ({', '.join(keys)})")
    return 0


def profile_set(args: argparse.Namespace) -> int:
    profile = profile_commands.profile_from_flags(args)
    changed = set_profile(load_credentials(args), profile)
    say(f"{'published' if changed else 'already published'}: {model.summary(profile)}")
    return 0


def register(groups: Subparsers) -> None:
    fleet = groups.add_parser("fleet", help="fleet-wide state: the binary cache, the profile")
    cmds = fleet.add_subparsers(dest="command", metavar="WHAT", required=True)
    cache = cmds.add_parser("cache", help="the binary cache every machine trusts")
    cache_cmds = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    setter = cache_cmds.add_parser(
        "set", help="publish m.bureau.fleet_cache; machines' doctor --fix trusts it in nix.conf"
    )
    setter.add_argument(
        "--url", required=True, help="substituter URL, e.g. http://attic:5580/bureau"
    )
    setter.add_argument(
        "--name", help="the cache's name for pushes, e.g. bureau (optional, as upstream)"
    )
    setter.add_argument(
        "--public-key",
        required=True,
        action="append",
        help="NAME:BASE64 signing public key (repeat for several)",
    )
    add_credential_file(setter)
    setter.set_defaults(handler=cache_set)

    profile = cmds.add_parser("profile", help="the fleet profile every machine materializes")
    profile_cmds = profile.add_subparsers(dest="action", metavar="ACTION", required=True)
    publish = profile_cmds.add_parser(
        "set",
        help="publish m.bureau.fleet_profile (checked like flywheel-enroll; no token accepted)",
    )
    profile_commands.add_profile_flags(publish)
    add_credential_file(publish)
    publish.set_defaults(handler=profile_set)
