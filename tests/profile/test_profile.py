"""The fleet profile: every state and every contradiction of the seed's table, the token
boundary, enroll -> verify -> doctor as a user runs them, and the Bazel credential helper
answering and failing closed (the token never on stderr, nothing on stdout on failure)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import BIN
from profile_values import CACHE, EXECUTOR, JWT

from bureau.profile import model, sources
from bureau.profile.token_file import jwt_expiry

HOST = "bazel-cache.example.internal"
ATTIC_KEY = "main:" + "C" * 43 + "="


def _profile(state: str, **extra: str) -> model.Profile:
    return {model.STATE: state, **extra}


# -- the model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile",
    [
        _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.MODE: model.SHARED_CACHE}),
        _profile(
            model.EXECUTOR_BACKED,
            **{model.CACHE: CACHE, model.EXECUTOR: EXECUTOR, model.MODE: model.EXECUTOR_BACKED},
        ),
        _profile(model.LOCAL, **{model.LOCAL_PROOF: "port-forward"}),
        _profile(
            model.LOCAL,
            **{model.LOCAL_PROOF: "port-forward", model.CACHE: "grpc://127.0.0.1:9092"},
        ),
    ],
)
def test_consistent_states_verify(profile: model.Profile) -> None:
    assert model.violations(profile) == []


@pytest.mark.parametrize(
    ("profile", "violation"),
    [
        ({}, "GF_FLYWHEEL_PROFILE_STATE: not set"),
        (_profile(model.UNATTACHED), "GF_FLYWHEEL_PROFILE_STATE: unattached"),
        (_profile("attached"), "GF_FLYWHEEL_PROFILE_STATE: 'attached' is not one of"),
        (
            _profile(model.UNATTACHED, **{model.CACHE: CACHE}),
            "BAZEL_REMOTE_CACHE: set, but the profile is unattached",
        ),
        (
            _profile(model.UNATTACHED, **{model.EXECUTOR: EXECUTOR}),
            "GF_BAZEL_REMOTE_EXECUTOR: set, but the profile is unattached",
        ),
        (_profile(model.SHARED_CACHE), "BAZEL_REMOTE_CACHE: required by shared-cache-backed"),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.EXECUTOR: EXECUTOR}),
            "GF_BAZEL_REMOTE_EXECUTOR: set, but the profile is shared-cache-backed",
        ),
        (
            _profile(model.EXECUTOR_BACKED, **{model.CACHE: CACHE}),
            "GF_BAZEL_REMOTE_EXECUTOR: required by executor-backed",
        ),
        (
            _profile(model.EXECUTOR_BACKED, **{model.EXECUTOR: EXECUTOR}),
            "BAZEL_REMOTE_CACHE: required by executor-backed",
        ),
        (_profile(model.LOCAL), "GF_BAZEL_LOCAL_PROOF: local-proof requires port-forward"),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.LOCAL_PROOF: "port-forward"}),
            "GF_BAZEL_LOCAL_PROOF: set, but GF_FLYWHEEL_PROFILE_STATE is not local-proof",
        ),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.MODE: model.EXECUTOR_BACKED}),
            "GF_BAZEL_SUBSTRATE_MODE: executor-backed disagrees with",
        ),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.MODE: "remote"}),
            "GF_BAZEL_SUBSTRATE_MODE: 'remote' is not one of",
        ),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: "ftp://cache:1"}),
            "BAZEL_REMOTE_CACHE: scheme must be one of grpc, grpcs, http, https",
        ),
        (_profile(model.SHARED_CACHE, **{model.CACHE: "grpcs://:9"}), "has no host"),
        (_profile(model.SHARED_CACHE, **{model.CACHE: "grpcs://c:99999"}), "invalid port"),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.HELPER: "other=/bin/h"}),
            "GF_BAZEL_CREDENTIAL_HELPER: other is not the host of any endpoint",
        ),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.HELPER: "h:relative"}),
            "GF_BAZEL_CREDENTIAL_HELPER: expected host=/absolute/path",
        ),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.TOKEN_FILE: "tok.jwt"}),
            "GF_BAZEL_CREDENTIAL_HELPER_TOKEN_FILE: expected an absolute path",
        ),
        (
            _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.ATTIC_SERVER: "https://a"}),
            "set all three or none",
        ),
    ],
)
def test_each_contradiction_is_named(profile: model.Profile, violation: str) -> None:
    assert any(v.startswith(violation) or violation in v for v in model.violations(profile)), (
        model.violations(profile)
    )


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {'a' * 30}",
        f"Authorization: Basic {'b' * 20}",
        JWT,
        f"grpcs://user:{'p' * 12}@cache:9092",
        "https://cache.example/?token=abc",
        "sk_live_" + "Z" * 40,
    ],
)
def test_token_shaped_values_are_refused(value: str) -> None:
    problems = model.contradictions(
        _profile(model.SHARED_CACHE, **{model.CACHE: CACHE, model.INSTANCE: value})
    )
    assert any("must never hold a token" in p for p in problems)
    assert all(value not in p for p in problems)  # the value is never quoted


@pytest.mark.parametrize(
    "value",
    [
        CACHE,
        ATTIC_KEY,
        f"{HOST}=/run/current-system/sw/bin/gf-reapi-credhelper",
        "/run/user/1000/gloriousflywheel/gf-reapi-token.jwt",
    ],
)
def test_public_values_are_not_tokens(value: str) -> None:
    assert model.token_problem(value) is None


def test_sources_take_the_first_that_sets_the_state(tmp_path: Path) -> None:
    home, cwd, root = tmp_path / "home", tmp_path / "work", tmp_path / "root"
    (home / ".config/gloriousflywheel").mkdir(parents=True)
    cwd.mkdir()
    (root / "etc/profile.d").mkdir(parents=True)
    (root / "etc/profile.d/gloriousflywheel.sh").write_text(
        'export GF_FLYWHEEL_PROFILE_STATE="shared-cache-backed"\n'
        f"export BAZEL_REMOTE_CACHE={CACHE}\n"
    )
    found = sources.load({"HOME": str(home)}, cwd, root)
    assert found is not None
    assert found.source == "/etc/profile.d/gloriousflywheel.sh"
    assert found.profile[model.CACHE] == CACHE
    (home / ".config/gloriousflywheel/profile.env").write_text(
        "GF_FLYWHEEL_PROFILE_STATE=unattached\n$(touch /tmp/never)\n"
    )
    found = sources.load({"HOME": str(home)}, cwd, root)
    assert found is not None
    assert found.profile == {model.STATE: model.UNATTACHED}
    env = {"HOME": str(home), model.STATE: model.LOCAL, model.LOCAL_PROOF: "port-forward"}
    found = sources.load(env, cwd, root)
    assert found is not None
    assert found.source == "environment"
    assert sources.load({}, cwd, tmp_path / "empty") is None


def test_jwt_expiry() -> None:
    assert jwt_expiry(JWT) == 4102444800
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.b.c") is None


# -- the commands, as a user runs them -----------------------------------------------


def _tool(name: str, *args: str | Path, cwd: Path, home: Path, stdin: str = "", **env: str):  # type: ignore[no-untyped-def]
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "NIX_CONF_DIR": str(home / "nix"),
        **env,
    }
    return subprocess.run(
        [BIN / name, *map(str, args)],
        cwd=cwd,
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    return work


def test_enroll_then_verify_then_doctor(repo: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    helper = BIN / "gf-reapi-credhelper"
    enrolled = _tool(
        "flywheel-enroll",
        "shared-cache-backed",
        "--cache-endpoint",
        CACHE,
        "--instance-name",
        "default",
        "--credential-helper",
        f"{HOST}={helper}",
        "--token-file",
        tmp_path / "token.jwt",
        "--attic-server",
        "https://nix-cache.example.internal",
        "--attic-cache",
        "main",
        "--attic-public-key",
        ATTIC_KEY,
        cwd=repo,
        home=home,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    written = repo / ".env.flywheel.local"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert (repo / ".gitignore").read_text() == "/.env.flywheel.local\n"
    assert (
        subprocess.run(
            ["git", "-C", str(repo), "check-ignore", "-q", str(written)], check=False
        ).returncode
        == 0
    )

    verified = _tool("flywheel-verify", cwd=repo, home=home)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().endswith("from .env.flywheel.local: consistent")

    described = json.loads(_tool("flywheel-doctor", "--json", cwd=repo, home=home).stdout)
    assert described["state"] == "shared-cache-backed"
    assert described["remote_cache"] == {"url": CACHE, "shape": "ok"}
    assert described["instance_name"] == "default"
    assert described["attic"]["trusted"] is False
    assert described["credential_helper"]["executable"] is True
    assert described["token_file"]["usable"] is False
    assert described["violations"] == []

    (home / "nix").mkdir()
    (home / "nix/nix.conf").write_text(
        f"extra-substituters = https://nix-cache.example.internal/main\n"
        f"extra-trusted-public-keys = {ATTIC_KEY}\n"
    )
    token = tmp_path / "token.jwt"
    token.write_text(JWT + "\n")
    token.chmod(0o600)
    described = json.loads(_tool("flywheel-doctor", "--json", cwd=repo, home=home).stdout)
    assert described["attic"]["trusted"] is True
    assert described["token_file"]["usable"] is True
    assert described["token_file"]["expires_at"] == 4102444800 - 60
    text = _tool("flywheel-doctor", cwd=repo, home=home).stdout
    assert "state: shared-cache-backed" in text
    assert JWT not in text

    # Same through `bureau profile`.
    again = _tool("bureau", "profile", "verify", cwd=repo, home=home)
    assert again.returncode == 0


def test_verify_fails_one_line_per_violation(repo: Path, tmp_path: Path) -> None:
    env = {model.STATE: model.EXECUTOR_BACKED, model.MODE: model.SHARED_CACHE}
    result = _tool("flywheel-verify", cwd=repo, home=tmp_path, **env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "flywheel-verify: BAZEL_REMOTE_CACHE: required by executor-backed",
        "flywheel-verify: GF_BAZEL_REMOTE_EXECUTOR: required by executor-backed",
        "flywheel-verify: GF_BAZEL_SUBSTRATE_MODE: shared-cache-backed disagrees with "
        "GF_FLYWHEEL_PROFILE_STATE=executor-backed",
    ]
    unattached = _tool("flywheel-verify", cwd=repo, home=tmp_path)
    assert unattached.returncode == 1
    assert unattached.stderr.startswith("flywheel-verify: GF_FLYWHEEL_PROFILE_STATE: not set")


def test_enroll_refuses_a_token_and_writes_nothing(repo: Path, tmp_path: Path) -> None:
    result = _tool(
        "flywheel-enroll",
        "shared-cache-backed",
        "--cache-endpoint",
        CACHE,
        "--instance-name",
        JWT,
        cwd=repo,
        home=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "must never hold a token" in result.stderr
    assert JWT not in result.stderr
    assert not (repo / ".env.flywheel.local").exists()


def test_consumer_env_prints_the_same_materialization(repo: Path, tmp_path: Path) -> None:
    printed = _tool(
        "flywheel-consumer-env",
        "executor-backed",
        "--cache-endpoint",
        CACHE,
        "--executor-endpoint",
        EXECUTOR,
        cwd=repo,
        home=tmp_path,
    )
    assert printed.returncode == 0, printed.stderr
    assert sources.parse_env_file(printed.stdout) == {
        model.STATE: model.EXECUTOR_BACKED,
        model.MODE: model.EXECUTOR_BACKED,
        model.CACHE: CACHE,
        model.EXECUTOR: EXECUTOR,
    }
    assert not (repo / ".env.flywheel.local").exists()


# -- gf-reapi-credhelper --------------------------------------------------------------


@pytest.fixture
def wired(repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    token = tmp_path / "token.jwt"
    enrolled = _tool(
        "flywheel-enroll",
        "shared-cache-backed",
        "--cache-endpoint",
        CACHE,
        "--credential-helper",
        f"{HOST}=/usr/bin/gf-reapi-credhelper",
        "--token-file",
        token,
        cwd=repo,
        home=tmp_path,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    return repo, token


def _helper(repo: Path, home: Path, request: str):  # type: ignore[no-untyped-def]
    return _tool("gf-reapi-credhelper", "get", cwd=repo, home=home, stdin=request)


def test_credential_helper_answers_with_the_header_and_expiry(
    wired: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, token = wired
    token.write_text(JWT + "\n")
    token.chmod(0o600)
    result = _helper(repo, tmp_path, json.dumps({"uri": f"https://{HOST}:9092/build.bazel"}))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "headers": {"Authorization": [f"Bearer {JWT}"]},
        "expires": "2099-12-31T23:59:00Z",
    }
    assert result.stderr == ""
    token.write_text("opaque-short-lived-token\n")
    before = int(time.time())
    answer = json.loads(_helper(repo, tmp_path, json.dumps({"uri": f"grpcs://{HOST}"})).stdout)
    after = int(time.time())
    assert answer["headers"] == {"Authorization": ["Bearer opaque-short-lived-token"]}
    # A token whose expiry cannot be read is good for 300 s (README), from when it was read:
    # no less, and no more.
    expires = datetime.strptime(answer["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + 300 <= expires.timestamp() <= after + 300, (before, answer, after)


def _expired_jwt() -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) + 30}).encode())
    return "eyJhbGciOiJIUzI1NiJ9." + claims.decode().rstrip("=") + ".c2ln"


@pytest.mark.parametrize(
    ("arrange", "request_body", "message"),
    [
        ("valid", "", "stdin: empty"),
        ("valid", "not json", "stdin: not JSON"),
        ("valid", json.dumps({"url": f"https://{HOST}"}), 'expected an object with a string "uri"'),
        (
            "valid",
            json.dumps({"uri": "https://elsewhere.example"}),
            "elsewhere.example: not mapped",
        ),
        ("missing", None, "no such token file"),
        ("loose", None, "mode 0644 lets others read it"),
        ("expired", None, "the token expired"),
        ("symlink", None, "token.jwt"),
        ("directory", None, "not a regular file"),
    ],
)
def test_credential_helper_fails_closed(
    wired: tuple[Path, Path], tmp_path: Path, arrange: str, request_body: str | None, message: str
) -> None:
    repo, token = wired
    secret = _expired_jwt() if arrange == "expired" else JWT
    if arrange == "directory":
        token.mkdir()
    elif arrange == "symlink":
        real = tmp_path / "real.jwt"
        real.write_text(secret)
        real.chmod(0o600)
        token.symlink_to(real)
    elif arrange != "missing":
        token.write_text(secret)
        token.chmod(0o644 if arrange == "loose" else 0o600)
    body = request_body if request_body is not None else json.dumps({"uri": f"https://{HOST}/x"})
    result = _helper(repo, tmp_path, body)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("gf-reapi-credhelper: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert secret not in result.stderr


def test_credential_helper_without_a_profile(tmp_path: Path) -> None:
    result = _helper(tmp_path, tmp_path, json.dumps({"uri": f"https://{HOST}"}))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "no fleet profile" in result.stderr
