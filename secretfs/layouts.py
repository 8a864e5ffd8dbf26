"""The two layouts, as strategies of the view: where a secret shows up as files, and what a write stores.

- `FileLayout` (`file`): a secret is a file whose content is its rendered value.
- `KeysLayout` (`keys`): a secret is a directory with one file per key, the Kubernetes Secret volume
  shape.

A layout answers for names that are valid and not the root; the view (`view.View`) handles the root,
invalid names, read-only refusals, the directories `mkdir` made, and directory moves, and asks its
layout for everything else. Every method raises only secretfs.errors exceptions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from secretfs import render
from secretfs.errors import CrossDevice, InvalidName, IsADirectory, NotFound, NotPermitted
from secretfs.fileattrs import Perms
from secretfs.lru import BoundedLRU
from secretfs.stores.base import FileAttrs, SecretRecord, Store, file_attr_store

LayoutName = Literal["file", "keys"]

RENDER_MEMO_ENTRIES = 10_000  # renderings kept (as many as the value cache's default bound)


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
    perms: Perms | None = None  # a file's mode and owner (secretfs.fileattrs); None for a directory


class Tree(Protocol):
    """What a layout uses of its view: the store, the attributes, and the directories that exist."""

    store: Store

    def file_attr(self, size: int, mtime: float, ctime: float, perms: Perms | None = None) -> Attr: ...

    def perms(self, secret: str, attrs: FileAttrs | None) -> Perms:
        """What the files of secret show, given its stored attrs."""
        ...

    def dir_attr(self, mtime: float | None = None) -> Attr: ...

    def is_dir(self, name: str) -> bool:
        """Whether name is a directory: one `mkdir` made, or implied by the names below it."""
        ...

    def keep_parent(self, name: str) -> None:
        """Keep name's parent directory after name left it."""
        ...

    def forget_empty_ancestors(self, name: str) -> None:
        """name now exists: its ancestors are no longer empty directories."""
        ...


class Layout(Protocol):
    """One way of showing secrets as files. `name` is always a valid name, never the root."""

    def secret_of(self, name: str) -> str:
        """The secret whose value the file at name shows."""
        ...

    def getattr(self, name: str) -> Attr: ...

    def resolve_file(self, name: str) -> Resolved | None:
        """The file at name with its whole content from one read; None when it takes more (then the
        view asks getattr and read_file)."""
        ...

    def read_file(self, name: str) -> bytes: ...

    def entries(self, name: str) -> list[str]:
        """The entries of directory name that the layout adds before the store's listing."""
        ...

    def check_creatable(self, name: str) -> None:
        """Raise unless the layout can hold a file at name (the view checked the name itself)."""
        ...

    def write_file(self, name: str, content: bytes, attrs: FileAttrs | None = None) -> bytes:
        """Store content as the file at name (and attrs for its secret, in the same write); returns
        what the file now shows."""
        ...

    def unlink(self, name: str) -> None: ...

    def rename_file(self, old: str, new: str) -> None: ...

    def rename_childless_dir(self, old: str, new: str) -> None:
        """Move directory old, which has nothing below it and which `mkdir` did not make, to new."""
        ...


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


def _split(name: str) -> tuple[str, str]:
    parent, _, base = name.rpartition("/")
    return parent, base


def _store_value(store: Store, secret: str, value: Any, attrs: FileAttrs | None) -> None:
    """Write a secret's value, with its file attrs when there are any (one store write)."""
    if attrs is None or attrs.empty:
        store.write(secret, value)
        return
    target = file_attr_store(store)
    if target is None:
        raise NotPermitted("the store keeps no per-secret modes or owners")
    target.write_with_attrs({secret: value}, attrs)


class FileLayout:
    """`file`: a secret is a file; its content is the rendered value. Directories are implied by names."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        # The rendering of the last record read per name: a cache hit returns the same record
        # object, so its bytes are reused instead of rendered again. Bounded like the value cache
        # (least recently rendered first out), so `ls -l` of a huge directory does not keep them all.
        # Used without a lock (see secretfs.lru): a lost update costs one rendering.
        self._rendered: BoundedLRU[str, tuple[SecretRecord, bytes]] = BoundedLRU(RENDER_MEMO_ENTRIES)

    def _render(self, record: SecretRecord) -> bytes:
        memo = self._rendered.peek(record.name)
        if memo is not None and memo[0] is record:
            return memo[1]
        content = render.render(record.value)
        self._rendered.put(record.name, (record, content))
        return content

    def secret_of(self, name: str) -> str:
        return name

    def getattr(self, name: str) -> Attr:
        try:
            record = self.tree.store.read(name)
        except NotFound:
            self._rendered.pop(name)
            if self.tree.is_dir(name):
                return self.tree.dir_attr()
            raise
        perms = self.tree.perms(name, record.attrs)
        return self.tree.file_attr(len(self._render(record)), record.updated_at, record.created_at, perms)

    def resolve_file(self, name: str) -> Resolved | None:
        try:
            record = self.tree.store.read(name)
        except NotFound:
            self._rendered.pop(name)
            return None
        perms = self.tree.perms(name, record.attrs)
        return Resolved(False, self._render(record), record.updated_at, record.created_at, perms)

    def read_file(self, name: str) -> bytes:
        try:
            return self._render(self.tree.store.read(name))
        except NotFound:
            if name and self.tree.is_dir(name):
                raise IsADirectory(f"{name!r} is a directory") from None
            raise

    def entries(self, name: str) -> list[str]:
        return []

    def check_creatable(self, name: str) -> None:
        pass

    def write_file(self, name: str, content: bytes, attrs: FileAttrs | None = None) -> bytes:
        value = render.stored_value(content)
        _store_value(self.tree.store, name, value, attrs)
        return render.render(value)

    def unlink(self, name: str) -> None:
        try:
            self.tree.store.delete(name)
        except NotFound:
            if self.tree.is_dir(name):
                raise IsADirectory(f"{name!r} is a directory") from None
            raise
        self.tree.keep_parent(name)

    def rename_file(self, old: str, new: str) -> None:
        try:
            if self.getattr(new).is_dir:
                raise IsADirectory(f"{new!r} is a directory")
        except NotFound:
            pass
        self.tree.store.rename(old, new)
        self.tree.forget_empty_ancestors(new)
        self.tree.keep_parent(old)

    def rename_childless_dir(self, old: str, new: str) -> None:
        # Neither populated nor made by mkdir: only a concurrent change leads here. Refused as populated.
        raise CrossDevice(f"{old!r} is a non-empty directory")


class KeysLayout:
    """`keys`: a secret is a directory holding one file per key of its value."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def _read_object(self, name: str) -> tuple[dict[str, Any] | None, float, float]:
        """A secret's value as a dict of keys (None when there is no such secret)."""
        try:
            record = self.tree.store.read(name)
        except NotFound:
            return None, 0.0, 0.0
        # A copy: callers edit it for writes, and the record may be shared with the cache.
        value = dict(record.value) if isinstance(record.value, dict) else {"value": record.value}
        return value, record.updated_at, record.created_at

    def _attrs(self, secret: str) -> FileAttrs | None:
        """A secret's stored file attrs (from the value cache: just read with its value)."""
        try:
            return self.tree.store.read(secret).attrs
        except NotFound:
            return None

    def secret_of(self, name: str) -> str:
        return _parent(name)

    def getattr(self, name: str) -> Attr:
        parent, key = _split(name)
        if parent:
            value, updated, created = self._read_object(parent)
            if value is not None and key in value:
                perms = self.tree.perms(parent, self._attrs(parent))
                return self.tree.file_attr(len(render.render_key(value[key])), updated, created, perms)
        try:
            meta = self.tree.store.stat(name)
            return self.tree.dir_attr(meta.updated_at)
        except NotFound:
            if self.tree.is_dir(name):
                return self.tree.dir_attr()
            raise

    def resolve_file(self, name: str) -> Resolved | None:
        return None  # a key's file and its secret's directory take more than one read to tell

    def read_file(self, name: str) -> bytes:
        parent, key = _split(name)
        value, _, _ = self._read_object(parent) if parent else (None, 0.0, 0.0)
        if value is None or key not in value:
            # In this layout a secret is itself a directory, even with no sub-secrets.
            if self.tree.is_dir(name) or self._read_object(name)[0] is not None:
                raise IsADirectory(f"{name!r} is a directory")
            raise NotFound(f"no such file {name!r}")
        return render.render_key(value[key])

    def entries(self, name: str) -> list[str]:
        value, _, _ = self._read_object(name) if name else (None, 0.0, 0.0)
        return sorted(value or {})

    def check_creatable(self, name: str) -> None:
        if "/" not in name:
            raise InvalidName("in the keys layout, files live inside a secret's directory")

    def write_file(self, name: str, content: bytes, attrs: FileAttrs | None = None) -> bytes:
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
        _store_value(self.tree.store, secret, value, attrs)
        return render.render_key(value[key])

    def unlink(self, name: str) -> None:
        secret, key = _split(name)
        value, _, _ = self._read_object(secret) if secret else (None, 0.0, 0.0)
        if value is None or key not in value:
            raise NotFound(f"no such file {name!r}")
        del value[key]
        if value:
            self.tree.store.write(secret, value)
        else:
            self.tree.store.delete(secret)

    def rename_file(self, old: str, new: str) -> None:
        old_secret, old_key = _split(old)
        new_secret, new_key = _split(new)
        if old_secret != new_secret:
            raise CrossDevice("keys move only within their secret")
        value, _, _ = self._read_object(old_secret)
        if value is None or old_key not in value:
            raise NotFound(f"no such file {old!r}")
        value[new_key] = value.pop(old_key)
        self.tree.store.write(old_secret, value)

    def rename_childless_dir(self, old: str, new: str) -> None:
        # A secret's directory with no sub-secrets: the secret itself moves.
        self.tree.store.rename(old, new)


def layout_for(name: LayoutName, tree: Tree) -> Layout:
    """The layout named name (ViewOptions.layout), serving tree: the one place a layout is chosen."""
    return KeysLayout(tree) if name == "keys" else FileLayout(tree)
