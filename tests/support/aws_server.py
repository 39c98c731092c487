"""moto in server mode on 127.0.0.1 with request authentication enforced: after the three
unauthenticated calls that create an IAM user, its access key and its policy, every
request must carry a valid AWS SigV4 signature by that key (moto answers
SignatureDoesNotMatch otherwise). For bureau-proxy's aws_sigv4 credential kind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"


@dataclass(frozen=True)
class AwsServer:
    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def client(self, service: str, *, secret: str | None = None) -> object:
        """A boto3 client signing with the user's key (or another secret, to be refused)."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(proc: subprocess.Popen[str]) -> None:
    """Until werkzeug says it is running; then its request log is drained on a thread so
    that a full pipe never stalls the server."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Running on" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return
    raise AssertionError(f"moto_server exited with {proc.wait()} before listening")


@contextmanager
def aws_server() -> Iterator[AwsServer]:
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _wait_listening(proc)
            endpoint = f"http://127.0.0.1:{port}"
            iam = boto3.client(
                "iam",
                endpoint_url=endpoint,
                region_name=REGION,
                aws_access_key_id="AKIAUNAUTHENTICATED",
                aws_secret_access_key="unused-before-authentication",
            )
            iam.create_user(UserName="workload")
            key = iam.create_access_key(UserName="workload")["AccessKey"]
            everything = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
            iam.put_user_policy(
                UserName="workload", PolicyName="all", PolicyDocument=json.dumps(everything)
            )
            yield AwsServer(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        finally:
            proc.terminate()
            proc.wait(timeout=10)
