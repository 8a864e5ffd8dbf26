"""The store contract: one suite every Store implementation passes (memory, SQLite, PostgreSQL, Vault).

Use it by subclassing `StoreContract` in a test module and supplying two fixtures:

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self) -> Iterator[Store]:
            ...  # a writable, EMPTY store; closed after the test

        @pytest.fixture
        def read_only_store(self, store) -> Iterator[Store]:
            ...  # a store with read_only=True over the SAME data as `store`

The suite is backend-neutral: values are JSON objects (string keys, string values, nested objects),
names are full secret names ('a/b/c'), and only secretfs.errors exceptions are expected.
Backends whose clocks are coarse can raise `clock_tolerance` (seconds); a store whose names are
shorter than secret names (a subtree: secretfs.stores.prefixed) lowers `max_name_chars`.

A store's declared capabilities (secretfs.stores.base.Capabilities) are part of its contract: a
declared bulk read or change watch must exist and work, and a bulk read must be declared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from secretfs.errors import NotFound, ReadOnly
from secretfs.stores.base import (
    BulkReader,
    Capabilities,
    DirListing,
    FileAttrs,
    FileAttrStore,
    HealthReporter,
    SecretMeta,
    SecretRecord,
    Store,
    Watcher,
    bulk_reader,
    file_attr_store,
    health_reporter,
    watcher,
)


def names_of(metas: list[SecretMeta]) -> list[str]:
    return [m.name for m in metas]


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run target(i) in `count` threads at once; re-raise the first error any of them hit."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    if errors:
        raise errors[0]


class StoreContract:
    """Behaviour every Store must have. Subclasses supply the `store` and `read_only_store` fixtures."""

    clock_tolerance: ClassVar[float] = 2.0
    thread_count: ClassVar[int] = 8
    writes_per_thread: ClassVar[int] = 10
    max_name_chars: ClassVar[int] = 256  # the longest name the store must keep

    # ----- empty store ---------------------------------------------------------------------------

    def test_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert store.read_only is False

    def test_empty(self, store: Store) -> None:
        assert store.list() == []
        assert store.list("a") == []
        listing = store.list_dir("")
        assert isinstance(listing, DirListing)
        assert (listing.files, listing.dirs) == ([], [])

    def test_missing_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.read("missing")
        with pytest.raises(NotFound):
            store.stat("missing")
        with pytest.raises(NotFound):
            store.delete("missing")
        with pytest.raises(NotFound):
            store.rename("missing", "other")
        assert store.list() == []

    # ----- write / read --------------------------------------------------------------------------

    def test_write_then_read(self, store: Store) -> None:
        before = time.time()
        store.write("db_password", {"value": "hunter2"})
        after = time.time()
        record = store.read("db_password")
        assert isinstance(record, SecretRecord)
        assert record.name == "db_password"
        assert record.value == {"value": "hunter2"}
        tol = self.clock_tolerance
        assert before - tol <= record.updated_at <= after + tol
        assert before - tol <= record.created_at <= after + tol

    def test_nested_json_object_round_trips(self, store: Store) -> None:
        value: dict[str, Any] = {
            "user": "app",
            "password": 'p@ss:w/rd "quoted" \\ back\nline',
            "options": {"ssl": {"mode": "verify-full", "root": "-----BEGIN CERTIFICATE-----\nMIIB\n"}},
            "empty": "",
        }
        store.write("db/credentials", value)
        assert store.read("db/credentials").value == value

    def test_unicode_values(self, store: Store) -> None:
        value = {"value": "grüße, 日本語, emoji 🔑, rtl עברית"}
        store.write("unicode_value", value)
        assert store.read("unicode_value").value == value

    def test_large_value(self, store: Store) -> None:
        value = {"value": "x" * 200_000, "encoding": "none"}
        store.write("large", value)
        assert store.read("large").value == value

    def test_write_many(self, store: Store) -> None:
        store.write("pair/crt", {"value": "old-crt"})
        store.write_many({"pair/crt": {"value": "new-crt"}, "pair/key": {"value": "new-key"}})
        assert store.read("pair/crt").value == {"value": "new-crt"}
        assert store.read("pair/key").value == {"value": "new-key"}

    def test_write_replaces_whole_value(self, store: Store) -> None:
        store.write("s", {"a": "1", "b": "2", "nested": {"c": "3"}})
        store.write("s", {"d": "4"})
        assert store.read("s").value == {"d": "4"}
        assert names_of(store.list()) == ["s"]

    def test_replace_keeps_created_and_moves_updated(self, store: Store) -> None:
        store.write("s", {"value": "one"})
        first = store.stat("s")
        time.sleep(1.1)
        store.write("s", {"value": "two"})
        second = store.stat("s")
        assert second.updated_at > first.updated_at
        assert abs(second.created_at - first.created_at) < 1.0
        assert second.created_at <= second.updated_at

    def test_returned_value_is_a_copy(self, store: Store) -> None:
        store.write("s", {"value": "original", "nested": {"k": "v"}})
        record = store.read("s")
        record.value["value"] = "changed"
        record.value["nested"]["k"] = "changed"
        assert store.read("s").value == {"value": "original", "nested": {"k": "v"}}

    def test_written_value_is_a_copy(self, store: Store) -> None:
        value = {"value": "original"}
        store.write("s", value)
        value["value"] = "changed"
        assert store.read("s").value == {"value": "original"}

    def test_stat_matches_read(self, store: Store) -> None:
        store.write("a/b", {"value": "x"})
        meta = store.stat("a/b")
        record = store.read("a/b")
        assert isinstance(meta, SecretMeta)
        assert meta.name == "a/b"
        assert meta.updated_at == pytest.approx(record.updated_at, abs=1e-3)
        assert meta.created_at == pytest.approx(record.created_at, abs=1e-3)

    def test_names_are_case_sensitive(self, store: Store) -> None:
        store.write("Token", {"value": "upper"})
        store.write("token", {"value": "lower"})
        assert store.read("Token").value == {"value": "upper"}
        assert store.read("token").value == {"value": "lower"}
        assert names_of(store.list()) == ["Token", "token"]

    # ----- names ---------------------------------------------------------------------------------

    def test_unicode_names(self, store: Store) -> None:
        names = ["grüße", "日本/鍵", "emoji-🔑", "space name"]
        for i, name in enumerate(names):
            store.write(name, {"value": str(i)})
        for i, name in enumerate(names):
            assert store.read(name).value == {"value": str(i)}
            assert store.stat(name).name == name
        assert sorted(names_of(store.list())) == sorted(names)
        assert store.list_dir("日本") == DirListing(files=["鍵"], dirs=[])

    def test_names_with_slashes(self, store: Store) -> None:
        store.write("app/db/password", {"value": "1"})
        store.write("app/db/user", {"value": "2"})
        store.write("app/api_key", {"value": "3"})
        store.write("top", {"value": "4"})
        assert store.read("app/db/password").value == {"value": "1"}
        assert store.list_dir("") == DirListing(files=["top"], dirs=["app"])
        assert store.list_dir("app") == DirListing(files=["api_key"], dirs=["db"])
        assert store.list_dir("app/db") == DirListing(files=["password", "user"], dirs=[])
        assert store.list_dir("app/db/password") == DirListing(files=[], dirs=[])
        assert store.list_dir("nothing") == DirListing(files=[], dirs=[])
        with pytest.raises(NotFound):
            store.read("app")
        with pytest.raises(NotFound):
            store.read("app/db")

    def test_name_that_is_both_file_and_directory(self, store: Store) -> None:
        store.write("a", {"value": "file"})
        store.write("a/b", {"value": "nested"})
        assert store.list_dir("") == DirListing(files=["a"], dirs=["a"])
        assert store.list_dir("a") == DirListing(files=["b"], dirs=[])
        assert store.read("a").value == {"value": "file"}

    def test_list_sorted_with_prefix(self, store: Store) -> None:
        for name in ["b/2", "a/1", "c", "a/0", "ab"]:
            store.write(name, {"value": name})
        assert names_of(store.list()) == ["a/0", "a/1", "ab", "b/2", "c"]
        assert names_of(store.list("a/")) == ["a/0", "a/1"]
        assert names_of(store.list("a")) == ["a/0", "a/1", "ab"]
        assert names_of(store.list("zzz")) == []
        metas = store.list("b/")
        assert metas[0].updated_at > 0

    def test_prefix_with_wildcard_characters_is_literal(self, store: Store) -> None:
        for name in ["a_b", "axb", "a%c", "abc", "a\\d"]:
            store.write(name, {"value": name})
        assert names_of(store.list("a_")) == ["a_b"]
        assert names_of(store.list("a%")) == ["a%c"]
        assert names_of(store.list("a\\")) == ["a\\d"]
        store.write("d_x/k", {"value": "1"})
        store.write("dyx/k", {"value": "2"})
        assert store.list_dir("d_x") == DirListing(files=["k"], dirs=[])

    def test_long_name(self, store: Store) -> None:
        head = "/".join(["n" * 60] * 4) + "/"
        name = head + "e" * (self.max_name_chars - len(head))
        assert len(name) == self.max_name_chars
        store.write(name, {"value": "long"})
        assert store.read(name).value == {"value": "long"}
        assert names_of(store.list()) == [name]

    # ----- delete --------------------------------------------------------------------------------

    def test_delete(self, store: Store) -> None:
        store.write("a/x", {"value": "1"})
        store.write("a/y", {"value": "2"})
        store.delete("a/x")
        with pytest.raises(NotFound):
            store.read("a/x")
        with pytest.raises(NotFound):
            store.stat("a/x")
        with pytest.raises(NotFound):
            store.delete("a/x")
        assert names_of(store.list()) == ["a/y"]
        assert store.list_dir("a") == DirListing(files=["y"], dirs=[])
        store.delete("a/y")
        assert store.list() == []
        assert store.list_dir("") == DirListing(files=[], dirs=[])

    def test_delete_then_recreate(self, store: Store) -> None:
        store.write("s", {"value": "old", "extra": "gone"})
        store.delete("s")
        store.write("s", {"value": "new"})
        assert store.read("s").value == {"value": "new"}
        assert names_of(store.list()) == ["s"]

    # ----- rename --------------------------------------------------------------------------------

    def test_rename(self, store: Store) -> None:
        store.write("old/name", {"value": "v", "k": "w"})
        store.rename("old/name", "new/place/name")
        with pytest.raises(NotFound):
            store.read("old/name")
        assert store.read("new/place/name").value == {"value": "v", "k": "w"}
        assert names_of(store.list()) == ["new/place/name"]
        assert store.list_dir("") == DirListing(files=[], dirs=["new"])

    def test_rename_replaces_target(self, store: Store) -> None:
        store.write("src", {"value": "source"})
        store.write("dst", {"value": "target", "other": "key"})
        store.rename("src", "dst")
        assert store.read("dst").value == {"value": "source"}
        with pytest.raises(NotFound):
            store.read("src")
        assert names_of(store.list()) == ["dst"]

    def test_rename_missing_changes_nothing(self, store: Store) -> None:
        store.write("dst", {"value": "kept"})
        with pytest.raises(NotFound):
            store.rename("src", "dst")
        assert store.read("dst").value == {"value": "kept"}

    def test_rename_onto_itself(self, store: Store) -> None:
        store.write("same", {"value": "v"})
        store.rename("same", "same")
        assert store.read("same").value == {"value": "v"}
        assert names_of(store.list()) == ["same"]

    def test_rename_unicode(self, store: Store) -> None:
        store.write("clé", {"value": "v"})
        store.rename("clé", "鍵/clé")
        assert store.read("鍵/clé").value == {"value": "v"}
        assert names_of(store.list()) == ["鍵/clé"]

    # ----- read-only -----------------------------------------------------------------------------

    def test_read_only_refuses_every_mutation(self, store: Store, read_only_store: Store) -> None:
        store.write("kept", {"value": "v"})
        ro = read_only_store
        assert ro.read_only is True
        assert ro.read("kept").value == {"value": "v"}
        assert names_of(ro.list()) == ["kept"]
        assert ro.list_dir("") == DirListing(files=["kept"], dirs=[])
        assert ro.stat("kept").name == "kept"
        with pytest.raises(ReadOnly):
            ro.write("kept", {"value": "changed"})
        with pytest.raises(ReadOnly):
            ro.write("new", {"value": "x"})
        with pytest.raises(ReadOnly):
            ro.delete("kept")
        with pytest.raises(ReadOnly):
            ro.rename("kept", "moved")
        # ReadOnly wins over NotFound: a read-only store never says what it would have done.
        with pytest.raises(ReadOnly):
            ro.delete("missing")
        ro_attrs = file_attr_store(ro)
        if ro_attrs is not None:
            with pytest.raises(ReadOnly):
                ro_attrs.set_attrs("kept", FileAttrs(mode=0o644))
        assert store.read("kept").value == {"value": "v"}
        assert names_of(store.list()) == ["kept"]

    # ----- declared capabilities -----------------------------------------------------------------

    def test_capabilities_are_declared_truthfully(self, store: Store) -> None:
        caps = store.capabilities
        assert isinstance(caps, Capabilities)
        # A bulk read the store has but does not declare would never be used.
        assert isinstance(store, BulkReader) == caps.bulk_read
        assert (bulk_reader(store) is not None) == caps.bulk_read
        assert not caps.watch or isinstance(store, Watcher)
        assert (watcher(store) is not None) == caps.watch
        assert not caps.health or isinstance(store, HealthReporter)
        assert (health_reporter(store) is not None) == caps.health
        assert not caps.file_attrs or isinstance(store, FileAttrStore)
        assert (file_attr_store(store) is not None) == caps.file_attrs

    def test_file_attrs_are_kept_per_secret(self, store: Store) -> None:
        attrs = file_attr_store(store)
        if attrs is None:
            pytest.skip("the store declares no per-secret modes and owners")
        store.write("f/a", {"value": "1"})
        assert store.read("f/a").attrs is None
        attrs.set_attrs("f/a", FileAttrs(mode=0o640))
        assert store.read("f/a").attrs == FileAttrs(mode=0o640)
        attrs.set_attrs("f/a", FileAttrs(owner="root", group="daemon"))  # merged: the mode stays
        assert store.read("f/a").attrs == FileAttrs(0o640, "root", "daemon")
        store.write("f/a", {"value": "2"})  # a new value keeps them
        assert store.read("f/a").attrs == FileAttrs(0o640, "root", "daemon")
        with pytest.raises(NotFound):
            attrs.set_attrs("f/missing", FileAttrs(mode=0o600))
        attrs.write_with_attrs({"f/b": {"value": "b"}, "f/c": {"value": "c"}}, FileAttrs(mode=0o604))
        assert [store.read(n).attrs for n in ("f/b", "f/c")] == [FileAttrs(mode=0o604)] * 2
        reader = bulk_reader(store)
        if reader is not None:
            assert {n: r.attrs for n, r in reader.read_many(["f/a", "f/b"]).items()} == {
                "f/a": FileAttrs(0o640, "root", "daemon"),
                "f/b": FileAttrs(mode=0o604),
            }

    def test_file_attrs_move_with_rename_and_go_with_delete(self, store: Store) -> None:
        attrs = file_attr_store(store)
        if attrs is None:
            pytest.skip("the store declares no per-secret modes and owners")
        attrs.write_with_attrs({"m/old": {"value": "v"}}, FileAttrs(mode=0o644, owner="root"))
        attrs.write_with_attrs({"m/target": {"value": "t"}}, FileAttrs(group="daemon"))
        store.rename("m/old", "m/target")  # the target's own attrs are replaced, not merged
        assert store.read("m/target").attrs == FileAttrs(mode=0o644, owner="root")
        store.write("m/old", {"value": "again"})
        assert store.read("m/old").attrs is None
        store.delete("m/target")
        store.write("m/target", {"value": "new"})
        assert store.read("m/target").attrs is None
        store.write("m/plain", {"value": "p"})
        attrs.set_attrs("m/old", FileAttrs(mode=0o600))
        store.rename("m/plain", "m/old")  # a secret without attrs replaces one with them
        assert store.read("m/old").attrs is None

    def test_bulk_read_matches_read(self, store: Store) -> None:
        reader = bulk_reader(store)
        if reader is None:
            pytest.skip("the store declares no bulk reads")
        assert reader.read_many([]) == {}
        names = ["a", "d/b", "d/c/e", "ünï"]
        for i, name in enumerate(names):
            store.write(name, {"value": str(i), "nested": {"k": name}})
        records = reader.read_many([*names, "missing", "d"])
        assert sorted(records) == sorted(names)
        for name, record in records.items():
            single = store.read(name)
            assert isinstance(record, SecretRecord)
            assert (record.name, record.value) == (single.name, single.value)
            assert record.updated_at == pytest.approx(single.updated_at, abs=1e-3)
            assert record.created_at == pytest.approx(single.created_at, abs=1e-3)
        store.delete("a")
        assert sorted(reader.read_many(names)) == sorted(names[1:])

    def test_watch_reports_a_change(self, store: Store) -> None:
        watching = watcher(store)
        if watching is None:
            pytest.skip("the store declares no change watching")
        changed = threading.Event()
        stop = watching.watch(lambda names: changed.set())
        assert stop is not None, "a store that declares watching must watch"
        try:
            changed.clear()  # only what follows the write counts
            store.write("watched", {"value": "1"})
            assert changed.wait(10), "no change reported within 10 s of a write"
        finally:
            stop()

    # ----- info / close --------------------------------------------------------------------------

    def test_info_has_no_values(self, store: Store) -> None:
        store.write("s", {"value": "contract-marker-value-7f3a"})
        info = store.info()
        assert isinstance(info, dict)
        assert "contract-marker-value-7f3a" not in repr(info)

    # ----- concurrency ---------------------------------------------------------------------------

    def test_concurrent_writers_distinct_names(self, store: Store) -> None:
        n, per = self.thread_count, self.writes_per_thread

        def writer(i: int) -> None:
            for j in range(per):
                store.write(f"t{i}/s", {"value": f"{i}-{j}"})
                store.write(f"t{i}/n{j}", {"value": str(j)})

        run_threads(n, writer)
        for i in range(n):
            assert store.read(f"t{i}/s").value == {"value": f"{i}-{per - 1}"}
            assert store.list_dir(f"t{i}").files == sorted(["s", *(f"n{j}" for j in range(per))])
        assert len(store.list()) == n * (per + 1)

    def test_concurrent_writers_same_name(self, store: Store) -> None:
        n, per = self.thread_count, self.writes_per_thread
        written = {f"{i}-{j}" for i in range(n) for j in range(per)}

        def writer(i: int) -> None:
            for j in range(per):
                store.write("shared", {"value": f"{i}-{j}"})
                got = store.read("shared").value["value"]
                assert got in written

        run_threads(n, writer)
        assert names_of(store.list()) == ["shared"]
        final = store.read("shared").value
        assert set(final) == {"value"}
        assert final["value"] in {f"{i}-{per - 1}" for i in range(n)}

    def test_concurrent_first_writes_of_one_new_name(self, store: Store) -> None:
        for round_ in range(3):
            name = f"race/{round_}"

            def write(i: int, name: str = name) -> None:
                store.write(name, {"value": str(i)})

            run_threads(self.thread_count, write)
            assert names_of(store.list(name)) == [name]
            assert store.read(name).value["value"] in {str(i) for i in range(self.thread_count)}

    def test_concurrent_readers_and_writer(self, store: Store) -> None:
        store.write("r", {"value": "0"})

        def worker(i: int) -> None:
            for j in range(self.writes_per_thread):
                if i == 0:
                    store.write("r", {"value": str(j + 1)})
                else:
                    value = store.read("r").value
                    assert set(value) == {"value"}
                    assert 0 <= int(value["value"]) <= self.writes_per_thread

        run_threads(self.thread_count, worker)
        assert store.read("r").value == {"value": str(self.writes_per_thread)}
