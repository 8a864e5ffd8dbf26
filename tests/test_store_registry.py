"""The store registry: every mode has one opener, and open_store goes through it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from secretfs.config import MODES, Settings, load_settings
from secretfs.stores import OPENERS, open_store
from secretfs.stores.base import Store
from secretfs.stores.memory import MemoryStore
from secretfs.stores.sql import SqlStore
from secretfs.stores.vault import VaultStore
from tests.support.bao import BaoServer, vault_env


def db_settings(tmp_path: Path) -> Settings:
    return load_settings({"ARCHESTRA_SECRETS_ENCRYPTION_SECRET": "registry-test-secret"}, data_dir=tmp_path)


def test_every_mode_has_an_opener() -> None:
    assert set(OPENERS) == set(MODES)


@pytest.mark.parametrize("read_only", [False, True])
def test_open_store_dispatches_through_the_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_only: bool
) -> None:
    opened: list[tuple[Settings, bool]] = []

    def opener(settings: Settings, *, read_only: bool) -> Store:
        opened.append((settings, read_only))
        return MemoryStore(read_only=read_only)

    monkeypatch.setitem(OPENERS, "DB", opener)
    settings = db_settings(tmp_path)
    store = open_store(settings, read_only=read_only)
    assert isinstance(store, MemoryStore)
    assert opened == [(settings, read_only)]


def test_db_mode_opens_the_sql_store(tmp_path: Path) -> None:
    for read_only in (False, True):
        store = open_store(db_settings(tmp_path), read_only=read_only)
        try:
            assert isinstance(store, SqlStore)
            assert store.read_only is read_only
            assert store.capabilities.bulk_read and store.capabilities.watch  # a SQLite file
        finally:
            store.close()


@pytest.mark.parametrize(("mode", "read_only"), [("VAULT", False), ("READONLY_VAULT", True)])
def test_vault_modes_open_the_vault_store(bao_server: BaoServer, mode: str, read_only: bool) -> None:
    settings = load_settings(vault_env(bao_server, f"secret/data/registry-{uuid.uuid4().hex[:8]}", mode=mode))
    assert settings.mode == mode
    store = open_store(settings)
    try:
        assert isinstance(store, VaultStore)
        assert store.read_only is read_only
        assert not store.capabilities.bulk_read and not store.capabilities.watch
    finally:
        store.close()
