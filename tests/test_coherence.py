"""The coherence owner without a mount: which node a name leads to, and when a node is retired."""

from __future__ import annotations

import threading

from secretfs.cache import CachingStore
from secretfs.coherence import Coherence
from secretfs.freshness import FreshnessPolicy
from secretfs.nodes import Nodes
from secretfs.view import View, ViewOptions
from tests.support.counting import CountingStore
from tests.support.wait import wait_until


def make(ttl: float = 60.0) -> tuple[CountingStore, Coherence, list[tuple[int, str]]]:
    store = CountingStore()
    cache = CachingStore(store, ttl=ttl)
    coherence = Coherence(View(cache, ViewOptions()), cache, Nodes(), FreshnessPolicy(ttl=ttl))
    dropped: list[tuple[int, str]] = []

    def drop(parent: int, name: str) -> int:
        dropped.append((parent, name))
        return 0

    coherence.invalidate_entry = drop
    coherence.notifier.start()
    return store, coherence, dropped


def flushed(coherence: Coherence) -> None:
    """Wait until the notifier sent everything queued so far."""
    done = threading.Event()
    coherence.notifier.submit(done.set)
    assert done.wait(5)


def test_a_node_stands_for_one_version() -> None:
    store, coherence, _ = make(ttl=0)
    store.write("d/s", {"value": "one"})
    first = coherence.lookup("d/s")
    assert coherence.lookup("d/s") is first  # same content: the same inode
    store.write("d/s", {"value": "a longer two"})
    second = coherence.lookup("d/s")
    assert second is not first and second.ino != first.ino
    assert first.version == b"one" and first.name is None  # retired, its bytes unchanged
    assert second.version == b"a longer two"


def test_policy_splits_the_bound() -> None:
    kernel = FreshnessPolicy(cache_mode="kernel", ttl=5)
    direct = FreshnessPolicy(cache_mode="direct", ttl=5)
    assert kernel.entry_timeout + kernel.cache_ttl <= kernel.ttl
    assert direct.entry_timeout + direct.cache_ttl <= direct.ttl


def test_check_retires_changed_and_deleted_in_one_bulk_read() -> None:
    store, coherence, dropped = make()
    for i in range(4):
        store.write(f"d/s{i}", {"value": str(i)})
    directory = coherence.lookup("d")
    nodes = [coherence.lookup(f"d/s{i}") for i in range(4)]
    store.bulk.clear()
    store.reads.clear()
    store.write("d/s1", {"value": "changed"})
    store.delete("d/s2")
    assert coherence.check() == 2
    assert len(store.bulk) == 1
    assert store.reads == ["d/s2"]  # only the one the bulk read did not return is asked for alone
    assert nodes[1].name is None and nodes[2].name is None and nodes[0].name == "d/s0"
    flushed(coherence)
    assert sorted(dropped) == [(directory.ino, "s1"), (directory.ino, "s2")]
    assert coherence.lookup("d/s1").version == b"changed"


def test_check_in_an_outage_keeps_nodes() -> None:
    store, coherence, dropped = make()
    store.write("s", {"value": "v"})
    node = coherence.lookup("s")
    store.down = True
    assert coherence.check() == 0
    assert node.name == "s" and dropped == []


def test_a_node_being_written_owns_its_name() -> None:
    store, coherence, _ = make(ttl=0)
    store.write("s", {"value": "v"})
    node = coherence.lookup("s")
    node.pending = bytearray(b"being written")
    store.write("s", {"value": "elsewhere"})
    assert coherence.lookup("s") is node
    assert coherence.check() == 0  # nodes with pending writes are not re-read


def test_a_poke_gets_a_pass_and_one_follow_up() -> None:
    # A watcher event may come before the writer's commit is visible: one more pass follows shortly.
    store, coherence, _ = make()
    store.write("s", {"value": "v"})
    coherence.lookup("s")
    coherence.start()
    try:
        coherence.poke()
        wait_until(lambda: coherence.passes >= 2, 10, message="no follow-up pass")
        threading.Event().wait(0.5)
        assert coherence.passes == 2
    finally:
        coherence.stop()
