"""The file view: paths <-> secrets, file contents, directories and attributes. No FUSE here.

Two layouts: `file` (a secret is a file whose content is its rendered value) and `keys` (a secret is
a directory with one file per key, the Kubernetes Secret volume shape). Directories are implied by
names; `mkdir` makes an empty one that lives in memory until a file is written in it or it is removed.
Every method raises only secretfs.errors exceptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from secretfs import render
from secretfs.errors import (
    AlreadyExists,
    CrossDevice,
    DirectoryNotEmpty,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotFound,
    ReadOnly,
    ValueTooLarge,
)
from secretfs.stores.base import SecretRecord, Store

Layout = Literal["file", "keys"]

RENDER_MEMO_ENTRIES = 10_000  # renderings kept (as many as the value cache's default bound)


@dataclass(frozen=True)
class ViewOptions:
    """How the mount presents secrets."""

    layout: Layout = "file"
    read_only: bool = False
    uid: int = -1
    gid: int = -1
    file_mode: int | None = None
    dir_mode: int | None = None

    def resolved(self) -> ViewOptions:
        """Fill in the mounting user and the default modes."""
        return ViewOptions(
            layout=self.layout,
            read_only=self.read_only,
            uid=os.getuid() if self.uid < 0 else self.uid,
            gid=os.getgid() if self.gid < 0 else self.gid,
            file_mode=self.file_mode if self.file_mode is not None else (0o400 if self.read_only else 0o600),
            dir_mode=self.dir_mode if self.dir_mode is not None else (0o500 if self.read_only else 0o700),
        )


@dataclass(frozen=True)
class Attr:
    """What stat shows for a path."""

    is_dir: bool
    mode: int
    size: int
    mtime: float
    ctime: float
    uid: int
    gid: int

    def as_stat(self) -> dict[str, int]:
        mtime_ns = int(self.mtime * 1e9)
        ctime_ns = int(self.ctime * 1e9)
        return {
            "st_mode": self.mode,
            "st_nlink": 2 if self.is_dir else 1,
            "st_size": self.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": mtime_ns,
            "st_mtime": mtime_ns,
            "st_ctime": ctime_ns,
            "st_blocks": (self.size + 511) // 512,
            "st_blksize": 4096,
        }


@dataclass(frozen=True)
class Resolved:
    """A path's current state: a directory, or a file's content and times."""

    is_dir: bool
    content: bytes
    mtime: float
    ctime: float


def path_to_name(path: str) -> str:
    """'/a/b/c' -> 'a/b/c'; the root is ''."""
    return path.strip("/")


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


def _split(name: str) -> tuple[str, str]:
    parent, _, base = name.rpartition("/")
    return parent, base


class View:
    """Secrets seen as a tree of files and directories."""

    def __init__(self, store: Store, options: ViewOptions) -> None:
        self.store = store
        self.options = options.resolved()
        self.mounted_at = time.time()
        self._empty_dirs: set[str] = set()
        self._lock = threading.Lock()
        # The rendering of the last record read per name: a cache hit returns the same record
        # object, so its bytes are reused instead of rendered again. Bounded like the value cache
        # (least recently rendered first out), so `ls -l` of a huge directory does not keep them all.
        self._rendered: OrderedDict[str, tuple[SecretRecord, bytes]] = OrderedDict()
        self._rendered_max = RENDER_MEMO_ENTRIES

    def _read(self, name: str) -> SecretRecord:
        return self.store.read(name)

    def _render(self, record: SecretRecord) -> bytes:
        memo = self._rendered.get(record.name)
        if memo is not None and memo[0] is record:
            return memo[1]
        content = render.render(record.value)
        self._rendered[record.name] = (record, content)
        if len(self._rendered) > self._rendered_max:
            with contextlib.suppress(KeyError):  # another thread may have emptied it meanwhile
                self._rendered.popitem(last=False)
        return content

    # ----- attributes -------------------------------------------------------------------------

    def file_attr(self, size: int, mtime: float, ctime: float) -> Attr:
        o = self.options
        assert o.file_mode is not None
        return Attr(False, stat.S_IFREG | o.file_mode, size, mtime, ctime, o.uid, o.gid)

    def dir_attr(self, mtime: float | None = None) -> Attr:
        o = self.options
        assert o.dir_mode is not None
        when = self.mounted_at if mtime is None else mtime
        return Attr(True, stat.S_IFDIR | o.dir_mode, 0, when, when, o.uid, o.gid)

    def getattr(self, path: str) -> Attr:
        name = path_to_name(path)
        if not name:
            return self.dir_attr()
        if not render.is_valid_name(name):
            raise NotFound(f"no such path {name!r}")
        if self.options.layout == "keys":
            return self._getattr_keys(name)
        try:
            record = self._read(name)
        except NotFound:
            self._rendered.pop(name, None)
            if self._is_dir(name):
                return self.dir_attr()
            raise
        return self.file_attr(len(self._render(record)), record.updated_at, record.created_at)

    def _getattr_keys(self, name: str) -> Attr:
        parent, key = _split(name)
        if parent:
            value, updated, created = self._read_object(parent)
            if value is not None and key in value:
                return self.file_attr(len(render.render_key(value[key])), updated, created)
        try:
            meta = self.store.stat(name)
            return self.dir_attr(meta.updated_at)
        except NotFound:
            if self._is_dir(name):
                return self.dir_attr()
            raise

    def _read_object(self, name: str) -> tuple[dict[str, Any] | None, float, float]:
        """A secret's value as a dict of keys (None when there is no such secret)."""
        try:
            record = self._read(name)
        except NotFound:
            return None, 0.0, 0.0
        # A copy: callers edit it for writes, and the record may be shared with the cache.
        value = dict(record.value) if isinstance(record.value, dict) else {"value": record.value}
        return value, record.updated_at, record.created_at

    def _is_dir(self, name: str) -> bool:
        with self._lock:
            if name in self._empty_dirs or self._has_empty_below(name):
                return True
        listing = self.store.list_dir(name)
        return bool(listing.files or listing.dirs)

    def _has_empty_below(self, name: str) -> bool:
        """Whether an empty directory lies below name (it implies name as a secret would). Hold the lock."""
        prefix = f"{name}/"
        return any(empty.startswith(prefix) for empty in self._empty_dirs)

    def secret_of(self, path: str) -> str:
        """The secret whose value a file path shows."""
        name = path_to_name(path)
        return name.rpartition("/")[0] if self.options.layout == "keys" else name

    def resolve(self, path: str) -> Resolved:
        """What a path is now: a directory, or a file with its whole content (one consistent read)."""
        name = path_to_name(path)
        if name and self.options.layout == "file" and render.is_valid_name(name):
            try:
                record = self._read(name)
            except NotFound:
                self._rendered.pop(name, None)
            else:
                return Resolved(False, self._render(record), record.updated_at, record.created_at)
        attr = self.getattr(path)
        if attr.is_dir:
            return Resolved(True, b"", attr.mtime, attr.ctime)
        return Resolved(False, self.read_file(path), attr.mtime, attr.ctime)

    # ----- directories ------------------------------------------------------------------------

    def readdir(self, path: str) -> list[str]:
        name = path_to_name(path)
        attr = self.getattr(path)
        if not attr.is_dir:
            raise NotADirectory(f"{name!r} is not a directory")
        listing = self.store.list_dir(name)
        entries: dict[str, None] = {}
        if self.options.layout == "keys":
            value, _, _ = self._read_object(name) if name else (None, 0.0, 0.0)
            for key in sorted(value or {}):
                if render.segment_ok(key):
                    entries[key] = None
            for base in listing.files + listing.dirs:
                if render.segment_ok(base):
                    entries[base] = None
        else:
            for base in listing.files + listing.dirs:
                if render.segment_ok(base):
                    entries[base] = None
        prefix = f"{name}/" if name else ""
        with self._lock:
            for empty in self._empty_dirs:
                if empty.startswith(prefix):  # an empty directory, or the one that leads to it
                    entries[empty[len(prefix) :].partition("/")[0]] = None
        return list(entries)

    def mkdir(self, path: str) -> None:
        self._require_writable()
        name = path_to_name(path)
        render.check_new_name(name)
        try:
            self.getattr(path)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"{name!r} exists")
        with self._lock:
            self._empty_dirs.add(name)

    def rmdir(self, path: str) -> None:
        self._require_writable()
        name = path_to_name(path)
        attr = self.getattr(path)
        if not attr.is_dir:
            raise NotADirectory(f"{name!r} is not a directory")
        if self.readdir(path):
            raise DirectoryNotEmpty(f"{name!r} is not empty")
        with self._lock:
            self._empty_dirs.discard(name)
        self._keep_parent(name)

    # ----- files ------------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        """A file's content."""
        name = path_to_name(path)
        if self.options.layout == "keys":
            parent, key = _split(name)
            value, _, _ = self._read_object(parent) if parent else (None, 0.0, 0.0)
            if value is None or key not in value:
                # In this layout a secret is itself a directory, even with no sub-secrets.
                if self._is_dir(name) or self._read_object(name)[0] is not None:
                    raise IsADirectory(f"{name!r} is a directory")
                raise NotFound(f"no such file {name!r}")
            return render.render_key(value[key])
        try:
            return self._render(self._read(name))
        except NotFound:
            if name and self._is_dir(name):
                raise IsADirectory(f"{name!r} is a directory") from None
            raise

    def check_creatable(self, path: str) -> None:
        """Raise unless a new file may be created at path."""
        self._require_writable()
        name = path_to_name(path)
        render.check_new_name(name)
        if self.options.layout == "keys" and "/" not in name:
            raise InvalidName("in the keys layout, files live inside a secret's directory")

    def write_file(self, path: str, content: bytes) -> bytes:
        """Replace a file's whole content (one atomic store write); returns what the file now shows
        (a JSON object is shown in canonical form, so it may differ from what was written)."""
        self.check_creatable(path)
        if len(content) > render.MAX_VALUE_BYTES:
            raise ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
        name = path_to_name(path)
        if self.options.layout == "keys":
            shown = self._write_key(name, content)
        else:
            value = render.parse(content)
            self.store.write(name, value)
            shown = render.render(value)
        self._forget_empty_ancestors(name)
        return shown

    def _write_key(self, name: str, content: bytes) -> bytes:
        secret, key = _split(name)
        value, _, _ = self._read_object(secret)
        value = dict(value or {})
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName("in the keys layout, key files hold UTF-8 text") from None
        if key in value and not isinstance(value[key], str):
            try:
                value[key] = json.loads(text)
            except ValueError:
                raise InvalidName(f"key {key!r} holds JSON; the new content does not parse") from None
        else:
            value[key] = text
        self.store.write(secret, value)
        return render.render_key(value[key])

    def _forget_empty_ancestors(self, name: str) -> None:
        with self._lock:
            parent = _parent(name)
            while parent:
                self._empty_dirs.discard(parent)
                parent = _parent(parent)

    def unlink(self, path: str) -> None:
        self._require_writable()
        name = path_to_name(path)
        if self.options.layout == "keys":
            secret, key = _split(name)
            value, _, _ = self._read_object(secret) if secret else (None, 0.0, 0.0)
            if value is None or key not in value:
                raise NotFound(f"no such file {name!r}")
            del value[key]
            if value:
                self.store.write(secret, value)
            else:
                self.store.delete(secret)
            return
        try:
            self.store.delete(name)
        except NotFound:
            if self._is_dir(name):
                raise IsADirectory(f"{name!r} is a directory") from None
            raise
        self._keep_parent(name)

    def _keep_parent(self, name: str) -> None:
        """A directory does not vanish when its last file goes (rm -r then rmdir must work)."""
        parent = _parent(name)
        if parent and not self._is_dir(parent):
            with self._lock:
                self._empty_dirs.add(parent)

    def rename(self, old_path: str, new_path: str) -> None:
        self._require_writable()
        old, new = path_to_name(old_path), path_to_name(new_path)
        render.check_new_name(new)
        attr = self.getattr(old_path)
        if attr.is_dir:
            self._rename_dir(old, new)
            return
        if self.options.layout == "keys":
            self._rename_key(old, new)
            return
        try:
            if self.getattr(new_path).is_dir:
                raise IsADirectory(f"{new!r} is a directory")
        except NotFound:
            pass
        self.store.rename(old, new)
        self._forget_empty_ancestors(new)
        self._keep_parent(old)

    def _rename_dir(self, old: str, new: str) -> None:
        listing = self.store.list_dir(old)
        with self._lock:
            populated = bool(listing.files or listing.dirs) or self._has_empty_below(old)
        if not populated:
            try:
                if self.getattr(new).is_dir and self.readdir(new):
                    raise DirectoryNotEmpty(f"{new!r} is not empty")
            except NotFound:
                pass
            with self._lock:
                moved = old in self._empty_dirs
                if moved:
                    self._empty_dirs.discard(old)
                    self._empty_dirs.add(new)
            if moved:
                self._keep_parent(old)
                return
            if self.options.layout == "keys":
                # A secret's directory with no sub-secrets: the secret itself moves.
                self.store.rename(old, new)
                return
        # Moving a populated directory is not one atomic step; mv(1) copies and removes instead.
        raise CrossDevice(f"{old!r} is a non-empty directory")

    def _rename_key(self, old: str, new: str) -> None:
        old_secret, old_key = _split(old)
        new_secret, new_key = _split(new)
        if old_secret != new_secret:
            raise CrossDevice("keys move only within their secret")
        value, _, _ = self._read_object(old_secret)
        if value is None or old_key not in value:
            raise NotFound(f"no such file {old!r}")
        value[new_key] = value.pop(old_key)
        self.store.write(old_secret, value)

    def _require_writable(self) -> None:
        if self.options.read_only or self.store.read_only:
            raise ReadOnly("the mount is read-only")

    # ----- status -----------------------------------------------------------------------------

    def hidden_names(self) -> int:
        """How many stored names cannot be shown as paths."""
        return sum(1 for meta in self.store.list() if not render.is_valid_name(meta.name))
