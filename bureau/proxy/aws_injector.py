"""``aws_sigv4``: every request signed with AWS Signature Version 4 (sigv4.py), as the
workload's SDK would have signed it had it held the key.

Signed: the method, the upstream's base path and the target (after any path prefix and
injected query), Host, X-Amz-Date, X-Amz-Content-Sha256, X-Amz-Security-Token,
Content-Type and every X-Amz-* header the workload sent (X-Amz-Target, X-Amz-Meta-*, ...).
The workload's own Authorization, X-Amz-Date and X-Amz-Security-Token are dropped.

The target goes upstream as it was signed: its query in canonical form (each name and
value decoded, escaped the one way SigV4 escapes, sorted), and for S3 its path too (decoded
once, escaped once). The upstream reads the same values from it, and no server can
canonicalise the bytes differently from the signer (``prefix=a/b`` is sent as
``prefix=a%2Fb``, as an SDK would send it).

The payload hash, in order:
  * the workload's own X-Amz-Content-Sha256, when it sent one: the service checks the body
    against it, so a workload that hashes its body keeps streaming it (S3 uploads);
  * ``UNSIGNED-PAYLOAD`` for S3, which accepts it: the body streams, never held;
  * otherwise the body's SHA-256: the body is held, at most SIGNED_BODY_LIMIT bytes (a
    larger one is a 413), and sent with its length.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from bureau.proxy import sigv4
from bureau.proxy.injectors import revealed
from bureau.secret import Secret
from bureau.wire.credential_kinds import AwsSigV4

# The most a signed body may hold where the service wants it hashed: framing.MAX_BUFFERED,
# the request body bytes the proxy lets wait for an upstream connection (a held body must
# fit, or the proxy would stop reading before it is whole). AWS APIs that take larger
# bodies than this are S3's, which need no hash.
SIGNED_BODY_LIMIT = 1 << 20


class SigV4Injector:
    __slots__ = (
        "_base",
        "_day",
        "_derived",
        "_host",
        "_key",
        "_second",
        "_service",
        "_stamp",
        "_token",
        "body_limit",
    )
    sets = frozenset({b"authorization", b"x-amz-date", b"x-amz-security-token"})

    def __init__(
        self, aws: AwsSigV4, credentials: Mapping[str, Secret], host: str, base_path: str
    ) -> None:
        self._key = sigv4.SigningKey(
            revealed(credentials, aws.access_key_id),
            revealed(credentials, aws.secret_access_key).encode(),
            aws.region,
            aws.service,
        )
        token = revealed(credentials, aws.session_token) if aws.session_token else None
        self._token = token
        self._service = aws.service
        self._host = host
        self._base = base_path
        self.body_limit = 0 if aws.service == "s3" else SIGNED_BODY_LIMIT
        # The date is formatted once a second and the signing key derived once a day.
        self._second = -1
        self._stamp = ""
        self._day = ""
        self._derived = b""

    def __repr__(self) -> str:
        return f"SigV4Injector({self._key!r})"

    def prepare(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            day = self._stamp[:8]
            if day != self._day:
                self._day = day
                self._derived = self._key.derive(day)
        return self._stamp

    def inject(self, method: bytes, target: bytes, lines: list[bytes], body: bytes | None) -> bytes:
        signed = [("host", self._host)]
        payload_hash = None
        # The lines are the workload's (name, ": ", value, CRLF) and whole lines from the
        # kinds before this one: read as one block.
        for line in b"".join(lines).split(b"\r\n"):
            name, _, value = line.partition(b":")
            lower = name.strip().lower()
            if lower.startswith(b"x-amz-") or lower == b"content-type":
                text = value.strip().decode("latin-1")
                signed.append((lower.decode("latin-1"), text))
                if lower == b"x-amz-content-sha256":
                    payload_hash = text
        added = []
        if payload_hash is None:
            if self._service == "s3":
                payload_hash = sigv4.UNSIGNED_PAYLOAD
            else:
                payload_hash = hashlib.sha256(body or b"").hexdigest()
            added.append(("X-Amz-Content-Sha256", payload_hash))
        amz_date = self._date()
        added.append(("X-Amz-Date", amz_date))
        if self._token is not None:
            added.append(("X-Amz-Security-Token", self._token))
        signed += [(k.lower(), v) for k, v in added]
        path, _, query = target.decode("latin-1").partition("?")  # a URL is ASCII
        if self._service == "s3":
            path = sigv4.canonical_uri(path, "s3")
        query = sigv4.canonical_query(query)
        sent = path + "?" + query if query else path
        authorization = sigv4.authorization(
            self._key,
            method=method.decode("latin-1"),
            target=self._base + sent,
            headers=signed,
            payload_hash=payload_hash,
            amz_date=amz_date,
            derived=self._derived,
        )
        added.append(("Authorization", authorization))
        lines.append("".join(f"{k}: {v}\r\n" for k, v in added).encode("latin-1"))
        return sent.encode()
