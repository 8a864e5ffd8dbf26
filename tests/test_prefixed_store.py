"""PrefixedStore (secretfs.stores.prefixed): the store contract over a subtree, and its containment.

Each contract class runs the whole store contract on a PrefixedStore whose inner store already holds
secrets outside the prefix (and a file named like it): the contract must not see them, and after
every test they are still there, unchanged. The tests below it try to reach outside the prefix by
name, and check the name translation of the control socket and of a store's watcher.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from secretfs import crypto, render
from secretfs.control import ALL
from secretfs.errors import ConfigError, InvalidName, NameTooLong, NotFound
from secretfs.stores.base import Capabilities, DirListing, Store, bulk_reader, watcher
from secretfs.stores.memory import MemoryStore
from secretfs.stores.prefixed import PrefixedStore, full_names, normalize_prefix, open_prefixed, relative_names
from secretfs.stores.vault import VaultStore
from tests.contract import StoreContract
from tests.support.bao import BaoServer
from tests.support.counting import CountingStore
from tests.test_store_contract import open_sql
from tests.test_vault_contract import kv2_settings

PREFIX = "tls/"
OUTSIDE = {
    "outside": {"value": "o"},
    "tl": {"value": "tl"},
    "tls": {"value": "a file named like the prefix"},
    "tlsx/a": {"value": "beside"},
    "other/tls/a": {"value": "deeper"},
    "a": {"value": "what tls/../a would name"},
    "s": {"value": "what tls/./s would name"},
}


def check_outside_untouched(inner: Store) -> None:
    """Every secret outside the prefix is still there with its value."""
    for name, value in OUTSIDE.items():
        assert inner.read(name).value == value, name
    assert {m.name for m in inner.list() if not m.name.startswith(PREFIX)} == set(OUTSIDE)


class PrefixedContract(StoreContract):
    """The store contract on `PrefixedStore(inner, "tls")`; subclasses give the inner stores."""

    max_name_chars = render.MAX_NAME_CHARS - len(PREFIX)

    @pytest.fixture
    def store(self, inner: Store) -> Iterator[Store]:
        inner.write_many(OUTSIDE)
        yield PrefixedStore(inner, "tls")
        check_outside_untouched(inner)

    @pytest.fixture
    def read_only_store(self, store: Store, read_only_inner: Store) -> Store:
        return PrefixedStore(read_only_inner, "/tls/")

    def test_same_capabilities_as_the_inner_store(self, store: Store, inner: Store) -> None:
        assert store.capabilities == inner.capabilities

    def test_names_land_under_the_prefix(self, store: Store, inner: Store) -> None:
        store.write("x", {"value": "1"})
        store.write_many({"d/y": {"value": "2"}})
        store.rename("x", "d/z")
        assert inner.read("tls/d/z").value == {"value": "1"}
        assert inner.read("tls/d/y").value == {"value": "2"}
        with pytest.raises(NotFound):
            inner.read("tls/x")
        store.delete("d/y")
        assert [m.name for m in inner.list(PREFIX)] == ["tls/d/z"]
        assert store.info()["prefix"] == PREFIX


class TestPrefixedMemoryStore(PrefixedContract):
    @pytest.fixture
    def inner(self) -> MemoryStore:
        return MemoryStore()

    @pytest.fixture
    def read_only_inner(self, inner: MemoryStore) -> MemoryStore:
        twin = MemoryStore(read_only=True)
        twin._data = inner._data
        twin._lock = inner._lock
        return twin


class TestPrefixedCountingStore(PrefixedContract):
    """Over a store with bulk reads: read_many is forwarded."""

    @pytest.fixture
    def inner(self) -> CountingStore:
        return CountingStore()

    @pytest.fixture
    def read_only_inner(self, inner: CountingStore) -> CountingStore:
        twin = CountingStore()
        twin.read_only = True
        twin._data = inner._data
        twin._lock = inner._lock
        return twin


class TestPrefixedSqliteStore(PrefixedContract):
    """Over SQLite: bulk reads and change watching are forwarded."""

    @pytest.fixture
    def key(self) -> bytes:
        return crypto.derive_key(secrets.token_urlsafe(24))

    @pytest.fixture
    def inner(self, tmp_path: Path, key: bytes) -> Iterator[Store]:
        _, store = open_sql(f"sqlite:///{tmp_path / 'secretfs.db'}", key)
        yield store
        store.close()

    @pytest.fixture
    def read_only_inner(self, tmp_path: Path, key: bytes) -> Iterator[Store]:
        _, store = open_sql(f"sqlite:///{tmp_path / 'secretfs.db'}", key, read_only=True)
        yield store
        store.close()


class TestPrefixedVaultKV2(PrefixedContract):
    """Over Vault KV v2, whose HTTP paths would resolve `tls/../a` to `a`."""

    @pytest.fixture
    def subpath(self) -> str:
        return f"prefixed-{uuid.uuid4().hex[:8]}"

    @pytest.fixture
    def inner(self, bao_server: BaoServer, subpath: str) -> Iterator[Store]:
        store = VaultStore(kv2_settings(bao_server, subpath))
        yield store
        store.close()

    @pytest.fixture
    def read_only_inner(self, bao_server: BaoServer, subpath: str) -> Iterator[Store]:
        store = VaultStore(kv2_settings(bao_server, subpath), read_only=True)
        yield store
        store.close()

    def test_dot_segments_do_not_reach_outside(self, store: Store, inner: Store) -> None:
        for name in ("../a", "./s", "d/../../a"):
            with pytest.raises(NotFound):
                store.read(name)
            with pytest.raises(InvalidName):
                store.write(name, {"value": "escaped"})
            with pytest.raises(NotFound):
                store.delete(name)
        assert store.list_dir("..") == DirListing()
        assert store.list("../") == []


# ----- containment ---------------------------------------------------------------------------------


class Recording(MemoryStore):
    """A memory store that records every name it is asked about (lists: the prefix asked)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def list(self, prefix: str = "") -> list[Any]:
        self.asked.append(prefix)
        return super().list(prefix)

    def list_dir(self, directory: str) -> DirListing:
        self.asked.append(directory + "/")
        return super().list_dir(directory)

    def read(self, name: str) -> Any:
        self.asked.append(name)
        return super().read(name)

    def write_many(self, items: Any) -> None:
        self.asked.extend(items)
        super().write_many(items)

    def delete(self, name: str) -> None:
        self.asked.append(name)
        super().delete(name)

    def rename(self, old: str, new: str) -> None:
        self.asked.extend([old, new])
        super().rename(old, new)


ESCAPES = ["..", "../a", "./s", ".", "", "/a", "a/", "d//x", "d/../../a", "d/./x", "d/..", "../tls/x"]


@pytest.mark.parametrize("name", ESCAPES)
def test_no_name_reaches_outside(name: str) -> None:
    inner = Recording()
    inner.write_many(OUTSIDE)
    inner.write("tls/d/x", {"value": "inside"})
    store = PrefixedStore(inner, PREFIX)
    inner.asked.clear()
    with pytest.raises(NotFound):
        store.read(name)
    with pytest.raises(NotFound):
        store.stat(name)
    with pytest.raises(NotFound):
        store.delete(name)
    with pytest.raises(NotFound):
        store.rename(name, "moved")
    with pytest.raises(InvalidName):
        store.rename("d/x", name)
    with pytest.raises(InvalidName):
        store.write(name, {"value": "escaped"})
    with pytest.raises(InvalidName):
        store.write_many({"fine": {"value": "1"}, name: {"value": "escaped"}})
    assert store.list_dir(name) == (DirListing() if name else DirListing(files=[], dirs=["d"]))
    for metas in (store.list(name), store.list(name + "/")):
        assert all(not m.name.startswith(("/", "..")) for m in metas)
    reader = bulk_reader(PrefixedStore(CountingStore(), PREFIX))
    assert reader is not None and reader.read_many([name]) == {}
    # The inner store was never asked about anything outside the prefix (a refusal asks nothing),
    # and nothing outside changed.
    assert all(asked.startswith(PREFIX) for asked in inner.asked), inner.asked
    check_outside_untouched(inner)
    assert inner.read("tls/d/x").value == {"value": "inside"}


def test_dot_names_are_names_inside() -> None:
    """`..foo`, `...`, `.hidden` are ordinary names: they stay under the prefix."""
    inner = MemoryStore()
    store = PrefixedStore(inner, PREFIX)
    for name in ("..foo", "...", ".hidden", "d/..x"):
        store.write(name, {"value": name})
        assert store.read(name).value == {"value": name}
    assert sorted(m.name for m in inner.list()) == ["tls/...", "tls/..foo", "tls/.hidden", "tls/d/..x"]


def test_outside_names_are_not_listed() -> None:
    inner = MemoryStore()
    inner.write_many(OUTSIDE)
    inner.write("tls/", {"value": "a name that is only the prefix"})
    inner.write("tls/k", {"value": "inside"})
    store = PrefixedStore(inner, PREFIX)
    assert [m.name for m in store.list()] == ["k"]
    assert store.list_dir("") == DirListing(files=["k"], dirs=[])


def test_names_too_long_under_the_prefix() -> None:
    store = PrefixedStore(MemoryStore(), PREFIX)
    room = render.MAX_NAME_CHARS - len(PREFIX)
    store.write("n" * room, {"value": "fits"})
    with pytest.raises(NameTooLong):
        store.write("n" * (room + 1), {"value": "too long once prefixed"})
    with pytest.raises(NameTooLong):
        store.rename("n" * room, "m" * (room + 1))


@pytest.mark.parametrize(
    ("given", "normalized"),
    [("tls", "tls/"), ("tls/", "tls/"), ("/tls/", "tls/"), ("a/b", "a/b/"), ("", ""), ("/", ""), ("..foo", "..foo/")],
)
def test_normalize_prefix(given: str, normalized: str) -> None:
    assert normalize_prefix(given) == normalized


@pytest.mark.parametrize(
    "given", ["..", ".", "a/../b", "a//b", "./a", "a/.", "x\x00y", "n" * 256, "é" * 200, "a/\udcff"]
)
def test_bad_prefixes(given: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_prefix(given)
    assert "\n" not in str(caught.value)


def test_open_prefixed() -> None:
    inner = MemoryStore()
    assert open_prefixed(inner, "") is inner
    assert open_prefixed(inner, "/") is inner
    wrapped = open_prefixed(inner, "/db")
    assert isinstance(wrapped, PrefixedStore) and wrapped.prefix == "db/"


def test_relative_and_full_names() -> None:
    names = ["tls/a", "tls/d/b", "tlsx/c", "tls", "tls/", "db/a", ALL]
    assert relative_names("tls/", names) == ["a", "d/b", ALL]
    assert relative_names("", names) == names
    assert full_names("tls/", ["a", "d/b", ALL]) == ["tls/a", "tls/d/b", ALL]
    assert full_names("", ["a"]) == ["a"]


class Watching(MemoryStore):
    """A memory store with a watcher the test drives by hand."""

    capabilities = Capabilities(watch=True, atomic_batch=True)

    def __init__(self) -> None:
        super().__init__()
        self.report: Callable[[Sequence[str] | None], None] | None = None
        self.stopped = False

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        self.report = on_change

        def stop() -> None:
            self.stopped = True

        return stop


def test_watch_translates_names() -> None:
    inner = Watching()
    store = PrefixedStore(inner, "tls")
    watching = watcher(store)
    assert watching is not None
    seen: list[list[str] | None] = []
    stop = watching.watch(lambda names: seen.append(None if names is None else list(names)))
    assert inner.report is not None and stop is not None
    inner.report(["tls/a", "db/b", "tls/d/c", "tls"])
    inner.report(["db/only"])  # nothing of this subtree: no call
    inner.report(None)  # cannot tell which: passed on as None
    inner.report([])
    assert seen == [["a", "d/c"], None, []]
    stop()
    assert inner.stopped
