"""Vault-store behaviour beyond the contract, against real OpenBao: paths, soft deletes, errors, renewal."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from secretfs.config import Secret, VaultSettings
from secretfs.errors import AccessDenied, BackendUnavailable, InvalidName, NotFound
from secretfs.stores.vault import VaultStore
from tests.support.bao import ROOT_TOKEN, BaoServer
from tests.support.clock import FakeClock


def settings_for(bao: BaoServer, sub: str, token: str = ROOT_TOKEN, timeout: float = 5) -> VaultSettings:
    return VaultSettings(
        addr=bao.addr,
        token=Secret(token),
        kv_version=2,
        secret_path=f"secret/data/{sub}",
        metadata_path=f"secret/metadata/{sub}",
        timeout=timeout,
    )


@pytest.fixture
def sub() -> str:
    return f"store-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(bao_server: BaoServer, sub: str) -> Iterator[VaultStore]:
    s = VaultStore(settings_for(bao_server, sub))
    yield s
    s.close()


def test_names_are_literal_path_segments(store: VaultStore, bao_server: BaoServer, sub: str) -> None:
    for name in ["a%2Fb", "q?x=1", "h#frag", "sp ace/x", "plus+amp&"]:
        store.write(name, {"value": name})
        assert store.read(name).value == {"value": name}
        quoted = "/".join(urllib.parse.quote(p, safe="") for p in name.split("/"))
        got = bao_server.ok("GET", f"secret/data/{sub}/{quoted}")
        assert got["data"]["data"] == {"value": name}
    assert [m.name for m in store.list()] == sorted(["a%2Fb", "q?x=1", "h#frag", "sp ace/x", "plus+amp&"])


def test_soft_deleted_latest_version_is_not_found(store: VaultStore, bao_server: BaoServer, sub: str) -> None:
    store.write("s", {"value": "1"})
    store.write("keep", {"value": "k"})
    bao_server.cli("kv", "delete", "-mount=secret", f"{sub}/s")  # soft delete of the latest version
    with pytest.raises(NotFound):
        store.read("s")
    with pytest.raises(NotFound):
        store.stat("s")
    assert [m.name for m in store.list()] == ["keep"]
    store.delete("s")  # removes the remaining metadata
    assert bao_server.api("GET", f"secret/metadata/{sub}/s").status_code == 404


def test_values_must_be_objects(store: VaultStore) -> None:
    for value in ["text", 1, ["a"], None]:
        with pytest.raises(InvalidName, match="JSON object"):
            store.write("s", value)


def test_info_has_the_facts_and_no_token(store: VaultStore, bao_server: BaoServer, sub: str) -> None:
    info = store.info()
    assert info["address"] == bao_server.addr
    assert (info["kv_version"], info["secret_path"], info["metadata_path"]) == (
        2,
        f"secret/data/{sub}",
        f"secret/metadata/{sub}",
    )
    assert info["auth_method"] == "TOKEN" and info["token_ttl"] == "never expires"
    assert ROOT_TOKEN not in repr({k: v for k, v in info.items() if k != "auth_method"})


def test_static_renewable_token_is_renewed_not_replaced(bao_server: BaoServer, sub: str) -> None:
    # The token's lifecycle runs on a fake clock; Vault's answers (lookup, renewal) are real.
    policy = 'path "secret/*" { capabilities = ["create", "read", "update", "list", "delete"] }'
    bao_server.ok("PUT", f"sys/policies/acl/{sub}", json={"policy": policy})
    token = bao_server.ok("POST", "auth/token/create", json={"policies": [sub], "ttl": "1h", "renewable": True})
    client_token = token["auth"]["client_token"]
    clock = FakeClock()
    s = VaultStore(settings_for(bao_server, sub, token=client_token), clock=clock)
    try:
        s.write("x", {"value": "1"})
        ttl = s.auth.ttl()
        assert ttl is not None and 3500 < ttl <= 3600  # looked up from Vault
        clock.advance(ttl - 301)  # more than the margin (5 min) left: not yet
        assert s.read("x").value == {"value": "1"}
        assert s.auth.renewals == 0
        clock.advance(2)  # within the margin: renewed before the request
        assert s.read("x").value == {"value": "1"}
        assert s.auth.renewals == 1
        renewed = s.auth.ttl()
        assert renewed is not None and renewed > 3500  # Vault granted a full TTL again
        assert s.auth.logins == 0
        assert s.auth.token() == client_token  # renewed, never replaced
        lookup = bao_server.ok("POST", "auth/token/lookup", json={"token": client_token})
        assert lookup["data"]["last_renewal_time"]  # Vault itself saw the renewal
    finally:
        s.close()


def test_revoked_static_token_is_access_denied(bao_server: BaoServer, sub: str) -> None:
    token = bao_server.ok("POST", "auth/token/create", json={"policies": ["default"], "ttl": "1h"})
    client_token = token["auth"]["client_token"]
    s = VaultStore(settings_for(bao_server, sub, token=client_token))
    try:
        s.auth.token()
        bao_server.ok("POST", "auth/token/revoke", json={"token": client_token})
        with pytest.raises(AccessDenied):
            s.read("anything")
        assert s.auth.logins == 0
    finally:
        s.close()


def test_sealed_or_stopped_vault_is_backend_unavailable(fresh_bao: BaoServer) -> None:
    s = VaultStore(settings_for(fresh_bao, "sealed", timeout=1))
    try:
        s.write("x", {"value": "1"})
        fresh_bao.ok("PUT", "sys/seal")
        with pytest.raises(BackendUnavailable):
            s.read("x")
        fresh_bao.stop()
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            s.read("x")
        with pytest.raises(BackendUnavailable):
            s.list()
        assert time.monotonic() - start < 3
    finally:
        s.close()
