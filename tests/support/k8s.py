"""A stand-in Kubernetes TokenReview endpoint on 127.0.0.1, for OpenBao's kubernetes auth method.

It answers `POST /apis/authentication.k8s.io/v1/tokenreviews`: a known JWT is authenticated as its
service account, anything else is not. It records every token it was asked about, so tests can see
which JWT a login used. `service_account_jwt` makes a JWT-shaped token (unsigned in substance: the
auth method, configured without signing keys, leaves the verdict to TokenReview).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.support.http import serve

# Any PEM certificate will do: OpenBao needs kubernetes_ca_cert, but talks plain HTTP to this server.
DUMMY_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUQ0h1mUFk0c1nVh8mT9u3v5e7n3owCgYIKoZIzj0EAwIw
ETEPMA0GA1UEAwwGZHVtbXlDQTAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAw
MDBaMBExDzANBgNVBAMMBmR1bW15Q0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQ7mS8b2Xk1n2S2kq3xv1v0a7E8aU3Qm7vQ9pY1o0d3cJk7m2V5rJ6tq5W2Hq8d
0m3pT3m1oYJ7Yb2xq4cYtXy4o1MwUTAdBgNVHQ4EFgQU5x3Nw1+J9Yb0v8lZx0k2
X0nEw3MwHwYDVR0jBBgwFoAU5x3Nw1+J9Yb0v8lZx0k2X0nEw3MwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAtq2Jx0N8cBq3Hn4b3l0xw5iQkq1d
2v8k0b7n3o0mZ6YCIF1v6m4m3b2k9s8x9x0z7w1v2r5e8k3m0x2n1v4c6b7d
-----END CERTIFICATE-----
"""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def service_account_jwt(namespace: str, name: str, uid: str) -> str:
    """A JWT with the legacy service-account claims, and a random signature."""
    header = {"alg": "RS256", "kid": "test", "typ": "JWT"}
    claims = {
        "iss": "kubernetes/serviceaccount",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "kubernetes.io/serviceaccount/secret.name": f"{name}-token-{secrets.token_hex(3)}",
        "jti": secrets.token_hex(8),
    }
    parts = [json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(256)]
    return ".".join(_b64url(p) for p in parts)


@dataclass
class TokenReviewServer:
    """The running endpoint: `accept(jwt, ...)` makes a JWT valid; `seen` lists reviewed JWTs in order."""

    url: str = ""
    known: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_token(self, namespace: str = "apps", name: str = "secretfs") -> str:
        uid = str(uuid.uuid4())
        jwt = service_account_jwt(namespace, name, uid)
        with self.lock:
            self.known[jwt] = (namespace, name, uid)
        return jwt

    def revoke(self, jwt: str) -> None:
        with self.lock:
            self.known.pop(jwt, None)

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        token = str((body.get("spec") or {}).get("token") or "")
        with self.lock:
            self.seen.append(token)
            account = self.known.get(token)
        status: dict[str, Any] = {"authenticated": False}
        if account is not None:
            namespace, name, uid = account
            status = {
                "authenticated": True,
                "user": {
                    "username": f"system:serviceaccount:{namespace}:{name}",
                    "uid": uid,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                },
            }
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


def _handler(state: TokenReviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.startswith("/apis/authentication.k8s.io/v1/tokenreviews"):
                self.send_response(404)
                self.end_headers()
                return
            answer = json.dumps(state.review(body)).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


@pytest.fixture
def token_review() -> Iterator[TokenReviewServer]:
    """A TokenReview endpoint on a free loopback port, for this test."""
    state = TokenReviewServer()
    with serve(_handler(state)) as url:
        state.url = url
        yield state
