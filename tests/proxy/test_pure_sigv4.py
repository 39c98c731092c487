"""AWS SigV4 as plain functions: cases from AWS's published SigV4 test suite and S3's
documented example, each with its published signature, then many shapes of request
compared with botocore's signer (an independent implementation, the one the AWS SDK for
Python sends with)."""

from __future__ import annotations

import hashlib

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bureau.proxy.sigv4 import (
    EMPTY_SHA256,
    SigningKey,
    authorization,
    canonical_query,
    canonical_uri,
)

SUITE_SECRET = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


Signed = tuple[str, str, list[tuple[str, str]], str]  # method, target, headers, amz_date


@pytest.mark.parametrize(
    ("key", "signed", "expected"),
    [
        # The 2015 test suite's get-vanilla.
        (
            SigningKey("AKIDEXAMPLE", SUITE_SECRET, "us-east-1", "service"),
            (
                "GET",
                "/",
                [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
                "20150830T123600Z",
            ),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        # The 2011 suite's get-space: a path segment of one encoded space.
        (
            SigningKey("AKIDEXAMPLE", SUITE_SECRET, "us-east-1", "host"),
            (
                "GET",
                "/%20/foo",
                [("Date", "Mon, 09 Sep 2011 23:36:00 GMT"), ("Host", "host.foo.com")],
                "20110909T233600Z",
            ),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, "
            "SignedHeaders=date;host, "
            "Signature=2be9e587d1ee1f0fd02128724b86b4358ba3630d39f493b6e06610a19a50779e",
        ),
        # The 2011 suite's get-utf8: U+1234 in the path.
        (
            SigningKey("AKIDEXAMPLE", SUITE_SECRET, "us-east-1", "host"),
            (
                "GET",
                "/%E1%88%B4",
                [("Date", "Mon, 09 Sep 2011 23:36:00 GMT"), ("Host", "host.foo.com")],
                "20110909T233600Z",
            ),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, "
            "SignedHeaders=date;host, "
            "Signature=57b1eb3df3b16a8479c0097b66c0b261cfd65b829419a3f2c3d05319722490b8",
        ),
        # S3's documented GET Object example (a Range header, the empty payload's hash).
        (
            SigningKey(
                "AKIAIOSFODNN7EXAMPLE",
                b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "us-east-1",
                "s3",
            ),
            (
                "GET",
                "/test.txt",
                [
                    ("Host", "examplebucket.s3.amazonaws.com"),
                    ("Range", "bytes=0-9"),
                    ("x-amz-content-sha256", EMPTY_SHA256),
                    ("x-amz-date", "20130524T000000Z"),
                ],
                "20130524T000000Z",
            ),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
            "aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        ),
    ],
)
def test_published_cases(key: SigningKey, signed: Signed, expected: str) -> None:
    method, target, headers, amz_date = signed
    got = authorization(
        key,
        method=method,
        target=target,
        headers=headers,
        payload_hash=EMPTY_SHA256,
        amz_date=amz_date,
    )
    assert got == expected


def _botocore(
    service: str, url: str, request: tuple[str, dict[str, str], bytes], token: str | None
) -> tuple[dict[str, str], str]:
    """botocore's signature for the request, and the headers it signed with their values."""
    method, headers, body = request
    credentials = Credentials("AKIDEXAMPLE", SUITE_SECRET.decode(), token)
    sent = AWSRequest(method=method, url=url, headers=headers, data=body)
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, "eu-west-1")
    signer.add_auth(sent)
    return dict(sent.headers.items()), sent.headers["Authorization"]


@pytest.mark.parametrize(
    ("service", "sent_request", "token"),
    [
        ("sqs", ("GET", "/", {}, b""), None),
        ("sqs", ("POST", "/123456789012/q", {"Content-Type": "text/plain"}, b"Action=x"), None),
        ("sqs", ("GET", "/?b=2&a=1&a=0&c=", {}, b""), None),
        ("sqs", ("GET", "/?Param%20Name=va%2Flue&x=~", {}, b""), "session-token"),
        ("sqs", ("GET", "/a/./b/../c//d", {}, b""), None),
        ("sqs", ("GET", "/%E1%88%B4/%20x", {}, b""), None),
        ("execute-api", ("PUT", "/v1/items/7", {"X-Amz-Meta-A": "  two   spaces "}, b"{}"), None),
        ("s3", ("PUT", "/bucket/my%20key.txt", {"Content-Type": "text/plain"}, b"data"), None),
        ("s3", ("GET", "/bucket/a/./b//c", {}, b""), "session-token"),
        ("s3", ("GET", "/bucket?list-type=2&prefix=a%2Fb&max-keys=5", {}, b""), None),
    ],
)
def test_same_signature_as_botocore(
    service: str, sent_request: tuple[str, str, dict[str, str], bytes], token: str | None
) -> None:
    method, target, extra, body = sent_request
    host = "service.eu-west-1.amazonaws.com"
    sent, expected = _botocore(service, f"https://{host}{target}", (method, extra, body), token)
    # Sign the same header set botocore signed (every header it sent but its own
    # Authorization), with the payload hash it used.
    signed_names = expected.split("SignedHeaders=")[1].split(",")[0].split(";")
    by_name = {k.lower(): v for k, v in sent.items()}
    headers = [(name, by_name[name] if name != "host" else host) for name in signed_names]
    payload_hash = by_name.get("x-amz-content-sha256") or _sha256(body)
    key = SigningKey("AKIDEXAMPLE", SUITE_SECRET, "eu-west-1", service)
    got = authorization(
        key,
        method=method,
        target=target,
        headers=headers,
        payload_hash=payload_hash,
        amz_date=by_name["x-amz-date"],
    )
    assert got == expected


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_the_query_is_canonical_as_the_service_rebuilds_it() -> None:
    """The service decodes what it received and encodes it again, so an unreserved
    character sent escaped is signed unescaped, and the order sent does not matter
    (botocore signs a URL's query as given, so it is no oracle for this)."""
    assert canonical_query("x=%7E&b=a%2Fb&a=2&a=1&flag") == "a=1&a=2&b=a%2Fb&flag=&x=~"
    assert canonical_query("q=a+b&p=%20") == "p=%20&q=a%20b"


def test_canonical_uri_encodes_twice_except_for_s3() -> None:
    assert canonical_uri("/a%20b/c", "sqs") == "/a%2520b/c"
    assert canonical_uri("/a%20b/c", "s3") == "/a%20b/c"
    assert canonical_uri("/a/../b/./c/", "sqs") == "/b/c/"
    assert canonical_uri("/a/../b", "s3") == "/a/../b"
    assert canonical_uri("", "sqs") == "/"


def test_the_secret_never_shows() -> None:
    key = SigningKey("AKIDEXAMPLE", b"canary-aws-secret-9f1e", "us-east-1", "s3")
    assert "canary-aws-secret" not in repr(key)
    assert "canary-aws-secret" not in str(key)
