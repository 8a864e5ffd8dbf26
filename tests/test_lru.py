"""BoundedLRU: the bound, the order of eviction, and unlocked use from many threads; and the value
cache's bound, which is one."""

from __future__ import annotations

import threading

from secretfs.cache import CachingStore
from secretfs.lru import BoundedLRU
from secretfs.stores.memory import MemoryStore


def test_get_put_pop_and_absent_keys() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(3)
    assert lru.get("a") is None and lru.peek("a") is None and lru.pop("a") is None
    lru.put("a", 1)
    lru.put("b", 2)
    assert (lru.get("a"), lru.peek("b"), len(lru)) == (1, 2, 2)
    assert "a" in lru and "c" not in lru
    assert lru.pop("a") == 1
    assert "a" not in lru and len(lru) == 1
    lru.clear()
    assert len(lru) == 0 and lru.get("b") is None


def test_least_recently_stored_goes_first() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("c", 3)
    assert "a" not in lru and lru.peek("b") == 2 and lru.peek("c") == 3
    assert len(lru) == 2


def test_get_makes_an_entry_recent_and_peek_does_not() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now b is the least recently used
    lru.put("c", 3)
    assert "b" not in lru and "a" in lru

    assert lru.peek("a") == 1  # a stays the least recently used
    lru.put("d", 4)
    assert "a" not in lru and "c" in lru and "d" in lru


def test_storing_again_replaces_and_makes_recent() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 10)
    lru.put("c", 3)
    assert lru.peek("a") == 10 and "b" not in lru and len(lru) == 2


def test_a_bound_of_zero_keeps_nothing() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(0)
    lru.put("a", 1)
    assert len(lru) == 0 and lru.get("a") is None


def test_unlocked_use_from_threads_never_raises_and_ends_within_bound() -> None:
    lru: BoundedLRU[int, int] = BoundedLRU(8)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def hammer(seed: int) -> None:
        try:
            start.wait()
            for i in range(20_000):
                key = (i * 7 + seed) % 32
                lru.put(key, i)
                lru.get((key + 1) % 32)
                lru.peek(key)
                if i % 3 == 0:
                    lru.pop((key + 2) % 32)
                if i % 1000 == 0:
                    lru.clear()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(lru) <= 8


def test_the_value_cache_keeps_the_most_recently_read() -> None:
    store = MemoryStore()
    for name in ("a", "b", "c"):
        store.write(name, {"value": name})
    cache = CachingStore(store, ttl=60, max_entries=2)
    first_a = cache.read("a")
    first_b = cache.read("b")
    assert cache.read("a") is first_a  # a hit, and a is now the most recently used
    cache.read("c")  # b goes
    assert cache.info()["cache"]["entries"] == 2
    assert cache.read("a") is first_a
    assert cache.read("b") is not first_b  # read from the store again
