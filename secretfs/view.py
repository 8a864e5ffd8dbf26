"""The file view: paths <-> secrets, directories and attributes. No FUSE here.

Two layouts (`secretfs.layouts`): `file` (a secret is a file whose content is its rendered value) and
`keys` (a secret is a directory with one file per key, the Kubernetes Secret volume shape); the view
picks one from its options once and asks it about files. Directories are implied by names; `mkdir`
makes an empty one that lives in memory until a file is written in it or it is removed.
Every method raises only secretfs.errors exceptions.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from secretfs import fileattrs, render
from secretfs.errors import (
    AlreadyExists,
    CrossDevice,
    DirectoryNotEmpty,
    NotADirectory,
    NotFound,
    NotPermitted,
    ReadOnly,
    ValueTooLarge,
)
from secretfs.fileattrs import Perms
from secretfs.layouts import Attr, Layout, LayoutName, Resolved, layout_for
from secretfs.stores.base import FileAttrs, Store, file_attr_store

__all__ = ["Attr", "Resolved", "View", "ViewOptions", "path_to_name"]


@dataclass(frozen=True)
class ViewOptions:
    """How the mount presents secrets."""

    layout: LayoutName = "file"
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


def path_to_name(path: str) -> str:
    """'/a/b/c' -> 'a/b/c'; the root is ''."""
    return path.strip("/")


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


class View:
    """Secrets seen as a tree of files and directories."""

    def __init__(self, store: Store, options: ViewOptions) -> None:
        self.store = store
        self.options = options.resolved()
        self.mounted_at = time.time()
        self._empty_dirs: set[str] = set()
        self._lock = threading.Lock()
        self.layout: Layout = layout_for(self.options.layout, self)
        # Per-secret (mode, uid, gid) over the mount options' (None: theirs); the adapter applies it.
        self.attr_override: Callable[[str], tuple[int | None, int | None, int | None]] | None = None

    # ----- attributes -------------------------------------------------------------------------

    def file_attr(self, size: int, mtime: float, ctime: float, perms: Perms | None = None) -> Attr:
        """A file's attributes; `perms` is what its secret shows (View.perms), else the mount's defaults."""
        mode, uid, gid = perms if perms is not None else self.default_perms()
        return Attr(False, stat.S_IFREG | mode, size, mtime, ctime, uid, gid)

    def default_perms(self) -> Perms:
        o = self.options
        assert o.file_mode is not None
        return Perms(o.file_mode, o.uid, o.gid)

    def perms(self, secret: str, attrs: FileAttrs | None) -> Perms:
        """What the files of secret show, from its stored attrs (secretfs.fileattrs for the order)."""
        override = self.attr_override(secret) if self.attr_override is not None else (None, None, None)
        return fileattrs.shown(self.default_perms(), attrs, override)

    @property
    def keeps_file_attrs(self) -> bool:
        """Whether the store keeps per-secret modes and owners (Capabilities.file_attrs)."""
        return file_attr_store(self.store) is not None

    def set_attrs(self, path: str, attrs: FileAttrs) -> Perms:
        """Store a new mode or owner for the secret a file path shows; returns what its files now show."""
        self._require_writable()
        target = file_attr_store(self.store)
        if target is None:
            raise NotPermitted("the store keeps no per-secret modes or owners")
        secret = self.secret_of(path)
        target.set_attrs(secret, attrs)
        return self.perms(secret, self.store.read(secret).attrs)

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
        return self.layout.getattr(name)

    def is_dir(self, name: str) -> bool:
        """Whether name is a directory: one mkdir made, or implied by the names below it."""
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
        return self.layout.secret_of(path_to_name(path))

    def resolve(self, path: str) -> Resolved:
        """What a path is now: a directory, or a file with its whole content (one consistent read)."""
        name = path_to_name(path)
        if name and render.is_valid_name(name) and (found := self.layout.resolve_file(name)) is not None:
            return found
        attr = self.getattr(path)
        if attr.is_dir:
            return Resolved(True, b"", attr.mtime, attr.ctime)
        perms = Perms(attr.mode & 0o7777, attr.uid, attr.gid)
        return Resolved(False, self.read_file(path), attr.mtime, attr.ctime, perms)

    # ----- directories ------------------------------------------------------------------------

    def readdir(self, path: str) -> list[str]:
        name = path_to_name(path)
        attr = self.getattr(path)
        if not attr.is_dir:
            raise NotADirectory(f"{name!r} is not a directory")
        listing = self.store.list_dir(name)
        entries: dict[str, None] = {}
        for base in self.layout.entries(name) + listing.files + listing.dirs:
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
        self.keep_parent(name)

    # ----- files ------------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        """A file's content."""
        return self.layout.read_file(path_to_name(path))

    def check_creatable(self, path: str) -> None:
        """Raise unless a new file may be created at path."""
        self._require_writable()
        name = path_to_name(path)
        render.check_new_name(name)
        self.layout.check_creatable(name)

    def write_file(self, path: str, content: bytes, attrs: FileAttrs | None = None) -> bytes:
        """Replace a file's whole content (one atomic store write, with `attrs` for its secret when
        given); returns what the file now shows (a JSON object is shown in canonical form, so it may
        differ from what was written)."""
        self.check_creatable(path)
        if len(content) > render.MAX_VALUE_BYTES:
            raise ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
        name = path_to_name(path)
        shown = self.layout.write_file(name, content, attrs)
        self.forget_empty_ancestors(name)
        return shown

    def forget_empty_ancestors(self, name: str) -> None:
        """name now exists: its ancestors are no longer empty directories."""
        with self._lock:
            parent = _parent(name)
            while parent:
                self._empty_dirs.discard(parent)
                parent = _parent(parent)

    def unlink(self, path: str) -> None:
        self._require_writable()
        self.layout.unlink(path_to_name(path))

    def keep_parent(self, name: str) -> None:
        """A directory does not vanish when its last file goes (rm -r then rmdir must work)."""
        parent = _parent(name)
        if parent and not self.is_dir(parent):
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
        self.layout.rename_file(old, new)

    def _rename_dir(self, old: str, new: str) -> None:
        listing = self.store.list_dir(old)
        with self._lock:
            populated = bool(listing.files or listing.dirs) or self._has_empty_below(old)
        if populated:
            # Moving a populated directory is not one atomic step; mv(1) copies and removes instead.
            raise CrossDevice(f"{old!r} is a non-empty directory")
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
            self.keep_parent(old)
            return
        self.layout.rename_childless_dir(old, new)

    def _require_writable(self) -> None:
        if self.options.read_only or self.store.read_only:
            raise ReadOnly("the mount is read-only")

    # ----- status -----------------------------------------------------------------------------

    def hidden_names(self) -> int:
        """How many stored names cannot be shown as paths."""
        return sum(1 for meta in self.store.list() if not render.is_valid_name(meta.name))
