"""The FUSE adapter without a mount: inode requests with fake file-info objects over a memory store."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from secretfs import errors
from secretfs.assemble import build_operations
from secretfs.freshness import FreshnessPolicy
from secretfs.fuse_ops import SecretFS
from secretfs.fusebind import ROOT_INO, FuseError, SetAttr
from secretfs.stores.base import Capabilities, FileAttrs
from secretfs.stores.memory import MemoryStore
from secretfs.view import ViewOptions


def fi(flags: int = os.O_RDONLY) -> SimpleNamespace:
    return SimpleNamespace(flags=flags, fh=0, direct_io=0, keep_cache=0, noflush=0)


@pytest.fixture(params=["kernel", "direct"])
def fs(request: pytest.FixtureRequest) -> SecretFS:
    store = MemoryStore()
    store.write("s", {"value": "old"})
    store.write("d/t", {"value": "tee"})
    return build_operations(store, ViewOptions(), FreshnessPolicy(cache_mode=request.param, ttl=0))


def stored(fs: SecretFS, name: str) -> bytes | None:
    try:
        return fs.view.read_file(name)
    except errors.NotFound:
        return None


def open_file(fs: SecretFS, name: str, flags: int) -> tuple[int, int]:
    ino = fs.lookup(ROOT_INO, name).ino
    info = fi(flags)
    fs.open(ino, info)
    return ino, info.fh


def test_lookup_and_read(fs: SecretFS) -> None:
    entry = fs.lookup(ROOT_INO, "s")
    assert entry.attr["st_size"] == 3 and entry.attr["st_nlink"] == 1
    assert fs.read(entry.ino, 100, 0, 0) == b"old"
    assert fs.read(entry.ino, 2, 1, 0) == b"ld"


def test_write_commits_at_flush_in_place(fs: SecretFS) -> None:
    ino, fh = open_file(fs, "s", os.O_WRONLY | os.O_TRUNC)
    fs.write(ino, b"new value", 0, fh)
    assert stored(fs, "s") == b"old"  # nothing is stored before the close
    fs.flush(ino, fh)
    fs.release(ino, fh)
    assert stored(fs, "s") == b"new value"
    assert fs.lookup(ROOT_INO, "s").ino == ino  # the writer's own inode stays the name's


def test_descriptors_share_pending_content_and_size(fs: SecretFS) -> None:
    ino, first = open_file(fs, "s", os.O_RDWR)
    fs.write(ino, b"longer", 0, first)
    assert fs.getattr(ino, first)[0]["st_size"] == 6  # the writer's own size, before any commit
    _, second = open_file(fs, "s", os.O_RDWR)
    assert fs.read(ino, 100, 0, second) == b"longer"
    fs.write(ino, b"!", 6, second)
    assert fs.read(ino, 100, 0, first) == b"longer!"


def test_append_lands_at_the_end_whatever_the_offset(fs: SecretFS) -> None:
    ino, fh = open_file(fs, "s", os.O_WRONLY | os.O_APPEND)
    for line in (b"\none", b"\ntwo", b"\nthree"):
        fs.write(ino, line, 0, fh)  # a stale offset: O_APPEND still appends
    fs.flush(ino, fh)
    assert stored(fs, "s") == b"old\none\ntwo\nthree"


def test_unlink_of_a_file_open_for_writing_stays_unlinked(fs: SecretFS) -> None:
    ino, fh = open_file(fs, "s", os.O_WRONLY | os.O_TRUNC)
    fs.write(ino, b"new", 0, fh)
    fs.unlink(ROOT_INO, "s")
    assert fs.getattr(ino, fh)[0]["st_nlink"] == 0  # fstat of an unlinked open file works
    fs.flush(ino, fh)
    fs.release(ino, fh)
    assert stored(fs, "s") is None
    assert fs.read(ino, 10, 0, 0) == b"new"


def test_rename_carries_pending_writes(fs: SecretFS) -> None:
    ino, fh = open_file(fs, "s", os.O_WRONLY | os.O_TRUNC)
    fs.write(ino, b"new", 0, fh)
    d = fs.lookup(ROOT_INO, "d").ino
    fs.rename(ROOT_INO, "s", d, "t", 0)
    fs.flush(ino, fh)
    assert stored(fs, "s") is None and stored(fs, "d/t") == b"new"


def test_created_file_is_fully_there_before_its_close(fs: SecretFS) -> None:
    info = fi(os.O_WRONLY | os.O_CREAT)
    entry = fs.create(ROOT_INO, "new", 0o600, info)
    fs.write(entry.ino, b"draft", 0, info.fh)
    assert "new" in [name for name, _, _ in fs.readdir(ROOT_INO)]
    again = fs.lookup(ROOT_INO, "new")
    assert again.ino == entry.ino and again.attr["st_size"] == 5
    # The save pattern: replace the target before the close.
    fs.rename(ROOT_INO, "new", ROOT_INO, "s", 0)
    assert stored(fs, "s") == b"draft" and stored(fs, "new") is None
    fs.write(entry.ino, b" and more", 5, info.fh)
    fs.flush(entry.ino, info.fh)
    assert stored(fs, "s") == b"draft and more"


def test_unlink_of_a_created_file_before_its_close(fs: SecretFS) -> None:
    info = fi(os.O_WRONLY | os.O_CREAT)
    entry = fs.create(ROOT_INO, "tmp", 0o600, info)
    fs.unlink(ROOT_INO, "tmp")
    fs.flush(entry.ino, info.fh)
    fs.release(entry.ino, info.fh)
    assert stored(fs, "tmp") is None
    assert "tmp" not in [name for name, _, _ in fs.readdir(ROOT_INO)]


def test_a_changed_value_is_a_new_inode_and_the_old_one_never_changes(fs: SecretFS) -> None:
    old = fs.lookup(ROOT_INO, "s")
    fs.view.store.write("s", {"value": "a much longer value"})
    new = fs.lookup(ROOT_INO, "s")
    assert new.ino != old.ino and new.attr["st_size"] == 19
    assert fs.read(old.ino, 100, 0, 0) == b"old"  # a held descriptor keeps its version
    assert fs.getattr(old.ino, None)[0]["st_size"] == 3  # and its size agrees with it


def test_writable_open_of_a_stale_inode_is_estale(fs: SecretFS) -> None:
    old = fs.lookup(ROOT_INO, "s")
    fs.view.store.write("s", {"value": "elsewhere"})
    with pytest.raises(FuseError) as caught:
        fs.open(old.ino, fi(os.O_RDWR))
    assert caught.value.errno == errno.ESTALE  # the kernel then looks the name up again


def test_too_big_a_write_keeps_the_old_value(fs: SecretFS) -> None:
    # `cat big > f`: the kernel splits the write; the part past the limit is refused. What the same
    # descriptor wrote before is dropped too: a value cut at the limit never existed.
    ino, fh = open_file(fs, "s", os.O_WRONLY | os.O_TRUNC)
    fs.write(ino, b"begun", 0, fh)
    with pytest.raises(errors.ValueTooLarge):
        fs.write(ino, b"x", 2 * 1024 * 1024, fh)
    with pytest.raises(FuseError) as caught:
        fs.flush(ino, fh)
    assert caught.value.errno == errno.EFBIG
    assert stored(fs, "s") == b"old"
    assert fs.read(ino, 10, 0, 0) == b"old"


def test_a_refused_write_leaves_another_writer_alone(fs: SecretFS) -> None:
    ino, writer = open_file(fs, "s", os.O_RDWR)
    fs.write(ino, b"NEW", 0, writer)
    _, other = open_file(fs, "s", os.O_RDWR)
    with pytest.raises(errors.ValueTooLarge):
        fs.write(ino, b"x", 2 * 1024 * 1024, other)
    with pytest.raises(FuseError):
        fs.flush(ino, other)  # its own close reports it
    fs.release(ino, other)
    fs.flush(ino, writer)
    assert stored(fs, "s") == b"NEW"


def test_truncate_by_path_commits_at_once(fs: SecretFS) -> None:
    ino = fs.lookup(ROOT_INO, "s").ino
    attr, _ = fs.setattr(ino, SetAttr(size=1), None)
    assert attr["st_size"] == 1 and stored(fs, "s") == b"o"


class NoAttrsStore(MemoryStore):
    """A store that keeps no per-secret modes (as Vault KV v1)."""

    capabilities = Capabilities(atomic_batch=True)


def test_modes_and_owners_only_to_what_they_are_without_file_attrs() -> None:
    store = NoAttrsStore()
    store.write("s", {"value": "v"})
    fs = build_operations(store, ViewOptions(), FreshnessPolicy(cache_mode="kernel", ttl=0))
    ino = fs.lookup(ROOT_INO, "s").ino
    mode = fs.getattr(ino, None)[0]["st_mode"] & 0o7777
    fs.setattr(ino, SetAttr(mode=mode), None)
    with pytest.raises(errors.NotPermitted):
        fs.setattr(ino, SetAttr(mode=0o644 if mode != 0o644 else 0o600), None)


def test_chmod_is_stored_and_shown_at_once(fs: SecretFS) -> None:
    ino = fs.lookup(ROOT_INO, "s").ino
    attr, _ = fs.setattr(ino, SetAttr(mode=0o640), None)
    assert attr["st_mode"] & 0o7777 == 0o640
    assert fs.view.store.read("s").attrs == FileAttrs(mode=0o640)
    with pytest.raises(errors.NotPermitted):
        fs.setattr(ino, SetAttr(mode=0o4640), None)  # setuid
    assert fs.lookup(ROOT_INO, "s").ino == ino  # the same node: it shows what is stored


def test_read_only_mount_refuses_writes() -> None:
    store = MemoryStore()
    store.write("s", {"value": "v"})
    fs = build_operations(store, ViewOptions(read_only=True), FreshnessPolicy(cache_mode="direct", ttl=0))
    ino = fs.lookup(ROOT_INO, "s").ino
    with pytest.raises(errors.ReadOnly):
        fs.open(ino, fi(os.O_WRONLY))
    with pytest.raises(errors.ReadOnly):
        fs.unlink(ROOT_INO, "s")


def test_name_too_long_and_not_a_directory(fs: SecretFS) -> None:
    with pytest.raises(errors.NameTooLong):
        fs.lookup(ROOT_INO, "x" * 256)
    with pytest.raises(errors.NotFound):
        fs.lookup(ROOT_INO, "missing")
    ino = fs.lookup(ROOT_INO, "s").ino
    with pytest.raises(errors.NotADirectory):
        fs.lookup(ino, "child")


def test_read_only_kernel_mode_sends_no_opens_nor_flushes() -> None:
    """ENOSYS makes the kernel stop sending them: warm reads then never reach the daemon."""
    store = MemoryStore()
    store.write("s", {"value": "v"})
    fs = build_operations(store, ViewOptions(read_only=True), FreshnessPolicy(cache_mode="kernel", ttl=0))
    ino = fs.lookup(ROOT_INO, "s").ino
    with pytest.raises(FuseError) as opened:
        fs.open(ino, fi())
    with pytest.raises(FuseError) as flushed:
        fs.flush(ino, 0)
    assert (opened.value.errno, flushed.value.errno) == (errno.ENOSYS, errno.ENOSYS)
    assert fs.read(ino, 10, 0, 0) == b"v"  # pages are filled by handle-less reads
