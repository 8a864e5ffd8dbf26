"""The store contract (tests/contract.py) run against the memory store (and its bulk-reading test
double), SQLite and PostgreSQL. The Vault store's classes are in test_vault_contract.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from secretfs import crypto
from secretfs.stores.base import Store
from secretfs.stores.memory import MemoryStore
from secretfs.stores.sql import SqlStore, make_engine
from secretfs.stores.sql_setup import prepare_database
from tests.contract import StoreContract
from tests.support.counting import CountingStore


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    @pytest.fixture
    def read_only_store(self, store: MemoryStore) -> MemoryStore:
        # The memory store has no second handle on the same data: flip the flag on a twin that
        # shares the dict and lock.
        twin = MemoryStore(read_only=True)
        twin._data = store._data
        twin._lock = store._lock
        return twin


class TestCountingStore(StoreContract):
    """The tests' memory store with bulk reads (tests/support/counting.py) keeps the contract too."""

    @pytest.fixture
    def store(self) -> CountingStore:
        return CountingStore()

    @pytest.fixture
    def read_only_store(self, store: CountingStore) -> CountingStore:
        twin = CountingStore()
        twin.read_only = True
        twin._data = store._data
        twin._lock = store._lock
        return twin


def open_sql(url: str, key: bytes, *, read_only: bool = False) -> tuple[Engine, SqlStore]:
    engine = make_engine(url, timeout=10)
    prepare_database(engine, key, writable=not read_only)
    return engine, SqlStore(engine, key, read_only=read_only)


class SqlContract(StoreContract):
    """The SQL store over a URL given by `db_url`."""

    @pytest.fixture
    def key(self) -> bytes:
        return crypto.derive_key(secrets.token_urlsafe(24))

    @pytest.fixture
    def store(self, db_url: str, key: bytes) -> Iterator[Store]:
        _, store = open_sql(db_url, key)
        yield store
        store.close()

    @pytest.fixture
    def read_only_store(self, store: Store, db_url: str, key: bytes) -> Iterator[Store]:
        _, ro = open_sql(db_url, key, read_only=True)
        yield ro
        ro.close()


class TestSqliteStore(SqlContract):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'secretfs.db'}"


class TestPostgresStore(SqlContract):
    @pytest.fixture
    def db_url(self, pg_url: str) -> str:
        return pg_url
