"""AWS auth: a botocore-signed sts:GetCallerIdentity, checked by a Vault aws-login stand-in that
replays it to a local STS (moto's server, which verifies the signature), in front of real OpenBao."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secretfs.config import load_settings
from secretfs.errors import AccessDenied
from secretfs.stores.vault import open_vault_store
from secretfs.stores.vault_auth import aws_login_payload
from tests.support.aws import AwsLoginProxy, Sts, aws_login_proxy, revoke_all, sts
from tests.support.bao import BaoServer
from tests.support.mount import make_instance, mounted
from tests.support.wait import wait_until

__all__ = ["sts"]  # the fixture

SERVER_ID = "vault.example.internal"


def aws_credentials_env(creds: Sts, tmp_path: Path, secret: str | None = None) -> dict[str, str]:
    """Only the standard environment variables: no profile, no config files, no instance metadata."""
    return {
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret or creds.secret_access_key,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sts: Sts) -> dict[str, str]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    env = aws_credentials_env(sts, tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def role_setup(bao: BaoServer) -> tuple[str, str]:
    sub = f"aws-{uuid.uuid4().hex[:8]}"
    policy = f'path "secret/data/{sub}/*" {{ capabilities = ["create", "read", "update", "delete"] }}\n'
    policy += f'path "secret/metadata/{sub}/*" {{ capabilities = ["list", "read", "delete"] }}\n'
    policy += f'path "secret/metadata/{sub}" {{ capabilities = ["list"] }}\n'
    bao.ok("PUT", f"sys/policies/acl/{sub}", json={"policy": policy})
    return sub, sub


@pytest.fixture
def proxy(bao_server: BaoServer, sts: Sts) -> Iterator[AwsLoginProxy]:
    role, policy = role_setup(bao_server)
    with aws_login_proxy(
        bao_server,
        sts.url,
        mount="aws-iam",
        roles={role: sts.arn},
        policies={role: policy},
        server_id=SERVER_ID,
        token_ttl="2s",
        token_max_ttl="3s",
    ) as p:
        yield p


def vault_env(proxy: AwsLoginProxy, sts: Sts, **extra: str) -> dict[str, str]:
    role = next(iter(proxy.roles))
    env = {
        "ARCHESTRA_SECRETS_MANAGER": "VAULT",
        "ARCHESTRA_HASHICORP_VAULT_ADDR": proxy.url,
        "ARCHESTRA_ENTERPRISE_LICENSE_ACTIVATED": "true",
        "ARCHESTRA_HASHICORP_VAULT_AUTH_METHOD": "AWS",
        "ARCHESTRA_HASHICORP_VAULT_AWS_ROLE": role,
        "ARCHESTRA_HASHICORP_VAULT_AWS_MOUNT_POINT": proxy.mount,
        "ARCHESTRA_HASHICORP_VAULT_AWS_REGION": "eu-west-3",
        "ARCHESTRA_HASHICORP_VAULT_AWS_STS_ENDPOINT": sts.url,
        "ARCHESTRA_HASHICORP_VAULT_AWS_IAM_SERVER_ID": SERVER_ID,
        "ARCHESTRA_HASHICORP_VAULT_SECRET_PATH": f"secret/data/{role}",
    }
    env.update(extra)
    return env


def test_signed_request_shape(aws_env: dict[str, str], proxy: AwsLoginProxy, sts: Sts) -> None:
    settings = load_settings(vault_env(proxy, sts))
    assert settings.vault is not None
    payload = aws_login_payload(settings.vault)
    assert payload["role"] == next(iter(proxy.roles))
    assert payload["iam_http_request_method"] == "POST"
    assert base64.b64decode(payload["iam_request_url"]).decode() == sts.url
    assert base64.b64decode(payload["iam_request_body"]).decode() == "Action=GetCallerIdentity&Version=2011-06-15"
    headers: dict[str, Any] = json.loads(base64.b64decode(payload["iam_request_headers"]))
    assert headers["X-Vault-AWS-IAM-Server-ID"] == [SERVER_ID]
    auth = headers["Authorization"][0]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={sts.access_key_id}/")
    assert "/eu-west-3/sts/aws4_request" in auth
    assert "x-vault-aws-iam-server-id" in auth
    assert sts.secret_access_key not in json.dumps(payload)


def test_aws_login_read_write_and_relogin_after_expiry(
    aws_env: dict[str, str], proxy: AwsLoginProxy, sts: Sts, bao_server: BaoServer
) -> None:
    store = open_vault_store(load_settings(vault_env(proxy, sts)))
    try:
        assert len(proxy.logins) == 1
        assert store.auth.logins == 1
        store.write("api/key", {"value": "aws-secret"})
        assert store.read("api/key").value == {"value": "aws-secret"}
        info = store.info()
        assert info["auth_method"] == "AWS" and info["address"] == proxy.url
        # the 2s token is renewed, then replaced by a new login
        wait_until(lambda: store.auth.logins >= 2, 20, interval=0.1, message="no second login")
        assert store.read("api/key").value == {"value": "aws-secret"}
        assert len(proxy.logins) >= 2
        # a 403 (every token revoked) leads to one new login and a successful retry
        proxy.token_ttl, proxy.token_max_ttl = "1h", "2h"
        wait_until(
            lambda: (ttl := store.auth.ttl()) is None or ttl >= 100, 20, interval=0.1, message="no long-lived token"
        )
        revoke_all(proxy)
        before = store.auth.logins
        assert store.read("api/key").value == {"value": "aws-secret"}
        assert store.auth.logins == before + 1
    finally:
        store.close()


def test_aws_login_refused_on_bad_signature(
    monkeypatch: pytest.MonkeyPatch, aws_env: dict[str, str], proxy: AwsLoginProxy, sts: Sts
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-right-secret")
    with pytest.raises(AccessDenied, match="AWS login failed"):
        open_vault_store(load_settings(vault_env(proxy, sts)))
    assert len(proxy.logins) == 1


def test_aws_login_refused_on_wrong_server_id(aws_env: dict[str, str], proxy: AwsLoginProxy, sts: Sts) -> None:
    env = vault_env(proxy, sts, ARCHESTRA_HASHICORP_VAULT_AWS_IAM_SERVER_ID="someone-else")
    with pytest.raises(AccessDenied):
        open_vault_store(load_settings(env))


@pytest.mark.mount
def test_aws_mount(tmp_path: Path, proxy: AwsLoginProxy, sts: Sts, bao_server: BaoServer) -> None:
    role = next(iter(proxy.roles))
    bao_server.cli("kv", "put", "-mount=secret", f"{role}/svc/token", "value=via-aws")
    env = {**vault_env(proxy, sts), **aws_credentials_env(sts, tmp_path)}
    inst = make_instance(tmp_path, **env)
    with mounted(inst, tmp_path / "mnt") as m:
        assert (m.path / "svc" / "token").read_bytes() == b"via-aws"
        (m.path / "svc" / "new").write_bytes(b"written-via-aws")
        # the first token reaches its 3s maximum TTL: a new login
        wait_until(lambda: len(proxy.logins) >= 2, 20, interval=0.1, message="no second login")
        assert (m.path / "svc" / "new").read_bytes() == b"written-via-aws"
    got = bao_server.cli("kv", "get", "-format=json", "-mount=secret", f"{role}/svc/new").stdout
    assert json.loads(got)["data"]["data"] == {"value": "written-via-aws"}
