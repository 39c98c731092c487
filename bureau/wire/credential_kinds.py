"""The credential kinds a service route may carry besides injected headers (WIRE.md
"Service routes"): Basic auth, AWS SigV4 and OAuth 2.0. Each names credentials in the
bundle, never holds one; ``names()`` lists them. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bureau.errors import InputError
from bureau.wire.route_checks import check_upstream_url, credential_name, known_fields

_AWS_WORD = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SCOPE = re.compile(r"[!#-\[\]-~]{1,128}")  # RFC 6749 3.3 scope-token
GRANTS = ("client_credentials", "refresh_token")
CLIENT_AUTH = ("basic", "post")


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str

    @classmethod
    def from_json(cls, obj: object, where: str) -> BasicAuth:
        data = known_fields(obj, frozenset({"username", "password"}), where)
        return cls(
            str(credential_name(data, "username", where)),
            str(credential_name(data, "password", where)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def names(self) -> set[str]:
        return {self.username, self.password}


@dataclass(frozen=True)
class AwsSigV4:
    access_key_id: str
    secret_access_key: str
    region: str
    service: str
    session_token: str | None = None

    _FIELDS = frozenset(
        {"access_key_id", "secret_access_key", "session_token", "region", "service"}
    )

    @classmethod
    def from_json(cls, obj: object, where: str) -> AwsSigV4:
        data = known_fields(obj, cls._FIELDS, where)
        words = {}
        for key in ("region", "service"):
            value = data.get(key)
            if not isinstance(value, str) or not _AWS_WORD.fullmatch(value):
                raise InputError(where, key, "expected a word such as eu-west-1 or s3")
            words[key] = value
        return cls(
            str(credential_name(data, "access_key_id", where)),
            str(credential_name(data, "secret_access_key", where)),
            words["region"],
            words["service"],
            credential_name(data, "session_token", where, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
            "service": self.service,
        }
        if self.session_token is not None:
            out["session_token"] = self.session_token
        return out

    def names(self) -> set[str]:
        found = {self.access_key_id, self.secret_access_key}
        return found | ({self.session_token} if self.session_token else set())


@dataclass(frozen=True)
class OAuth2:
    grant: str
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str | None = None
    scopes: tuple[str, ...] = ()
    client_auth: str = "basic"

    _FIELDS = frozenset(
        {
            "grant",
            "token_url",
            "client_id",
            "client_secret",
            "refresh_token",
            "scopes",
            "client_auth",
        }
    )

    @classmethod
    def from_json(cls, obj: object, where: str) -> OAuth2:
        data = known_fields(obj, cls._FIELDS, where)
        grant = data.get("grant")
        if grant not in GRANTS:
            raise InputError(where, "grant", f"expected one of {', '.join(GRANTS)}")
        url = data.get("token_url")
        if not isinstance(url, str):
            raise InputError(where, "token_url", "expected an http(s) URL")
        check_upstream_url(url, where, "token_url")
        refresh = credential_name(data, "refresh_token", where, optional=grant != "refresh_token")
        if grant == "client_credentials" and refresh is not None:
            raise InputError(where, "refresh_token", "only with grant refresh_token")
        scopes = data.get("scopes", [])
        if not isinstance(scopes, list) or not all(
            isinstance(s, str) and _SCOPE.fullmatch(s) for s in scopes
        ):
            raise InputError(where, "scopes", "expected a list of scope tokens")
        auth = data.get("client_auth", "basic")
        if auth not in CLIENT_AUTH:
            raise InputError(where, "client_auth", f"expected one of {', '.join(CLIENT_AUTH)}")
        return cls(
            str(grant),
            url,
            str(credential_name(data, "client_id", where)),
            str(credential_name(data, "client_secret", where)),
            refresh,
            tuple(scopes),
            str(auth),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "grant": self.grant,
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        if self.scopes:
            out["scopes"] = list(self.scopes)
        if self.client_auth != "basic":
            out["client_auth"] = self.client_auth
        return out

    def names(self) -> set[str]:
        found = {self.client_id, self.client_secret}
        return found | ({self.refresh_token} if self.refresh_token else set())
