"""K8S auth against OpenBao's real kubernetes auth method, with a local TokenReview endpoint.

Roles get a short token TTL so re-login after expiry happens within the test; the JWT file is
re-read at every login (checked by the TokenReview endpoint seeing the new JWT).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from secretfs.config import load_settings
from secretfs.stores.vault import VaultStore, open_vault_store
from tests.support.bao import BaoServer
from tests.support.k8s import DUMMY_CA_PEM, TokenReviewServer, token_review
from tests.support.mount import make_instance, mounted
from tests.support.wait import wait_until

__all__ = ["token_review"]  # the fixture


def setup_kubernetes_auth(bao: BaoServer, review: TokenReviewServer, *, ttl: str, max_ttl: str) -> tuple[str, str]:
    """A kubernetes auth mount and a role on it; returns (mount point, secret sub-path the role may use)."""
    tag = uuid.uuid4().hex[:8]
    mount, sub = f"k8s-{tag}", f"k8s-{tag}"
    bao.ok("POST", f"sys/auth/{mount}", json={"type": "kubernetes"})
    bao.ok(
        "POST",
        f"auth/{mount}/config",
        json={"kubernetes_host": review.url, "kubernetes_ca_cert": DUMMY_CA_PEM, "disable_local_ca_jwt": True},
    )
    policy = f'path "secret/data/{sub}/*" {{ capabilities = ["create", "read", "update", "delete"] }}\n'
    policy += f'path "secret/metadata/{sub}/*" {{ capabilities = ["list", "read", "delete"] }}\n'
    policy += f'path "secret/metadata/{sub}" {{ capabilities = ["list"] }}\n'
    bao.ok("PUT", f"sys/policies/acl/{sub}", json={"policy": policy})
    bao.ok(
        "POST",
        f"auth/{mount}/role/app",
        json={
            "bound_service_account_names": ["secretfs"],
            "bound_service_account_namespaces": ["apps"],
            "token_policies": [sub],
            "token_ttl": ttl,
            "token_max_ttl": max_ttl,
        },
    )
    return mount, sub


def k8s_env(bao: BaoServer, mount: str, sub: str, jwt_file: Path) -> dict[str, str]:
    return {
        "ARCHESTRA_SECRETS_MANAGER": "VAULT",
        "ARCHESTRA_HASHICORP_VAULT_ADDR": bao.addr,
        "ARCHESTRA_ENTERPRISE_LICENSE_ACTIVATED": "true",
        "ARCHESTRA_HASHICORP_VAULT_AUTH_METHOD": "K8S",
        "ARCHESTRA_HASHICORP_VAULT_K8S_ROLE": "app",
        "ARCHESTRA_HASHICORP_VAULT_K8S_MOUNT_POINT": mount,
        "ARCHESTRA_HASHICORP_VAULT_K8S_TOKEN_PATH": str(jwt_file),
        "ARCHESTRA_HASHICORP_VAULT_SECRET_PATH": f"secret/data/{sub}",
    }


def test_k8s_login_renewal_and_relogin_after_expiry(
    tmp_path: Path, bao_server: BaoServer, token_review: TokenReviewServer
) -> None:
    mount, sub = setup_kubernetes_auth(bao_server, token_review, ttl="2s", max_ttl="4s")
    jwt_file = tmp_path / "token"
    first = token_review.new_token()
    jwt_file.write_text(first + "\n")
    store = open_vault_store(load_settings(k8s_env(bao_server, mount, sub, jwt_file)))
    try:
        assert token_review.seen == [first]
        assert store.auth.logins == 1
        store.write("db/password", {"value": "k8s-pw"})
        assert store.read("db/password").value == {"value": "k8s-pw"}
        info = store.info()
        assert info["auth_method"] == "K8S" and info["token_renewable"] is True

        # The service-account token is rotated on disk; the old one stops being valid.
        second = token_review.new_token()
        jwt_file.write_text(second)
        token_review.revoke(first)
        # Renewal keeps the token until its max TTL; then a new login must read the new JWT.
        wait_until(lambda: store.auth.renewals >= 1, 20, interval=0.1, message="no renewal")
        wait_until(lambda: store.auth.logins >= 2, 20, interval=0.1, message="no second login")
        assert token_review.seen[-1] == second
        assert store.read("db/password").value == {"value": "k8s-pw"}
    finally:
        store.close()


def test_k8s_relogin_when_vault_answers_403(
    tmp_path: Path, bao_server: BaoServer, token_review: TokenReviewServer
) -> None:
    mount, sub = setup_kubernetes_auth(bao_server, token_review, ttl="1h", max_ttl="2h")
    jwt_file = tmp_path / "token"
    jwt_file.write_text(token_review.new_token())
    store = VaultStore(load_settings(k8s_env(bao_server, mount, sub, jwt_file)).vault)  # type: ignore[arg-type]
    try:
        store.write("s", {"value": "v"})
        assert store.auth.logins == 1
        # Revoke every token this auth mount issued: the next request gets 403, logs in again, retries.
        newer = token_review.new_token()
        jwt_file.write_text(newer)
        bao_server.ok("PUT", f"sys/leases/revoke-prefix/auth/{mount}/login")
        assert store.read("s").value == {"value": "v"}
        assert store.auth.logins == 2
        assert token_review.seen[-1] == newer
    finally:
        store.close()


@pytest.mark.mount
def test_k8s_mount_picks_up_a_new_jwt(tmp_path: Path, bao_server: BaoServer, token_review: TokenReviewServer) -> None:
    mount, sub = setup_kubernetes_auth(bao_server, token_review, ttl="2s", max_ttl="2s")
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/app/key", "value=through-k8s")
    jwt_file = tmp_path / "token"
    first = token_review.new_token()
    jwt_file.write_text(first)
    inst = make_instance(tmp_path, **k8s_env(bao_server, mount, sub, jwt_file))
    with mounted(inst, tmp_path / "mnt", "-v") as m:
        assert (m.path / "app" / "key").read_bytes() == b"through-k8s"
        second = token_review.new_token()
        jwt_file.write_text(second)
        token_review.revoke(first)
        wait_until(lambda: second in token_review.seen, 20, interval=0.1, message="the new JWT was not used")
        time.sleep(2.5)  # past the first token's max TTL either way
        assert (m.path / "app" / "key").read_bytes() == b"through-k8s"
        assert "logged in to Vault with K8S auth" in m.log.read_text()
    assert inst.cli("get", "app/key").stdout == b"through-k8s"
