"""Bulk reads: SqlStore.read_many, the value cache's read-ahead after a listing, the refresher's
bulk pass, and the start-up filter for plaintext rows. Correctness only (the benchmark measures speed)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from secretfs import crypto
from secretfs.cache import PREFETCH_WINDOW, RETRY_AFTER, CachingStore
from secretfs.errors import BackendUnavailable, IntegrityError, NotFound
from secretfs.stores.base import SecretRecord
from secretfs.stores.sql import READ_MANY_CHUNK, SqlStore, make_engine
from secretfs.stores.sql_setup import prepare_database
from tests.support.clock import FakeClock
from tests.support.counting import CountingStore
from tests.test_sql_store import Db, insert_rows, make_foreign


@pytest.fixture
def key() -> bytes:
    return crypto.derive_key(secrets.token_urlsafe(24))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        path = tmp_path / "secretfs.db"
        return Db("sqlite", f"sqlite:///{path}", path)
    return Db("postgresql", request.getfixturevalue("pg_url"), None)


def open_store(db: Db, key: bytes) -> SqlStore:
    engine = make_engine(db.url, timeout=10)
    prepare_database(engine, key)
    return SqlStore(engine, key)


def test_read_many_matches_read(db: Db, key: bytes) -> None:
    make_foreign(db)
    insert_rows(
        db,
        [
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "older"}), "updated": "2024-05-01T10:00:00.000Z"},
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "newer"}), "updated": "2024-05-01 12:00:00"},
            {"name": "vault/ref", "secret": {"path": "secret/x"}, "is_vault": True},
        ],
    )
    store = open_store(db, key)
    # Written under another key after the key check: it does not decrypt.
    insert_rows(db, [{"name": "bad", "secret": crypto.encrypt(crypto.derive_key("other"), {"value": "x"})}])
    try:
        for i in range(READ_MANY_CHUNK + 3):  # more than one chunk
            store.write(f"d/s{i:04d}", {"value": str(i)})
        names = ["dup", "bad", "vault/ref", "missing", *(f"d/s{i:04d}" for i in range(READ_MANY_CHUNK + 3))]
        records = store.read_many(names)
        assert set(records) == {"dup", *(f"d/s{i:04d}" for i in range(READ_MANY_CHUNK + 3))}
        for name, record in records.items():
            assert record == store.read(name)
        assert records["dup"].value == {"value": "newer"}
        with pytest.raises(IntegrityError):
            store.read("bad")
        assert store.read_many([]) == {}
    finally:
        store.close()


@pytest.fixture
def counting() -> Iterator[CountingStore]:
    store = CountingStore()
    for i in range(PREFETCH_WINDOW + 10):
        store.write(f"dir/f{i:04d}", {"value": str(i)})
    store.write("top", "t")
    yield store


def test_listing_reads_ahead_in_one_query(counting: CountingStore) -> None:
    cache = CachingStore(counting, ttl=60)
    listing = cache.list_dir("dir")
    names = [f"dir/{base}" for base in listing.files]
    values = [cache.read(name).value for name in names]
    assert values == [{"value": str(i)} for i in range(PREFETCH_WINDOW + 10)]
    # Two windows: the first read fetched PREFETCH_WINDOW names, the first miss after them the rest.
    assert [len(batch) for batch in counting.bulk] == [PREFETCH_WINDOW, 10]
    assert counting.reads == []


def test_read_ahead_only_for_listed_names(counting: CountingStore) -> None:
    cache = CachingStore(counting, ttl=60)
    assert cache.read("dir/f0000").value == {"value": "0"}  # no listing yet: a plain read
    assert counting.bulk == [] and counting.reads == ["dir/f0000"]
    cache.list_dir("dir")
    with pytest.raises(NotFound):
        cache.read("dir/nope")  # not in the listing: a plain read
    assert counting.bulk == []


def test_read_ahead_misses_fall_back_to_plain_reads(counting: CountingStore) -> None:
    cache = CachingStore(counting, ttl=60)
    cache.list_dir("dir")
    counting.delete("dir/f0000")  # listed, then deleted: the bulk read does not return it
    with pytest.raises(NotFound):
        cache.read("dir/f0000")
    assert counting.reads == ["dir/f0000"]
    counting.down = True
    with pytest.raises(BackendUnavailable):
        cache.read("dir/f0300")  # outage: the plain read applies the outage policy


def test_values_only_read_ahead_are_not_served_in_an_outage(counting: CountingStore) -> None:
    now = [0.0]
    cache = CachingStore(counting, ttl=1, max_stale=100, clock=lambda: now[0])
    cache.list_dir("dir")
    cache.read("dir/f0000")  # reads f0001 ahead too
    now[0] = 5.0
    counting.down = True
    assert cache.read("dir/f0000").value == {"value": "0"}  # read before: served within max_stale
    with pytest.raises(BackendUnavailable):
        cache.read("dir/f0001")  # never read: fails as a value never fetched does


def test_read_ahead_respects_ttl_and_invalidation(counting: CountingStore) -> None:
    now = [0.0]
    cache = CachingStore(counting, ttl=5, clock=lambda: now[0])
    cache.list_dir("dir")
    cache.read("dir/f0000")
    counting.write("dir/f0001", {"value": "changed"})
    cache.invalidate("dir/f0001")
    assert cache.read("dir/f0001").value == {"value": "changed"}
    now[0] = 10.0  # everything expired: the next miss reads ahead again
    counting.write("dir/f0002", {"value": "later"})
    assert cache.read("dir/f0002").value == {"value": "later"}


# ----- start-up: the database filters out rows that are surely encrypted ---------------------------

NEAR_ENVELOPES: list[Any] = [
    {"__encrypted": "V1:abc"},
    {"__encrypted": "v1"},
    {"__encrypted": 5},
    {"__encrypted": None},
    {"__encrypted": ["v1:abc"]},
    {"__encrypted": {"v": "v1:abc"}},
    {"nested": {"__encrypted": "v1:abc"}},
    ["__encrypted", "v1:abc"],
    "v1:abc",
    '{"__encrypted": "v1:abc"}',
    {"value": "plain"},
    {},
]


def test_startup_filter_keeps_the_exact_envelope_rule(db: Db, key: bytes) -> None:
    make_foreign(db)
    envelope = crypto.encrypt(key, {"value": "already"})
    with_extra = {**crypto.encrypt(key, {"value": "extra"}), "extra": 1}  # is_encrypted: yes
    rows = [{"name": f"near/{i}", "secret": value} for i, value in enumerate(NEAR_ENVELOPES)]
    rows += [{"name": "enc", "secret": envelope}, {"name": "extra", "secret": with_extra}]
    insert_rows(db, rows)
    engine = make_engine(db.url, timeout=10)
    objects = [(i, value) for i, value in enumerate(NEAR_ENVELOPES) if isinstance(value, dict)]
    try:
        # A value that is not a JSON object is a bad row (tests/test_bad_rows.py): left as it is.
        assert prepare_database(engine, key) == len(objects)
        stored = db.stored()
        assert stored["enc"] == [envelope]
        assert stored["extra"] == [with_extra]
        store = SqlStore(engine, key)
        for i, value in objects:
            (row,) = stored[f"near/{i}"]
            assert crypto.is_encrypted(row) and crypto.decrypt(key, row) == value
            assert store.read(f"near/{i}").value == value
        for i, value in enumerate(NEAR_ENVELOPES):
            if not isinstance(value, dict):
                assert stored[f"near/{i}"] == [value]
                with pytest.raises(IntegrityError):
                    store.read(f"near/{i}")
        assert prepare_database(engine, key) == 0
    finally:
        engine.dispose()


def test_startup_filter_with_duplicate_envelope_keys(tmp_path: Path, key: bytes) -> None:
    # SQLite keeps JSON text as written: with "__encrypted" twice, Python's json takes the last one.
    db = Db("sqlite", f"sqlite:///{tmp_path / 'f.db'}", tmp_path / "f.db")
    make_foreign(db)
    token = crypto.encrypt(key, {"value": "x"})["__encrypted"]
    db.execute(
        "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
        "VALUES ('a', 'dup-key', :secret, 0, '2024-05-01 10:00:00', '2024-05-01 10:00:00')",
        {"secret": f'{{"__encrypted": "{token}", "__encrypted": 7}}'},
    )
    engine = make_engine(db.url, timeout=10)
    try:
        assert prepare_database(engine, key) == 1
        assert SqlStore(engine, key).read("dup-key").value == {"__encrypted": 7}
    finally:
        engine.dispose()


# ----- SQLite: reads on a raw connection per thread --------------------------------------------------


def test_sqlite_fast_reads(tmp_path: Path, key: bytes) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'f.db'}", tmp_path / "f.db")
    store = open_store(db, key)
    try:
        assert store._fast is not None
        store.write("a", {"value": "1"})
        results: list[Any] = []
        threads = [threading.Thread(target=lambda: results.append(store.read("a").value)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [{"value": "1"}] * 4
        store.write("a", {"value": "2"})  # written through the engine, seen by the raw connection
        assert store.read("a").value == {"value": "2"}
        assert store.read_many(["a", "b"]) == {"a": store.read("a")}
        with pytest.raises(NotFound):
            store.read("b")
        store.close()
        assert store.read("a").value == {"value": "2"}  # reconnects after close, as the engine does
        db.execute("DROP TABLE secret")
        with pytest.raises(BackendUnavailable):
            store.read("a")
        with pytest.raises(BackendUnavailable):
            store.read_many(["a"])
    finally:
        store.close()


def test_no_fast_reads_for_engines_not_made_here(tmp_path: Path, key: bytes) -> None:
    # Only engines from make_engine (whose timeout and pragmas the raw connections copy) read raw.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        assert SqlStore(engine, key)._fast is None
    finally:
        engine.dispose()


def test_a_down_backend_is_probed_once_per_interval() -> None:
    """While the backend is down, one request probes it per RETRY_AFTER; the others fail at once."""

    class Attempts(CountingStore):
        attempts = 0

        def read(self, name: str) -> SecretRecord:
            self.attempts += 1
            return super().read(name)

    clock = FakeClock()
    store = Attempts()
    store.write("a", {"value": "1"})
    store.write("b", {"value": "2"})
    cache = CachingStore(store, ttl=0, clock=clock)
    store.down = True
    with pytest.raises(BackendUnavailable):
        cache.read("a")
    assert store.attempts == 1
    for _ in range(3):
        clock.advance(RETRY_AFTER / 4)
        with pytest.raises(BackendUnavailable):
            cache.read("b")  # within the interval: not sent to the backend, and no new failure
    assert store.attempts == 1
    clock.advance(RETRY_AFTER / 4)
    store.down = False
    assert cache.read("b").value == {"value": "2"}  # the next probe finds it back
    assert cache.health.as_dict()["state"] == "healthy"
