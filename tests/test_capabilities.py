"""Declared store capabilities as the value cache uses them: only what is declared is used."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from secretfs.cache import CachingStore
from secretfs.stores.base import Capabilities, SecretRecord, bulk_reader, health_reporter, watcher
from secretfs.stores.memory import MemoryStore
from tests.support.counting import CountingStore


class UndeclaredStore(MemoryStore):
    """Has read_many and watch, declares neither: the cache must not call them."""

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        raise AssertionError("an undeclared bulk read was used")

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        raise AssertionError("an undeclared watch was used")


class WatchingStore(MemoryStore):
    capabilities = Capabilities(watch=True)

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Callable[[Sequence[str] | None], None]] = []
        self.stopped = 0

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        self.listeners.append(on_change)

        def stop() -> None:
            self.stopped += 1

        return stop


def test_plain_memory_store_declares_only_atomic_batches_and_file_attrs() -> None:
    store = MemoryStore()
    assert store.capabilities == Capabilities(atomic_batch=True, file_attrs=True)
    assert (bulk_reader(store), watcher(store), health_reporter(store)) == (None, None, None)


def test_cache_uses_a_declared_bulk_read() -> None:
    store = CountingStore()
    for i in range(4):
        store.write(f"d/f{i}", {"value": str(i)})
    cache = CachingStore(store, ttl=60)
    assert cache.can_fetch_many
    assert sorted(cache.fetch_many(["d/f0", "d/f1", "gone"])) == ["d/f0", "d/f1"]
    assert store.bulk == [["d/f0", "d/f1", "gone"]]


def test_cache_ignores_what_is_not_declared() -> None:
    store = UndeclaredStore()
    for i in range(4):
        store.write(f"d/f{i}", {"value": str(i)})
    cache = CachingStore(store, ttl=60)
    assert not cache.can_fetch_many and not cache.capabilities.watch
    cache.list_dir("d")
    assert cache.read("d/f0").value == {"value": "0"}  # no read-ahead: a plain read
    assert cache.watch(lambda names: None) is None


def test_cache_passes_a_declared_watch_through() -> None:
    store = WatchingStore()
    cache = CachingStore(store)
    assert cache.capabilities.watch and watcher(cache) is not None
    calls: list[int] = []
    stop = cache.watch(lambda names: calls.append(1))
    assert stop is not None
    store.listeners[0](None)
    assert calls == [1]
    stop()
    assert store.stopped == 1


def test_cache_declares_its_health() -> None:
    cache = CachingStore(MemoryStore())
    # The memory store's batches and file attrs pass through.
    assert cache.capabilities == Capabilities(health=True, atomic_batch=True, file_attrs=True)
    reporter = health_reporter(cache)
    assert reporter is not None
    assert reporter.health.as_dict()["state"] == "healthy"
    assert reporter.health.degraded_since is None
