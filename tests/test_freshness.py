"""Freshness: whatever the cache state, a read never returns a value older than the TTL promises.

Values are changed behind the mount (another process on SQLite, another client on PostgreSQL,
`bao kv put` on Vault), with same-size changes, which the kernel would never notice by itself.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from secretfs.cache import CachingStore
from secretfs.freshness import Freshness
from secretfs.stores.memory import MemoryStore
from tests.support.bao import BaoServer, vault_env
from tests.support.mount import Instance, make_instance, mounted, os_read

TTL = 1.0
# The refresher runs every TTL and a pass takes one backend read per tracked secret.
SLACK = 1.5


def warm(path: Path, expected: bytes) -> None:
    for _ in range(20):
        assert os_read(path) == expected


def assert_fresh_within(path: Path, expected: bytes, bound: float) -> float:
    """Read until the new value shows; fail if it takes longer than bound. Returns the delay."""
    started = time.monotonic()
    while True:
        got = os_read(path)
        waited = time.monotonic() - started
        if got == expected:
            return waited
        assert waited <= bound, f"still {got!r} after {waited:.2f}s (bound {bound}s)"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
@pytest.mark.parametrize("read_only", [False, True])
def test_sqlite_change_by_another_process(instance: Instance, tmp_path: Path, mode: str, read_only: bool) -> None:
    instance.cli("put", "rot", input=b"value-AAAA")
    args = ["--cache-mode", mode, "--cache-ttl", str(TTL)] + (["--read-only"] if read_only else [])
    with mounted(instance, tmp_path / "m", *args) as m:
        warm(m.path / "rot", b"value-AAAA")
        for new in (b"value-BBBB", b"value-CCCC"):  # same size each time
            instance.cli("put", "rot", input=new)
            assert_fresh_within(m.path / "rot", new, TTL + SLACK)
        instance.cli("rm", "rot")
        deadline = time.monotonic() + TTL + SLACK
        while (m.path / "rot").exists():
            assert time.monotonic() < deadline, "a deleted secret is still shown"
            time.sleep(0.02)
        instance.cli("put", "new-one", input=b"fresh")
        assert_fresh_within(m.path / "new-one", b"fresh", TTL + SLACK)


def test_kernel_mode_really_caches(tmp_path: Path, pg_url: str) -> None:
    # The control for the tests here: without a watcher (PostgreSQL) and with a long TTL, a kernel
    # mount keeps serving what it has, while a direct mount with the cache off sees the change at
    # once. So the freshness above is the refresher's and the watcher's doing, not an uncached read.
    inst = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=pg_url)
    inst.cli("put", "cached", input=b"original")
    with (
        mounted(inst, tmp_path / "k", "--read-only", "--cache-ttl", "600") as kernel,
        mounted(inst, tmp_path / "d", "--read-only", "--cache-mode", "direct", "--cache-ttl", "0") as direct,
    ):
        warm(kernel.path / "cached", b"original")
        warm(direct.path / "cached", b"original")
        inst.cli("put", "cached", input=b"replaced")
        assert os_read(direct.path / "cached") == b"replaced"
        assert os_read(kernel.path / "cached") == b"original"


def test_postgresql_change_seen_within_ttl_in_kernel_mode(tmp_path: Path, pg_url: str) -> None:
    # PostgreSQL has no file to watch: the refresher alone must bring the change in.
    inst = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=pg_url)
    inst.cli("put", "pgsecret", input=b"pg-value-1")
    with mounted(inst, tmp_path / "m", "--cache-ttl", str(TTL)) as m:
        warm(m.path / "pgsecret", b"pg-value-1")
        inst.cli("put", "pgsecret", input=b"pg-value-2")
        assert_fresh_within(m.path / "pgsecret", b"pg-value-2", TTL + SLACK)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_vault_change_by_bao_kv_put(tmp_path: Path, bao_server: BaoServer, mode: str) -> None:
    sub = f"fresh-{uuid.uuid4().hex[:8]}"
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/token", "value=vault-AAAA")
    inst = make_instance(tmp_path, **vault_env(bao_server, f"secret/data/{sub}", mode="READONLY_VAULT"))
    with mounted(inst, tmp_path / "m", "--cache-mode", mode, "--cache-ttl", str(TTL)) as m:
        warm(m.path / "token", b"vault-AAAA")
        bao_server.cli("kv", "put", "-mount=secret", f"{sub}/token", "value=vault-BBBB")
        assert_fresh_within(m.path / "token", b"vault-BBBB", TTL + SLACK)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_own_write_seen_as_soon_as_close_returns(instance: Instance, tmp_path: Path, mode: str) -> None:
    """Close-to-open on one mount: once a writer's close() returns, stat and read show the new value.

    A reader or a stat in between (which makes the kernel cache the committed size and pages) must
    not leave the old size or contents behind. Found by the fuzzer: in `kernel` mode stat gave the
    pre-write size after close; `direct` mode kept it for libfuse's 1 s attribute timeout.
    """
    instance.cli("put", "f", input=b"")
    with mounted(instance, tmp_path / "m", "--cache-mode", mode) as m:
        path = m.path / "f"
        value = b""
        for i in range(60):
            data = bytes([65 + i % 26]) * (1 + i % 5)
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, data, len(value) + i % 3)
                assert os_read(path) == value  # the committed value, cached by the kernel
                assert os.stat(path).st_size == len(value)  # a stat during the write caches it too
            finally:
                os.close(fd)
            value = value.ljust(len(value) + i % 3, b"\0") + data
            assert os.stat(path).st_size == len(value), i
            assert os_read(path) == value, i


def tracker(interval: float = 60.0) -> tuple[MemoryStore, Freshness, list[str]]:
    store = MemoryStore()
    notified: list[str] = []
    cache = CachingStore(store, ttl=0)
    fresh = Freshness(cache, on_change=lambda name, old, new: notified.append(name), interval=interval)
    return store, fresh, notified


def test_page_reads_keep_the_size_the_kernel_holds_until_it_asks_again() -> None:
    """A change the refresher finds must not reach READs before the kernel asked for the new size.

    The kernel cuts a page READ to the size it holds: serving a longer new value to a READ while the
    kernel holds the old size returned a torn value (the load test saw one). READs answer from the
    served record until an attribute request moves the name to the new one.
    """
    store, fresh, notified = tracker()
    store.write("s", {"value": "short"})
    assert fresh.read("s").value == {"value": "short"}  # GETATTR: the kernel holds size 5
    store.write("s", {"value": "much longer"})
    assert fresh.refresh_once() == 1
    assert notified == ["s"]  # the kernel's copy is invalidated
    assert fresh.read_page("s").value == {"value": "short"}  # a READ before the kernel asked again
    assert fresh.read("s").value == {"value": "much longer"}  # GETATTR: the new size
    assert fresh.read_page("s").value == {"value": "much longer"}
    assert fresh.refresh_once() == 0 and notified == ["s"]


def test_held_back_change_reaches_page_reads_after_a_ttl() -> None:
    """A reader that never asks for attributes (reads within the old size) still gets the new value
    within a TTL: the refresher moves the name on and invalidates again."""
    store, fresh, notified = tracker(interval=0.05)
    store.write("s", {"value": "one"})
    fresh.read("s")
    store.write("s", {"value": "two"})
    assert fresh.refresh_once() == 1
    assert fresh.read_page("s").value == {"value": "one"}
    fresh.refresh_once()  # within the TTL: still held back
    assert fresh.read_page("s").value == {"value": "one"} and notified == ["s"]
    time.sleep(0.06)
    fresh.refresh_once()
    assert fresh.read_page("s").value == {"value": "two"}
    assert notified == ["s", "s"]


def test_own_write_drops_a_held_back_change() -> None:
    store, fresh, _ = tracker()
    store.write("s", {"value": "one"})
    fresh.read("s")
    store.write("s", {"value": "two"})
    fresh.refresh_once()
    store.write("s", {"value": "three"})  # as the mount's own write would
    fresh.changed("s")
    assert fresh.read_page("s").value == {"value": "three"}
    assert fresh.read("s").value == {"value": "three"}
