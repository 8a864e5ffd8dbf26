"""The change detector (secretfs.changes): real value changes only, reported once, never a value.

Against a real SQLite store; the thread's coalescing and failure handling against the counting
memory store, whose reads can be held or taken down.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from secretfs.changes import ChangeFeed, Changes
from secretfs.config import load_settings
from secretfs.errors import BackendUnavailable, IntegrityError
from secretfs.stores import Store, open_store
from secretfs.stores.base import SecretRecord
from secretfs.stores.memory import MemoryStore
from tests.support.counting import CountingStore
from tests.support.mount import Instance, make_instance
from tests.support.wait import wait_until

STAMP = "2024-05-01 10:00:00"
MARKER = "VALUEMARKER"


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    inst = make_instance(tmp_path)
    inst.cli("put", "seed", input=b"seed-value")  # the database and its key
    return inst


@pytest.fixture
def store(instance: Instance) -> Iterator[Store]:
    opened = open_store(load_settings(instance.env))
    try:
        yield opened
    finally:
        opened.close()


def db_file(instance: Instance) -> Path:
    return instance.data_dir / "secretfs.db"


def raw_rows(db: Path, name: str) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT secret, updated_at FROM secret WHERE name = ?", (name,)))
    finally:
        conn.close()


def insert_bad_row(db: Path, name: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
            (str(uuid.uuid4()), name, f"not json {MARKER}", STAMP, STAMP),
        )
        conn.commit()
    finally:
        conn.close()


def spoil_row(db: Path, name: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE secret SET secret = ? WHERE name = ?", (f"not json {MARKER}", name))
        conn.commit()
    finally:
        conn.close()


class Collector:
    """A subscriber that keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[Changes] = []
        self._lock = threading.Lock()

    def __call__(self, changes: Changes) -> None:
        with self._lock:
            self.batches.append(changes)

    def names(self) -> list[str]:
        with self._lock:
            return [name for batch in self.batches for name in sorted(batch.names)]


@contextlib.contextmanager
def running(store: Store, poll_interval: float) -> Iterator[tuple[ChangeFeed, Collector]]:
    """A primed feed over store, its thread started (no store watcher), and what it reported."""
    feed = ChangeFeed(store, poll_interval=poll_interval)
    feed.prime()
    got = Collector()
    feed.subscribe(got)
    feed.start(watch_store=False)
    try:
        yield feed, got
    finally:
        feed.stop()


# ----- refresh: what counts as a change ----------------------------------------------------------------


def test_the_same_value_put_again_is_no_change(instance: Instance, store: Store) -> None:
    store.write("a", {"value": f"{MARKER}-1"})
    feed = ChangeFeed(store)
    feed.prime()
    before = raw_rows(db_file(instance), "a")
    store.write("a", {"value": f"{MARKER}-1"})
    assert raw_rows(db_file(instance), "a") != before  # re-encrypted: the stored row did change
    assert not feed.refresh()
    assert not feed.refresh(["a"])
    store.write("a", {"value": f"{MARKER}-2"})
    assert feed.refresh(["a"]) == Changes(changed=frozenset({"a"}))


def test_added_changed_removed_are_each_reported_once(store: Store) -> None:
    store.write_many({"keep": {"value": "k"}, "edit": {"value": "e1"}, "drop": {"value": "d"}})
    feed = ChangeFeed(store)
    feed.prime()
    assert feed.known == {"seed", "keep", "edit", "drop"}
    store.write("new", {"value": "n"})
    store.write("edit", {"value": "e2"})
    store.delete("drop")
    changes = feed.refresh()
    assert changes == Changes(added=frozenset({"new"}), changed=frozenset({"edit"}), removed=frozenset({"drop"}))
    assert changes.names == {"new", "edit", "drop"}
    assert [changes.kind(n) for n in ("new", "edit", "drop")] == ["added", "changed", "removed"]
    with pytest.raises(KeyError):
        changes.kind("keep")
    assert not feed.refresh()
    assert not feed.refresh(["new", "edit", "drop", "keep"])


def test_refresh_of_names_checks_only_those(store: Store) -> None:
    store.write_many({"a": {"value": "1"}, "b": {"value": "1"}})
    feed = ChangeFeed(store)
    feed.prime()
    store.write_many({"a": {"value": "2"}, "b": {"value": "2"}, "c": {"value": "new"}})
    store.delete("seed")
    assert feed.refresh(["a", "c", "nowhere"]) == Changes(added=frozenset({"c"}), changed=frozenset({"a"}))
    assert feed.refresh(["seed"]) == Changes(removed=frozenset({"seed"}))
    assert feed.refresh() == Changes(changed=frozenset({"b"}))


def test_only_names_under_the_prefix_count(store: Store) -> None:
    store.write_many({"tls/a": {"value": "1"}, "tlsx": {"value": "1"}, "other": {"value": "1"}})
    feed = ChangeFeed(store, prefix="tls/")
    feed.prime()
    assert feed.known == {"tls/a"}
    store.write_many(
        {"tls/a": {"value": "2"}, "tls/b/c": {"value": "1"}, "tlsx": {"value": "2"}, "other": {"value": "2"}}
    )
    assert feed.refresh(["tlsx", "other"]) == Changes()
    assert feed.refresh() == Changes(added=frozenset({"tls/b/c"}), changed=frozenset({"tls/a"}))


def test_a_bad_row_does_not_break_the_others(
    instance: Instance, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.write_many({"good": {"value": "g1"}, "later_bad": {"value": f"{MARKER}-orig"}})
    insert_bad_row(db_file(instance), "bad")
    feed = ChangeFeed(store)
    feed.prime()
    assert feed.known == {"seed", "good", "later_bad"}  # the unreadable row is not in the baseline
    spoil_row(db_file(instance), "later_bad")  # a known secret becomes unreadable
    store.write("good", {"value": "g2"})
    with caplog.at_level(logging.DEBUG):
        assert feed.refresh() == Changes(changed=frozenset({"good"}))
        assert feed.refresh(["bad", "later_bad", "good"]) == Changes()
    assert "later_bad" in feed.known  # keeps its old digest, reported neither removed nor changed
    assert MARKER not in caplog.text
    store.write("later_bad", {"value": f"{MARKER}-orig"})  # readable again, with the value it had
    assert feed.refresh() == Changes()
    store.write("later_bad", {"value": f"{MARKER}-new"})
    assert feed.refresh() == Changes(changed=frozenset({"later_bad"}))


class FlakyMemory(MemoryStore):
    """A memory store without bulk reads, one of whose names cannot be read."""

    def read(self, name: str) -> SecretRecord:
        if name == "broken":
            raise IntegrityError(f"secret {name!r} cannot be decrypted")
        return super().read(name)


def test_stores_without_bulk_reads_are_read_one_by_one() -> None:
    store = FlakyMemory()
    store.write_many({"a": {"value": "1"}, "broken": {"value": "x"}})
    feed = ChangeFeed(store)
    feed.prime()
    assert feed.known == {"a"}
    store.write("a", {"value": "2"})
    store.write("b", {"value": "1"})
    assert feed.refresh() == Changes(added=frozenset({"b"}), changed=frozenset({"a"}))
    store.delete("b")
    assert feed.refresh(["b", "broken"]) == Changes(removed=frozenset({"b"}))


def test_the_feed_keeps_digests_never_values(store: Store) -> None:
    store.write("a", {"value": MARKER, "nested": [MARKER]})
    feed = ChangeFeed(store)
    feed.prime()
    assert MARKER not in repr(vars(feed))
    digests = vars(feed)["_digests"]
    assert all(isinstance(d, bytes) and len(d) == 16 for d in digests.values())


def test_an_outage_reports_nothing_and_leaves_the_baseline(caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore()
    store.write("a", {"value": "1"})
    feed = ChangeFeed(store)
    feed.prime()
    store.write("a", {"value": "2"})
    store.down = True
    with pytest.raises(BackendUnavailable):
        feed.prime()
    with caplog.at_level(logging.WARNING, logger="secretfs.changes"):
        assert feed.refresh() == Changes()
        assert feed.refresh(["a"]) == Changes()
    warnings = [r for r in caplog.records if r.name == "secretfs.changes"]
    assert len(warnings) == 1 and warnings[0].exc_info is None  # one line per outage, no traceback
    store.down = False
    assert feed.refresh() == Changes(changed=frozenset({"a"}))


# ----- the thread ---------------------------------------------------------------------------------------


class GatedStore(CountingStore):
    """Counting store whose next bulk read (once armed) waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(10)
        return super().read_many(names)


@pytest.fixture
def gated() -> Iterator[tuple[GatedStore, ChangeFeed, Collector]]:
    store = GatedStore()
    store.write_many({n: {"value": "1"} for n in ("a", "b", "c", "d")})
    feed = ChangeFeed(store, poll_interval=0)
    feed.prime()
    got = Collector()
    feed.subscribe(got)
    feed.start(watch_store=False)
    try:
        yield store, feed, got
    finally:
        store.release.set()
        feed.stop()


def test_hints_that_arrive_during_a_refresh_are_coalesced(gated: tuple[GatedStore, ChangeFeed, Collector]) -> None:
    store, feed, got = gated
    store.write("a", {"value": "2"})
    store.bulk.clear()
    store.armed = True
    feed.hint(["a"])
    assert store.entered.wait(5)
    store.write_many({"b": {"value": "2"}, "c": {"value": "2"}})
    for names in (["b"], ["c"], ["b"], ["outside-of-nothing"]):
        feed.hint(names)
    store.release.set()
    wait_until(lambda: len(got.batches) == 2, 5, message=lambda: f"batches: {got.batches}")
    assert got.batches == [Changes(changed=frozenset({"a"})), Changes(changed=frozenset({"b", "c"}))]
    assert store.bulk == [["a"], ["b", "c", "outside-of-nothing"]]  # one refresh for the three hints


def test_a_hint_of_any_name_wins(gated: tuple[GatedStore, ChangeFeed, Collector]) -> None:
    store, feed, got = gated
    store.bulk.clear()
    store.armed = True
    feed.hint(["a"])
    assert store.entered.wait(5)
    store.write_many({"d": {"value": "2"}, "e": {"value": "1"}})
    feed.hint(["b"])
    feed.hint(None)
    feed.hint(["c"])
    store.release.set()
    wait_until(lambda: got.batches, 5)
    assert got.batches == [Changes(added=frozenset({"e"}), changed=frozenset({"d"}))]
    assert store.bulk == [["a"], ["a", "b", "c", "d", "e"]]


def test_a_failing_subscriber_does_not_stop_the_feed(caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore()
    store.write("a", {"value": "1"})
    feed = ChangeFeed(store, poll_interval=0)
    feed.prime()

    def fail(changes: Changes) -> None:
        raise RuntimeError(f"subscriber broke on {MARKER}")

    got = Collector()
    feed.subscribe(fail)
    feed.subscribe(got)
    feed.start(watch_store=False)
    try:
        with caplog.at_level(logging.ERROR, logger="secretfs.changes"):
            for count in (1, 2):
                store.write("a", {"value": str(count) * 2})
                feed.hint(["a"])
                wait_until(lambda: len(got.batches) == count, 5)  # noqa: B023
    finally:
        feed.stop()
    assert got.names() == ["a", "a"]
    assert caplog.text.count("RuntimeError") == 2
    assert MARKER not in caplog.text


def test_an_outage_in_the_thread_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore()
    store.write("a", {"value": "1"})
    feed = ChangeFeed(store, poll_interval=0.05)
    feed.prime()
    got = Collector()
    feed.subscribe(got)
    store.down = True
    feed.start(watch_store=False)
    try:
        store.write("a", {"value": "2"})
        feed.hint(["a"])
        wait_until(lambda: feed.refreshes == 0 and "trying again" in caplog.text, 5)
        store.down = False
        wait_until(lambda: got.batches, 5)
    finally:
        feed.stop()
    assert got.batches == [Changes(changed=frozenset({"a"}))]


def test_polling_finds_changes_without_hints(store: Store) -> None:
    with running(store, 0.05) as (_, got):
        store.write("polled", {"value": "1"})
        wait_until(lambda: got.batches, 5)
    assert got.batches == [Changes(added=frozenset({"polled"}))]


def test_no_polling_means_hints_only() -> None:
    store = CountingStore()
    with running(store, 0) as (feed, got):
        store.write("a", {"value": "1"})
        feed.hint(["unrelated"])
        wait_until(lambda: feed.refreshes == 1, 5)
        assert not got.batches  # the hint named another secret, and nothing polls
        feed.hint(None)
        wait_until(lambda: got.batches, 5)
    assert got.batches == [Changes(added=frozenset({"a"}))]


def test_a_write_by_another_process_is_reported_through_the_store_watcher(instance: Instance, store: Store) -> None:
    instance.cli("put", "a", input=b"first")
    feed = ChangeFeed(store, poll_interval=0)  # no polling: only the store's watcher can tell
    feed.prime()
    got = Collector()
    feed.subscribe(got)
    feed.start(watch_store=True)
    try:
        instance.cli("put", "a", input=b"second")
        wait_until(lambda: got.names() == ["a"], 5, message=lambda: f"seen: {got.names()}")
        instance.cli("put", "a", input=b"second")  # the same value again: not a change
        instance.cli("put", "b", input=b"new")
        wait_until(lambda: "b" in got.names(), 5, message=lambda: f"seen: {got.names()}")
    finally:
        feed.stop()
    assert got.names() == ["a", "b"]
    assert got.batches[0].kind("a") == "changed" and got.batches[-1].kind("b") == "added"


def test_after_stop_hints_do_nothing(store: Store) -> None:
    feed = ChangeFeed(store, poll_interval=0)
    feed.prime()
    feed.start()
    thread = vars(feed)["_thread"]
    assert isinstance(thread, threading.Thread) and thread.is_alive()
    feed.stop()
    assert not thread.is_alive()
    store.write("late", {"value": "1"})
    feed.hint(None)  # ignored: nothing runs
    assert feed.refreshes == 0
    assert feed.refresh() == Changes(added=frozenset({"late"}))  # still usable synchronously


def test_store_news_gets_one_follow_up_look() -> None:
    store = CountingStore()
    store.write("a", {"value": "1"})
    feed = ChangeFeed(store, poll_interval=0)
    feed.prime()
    feed.start(watch_store=False)
    try:
        feed.store_hint(["a"])  # such news can precede the visible commit: looked at twice
        wait_until(lambda: feed.refreshes == 2, 5)
        feed.hint(["a"])  # a plain hint: once
        wait_until(lambda: feed.refreshes == 3, 5)
    finally:
        feed.stop()
    assert store.bulk == [["a"], ["a"], ["a"], ["a"]]  # the prime's full read, then the three looks
