"""The Vault token and its lifecycle: log in (TOKEN, K8S, AWS), renew before expiry, log in again.

- TOKEN: the configured static token, looked up once for its TTL; renewed if renewable; never
  replaced. A 403 on it is final (AccessDenied, with a log line saying why).
- K8S: Vault's kubernetes login with the service-account JWT, re-read from its file at every login.
- AWS: Vault's aws/iam login with a `sts:GetCallerIdentity` request signed by botocore's SigV4
  signer, from the standard AWS credential chain.

For K8S and AWS a new login replaces the token when renewal fails, when it has expired, or when
Vault answers 403 (then the caller retries once). A background thread keeps an idle token renewed.

Every decision about time (when to renew, whether the token expired, the TTL shown by `status`,
the rate of the 403 warning) reads the injected `clock` (monotonic seconds), so tests advance a
fake clock instead of sleeping. Only the background thread's waits are real time.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secretfs.config import VaultSettings
from secretfs.errors import AccessDenied, BackendUnavailable, ConfigError, NotFound, SecretfsError, VaultRejected
from secretfs.stores.vault_http import api_path, call

log = logging.getLogger(__name__)

STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
MIN_RENEW_MARGIN = 1.0
MAX_RENEW_MARGIN = 300.0
DENIED_WARNING_INTERVAL = 300.0  # the static-token 403 warning is logged at most this often


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def aws_login_payload(settings: VaultSettings) -> dict[str, str]:
    """The body of Vault's aws/iam login: a signed sts:GetCallerIdentity request, base64-encoded."""
    import botocore.auth
    import botocore.awsrequest
    import botocore.session

    credentials = botocore.session.Session().get_credentials()
    if credentials is None:
        raise ConfigError("AWS auth: no credentials found in the standard AWS credential chain")
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if settings.aws_iam_server_id:
        headers["X-Vault-AWS-IAM-Server-ID"] = settings.aws_iam_server_id
    request = botocore.awsrequest.AWSRequest(
        method="POST", url=settings.aws_sts_endpoint, data=STS_BODY, headers=headers
    )
    botocore.auth.SigV4Auth(credentials, "sts", settings.aws_region).add_auth(request)
    signed_headers = {key: [value] for key, value in request.headers.items()}
    return {
        "role": settings.aws_role or "",
        "iam_http_request_method": "POST",
        "iam_request_url": _b64(settings.aws_sts_endpoint),
        "iam_request_body": _b64(STS_BODY),
        "iam_request_headers": _b64(json.dumps(signed_headers)),
    }


class VaultAuth:
    """Holds the current token; every request asks `token()` first and reports 403s to `forbidden()`."""

    def __init__(self, settings: VaultSettings, adapter: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.method = settings.auth_method
        self._adapter = adapter
        self._lock = threading.RLock()
        self._token: str | None = settings.token if self.method == "TOKEN" else None
        self._expires_at: float | None = None  # on the clock; None = never expires (or unknown)
        self._issued_ttl = 0.0
        self._renewable = False
        self._looked_up = False
        self._warned_expired = False
        self._last_denied_warning: float | None = None  # on the clock; None: never warned
        self.logins = 0
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def can_relogin(self) -> bool:
        return self.method in ("K8S", "AWS")

    # ----- the token, for callers ---------------------------------------------------------------

    def token(self) -> str:
        """A usable token: logs in, renews, or logs in again first when needed."""
        with self._lock:
            if self._token is None:
                self._login()
            elif self.method == "TOKEN" and not self._looked_up:
                self._lookup_static()
            else:
                self._refresh_if_due()
            assert self._token is not None
            return self._token

    def forbidden(self, used: str) -> bool:
        """Vault answered 403 to `used`: True when a new token is in place and the call may be retried."""
        with self._lock:
            if self._token is not None and self._token != used:
                return True  # another thread already logged in again
            if not self.can_relogin:
                now = self._clock()
                last = self._last_denied_warning
                level = logging.DEBUG if last is not None and now - last < DENIED_WARNING_INTERVAL else logging.WARNING
                if level == logging.WARNING:
                    self._last_denied_warning = now
                log.log(
                    level,
                    "Vault answered 403 to the static token (ARCHESTRA_HASHICORP_VAULT_TOKEN): it lacks the "
                    "policy for this path, or it expired or was revoked; a static token is never replaced",
                )
                return False
            log.info("Vault answered 403; logging in again with %s auth", self.method)
            self._login()
            return True

    def ttl(self) -> float | None:
        """Seconds left on the token; None when it never expires or is not known yet."""
        with self._lock:
            if self._expires_at is None:
                return None
            return max(0.0, self._expires_at - self._clock())

    def info(self) -> dict[str, Any]:
        """Facts for `status` (never the token)."""
        with self._lock:
            known = self._token is not None and (self.method != "TOKEN" or self._looked_up)
            ttl = self.ttl()
            return {
                "auth_method": self.method,
                "token_ttl": "unknown" if not known else "never expires" if ttl is None else f"{int(ttl)}s",
                "token_renewable": self._renewable if known else None,
            }

    # ----- background renewal -------------------------------------------------------------------

    def start_renewer(self) -> None:
        """Keep the token alive while the mount is idle (a daemon thread, stopped by close())."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew_loop, name="vault-renew", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._sleep_time()):
            try:
                self.token()
            except SecretfsError as exc:
                log.warning("background token refresh failed: %s", exc)

    def _sleep_time(self) -> float:
        with self._lock:
            if self._expires_at is None or not (self._renewable or self.can_relogin):
                return 60.0
            due = self._expires_at - self._margin() - self._clock()
            return min(60.0, max(0.5, due))

    # ----- internals (called with the lock held) --------------------------------------------------

    def _margin(self) -> float:
        return min(MAX_RENEW_MARGIN, max(MIN_RENEW_MARGIN, self._issued_ttl / 3))

    def _set_lease(self, ttl: float, renewable: bool, *, renewed: bool = False) -> None:
        if not renewed or not self._issued_ttl:
            self._issued_ttl = ttl  # the TTL a login grants; renewals near the maximum TTL grant less
        self._renewable = renewable
        self._expires_at = self._clock() + ttl if ttl > 0 else None
        self._warned_expired = False

    def _refresh_if_due(self) -> None:
        if self._expires_at is None:
            return
        remaining = self._expires_at - self._clock()
        if remaining <= 0:
            if self.can_relogin:
                log.info("Vault token expired; logging in again with %s auth", self.method)
                self._login()
            elif not self._warned_expired:
                self._warned_expired = True
                log.warning("the static Vault token has expired; requests will be denied until it is replaced")
            return
        if remaining > self._margin():
            return
        if self._renewable:
            try:
                self._renew()
                left = self.ttl()
                if not self.can_relogin or left is None or left > self._margin():
                    return
                log.info("Vault token reached its maximum TTL; logging in again with %s auth", self.method)
            except BackendUnavailable:
                raise
            except SecretfsError as exc:
                log.warning("Vault token renewal failed: %s", exc)
        if self.can_relogin:
            self._login()

    def _renew(self) -> None:
        body = call(self._adapter, "post", api_path("auth/token/renew-self"), token=self._token, what="token renewal")
        auth = (body or {}).get("auth") or {}
        self._set_lease(float(auth.get("lease_duration") or 0), bool(auth.get("renewable")), renewed=True)
        self.renewals += 1
        log.debug("Vault token renewed for %ss", auth.get("lease_duration"))

    def _lookup_static(self) -> None:
        try:
            body = call(
                self._adapter, "get", api_path("auth/token/lookup-self"), token=self._token, what="token lookup"
            )
        except AccessDenied:
            log.warning(
                "Vault refused to look up the static token (403): it is invalid, expired or revoked, "
                "or its policy lacks auth/token/lookup-self; its TTL is unknown"
            )
            self._looked_up = True
            return
        data = (body or {}).get("data") or {}
        self._set_lease(float(data.get("ttl") or 0), bool(data.get("renewable")))
        self._looked_up = True
        self._refresh_if_due()

    def _login(self) -> None:
        s = self.settings
        if self.method == "K8S":
            mount = s.k8s_mount_point
            payload: dict[str, str] = {"role": s.k8s_role or "", "jwt": self._read_jwt()}
        elif self.method == "AWS":
            mount = s.aws_mount_point
            payload = aws_login_payload(s)
        else:
            raise AccessDenied("the static Vault token cannot log in again")
        try:
            body = call(
                self._adapter,
                "post",
                api_path("auth", mount, "login"),
                token=None,
                what=f"{self.method} login",
                json=payload,
            )
        except (AccessDenied, NotFound, VaultRejected) as exc:
            log.error("Vault %s login failed: %s", self.method, exc)
            raise AccessDenied(f"Vault {self.method} login failed: {exc}") from None
        auth = (body or {}).get("auth") or {}
        token = auth.get("client_token")
        if not token:
            raise AccessDenied(f"Vault {self.method} login returned no token")
        self._token = str(token)
        self._set_lease(float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
        self.logins += 1
        log.info("logged in to Vault with %s auth (token TTL %ss)", self.method, auth.get("lease_duration"))

    def _read_jwt(self) -> str:
        path = Path(self.settings.k8s_token_path)
        try:
            jwt = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AccessDenied(f"cannot read the Kubernetes service-account token {path}: {exc.strerror}") from None
        if not jwt:
            raise AccessDenied(f"the Kubernetes service-account token file {path} is empty")
        return jwt
