"""The aws_sigv4 kind through a real bureau-proxy: a workload that sends plain, unsigned
HTTP reaches moto in server mode, which checks every signature (tests/support/
aws_server.py), for S3 (UNSIGNED-PAYLOAD, bodies streamed) and SQS (bodies hashed, held up
to the limit); and a session token, which moto cannot check, is shown signed as botocore
signs it, on an upstream that records what it receives."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aws_server import REGION, AwsServer, aws_server
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from processes import RunningProxy, proxy, unix_request
from recording_upstream import RecordingUpstream

from bureau.proxy import framing
from bureau.proxy.aws_injector import SIGNED_BODY_LIMIT

SESSION_KEY = "AKIASESSIONCANARY77"
SESSION_SECRET = "session-secret-canary/8c2e+Q"
SESSION_TOKEN = "session-token-canary-FwoGZXIvYXdzE"
JSON_10 = "application/x-amz-json-1.0"


def _route(url: str, service: str, **keys: str) -> dict[str, Any]:
    names = {"access_key_id": "AK", "secret_access_key": "SK", **keys}
    return {
        "upstream_url": url,
        "aws_sigv4": {**names, "region": REGION, "service": service},
    }


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsServer]:
    with aws_server() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as recording:
        yield recording


@pytest.fixture(scope="module")
def running(
    aws: AwsServer, upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    session = {"access_key_id": "SAK", "secret_access_key": "SSK", "session_token": "STOKEN"}
    payload = {
        "principal": "@t/fleet/prod/agent/alpha:bureau.local",
        "services": {
            "s3": _route(aws.endpoint, "s3"),
            "sqs": _route(aws.endpoint, "sqs"),
            "forged": _route(aws.endpoint, "s3", secret_access_key="WRONG"),
            "session": _route(upstream.url + "/stage", "execute-api", **session),
        },
        "credentials": {
            "AK": aws.access_key_id,
            "SK": aws.secret_access_key,
            "WRONG": "not-the-secret-canary-3e9d",
            "SAK": SESSION_KEY,
            "SSK": SESSION_SECRET,
            "STOKEN": SESSION_TOKEN,
        },
    }
    sock = tmp_path_factory.mktemp("aws") / "p.sock"
    with proxy(payload, sock) as started:
        yield started


def _call(
    running: RunningProxy, method: str, target: str, body: bytes | None = None, **headers: str
) -> Any:
    return unix_request(running.socket, method, target, body=body, headers=headers)


def _sqs(running: RunningProxy, action: str, **fields: Any) -> Any:
    reply = _call(
        running,
        "POST",
        "/http/sqs/",
        json.dumps(fields).encode(),
        **{"Content-Type": JSON_10, "X-Amz-Target": f"AmazonSQS.{action}"},
    )
    assert reply.status == 200, reply.body
    return reply.json()


def test_s3_objects_go_up_and_come_back_through_unsigned_requests(
    running: RunningProxy, aws: AwsServer
) -> None:
    assert _call(running, "PUT", "/http/s3/through-proxy").status == 200
    body = b"hello from the workload\n" * 100
    put = _call(
        running,
        "PUT",
        "/http/s3/through-proxy/dir/report.txt",
        body,
        **{"Content-Type": "text/plain", "X-Amz-Meta-Author": "agent alpha"},
    )
    assert put.status == 200, put.body
    got = _call(running, "GET", "/http/s3/through-proxy/dir/report.txt")
    assert (got.status, got.body) == (200, body)
    assert got.headers["x-amz-meta-author"] == "agent alpha"
    head = _call(running, "HEAD", "/http/s3/through-proxy/dir/report.txt")
    assert (head.status, head.headers["content-length"]) == (200, str(len(body)))
    listed = _call(running, "GET", "/http/s3/through-proxy?list-type=2&prefix=dir/")
    assert listed.status == 200, listed.body
    assert b"<Key>dir/report.txt</Key>" in listed.body
    # The server's own view, through a client signing for itself.
    s3: Any = aws.client("s3")
    stored = s3.get_object(Bucket="through-proxy", Key="dir/report.txt")
    assert stored["Body"].read() == body
    assert stored["Metadata"] == {"author": "agent alpha"}
    assert _call(running, "DELETE", "/http/s3/through-proxy/dir/report.txt").status == 204


@pytest.mark.parametrize(
    ("sent", "key"),
    [
        ("a%20b.txt", "a b.txt"),
        ("a+b", "a+b"),
        ("a%2Bb", "a+b"),
        ("(x)!'*", "(x)!'*"),
        ("caf%C3%A9", "café"),
        ("deep/er/still", "deep/er/still"),
    ],
)
def test_s3_keys_that_need_escaping(
    running: RunningProxy, aws: AwsServer, sent: str, key: str
) -> None:
    _call(running, "PUT", "/http/s3/escaping")
    reply = _call(running, "PUT", f"/http/s3/escaping/{sent}", key.encode())
    assert reply.status == 200, reply.body
    s3: Any = aws.client("s3")
    assert s3.get_object(Bucket="escaping", Key=key)["Body"].read() == key.encode()


def test_s3_keeps_the_workloads_own_payload_hash(running: RunningProxy, aws: AwsServer) -> None:
    """What the workload hashed is what is signed: the service checks the body against
    it (moto checks the signature over it)."""
    _call(running, "PUT", "/http/s3/hashed")
    body = b"hashed by the workload"
    digest = hashlib.sha256(body).hexdigest()
    reply = _call(running, "PUT", "/http/s3/hashed/k", body, **{"X-Amz-Content-Sha256": digest})
    assert reply.status == 200, reply.body
    s3: Any = aws.client("s3")
    assert s3.get_object(Bucket="hashed", Key="k")["Body"].read() == body


def test_the_workloads_own_signature_headers_are_replaced(running: RunningProxy) -> None:
    workloads = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAWORKLOAD/x, Signature=00",
        "X-Amz-Date": "19700101T000000Z",
        "X-Amz-Security-Token": "from-the-workload",
    }
    reply = unix_request(running.socket, "PUT", "/http/s3/replaced", headers=workloads)
    assert reply.status == 200, reply.body


def test_sqs_messages_are_sent_with_their_body_hashed(
    running: RunningProxy, aws: AwsServer
) -> None:
    url = _sqs(running, "CreateQueue", QueueName="through-proxy")["QueueUrl"]
    text = "a message from the workload " + "é" * 50
    sent = _sqs(running, "SendMessage", QueueUrl=url, MessageBody=text)
    assert sent["MD5OfMessageBody"] == hashlib.md5(text.encode()).hexdigest()  # noqa: S324
    sqs: Any = aws.client("sqs")
    (received,) = sqs.receive_message(QueueUrl=url)["Messages"]
    assert received["Body"] == text


def test_a_body_past_the_signing_limit_never_goes_up(running: RunningProxy, aws: AwsServer) -> None:
    assert SIGNED_BODY_LIMIT <= framing.MAX_BUFFERED  # held whole, or never complete
    url = _sqs(running, "CreateQueue", QueueName="too-large")["QueueUrl"]
    padding = "x" * SIGNED_BODY_LIMIT
    body = json.dumps({"QueueUrl": url, "MessageBody": padding}).encode()
    headers = {"Content-Type": JSON_10, "X-Amz-Target": "AmazonSQS.SendMessage"}
    reply = _call(running, "POST", "/http/sqs/", body, **headers)
    assert reply.status == 413
    assert reply.json()["error"] == (
        f"request body larger than {SIGNED_BODY_LIMIT} bytes, the most 'sqs' signs"
    )
    sqs: Any = aws.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"


def test_a_wrong_secret_is_refused_by_the_service(running: RunningProxy) -> None:
    """moto checks: the same request signed with another secret is refused."""
    reply = _call(running, "GET", "/http/forged/")
    assert reply.status == 403
    assert b"SignatureDoesNotMatch" in reply.body
    assert b"not-the-secret-canary" not in reply.body


def test_a_session_token_is_sent_and_signed_as_botocore_signs_it(
    running: RunningProxy, upstream: RecordingUpstream
) -> None:
    body = b'{"question": "signed?"}'
    reply = _call(
        running,
        "POST",
        "/http/session/items/a%20b?z=1&a=x/y",
        body,
        **{"Content-Type": "application/json", "X-Amz-Target": "Api.Items", "X-Other": "1"},
    )
    assert reply.status == 200
    seen = upstream.last()
    assert seen.headers["x-amz-security-token"] == SESSION_TOKEN
    assert seen.headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert seen.target == "/stage/items/a%20b?a=x%2Fy&z=1"  # the query as it was signed
    authorization = seen.headers["authorization"]
    signed = re.search(r"SignedHeaders=([^,]+)", authorization)
    assert signed is not None
    names = signed.group(1).split(";")
    assert names == sorted(
        [
            "content-type",
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-target",
        ]
    )
    request = AWSRequest(
        method="POST",
        url=upstream.url + seen.target,
        data=body,
        headers={n: seen.headers[n] for n in names},
    )
    request.context["timestamp"] = seen.headers["x-amz-date"]
    signer = SigV4Auth(
        Credentials(SESSION_KEY, SESSION_SECRET, SESSION_TOKEN), "execute-api", REGION
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert authorization.endswith(f"Signature={expected}")
    # Echoed back, the key, the token and the signature's key ID are stars.
    for secret in (SESSION_KEY, SESSION_TOKEN, SESSION_SECRET):
        assert secret.encode() not in reply.body
    echoed = reply.json()["headers"]
    assert echoed["x-amz-security-token"] == "*" * len(SESSION_TOKEN)
    assert f"Credential={'*' * len(SESSION_KEY)}/" in echoed["authorization"]
