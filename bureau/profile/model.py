"""The fleet profile (the seed "Fleet Profile Distribution"): the non-secret settings that
say how a developer machine or agent is attached to the shared build substrate. Pure: a
profile is a mapping of the variables below; ``violations`` says what is contradictory,
``token_problem`` what looks like a credential.

Variables (the seed's names where it has them, GF_-prefixed otherwise):

    GF_FLYWHEEL_PROFILE_STATE              unattached | shared-cache-backed |
                                           executor-backed | local-proof
    GF_BAZEL_SUBSTRATE_MODE                shared-cache-backed | executor-backed
    BAZEL_REMOTE_CACHE                     the remote cache endpoint
    GF_BAZEL_REMOTE_EXECUTOR               the REAPI executor endpoint
    GF_BAZEL_LOCAL_PROOF                   port-forward (local-proof only)
    GF_BAZEL_REMOTE_INSTANCE_NAME          the REAPI instance_name
    GF_BAZEL_CREDENTIAL_HELPER             host=/path/to/helper
    GF_BAZEL_CREDENTIAL_HELPER_TOKEN_FILE  where the helper reads the short-lived token
    GF_ATTIC_SERVER, GF_ATTIC_CACHE, GF_ATTIC_PUBLIC_KEY   public Attic trust material

The profile never holds a token: a value that is or contains a bearer token, a JWT, an
Authorization header or URL credentials is refused by every writer and flagged by doctor
and verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

STATE = "GF_FLYWHEEL_PROFILE_STATE"
MODE = "GF_BAZEL_SUBSTRATE_MODE"
CACHE = "BAZEL_REMOTE_CACHE"
EXECUTOR = "GF_BAZEL_REMOTE_EXECUTOR"
LOCAL_PROOF = "GF_BAZEL_LOCAL_PROOF"
INSTANCE = "GF_BAZEL_REMOTE_INSTANCE_NAME"
HELPER = "GF_BAZEL_CREDENTIAL_HELPER"
TOKEN_FILE = "GF_BAZEL_CREDENTIAL_HELPER_TOKEN_FILE"  # noqa: S105 -- a variable's name
ATTIC_SERVER = "GF_ATTIC_SERVER"
ATTIC_CACHE = "GF_ATTIC_CACHE"
ATTIC_KEY = "GF_ATTIC_PUBLIC_KEY"

VARIABLES = (
    STATE,
    MODE,
    CACHE,
    EXECUTOR,
    LOCAL_PROOF,
    INSTANCE,
    HELPER,
    TOKEN_FILE,
    ATTIC_SERVER,
    ATTIC_CACHE,
    ATTIC_KEY,
)

UNATTACHED = "unattached"
SHARED_CACHE = "shared-cache-backed"
EXECUTOR_BACKED = "executor-backed"
LOCAL = "local-proof"
STATES = (UNATTACHED, SHARED_CACHE, EXECUTOR_BACKED, LOCAL)
MODES = (SHARED_CACHE, EXECUTOR_BACKED)
ENDPOINT_SCHEMES = ("grpc", "grpcs", "http", "https")

Profile = dict[str, str]

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"\b(bearer|basic)\s+\S{8,}", re.IGNORECASE)
_HEADER = re.compile(r"\b(proxy-)?authorization\s*:", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"(token|secret|password|key|auth|signature|sig)", re.IGNORECASE)
# A long run of token alphabet that is not a path, URL or Nix public key: an API key.
_OPAQUE = re.compile(r"[A-Za-z0-9_\-+/=]{40,}")
_NIX_PUBLIC_KEY = re.compile(r"[A-Za-z0-9._+-]+:[A-Za-z0-9+/]{43}=")
_INSTANCE = re.compile(r"[A-Za-z0-9._/-]{1,128}")
# What a value may hold, so that env files and profile.d scripts need no quoting.
_SAFE = re.compile(r"[A-Za-z0-9._:/=@+,%~-]*")


_TOKEN_SHAPES = (
    (_HEADER, "holds an Authorization header"),
    (_BEARER, "holds a bearer or basic credential"),
    (_JWT, "holds a JWT"),
)


def token_problem(value: str) -> str | None:
    """Why ``value`` looks like a credential, or None. Never quotes the value."""
    for pattern, why in _TOKEN_SHAPES:
        if pattern.search(value):
            return why
    if "://" in value:
        parts = urlsplit(value)
        if parts.username or parts.password:
            return "holds credentials in its URL"
        if any(_SECRET_QUERY.search(k) for k, _ in parse_qsl(parts.query)):
            return "holds a credential in its query"
        return None
    # Paths, host=/path mappings and Nix public keys are long but public.
    public = (
        _NIX_PUBLIC_KEY.fullmatch(value)
        or value.startswith("/")
        or value.partition("=")[2].startswith("/")
    )
    if not public and _OPAQUE.search(value):
        return "looks like a long-lived credential"
    return None


def _shown(value: str) -> str:
    """A value quoted in a message, unless it may be a credential."""
    return "<redacted>" if token_problem(value) else repr(value)


def endpoint_problem(value: str) -> str | None:
    """grpc(s)/http(s)://host[:port][/path], nothing else."""
    parts = urlsplit(value)
    if parts.scheme not in ENDPOINT_SCHEMES:
        return f"scheme must be one of {', '.join(ENDPOINT_SCHEMES)}"
    if not parts.hostname:
        return "has no host"
    try:
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if port == 0:
        return "has an invalid port"
    return None


def endpoint_host(value: str) -> str | None:
    return urlsplit(value).hostname


@dataclass(frozen=True)
class Helper:
    host: str
    path: str


def parse_helper(value: str) -> Helper | None:
    host, sep, path = value.partition("=")
    if not sep or not host or "/" in host or not path.startswith("/"):
        return None
    return Helper(host.strip(), path.strip())


def violations(profile: Profile) -> list[str]:
    """What flywheel-verify fails on: no profile, an unattached one, or contradictions."""
    state = profile.get(STATE, "")
    if not state:
        return [f"{STATE}: not set; this shell has no fleet profile"]
    found = contradictions(profile)
    if state == UNATTACHED:
        found.insert(0, f"{STATE}: unattached; no cache or executor is in use")
    return found


def contradictions(profile: Profile) -> list[str]:
    """Every contradiction in the profile, one line each, naming the variable; what every
    writer refuses. Pure."""
    return [*_value_problems(profile), *_state_problems(profile), *_wiring_violations(profile)]


def _value_problems(profile: Profile) -> list[str]:
    found = []
    for name, value in profile.items():
        if name not in VARIABLES or not value:
            continue
        if why := token_problem(value):
            found.append(f"{name}: {why}; the profile must never hold a token")
        elif not _SAFE.fullmatch(value):
            found.append(f"{name}: must not hold spaces, quotes or shell characters")
    for name in (CACHE, EXECUTOR):
        if profile.get(name) and (why := endpoint_problem(profile[name])):
            found.append(f"{name}: {why}")
    instance = profile.get(INSTANCE, "")
    if instance and not _INSTANCE.fullmatch(instance):
        found.append(f"{INSTANCE}: {_shown(instance)} is not a REAPI instance name")
    return found


# state -> (endpoints it requires, endpoints it forbids, the substrate mode it implies)
_STATE_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    UNATTACHED: ((), (CACHE, EXECUTOR, MODE), None),
    SHARED_CACHE: ((CACHE,), (EXECUTOR,), SHARED_CACHE),
    EXECUTOR_BACKED: ((CACHE, EXECUTOR), (), EXECUTOR_BACKED),
    LOCAL: ((), (), None),
}


def _state_problems(profile: Profile) -> list[str]:
    found = []
    state, mode = profile.get(STATE, ""), profile.get(MODE, "")
    proof = profile.get(LOCAL_PROOF, "")
    if state and state not in STATES:
        found.append(f"{STATE}: {_shown(state)} is not one of {', '.join(STATES)}")
    if mode and mode not in MODES:
        found.append(f"{MODE}: {_shown(mode)} is not one of {', '.join(MODES)}")
    required, forbidden, implied = _STATE_RULES.get(state, ((), (), None))
    found += [f"{name}: required by {state}" for name in required if not profile.get(name)]
    found += [f"{name}: set, but the profile is {state}" for name in forbidden if profile.get(name)]
    if implied and mode and mode != implied:
        found.append(f"{MODE}: {mode} disagrees with {STATE}={state}")
    if state == LOCAL and proof != "port-forward":
        found.append(f"{LOCAL_PROOF}: {LOCAL} requires port-forward")
    if state == LOCAL and mode == EXECUTOR_BACKED and not profile.get(EXECUTOR):
        found.append(f"{EXECUTOR}: required by {MODE}={EXECUTOR_BACKED}")
    if proof and state != LOCAL:
        found.append(f"{LOCAL_PROOF}: set, but {STATE} is not {LOCAL}")
    if proof and proof != "port-forward":
        found.append(f"{LOCAL_PROOF}: {_shown(proof)} is not port-forward")
    return found


def _wiring_violations(profile: Profile) -> list[str]:
    found = []
    cache, executor = profile.get(CACHE, ""), profile.get(EXECUTOR, "")
    helper_value = profile.get(HELPER, "")
    if helper_value:
        helper = parse_helper(helper_value)
        hosts = {h for h in (endpoint_host(cache), endpoint_host(executor)) if h}
        if helper is None:
            found.append(f"{HELPER}: expected host=/absolute/path/to/helper")
        elif hosts and helper.host not in hosts:
            found.append(f"{HELPER}: {helper.host} is not the host of any endpoint")
    token_file = profile.get(TOKEN_FILE, "")
    if token_file and not token_file.startswith("/"):
        found.append(f"{TOKEN_FILE}: expected an absolute path")
    attic = [profile.get(n, "") for n in (ATTIC_SERVER, ATTIC_CACHE, ATTIC_KEY)]
    if any(attic) and not all(attic):
        found.append(f"{ATTIC_SERVER}, {ATTIC_CACHE}, {ATTIC_KEY}: set all three or none")
    server = profile.get(ATTIC_SERVER, "")
    if server and urlsplit(server).scheme not in ("http", "https"):
        found.append(f"{ATTIC_SERVER}: expected an http(s) URL")
    key = profile.get(ATTIC_KEY, "")
    if key and not _NIX_PUBLIC_KEY.fullmatch(key):
        found.append(f"{ATTIC_KEY}: expected NAME:BASE64 (a Nix public key)")
    return found


def from_event(content: object, where: str = "m.bureau.fleet_profile") -> Profile:
    """``m.bureau.fleet_profile`` content (fleet room, state key ""): the variables as a
    flat object of strings. Anything else, or anything contradictory, is refused: the
    same model guards the operator who publishes and the machine that materializes."""
    if not isinstance(content, dict):
        raise ValueError(f"{where}: expected an object")
    profile: Profile = {}
    for name, value in content.items():
        if name not in VARIABLES:
            raise ValueError(f"{where}: {name}: not a profile variable")
        if not isinstance(value, str):
            raise ValueError(f"{where}: {name}: expected a string")
        if value:
            profile[name] = value
    if not profile.get(STATE):
        raise ValueError(f"{where}: {STATE}: missing")
    problems = contradictions(profile)
    if problems:
        raise ValueError(f"{where}: {problems[0]}")
    return profile


def to_event(profile: Profile) -> dict[str, str]:
    return {n: profile[n] for n in VARIABLES if profile.get(n)}


def summary(profile: Profile) -> str:
    state = profile.get(STATE, "")
    ends = ", ".join(f"{n}={profile[n]}" for n in (CACHE, EXECUTOR) if profile.get(n))
    return f"{state}" + (f" ({ends})" if ends else "")


def materialize(profile: Profile, header: str = "") -> str:
    """The profile as a sourceable env file (``NAME=value``; values never need quoting
    since no valid one holds a space, quote or shell metacharacter)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{n}={profile[n]}" for n in VARIABLES if profile.get(n)]
    return "\n".join(lines) + "\n"
