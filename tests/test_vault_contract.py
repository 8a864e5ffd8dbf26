"""The store contract on the Vault store, against a real OpenBao server: KV v1, and KV v2 on a
non-standard mount whose metadata prefix needs the override."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from secretfs.config import Secret, VaultSettings
from secretfs.stores.base import Store
from secretfs.stores.vault import VaultStore
from tests.contract import StoreContract
from tests.support.bao import KV1_MOUNT, KV2_MOUNT, ROOT_TOKEN, BaoServer


def kv1_settings(bao: BaoServer, prefix: str) -> VaultSettings:
    return VaultSettings(
        addr=bao.addr, token=Secret(ROOT_TOKEN), kv_version=1, secret_path=prefix, metadata_path=None, timeout=5
    )


def kv2_settings(bao: BaoServer, subpath: str) -> VaultSettings:
    # KV2_MOUNT itself contains "/data": the default /data/ -> /metadata/ swap would hit the mount
    # name, so this is exactly the case ARCHESTRA_HASHICORP_VAULT_SECRET_METADATA_PATH exists for.
    return VaultSettings(
        addr=bao.addr,
        token=Secret(ROOT_TOKEN),
        kv_version=2,
        secret_path=f"{KV2_MOUNT}/data/{subpath}",
        metadata_path=f"{KV2_MOUNT}/metadata/{subpath}",
        timeout=5,
    )


class VaultContract(StoreContract):
    """The store contract on a VaultStore; subclasses give the settings (KV version, paths)."""

    @pytest.fixture
    def store(self, settings: VaultSettings) -> Iterator[Store]:
        s = VaultStore(settings)
        yield s
        s.close()

    @pytest.fixture
    def read_only_store(self, settings: VaultSettings) -> Iterator[Store]:
        s = VaultStore(settings, read_only=True)
        yield s
        s.close()


class TestVaultKV1(VaultContract):
    @pytest.fixture
    def settings(self, bao_server: BaoServer) -> VaultSettings:
        return kv1_settings(bao_server, f"{KV1_MOUNT}/contract-{uuid.uuid4().hex[:8]}")


class TestVaultKV2(VaultContract):
    @pytest.fixture
    def settings(self, bao_server: BaoServer) -> VaultSettings:
        return kv2_settings(bao_server, f"contract-{uuid.uuid4().hex[:8]}")
