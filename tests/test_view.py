"""The file view over the memory store, in both layouts: attributes, directories, reads, writes,
renames, unlinks, invalid names and read-only views. No mount here."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import pytest

from secretfs import render
from secretfs.errors import (
    AlreadyExists,
    CrossDevice,
    DirectoryNotEmpty,
    InvalidName,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    ReadOnly,
    ValueTooLarge,
)
from secretfs.stores.base import FileAttrs
from secretfs.stores.memory import MemoryStore
from secretfs.view import View, ViewOptions


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def make_view(store: MemoryStore, **options: Any) -> View:
    return View(store, ViewOptions(**options))


@pytest.fixture
def view(store: MemoryStore) -> View:
    return make_view(store)


# ----- file layout: attributes --------------------------------------------------------------------


def test_root_and_file_attributes(store: MemoryStore, view: View) -> None:
    store.write("db_password", {"value": "hunter2"})
    store.write("app/creds", {"user": "u", "password": "p"})
    root = view.getattr("/")
    assert root.is_dir
    assert root.mode == stat.S_IFDIR | 0o700
    assert (root.uid, root.gid) == (os.getuid(), os.getgid())

    f = view.getattr("/db_password")
    assert not f.is_dir
    assert f.mode == stat.S_IFREG | 0o600
    assert f.size == 7
    record = store.read("db_password")
    assert f.mtime == record.updated_at
    assert f.ctime == record.created_at
    st = f.as_stat()
    assert st["st_size"] == 7
    assert st["st_nlink"] == 1
    assert st["st_mtime"] == int(record.updated_at * 1e9)

    creds = view.getattr("/app/creds")
    assert creds.size == len(b'{\n  "password": "p",\n  "user": "u"\n}\n')
    app = view.getattr("/app")
    assert app.is_dir
    assert app.as_stat()["st_nlink"] == 2


def test_binary_size_is_decoded_size(store: MemoryStore, view: View) -> None:
    view.write_file("/bin", bytes(range(256)))
    assert view.getattr("/bin").size == 256
    assert view.read_file("/bin") == bytes(range(256))


def test_read_only_modes_and_overrides(store: MemoryStore) -> None:
    store.write("s", {"value": "v"})
    ro = make_view(store, read_only=True)
    assert ro.getattr("/s").mode == stat.S_IFREG | 0o400
    assert ro.getattr("/").mode == stat.S_IFDIR | 0o500
    custom = make_view(store, uid=1234, gid=5678, file_mode=0o440, dir_mode=0o550)
    attr = custom.getattr("/s")
    assert (attr.uid, attr.gid, attr.mode) == (1234, 5678, stat.S_IFREG | 0o440)
    assert custom.getattr("/").mode == stat.S_IFDIR | 0o550


def test_missing_paths(view: View) -> None:
    with pytest.raises(NotFound):
        view.getattr("/nope")
    with pytest.raises(NotFound):
        view.read_file("/nope")
    with pytest.raises(NotFound):
        view.unlink("/nope")
    with pytest.raises(NotFound):
        view.rename("/nope", "/other")


# ----- file layout: directories -------------------------------------------------------------------


def test_readdir(store: MemoryStore, view: View) -> None:
    for name in ("top", "app/a", "app/b", "app/sub/c", "other/x"):
        store.write(name, {"value": name})
    assert sorted(view.readdir("/")) == ["app", "other", "top"]
    assert sorted(view.readdir("/app")) == ["a", "b", "sub"]
    assert view.readdir("/app/sub") == ["c"]
    with pytest.raises(NotADirectory):
        view.readdir("/top")
    with pytest.raises(NotFound):
        view.readdir("/missing")


def test_invalid_stored_names_hidden_and_counted(store: MemoryStore, view: View) -> None:
    store.write("ok", {"value": "1"})
    bad = ["a//b", "..", "./x", "trailing/", "/lead", "nul\x00byte", "x" * 256, "d/" + "y" * 300]
    for name in bad:
        store.write(name, {"value": "hidden"})
    assert view.hidden_names() == len(bad)
    entries = view.readdir("/")
    assert "ok" in entries
    assert ".." not in entries and "." not in entries
    assert "nul\x00byte" not in entries
    assert "x" * 256 not in entries
    for name in bad:
        assert not render.is_valid_name(name)
    with pytest.raises(NotFound):
        view.getattr("/" + "x" * 256)


def test_mkdir_rmdir(store: MemoryStore, view: View) -> None:
    view.mkdir("/empty")
    assert view.getattr("/empty").is_dir
    assert "empty" in view.readdir("/")
    assert view.readdir("/empty") == []
    view.mkdir("/empty/nested")
    assert view.readdir("/empty") == ["nested"]
    with pytest.raises(DirectoryNotEmpty):
        view.rmdir("/empty")
    view.rmdir("/empty/nested")
    view.rmdir("/empty")
    with pytest.raises(NotFound):
        view.getattr("/empty")
    assert store.list() == []  # empty directories never reach the store


def test_mkdir_errors(store: MemoryStore, view: View) -> None:
    store.write("file", {"value": "x"})
    store.write("dir/x", {"value": "x"})
    with pytest.raises(AlreadyExists):
        view.mkdir("/file")
    with pytest.raises(AlreadyExists):
        view.mkdir("/dir")
    with pytest.raises(InvalidName):
        view.mkdir("/a/../b")
    with pytest.raises(NameTooLong):
        view.mkdir("/" + "d" * 256)
    with pytest.raises(NotADirectory):
        view.rmdir("/file")
    with pytest.raises(DirectoryNotEmpty):
        view.rmdir("/dir")


def test_file_in_new_directory(store: MemoryStore, view: View) -> None:
    view.mkdir("/d")
    view.write_file("/d/f", b"content")
    assert store.read("d/f").value == {"value": "content"}
    assert view.readdir("/d") == ["f"]
    view.unlink("/d/f")
    assert view.getattr("/d").is_dir  # the directory outlives its last file
    view.rmdir("/d")
    with pytest.raises(NotFound):
        view.getattr("/d")


# ----- file layout: reads and writes --------------------------------------------------------------


def test_write_and_read(store: MemoryStore, view: View) -> None:
    view.write_file("/text", b"tok")
    view.write_file("/newline", b"tok\n")
    view.write_file("/json", b'{"b": "2", "a": "1"}')
    view.write_file("/bin", b"\xff\x00")
    assert store.read("text").value == {"value": "tok"}
    assert store.read("newline").value == {"value": "tok\n"}
    assert store.read("json").value == {"b": "2", "a": "1"}
    assert store.read("bin").value == {"value": "/wA=", "encoding": "base64"}
    assert view.read_file("/text") == b"tok"
    assert view.read_file("/newline") == b"tok\n"
    assert view.read_file("/json") == b'{\n  "a": "1",\n  "b": "2"\n}\n'
    assert view.read_file("/bin") == b"\xff\x00"
    view.write_file("/text", b"replaced")
    assert view.read_file("/text") == b"replaced"
    assert view.getattr("/text").size == 8


def test_read_file_on_directory(store: MemoryStore, view: View) -> None:
    store.write("d/x", {"value": "x"})
    with pytest.raises(IsADirectory):
        view.read_file("/d")
    with pytest.raises(IsADirectory):
        view.unlink("/d")


def test_write_invalid_names(view: View, store: MemoryStore) -> None:
    with pytest.raises(InvalidName):
        view.write_file("/a/./b", b"x")
    with pytest.raises(InvalidName):
        view.write_file("/nul\x00", b"x")
    with pytest.raises(NameTooLong):
        view.write_file("/" + "n" * 256, b"x")
    with pytest.raises(NameTooLong):
        view.write_file("/" + "/".join(["s" * 100] * 3), b"x")  # 302 characters
    assert store.list() == []


def test_size_limit(view: View, store: MemoryStore) -> None:
    view.write_file("/max", b"a" * render.MAX_VALUE_BYTES)
    assert view.getattr("/max").size == render.MAX_VALUE_BYTES
    with pytest.raises(ValueTooLarge):
        view.write_file("/big", b"a" * (render.MAX_VALUE_BYTES + 1))
    with pytest.raises(ValueTooLarge):
        view.write_file("/max", b"\xff" * (render.MAX_VALUE_BYTES + 1))
    assert [m.name for m in store.list()] == ["max"]
    assert view.getattr("/max").size == render.MAX_VALUE_BYTES


def test_unlink(store: MemoryStore, view: View) -> None:
    store.write("a/x", {"value": "1"})
    store.write("a/y", {"value": "2"})
    view.unlink("/a/x")
    assert [m.name for m in store.list()] == ["a/y"]
    with pytest.raises(NotFound):
        view.unlink("/a/x")


def test_rename(store: MemoryStore, view: View) -> None:
    store.write("src", {"value": "s"})
    store.write("dst", {"value": "d"})
    store.write("dir/inside", {"value": "i"})
    view.rename("/src", "/moved/deep")
    assert store.read("moved/deep").value == {"value": "s"}
    with pytest.raises(NotFound):
        store.read("src")
    view.rename("/moved/deep", "/dst")  # replaces
    assert store.read("dst").value == {"value": "s"}
    with pytest.raises(IsADirectory):
        view.rename("/dst", "/dir")
    with pytest.raises(CrossDevice):
        view.rename("/dir", "/dir2")
    with pytest.raises(InvalidName):
        view.rename("/dst", "/bad/../name")
    assert store.read("dst").value == {"value": "s"}


def test_rename_empty_directory(view: View) -> None:
    view.mkdir("/e")
    view.rename("/e", "/f")
    assert view.getattr("/f").is_dir
    with pytest.raises(NotFound):
        view.getattr("/e")


# ----- read-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["view", "store"])
def test_read_only_view_refuses_mutations(how: str) -> None:
    store = MemoryStore()
    store.write("s", {"value": "v"})
    store.write("d/x", {"value": "x"})
    if how == "view":
        view = make_view(store, read_only=True)
    else:
        store.read_only = True
        view = make_view(store)
    assert view.read_file("/s") == b"v"
    assert sorted(view.readdir("/")) == ["d", "s"]
    mutations: tuple[Callable[[], object], ...] = (
        lambda: view.write_file("/s", b"new"),
        lambda: view.write_file("/new", b"new"),
        lambda: view.check_creatable("/new"),
        lambda: view.unlink("/s"),
        lambda: view.rename("/s", "/t"),
        lambda: view.mkdir("/m"),
        lambda: view.rmdir("/d"),
        lambda: view.unlink("/missing"),
    )
    for call in mutations:
        with pytest.raises(ReadOnly):
            call()
    assert store.read("s").value == {"value": "v"}
    assert [m.name for m in store.list()] == ["d/x", "s"]


# ----- keys layout --------------------------------------------------------------------------------


@pytest.fixture
def keys(store: MemoryStore) -> View:
    store.write("db", {"user": "app", "port": 5432, "opts": {"ssl": "on"}, "note": "multi\nline"})
    store.write("team/api", {"token": "t0k"})
    return make_view(store, layout="keys")


def test_keys_layout_tree(keys: View) -> None:
    assert sorted(keys.readdir("/")) == ["db", "team"]
    assert keys.getattr("/db").is_dir
    assert sorted(keys.readdir("/db")) == ["note", "opts", "port", "user"]
    assert keys.readdir("/team") == ["api"]
    assert keys.readdir("/team/api") == ["token"]


def test_keys_layout_files(keys: View) -> None:
    assert keys.read_file("/db/user") == b"app"
    assert keys.read_file("/db/note") == b"multi\nline"
    assert keys.read_file("/db/port") == b"5432\n"
    assert keys.read_file("/db/opts") == b'{\n  "ssl": "on"\n}\n'
    assert keys.read_file("/team/api/token") == b"t0k"
    user = keys.getattr("/db/user")
    assert not user.is_dir
    assert user.size == 3
    assert user.mode == stat.S_IFREG | 0o600
    assert keys.getattr("/db/opts").size == len(b'{\n  "ssl": "on"\n}\n')
    with pytest.raises(NotFound):
        keys.read_file("/db/missing")
    with pytest.raises(NotFound):
        keys.getattr("/db/missing")
    with pytest.raises(IsADirectory):
        keys.read_file("/db")


def test_keys_layout_writes(store: MemoryStore, keys: View) -> None:
    keys.write_file("/db/user", b"admin")
    assert store.read("db").value["user"] == "admin"
    keys.write_file("/db/new_key", b"fresh")
    assert store.read("db").value["new_key"] == "fresh"
    keys.write_file("/db/port", b"6543\n")  # a JSON key stays JSON
    assert store.read("db").value["port"] == 6543
    with pytest.raises(InvalidName):
        keys.write_file("/db/port", b"not json")
    assert store.read("db").value["port"] == 6543
    with pytest.raises(InvalidName):
        keys.write_file("/toplevel", b"x")  # files live inside a secret's directory
    with pytest.raises(InvalidName):
        keys.write_file("/db/bin", b"\xff\xfe")
    keys.write_file("/brand/new", b"v")
    assert store.read("brand").value == {"new": "v"}


def test_keys_layout_unlink_and_rename(store: MemoryStore, keys: View) -> None:
    keys.unlink("/db/note")
    assert "note" not in store.read("db").value
    keys.rename("/db/user", "/db/username")
    value = store.read("db").value
    assert value["username"] == "app"
    assert "user" not in value
    with pytest.raises(CrossDevice):
        keys.rename("/db/username", "/team/api/username")
    keys.unlink("/team/api/token")  # the last key: the secret goes
    with pytest.raises(NotFound):
        store.read("team/api")
    with pytest.raises(NotFound):
        keys.unlink("/db/missing")


def test_keys_layout_read_only(store: MemoryStore) -> None:
    store.write("db", {"user": "app"})
    view = make_view(store, layout="keys", read_only=True)
    assert view.read_file("/db/user") == b"app"
    assert view.getattr("/db/user").mode == stat.S_IFREG | 0o400
    assert view.getattr("/db").mode == stat.S_IFDIR | 0o500
    with pytest.raises(ReadOnly):
        view.write_file("/db/user", b"x")
    with pytest.raises(ReadOnly):
        view.unlink("/db/user")
    assert store.read("db").value == {"user": "app"}


def test_file_modes_and_owners_precedence(store: MemoryStore) -> None:
    """Policy override, then the secret's own attrs, then the mount's defaults; field by field."""
    view = make_view(store, uid=1000, gid=1000, file_mode=0o600)
    view.write_file("/plain", b"p")
    view.write_file("/own", b"o", FileAttrs(mode=0o640, owner="daemon", group="no-such-group-here"))
    view.write_file("/num", b"n", FileAttrs(owner="54321"))
    assert store.read("own").attrs == FileAttrs(0o640, "daemon", "no-such-group-here")

    def shown(path: str) -> tuple[int, int, int]:
        attr = view.getattr(path)
        return attr.mode & 0o7777, attr.uid, attr.gid

    assert shown("/plain") == (0o600, 1000, 1000)
    assert shown("/own") == (0o640, 1, 1000)  # daemon is uid 1; an unknown group: the mount's gid
    assert shown("/num") == (0o600, 54321, 1000)  # a uid with no name is kept as its number
    view.attr_override = lambda secret: (0o400, None, 7) if secret == "own" else (None, None, None)
    assert shown("/own") == (0o400, 1, 7)
    assert view.resolve("/own").perms == (0o400, 1, 7)
    assert shown("/plain") == (0o600, 1000, 1000)
    assert view.set_attrs("/plain", FileAttrs(mode=0o644)) == (0o644, 1000, 1000)


def test_keys_layout_key_files_show_their_secrets_attrs(store: MemoryStore) -> None:
    store.write_with_attrs({"db": {"user": "app", "port": 5432}}, FileAttrs(mode=0o640))
    keys = make_view(store, layout="keys")
    assert keys.getattr("/db/user").mode & 0o7777 == 0o640
    assert keys.getattr("/db/port").mode & 0o7777 == 0o640
    assert keys.resolve("/db/user").perms == (0o640, os.getuid(), os.getgid())
    assert keys.getattr("/db").mode & 0o7777 == 0o700  # the directory keeps the mount's mode
