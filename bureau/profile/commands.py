"""flywheel-doctor, flywheel-verify, flywheel-enroll and flywheel-consumer-env, also as
``bureau profile doctor|verify|enroll|consumer-env``.

doctor describes (exit 0 unless it cannot run); verify fails on an unattached or
contradictory profile, one line per violation; enroll and consumer-env materialize a
profile from flags (enroll writes ``.env.flywheel.local`` by default, consumer-env prints
unless given --write), refusing anything contradictory or token-like.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from bureau import nix_conf
from bureau.edge import Parser, run
from bureau.errors import InputError, UsageError
from bureau.files import atomic_write
from bureau.profile import model, sources
from bureau.profile.token_file import TokenFileError, read_token

HEADER = "GloriousFlywheel fleet profile (non-secret; never put a token here)."


def _root(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "root", None) or "/")


def _load(args: argparse.Namespace) -> sources.Found | None:
    return sources.load(root=_root(args))


# -- doctor ----------------------------------------------------------------------------


def describe(found: sources.Found | None, root: Path) -> dict[str, Any]:
    if found is None:
        return {"source": None, "state": None, "violations": model.violations({})}
    p = found.profile
    report: dict[str, Any] = {
        "source": found.source,
        "state": p.get(model.STATE),
        "substrate_mode": p.get(model.MODE),
        "remote_cache": _endpoint(p.get(model.CACHE)),
        "executor": _endpoint(p.get(model.EXECUTOR)),
        "instance_name": p.get(model.INSTANCE),
        "local_proof": p.get(model.LOCAL_PROOF),
        "attic": _attic(p, root),
        "credential_helper": _helper(p.get(model.HELPER, "")),
        "token_file": _token(p.get(model.TOKEN_FILE, "")),
        "violations": model.violations(p),
    }
    return report


def _endpoint(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    problem = model.endpoint_problem(value)
    return {"url": value, "shape": problem or "ok"}


def _attic(p: model.Profile, root: Path) -> dict[str, Any] | None:
    server, cache, key = (
        p.get(n, "") for n in (model.ATTIC_SERVER, model.ATTIC_CACHE, model.ATTIC_KEY)
    )
    if not server:
        return None
    url = f"{server.rstrip('/')}/{cache}"
    conf = Path(os.environ.get("NIX_CONF_DIR", "/etc/nix")) / "nix.conf"
    try:
        text = (root / str(conf).lstrip("/")).read_text()
    except OSError:
        text = ""
    return {
        "substituter": url,
        "public_key": key,
        "nix_conf": str(conf),
        "trusted": bool(key) and nix_conf.trusts(text, url, key),
    }


def _helper(value: str) -> dict[str, Any] | None:
    helper = model.parse_helper(value)
    if helper is None:
        return {"mapping": value, "problem": "not host=/path"} if value else None
    path = Path(helper.path)
    return {
        "host": helper.host,
        "path": helper.path,
        "executable": path.is_file() and os.access(path, os.X_OK),
    }


def _token(value: str) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        token = read_token(Path(value))
    except TokenFileError as exc:
        return {"path": value, "usable": False, "problem": str(exc)}
    mode = stat.S_IMODE(Path(value).stat().st_mode)
    return {"path": value, "usable": True, "mode": f"{mode:04o}", "expires_at": token.expires_at}


def _lines(report: dict[str, Any]) -> list[str]:
    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, dict):
            return ", ".join(f"{k} {show(v)}" for k, v in value.items())
        return str(value)

    keys = [k for k in report if k != "violations"]
    lines = [f"{k.replace('_', ' ')}: {show(report[k])}" for k in keys]
    violations = report["violations"]
    lines.append("violations: " + ("none" if not violations else str(len(violations))))
    lines += [f"  {v}" for v in violations]
    return lines


def doctor(args: argparse.Namespace) -> int:
    report = describe(_load(args), _root(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(_lines(report)))
    return 0


# -- verify ----------------------------------------------------------------------------


def verify(args: argparse.Namespace) -> int:
    found = _load(args)
    problems = model.violations(found.profile if found else {})
    if problems or found is None:
        for line in problems:
            sys.stderr.write(f"flywheel-verify: {line}\n")
        return 1
    print(f"flywheel-verify: {model.summary(found.profile)} from {found.source}: consistent")
    return 0


# -- enroll / consumer-env -------------------------------------------------------------


def profile_from_flags(args: argparse.Namespace) -> model.Profile:
    state = args.state
    profile: model.Profile = {model.STATE: state}
    if state in model.MODES:
        profile[model.MODE] = state
    elif state == model.LOCAL:
        profile[model.LOCAL_PROOF] = "port-forward"
        profile[model.MODE] = (
            model.EXECUTOR_BACKED if args.executor_endpoint else model.SHARED_CACHE
        )
    optional = {
        model.CACHE: args.cache_endpoint,
        model.EXECUTOR: args.executor_endpoint,
        model.INSTANCE: args.instance_name,
        model.HELPER: args.credential_helper,
        model.TOKEN_FILE: args.token_file,
        model.ATTIC_SERVER: args.attic_server,
        model.ATTIC_CACHE: args.attic_cache,
        model.ATTIC_KEY: args.attic_public_key,
    }
    profile.update({k: v for k, v in optional.items() if v})
    problems = model.contradictions(profile)
    if problems:
        raise UsageError("refused: " + "; ".join(problems))
    return profile


def materialize(args: argparse.Namespace, default_write: Path | None) -> int:
    profile = profile_from_flags(args)
    body = model.materialize(profile, HEADER)
    target: Path | None = args.write or default_write
    if target is None:
        sys.stdout.write(body)
        return 0
    if target.is_dir():
        raise InputError(str(target), None, "is a directory (--write)")
    atomic_write(target, body.encode(), 0o644)
    ignored = _gitignore(target)
    print(f"wrote {target}: {model.summary(profile)}" + (f"; {ignored}" if ignored else ""))
    return 0


def _gitignore(target: Path) -> str:
    """In a git work tree, make sure git ignores the fallback file."""
    where = target.absolute().parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, check=False
        )

    try:
        top = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return ""
    if top.returncode != 0 or git("check-ignore", "-q", str(target.absolute())).returncode == 0:
        return ""
    root = Path(top.stdout.strip())
    entry = "/" + str(target.absolute().relative_to(root))
    ignore = root / ".gitignore"
    text = ignore.read_text() if ignore.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write(ignore, (text + entry + "\n").encode(), 0o644)
    return f"added {entry} to {ignore}"


# -- parsers ---------------------------------------------------------------------------


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, help="prefix for /etc and /run paths (chroots, tests)")


def add_materialize_flags(p: argparse.ArgumentParser, default_write: str | None) -> None:
    add_profile_flags(p)
    p.add_argument(
        "--write",
        type=Path,
        help=f"write here atomically (default: {default_write or 'print to stdout'})",
    )


def add_profile_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", metavar="STATE", choices=model.STATES, help=" | ".join(model.STATES))
    p.add_argument("--cache-endpoint", help="BAZEL_REMOTE_CACHE, e.g. grpcs://cache.example:9092")
    p.add_argument("--executor-endpoint", help="REAPI executor endpoint (executor-backed)")
    p.add_argument("--instance-name", help="REAPI instance_name")
    p.add_argument("--credential-helper", help="HOST=/path/to/gf-reapi-credhelper")
    p.add_argument("--token-file", help="where the helper reads the short-lived token")
    p.add_argument("--attic-server", help="Attic server URL (public trust material)")
    p.add_argument("--attic-cache", help="Attic cache name")
    p.add_argument("--attic-public-key", help="Attic cache public key, NAME:BASE64")


def register(groups: Any) -> None:
    """`bureau profile ...`"""
    profile = groups.add_parser("profile", help="this machine's fleet profile (GloriousFlywheel)")
    cmds = profile.add_subparsers(dest="command", metavar="ACTION", required=True)
    d = cmds.add_parser("doctor", help="describe the profile in force")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    add_root(d)
    d.set_defaults(handler=doctor)
    v = cmds.add_parser("verify", help="fail on an unattached or contradictory profile")
    add_root(v)
    v.set_defaults(handler=verify)
    e = cmds.add_parser("enroll", help="write .env.flywheel.local from flags")
    add_materialize_flags(e, sources.LOCAL_FILE)
    e.set_defaults(handler=lambda a: materialize(a, Path(sources.LOCAL_FILE)))
    c = cmds.add_parser("consumer-env", help="print (or --write) the profile as an env file")
    add_materialize_flags(c, None)
    c.set_defaults(handler=lambda a: materialize(a, None))


def _standalone(prog: str, build: Any, handler: Any) -> None:
    parser = Parser(prog=prog, description=(handler.__doc__ or "").strip() or None)
    build(parser)
    run(prog, lambda: handler(parser.parse_args(sys.argv[1:])))


def doctor_main() -> None:
    def build(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        add_root(p)

    _standalone("flywheel-doctor", build, doctor)


def verify_main() -> None:
    _standalone("flywheel-verify", add_root, verify)


def enroll_main() -> None:
    _standalone(
        "flywheel-enroll",
        lambda p: add_materialize_flags(p, sources.LOCAL_FILE),
        lambda a: materialize(a, Path(sources.LOCAL_FILE)),
    )


def consumer_env_main() -> None:
    _standalone(
        "flywheel-consumer-env",
        lambda p: add_materialize_flags(p, None),
        lambda a: materialize(a, None),
    )
