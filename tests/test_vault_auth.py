"""The Vault token lifecycle (stores/vault_auth.py) on a fake clock and a fake Vault: when a token is
renewed, when it is replaced by a new login, and what is logged. No server and no sleeping."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from secretfs.config import Secret, VaultSettings
from secretfs.errors import AccessDenied, BackendUnavailable
from secretfs.stores.vault_auth import VaultAuth
from tests.support.clock import FakeClock

STATIC = "static-token"


class FakeVault:
    """An hvac adapter answering the token endpoints VaultAuth uses, and recording the calls."""

    def __init__(self) -> None:
        self.lookup_ttl = 90  # what lookup-self says of the static token
        self.login_ttl = 60
        self.renew_ttl = 60
        self.renewable = True
        self.renew_error: Exception | None = None
        self.calls: list[tuple[str, str, str | None]] = []
        self.jwts: list[str] = []
        self.issued = 0

    def request(self, method: str, path: str, *, headers: dict[str, str], json: Any = None) -> dict[str, Any]:
        token = headers.get("X-Vault-Token")
        self.calls.append((method, path, token))
        if path == "/v1/auth/token/lookup-self":
            return {"data": {"ttl": self.lookup_ttl, "renewable": self.renewable}}
        if path == "/v1/auth/token/renew-self":
            if self.renew_error is not None:
                raise self.renew_error
            return {"auth": {"lease_duration": self.renew_ttl, "renewable": self.renewable}}
        if path.endswith("/login"):
            self.jwts.append(json["jwt"])
            self.issued += 1
            auth = {"client_token": f"login-{self.issued}", "lease_duration": self.login_ttl}
            return {"auth": {**auth, "renewable": self.renewable}}
        raise AssertionError(f"unexpected request {method} {path}")

    def count(self, path_end: str) -> int:
        return sum(1 for _, path, _ in self.calls if path.endswith(path_end))


@pytest.fixture
def vault() -> FakeVault:
    return FakeVault()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def static_auth(vault: FakeVault, clock: FakeClock) -> VaultAuth:
    settings = VaultSettings(addr="http://vault.invalid", token=Secret(STATIC))
    return VaultAuth(settings, vault, clock=clock)


def k8s_auth(vault: FakeVault, clock: FakeClock, jwt_file: Path) -> VaultAuth:
    settings = VaultSettings(
        addr="http://vault.invalid", auth_method="K8S", k8s_role="app", k8s_token_path=str(jwt_file)
    )
    return VaultAuth(settings, vault, clock=clock)


@pytest.fixture
def jwt_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("jwt-1\n")
    return path


# ----- the static token ------------------------------------------------------------------------------


def test_static_token_is_renewed_when_a_third_of_its_ttl_is_left(vault: FakeVault, clock: FakeClock) -> None:
    auth = static_auth(vault, clock)
    assert auth.token() == STATIC
    assert vault.count("lookup-self") == 1
    assert auth.ttl() == 90
    clock.advance(59)  # 31 s left: more than a third of 90
    assert auth.token() == STATIC
    assert (auth.renewals, auth.ttl()) == (0, 31)
    clock.advance(1)  # 30 s left: due
    assert auth.token() == STATIC
    assert (auth.renewals, auth.logins) == (1, 0)
    assert auth.ttl() == 60  # the renewal's lease, from now
    assert auth.info()["token_ttl"] == "60s"
    assert vault.count("lookup-self") == 1  # looked up once
    assert all(token == STATIC for _, _, token in vault.calls)  # never replaced


def test_expired_static_token_is_kept_and_the_expiry_logged_once(
    vault: FakeVault, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    vault.renewable = False
    vault.lookup_ttl = 10
    auth = static_auth(vault, clock)
    auth.token()
    clock.advance(11)
    with caplog.at_level(logging.WARNING, logger="secretfs.stores.vault_auth"):
        assert auth.token() == STATIC
        assert auth.token() == STATIC
    assert [r.message for r in caplog.records].count(
        "the static Vault token has expired; requests will be denied until it is replaced"
    ) == 1
    assert (auth.renewals, auth.logins, auth.ttl()) == (0, 0, 0)
    assert vault.count("renew-self") == 0


def test_static_token_403_warning_is_rate_limited_by_the_clock(
    vault: FakeVault, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = static_auth(vault, clock)
    token = auth.token()

    def warnings() -> int:
        return sum(1 for r in caplog.records if r.levelno == logging.WARNING and "403" in r.message)

    with caplog.at_level(logging.DEBUG, logger="secretfs.stores.vault_auth"):
        assert auth.forbidden(token) is False
        assert warnings() == 1
        clock.advance(299)
        assert auth.forbidden(token) is False
        assert warnings() == 1  # within five minutes: debug only
        clock.advance(1)
        assert auth.forbidden(token) is False
        assert warnings() == 2


def test_token_that_never_expires_is_never_renewed(vault: FakeVault, clock: FakeClock) -> None:
    vault.lookup_ttl = 0
    auth = static_auth(vault, clock)
    auth.token()
    clock.advance(10**9)
    auth.token()
    assert auth.ttl() is None and auth.info()["token_ttl"] == "never expires"
    assert vault.count("renew-self") == 0


# ----- K8S (AWS takes the same paths; only the login payload differs) ----------------------------------


def test_k8s_token_is_renewed_then_replaced_at_its_maximum_ttl(
    vault: FakeVault, clock: FakeClock, jwt_file: Path
) -> None:
    auth = k8s_auth(vault, clock, jwt_file)
    assert auth.token() == "login-1"
    assert (auth.logins, vault.jwts) == (1, ["jwt-1"])
    clock.advance(40)  # 20 s left of 60: due
    assert auth.token() == "login-1"
    assert (auth.renewals, auth.logins) == (1, 1)
    # Near the maximum TTL a renewal grants less than the margin: log in again, with the new JWT.
    jwt_file.write_text("jwt-2")
    vault.renew_ttl = 5
    clock.advance(40)
    assert auth.token() == "login-2"
    assert (auth.renewals, auth.logins) == (2, 2)
    assert vault.jwts == ["jwt-1", "jwt-2"]
    assert auth.ttl() == 60


def test_expired_k8s_token_is_replaced_without_renewal(vault: FakeVault, clock: FakeClock, jwt_file: Path) -> None:
    auth = k8s_auth(vault, clock, jwt_file)
    auth.token()
    clock.advance(61)
    assert auth.token() == "login-2"
    assert (auth.renewals, auth.logins) == (0, 2)
    assert vault.count("renew-self") == 0


def test_failed_k8s_renewal_leads_to_a_new_login(vault: FakeVault, clock: FakeClock, jwt_file: Path) -> None:
    auth = k8s_auth(vault, clock, jwt_file)
    auth.token()
    vault.renew_error = hvac.exceptions.Forbidden()
    clock.advance(45)
    assert auth.token() == "login-2"
    assert (auth.renewals, auth.logins) == (0, 2)


def test_renewal_while_vault_is_down_raises_and_keeps_the_token(
    vault: FakeVault, clock: FakeClock, jwt_file: Path
) -> None:
    auth = k8s_auth(vault, clock, jwt_file)
    auth.token()
    vault.renew_error = hvac.exceptions.VaultDown()
    clock.advance(45)
    with pytest.raises(BackendUnavailable):
        auth.token()
    assert auth.logins == 1
    vault.renew_error = None
    assert auth.token() == "login-1"  # Vault is back: renewed, not replaced
    assert (auth.renewals, auth.logins) == (1, 1)


def test_k8s_403_logs_in_again(vault: FakeVault, clock: FakeClock, jwt_file: Path) -> None:
    auth = k8s_auth(vault, clock, jwt_file)
    first = auth.token()
    assert auth.forbidden(first) is True
    assert auth.token() == "login-2"
    assert auth.forbidden(first) is True  # another thread's 403 on the old token: no third login
    assert auth.logins == 2


def test_unreadable_jwt_is_access_denied(vault: FakeVault, clock: FakeClock, tmp_path: Path) -> None:
    auth = k8s_auth(vault, clock, tmp_path / "absent")
    with pytest.raises(AccessDenied, match="service-account token"):
        auth.token()


# ----- the background renewer's schedule ---------------------------------------------------------------


def test_renewer_wakes_when_renewal_is_due(vault: FakeVault, clock: FakeClock, jwt_file: Path) -> None:
    auth = k8s_auth(vault, clock, jwt_file)
    vault.login_ttl = 300  # margin 100 s: due after 200 s
    auth.token()
    assert auth._sleep_time() == 60.0  # at most a minute between checks
    clock.advance(170)
    assert auth._sleep_time() == pytest.approx(30.0)
    clock.advance(100)
    assert auth._sleep_time() == 0.5  # overdue: soon, never a busy loop
