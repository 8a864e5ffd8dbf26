"""A local STS (moto's server) and a stand-in for Vault's `auth/aws/login` in front of OpenBao.

OpenBao has no aws auth method. The stand-in does what Vault's aws/iam login does: it decodes the
signed `sts:GetCallerIdentity` request from the login body, checks the `X-Vault-AWS-IAM-Server-ID`
header is present and signed when one is configured, replays the request to its STS endpoint, and
if STS accepts it (moto checks the SigV4 signature against the IAM access keys it issued) and the
caller's ARN is bound to the role, returns a real OpenBao token minted with the root token (`BaoServer.ok`). Every
other request is forwarded to OpenBao unchanged. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.bao import BaoServer, free_port
from tests.support.http import serve
from tests.support.wait import wait_until

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@dataclass(frozen=True)
class Sts:
    """A running moto server and the IAM user's access key it will accept."""

    url: str
    access_key_id: str
    secret_access_key: str
    arn: str


@pytest.fixture(scope="session")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sts]:
    """moto's server with signature checking on, and one IAM user with an access key."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    # The first two actions (create the user and its key) are let through; everything after is
    # authenticated, so a wrongly signed GetCallerIdentity gets SignatureDoesNotMatch.
    env = {"PATH": os.environ.get("PATH", ""), "INITIAL_NO_AUTH_ACTION_COUNT": "2", "HOME": str(log.parent)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )

    def answering() -> bool:
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{url}/moto-api/", timeout=1)
            return True
        assert proc.poll() is None, log.read_text()
        return False

    try:
        wait_until(answering, 30, interval=0.1, message="moto_server did not start")
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="AKIDBOOTSTRAP",
            aws_secret_access_key="x",
        )
        user = iam.create_user(UserName="secretfs")["User"]
        key = iam.create_access_key(UserName="secretfs")["AccessKey"]
        yield Sts(url, key["AccessKeyId"], key["SecretAccessKey"], user["Arn"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class AwsLoginProxy:
    """The running stand-in: `url` goes in ARCHESTRA_HASHICORP_VAULT_ADDR."""

    bao: BaoServer
    sts_url: str
    mount: str = "aws"
    roles: dict[str, str] = field(default_factory=dict)  # role -> bound IAM ARN
    policies: dict[str, str] = field(default_factory=dict)  # role -> OpenBao policy
    server_id: str | None = None
    token_ttl: str = "1h"
    token_max_ttl: str = "2h"
    url: str = ""
    logins: list[dict[str, Any]] = field(default_factory=list)  # decoded signed requests, in order
    minted: list[str] = field(default_factory=list)  # tokens handed out (test-only tokens)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def login(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Vault's aws/iam login, against the local STS."""
        try:
            method = body["iam_http_request_method"]
            request_url = base64.b64decode(body["iam_request_url"]).decode()
            request_body = base64.b64decode(body["iam_request_body"]).decode()
            raw_headers = json.loads(base64.b64decode(body["iam_request_headers"]))
        except (KeyError, ValueError):
            return 400, {"errors": ["missing or malformed iam_* fields"]}
        headers = {k: v[0] if isinstance(v, list) else v for k, v in raw_headers.items()}
        with self.lock:
            self.logins.append({"method": method, "url": request_url, "body": request_body, "headers": headers})
        role = body.get("role")
        if role not in self.roles:
            return 400, {"errors": [f"entry for role {role} not found"]}
        if method != "POST" or "Action=GetCallerIdentity" not in request_body:
            return 400, {"errors": ["not a GetCallerIdentity request"]}
        if self.server_id is not None:
            lowered = {k.lower(): v for k, v in headers.items()}
            signed = re.search(r"SignedHeaders=([^,]+)", lowered.get("authorization", ""))
            if lowered.get("x-vault-aws-iam-server-id") != self.server_id or not signed:
                return 400, {"errors": ["expected X-Vault-AWS-IAM-Server-ID header value to match"]}
            if "x-vault-aws-iam-server-id" not in signed.group(1).split(";"):
                return 400, {"errors": ["X-Vault-AWS-IAM-Server-ID header is not signed"]}
        # Like Vault, send the signed request to the configured STS endpoint (never the client's URL).
        replay = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        answer = requests.post(self.sts_url, data=request_body.encode(), headers=replay, timeout=10)
        if answer.status_code != 200:
            return 403, {"errors": [f"error making upstream request: received error code {answer.status_code}"]}
        arn = re.search(r"<Arn>([^<]+)</Arn>", answer.text)
        if not arn or arn.group(1) != self.roles[role]:
            return 403, {"errors": ["IAM principal is not authorized for this role"]}
        created = self.bao.ok(
            "POST",
            "auth/token/create",
            json={
                "policies": [self.policies[role]],
                "ttl": self.token_ttl,
                "explicit_max_ttl": self.token_max_ttl,
                "renewable": True,
            },
        )
        with self.lock:
            self.minted.append(created["auth"]["client_token"])
        return 200, {"auth": created["auth"], "data": None, "warnings": None}


def revoke_all(proxy: AwsLoginProxy) -> None:
    """Revoke every token the stand-in has handed out."""
    for token in list(proxy.minted):
        proxy.bao.ok("POST", "auth/token/revoke", json={"token": token})


def _handler(state: AwsLoginProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            if self.command in ("POST", "PUT") and self.path.split("?")[0] == f"/v1/auth/{state.mount}/login":
                status, answer = state.login(json.loads(data or b"{}"))
                self._reply(status, json.dumps(answer).encode())
                return
            forward = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            upstream = requests.request(
                self.command, f"{state.bao.addr}{self.path}", data=data, headers=forward, timeout=30
            )
            self._reply(
                upstream.status_code, upstream.content, upstream.headers.get("Content-Type", "application/json")
            )

        do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _any

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


@contextlib.contextmanager
def aws_login_proxy(bao: BaoServer, sts_url: str, **options: Any) -> Iterator[AwsLoginProxy]:
    """Run the stand-in on a free loopback port until the block ends."""
    state = AwsLoginProxy(bao, sts_url, **options)
    with serve(_handler(state)) as url:
        state.url = url
        yield state
