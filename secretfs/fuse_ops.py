"""The FUSE adapter: inode requests in, replies and errnos out, nothing else.

Names and contents come from the view, which inode a name leads to from the coherence owner, and
open-file state from the nodes and the open files (secretfs.nodes, secretfs.openfiles).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from typing import Any

from secretfs import errors, render
from secretfs.announce import Announcer
from secretfs.attrchange import AttrChanges
from secretfs.coherence import Coherence
from secretfs.fusebind import (
    CAP_ATOMIC_O_TRUNC,
    CAP_AUTO_INVAL_DATA,
    ROOT_INO,
    Entry,
    FuseError,
    SetAttr,
)
from secretfs.mounts import STATUS_XATTR
from secretfs.nodes import Node, entry_ino, join
from secretfs.openfiles import OpenFiles

UNCHANGED_ID = (-1, 0xFFFFFFFF)


class SecretFS:
    """The filesystem the binding calls (secretfs.fusebind.Filesystem)."""

    def __init__(self, coherence: Coherence) -> None:
        self.coherence = coherence
        self.view = coherence.view
        self.nodes = coherence.nodes
        self.policy = coherence.policy
        self.read_only = self.view.options.read_only or self.view.store.read_only
        self.files = OpenFiles(coherence)
        self.attr_changes = AttrChanges(coherence)
        self.announcer: Announcer | None = None  # set by the daemon on a writable mount
        self.status_parts: dict[str, Callable[[], Any]] = {}  # more of `runtime_status`, by key

    def _announcing(self) -> bool:
        """A request of the announcer (secretfs.announce): it opens, truncates and closes to make the
        kernel tell inotify watchers, and nothing it does changes anything."""
        return self.announcer is not None and self.announcer.is_me()

    # ----- helpers -------------------------------------------------------------------------------------

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise errors.ReadOnly("the mount is read-only")

    def _attr(self, node: Node) -> dict[str, int]:
        if node.is_dir:
            attr = self.view.dir_attr(node.mtime).as_stat()
        else:
            attr = self.view.file_attr(len(node.content), node.mtime, node.ctime, node.perms).as_stat()
            attr["st_nlink"] = node.nlink
            if self.view.attr_override is not None and node.name is not None:
                mode, uid, gid = self.view.attr_override(self.view.secret_of(node.name))
                if mode is not None:
                    attr["st_mode"] = stat.S_IFREG | mode
                if uid is not None:
                    attr["st_uid"] = uid
                if gid is not None:
                    attr["st_gid"] = gid
        attr["st_ino"] = node.ino
        return attr

    def _entry(self, node: Node, *, entry_timeout: float | None = None) -> Entry:
        timeout = self.policy.entry_timeout if entry_timeout is None else entry_timeout
        return Entry(node.ino, self._attr(node), self.policy.attr_timeout, timeout)

    def _dir(self, ino: int) -> str:
        node = self.nodes.get(ino)
        if not node.is_dir:
            raise errors.NotADirectory("not a directory")
        if node.name is None:
            raise errors.NotFound("the directory was removed")
        return node.name

    def _path(self, parent: int, name: str) -> str:
        if len(name.encode("utf-8", "surrogateescape")) > render.MAX_SEGMENT_BYTES:
            raise errors.NameTooLong(f"a name is at most {render.MAX_SEGMENT_BYTES} bytes")
        return join(self._dir(parent), name)

    def _file(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node.is_dir:
            raise errors.IsADirectory("is a directory")
        return node

    def _open_handle(self, node: Node, fi: Any, *, writable: bool) -> None:
        if self.policy.cache_mode == "direct":
            fi.direct_io = 1
        else:
            fi.keep_cache = 1  # a node's pages change only through the kernel itself
        if writable:
            fi.fh = self.files.open(node, fi.flags)
        else:
            fi.noflush, fi.fh = 1, 0  # nothing to commit at close

    # ----- lifecycle -------------------------------------------------------------------------------------

    def init(self, conn: Any) -> None:
        conn.want = (conn.want | (conn.capable & CAP_ATOMIC_O_TRUNC)) & ~CAP_AUTO_INVAL_DATA
        self.coherence.start()

    def destroy(self) -> None:
        self.coherence.stop()

    # ----- metadata -----------------------------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> Entry:
        path = self._path(parent, name)
        pretend = self.announcer.pretend(path) if self.announcer is not None else None
        if pretend == "absent":
            raise errors.NotFound(path)  # the announcer's open creates it: IN_CREATE
        if pretend == "present" and self.announcer is not None:  # a removed file, until the announcer unlinks it
            self.announcer.stand_in = self.nodes.stand_in(path)
            if self.announcer.stand_in is not None:  # else made again meanwhile: as it is
                # Valid for no time: another process's path walk must not find it in the dcache
                # and open it; it looks the name up itself, and waits for the unlink.
                return self._entry(self.announcer.stand_in, entry_timeout=0.0)
        return self._entry(self.coherence.lookup(path))

    def forget(self, ino: int, nlookup: int) -> None:
        self.nodes.forget(ino, nlookup)

    def getattr(self, ino: int, fh: int | None) -> tuple[dict[str, int], float]:
        return self._attr(self.nodes.get(ino)), self.policy.attr_timeout

    def setattr(self, ino: int, change: SetAttr, fh: int | None) -> tuple[dict[str, int], float]:
        node = self.nodes.get(ino)
        if self._announcing():
            return self._attr(node), self.policy.attr_timeout
        self._refuse_if_read_only()
        self.attr_changes.apply(  # per-secret modes and owners (secretfs.attrchange)
            node,
            change.mode,
            None if change.uid in UNCHANGED_ID else change.uid,
            None if change.gid in UNCHANGED_ID else change.gid,
        )
        if change.size is not None:
            self.files.truncate(self._file(ino), change.size, fh)
        if change.mtime is not None:
            node.mtime = change.mtime
        return self._attr(node), self.policy.attr_timeout

    def readdir(self, ino: int) -> list[tuple[str, int, int]]:
        name = self._dir(ino)
        entries = [(".", ino, stat.S_IFDIR), ("..", ROOT_INO, stat.S_IFDIR)]
        for base in dict.fromkeys([*self.view.readdir("/" + name), *self.nodes.created_in(name)]):
            node = self.nodes.current(join(name, base))
            entries.append((base, node.ino if node else entry_ino(join(name, base)), 0))
        return entries

    def statfs(self) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": render.MAX_SEGMENT_BYTES}

    # ----- files -----------------------------------------------------------------------------------------

    @property
    def kernel_only_reads(self) -> bool:
        """Read-only `kernel` mode: open and flush answer ENOSYS, so the kernel stops sending them."""
        return self.read_only and self.policy.cache_mode == "kernel"

    def open(self, ino: int, fi: Any) -> None:
        if self.kernel_only_reads:
            raise FuseError(errno.ENOSYS)
        node = self._file(ino)
        writable = fi.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if self._announcing():
            writable = False  # no write handle: its truncate and close change nothing
        elif writable:
            self._refuse_if_read_only()
            if not fi.flags & os.O_TRUNC and not self.coherence.verify(node):
                # The value changed elsewhere since the kernel looked this name up: ESTALE makes
                # the kernel look it up again and open the current node instead.
                raise FuseError(errno.ESTALE)
        self._open_handle(node, fi, writable=writable)

    def create(self, parent: int, name: str, mode: int, fi: Any) -> Entry:
        self._refuse_if_read_only()
        path = self._path(parent, name)
        if self._announcing():  # the file exists: the kernel is told it was created (IN_CREATE)
            node = self.coherence.lookup(path)
            self._open_handle(node, fi, writable=False)
            return self._entry(node)
        self.view.check_creatable(path)
        try:
            node = self.coherence.lookup(path)
        except errors.NotFound:
            node = self.nodes.add(path, is_dir=False, perms=self.view.perms(self.view.secret_of(path), None))
            node.created, node.pending = True, bytearray()
        else:
            if node.is_dir or fi.flags & os.O_EXCL:
                self.nodes.forget(node.ino, 1)
                raise errors.IsADirectory(path) if node.is_dir else errors.AlreadyExists(path)
        self._open_handle(node, fi, writable=True)
        return self._entry(node)

    def read(self, ino: int, size: int, offset: int, fh: int) -> bytes:
        node = self.nodes.get(ino)
        with node.lock:
            return bytes(node.content[offset : offset + size])

    def write(self, ino: int, data: bytes, offset: int, fh: int) -> int:
        return self.files.write(fh, data, offset)

    def flush(self, ino: int, fh: int) -> None:
        if self.kernel_only_reads:
            raise FuseError(errno.ENOSYS)  # the kernel stops sending flushes: warm reads stay in it
        self.files.flush(fh)

    def fsync(self, ino: int, fh: int) -> None:
        self.files.fsync(fh)

    def release(self, ino: int, fh: int) -> None:
        self.files.release(fh)

    # ----- namespace -------------------------------------------------------------------------------------

    def unlink(self, parent: int, name: str) -> None:
        self._refuse_if_read_only()
        path = self._path(parent, name)
        node = self.nodes.current(path)
        if self.announcer is not None and self._announcing():
            if node is None or node is not self.announcer.stand_in:
                raise errors.NotFound(path)  # made again meanwhile: the kernel keeps it
            self.nodes.detach(path)  # removed elsewhere already: the kernel is told (IN_DELETE)
            return
        if node is None or not node.created:
            self.view.unlink("/" + path)
            self.coherence.wrote(self.view.secret_of(path))
        self.nodes.detach(path)

    def rename(self, parent: int, name: str, new_parent: int, new_name: str, flags: int) -> None:
        self._refuse_if_read_only()
        old, new = self._path(parent, name), self._path(new_parent, new_name)
        if flags & ~1:  # RENAME_EXCHANGE, RENAME_WHITEOUT
            raise FuseError(errno.EINVAL)
        if flags & 1 and self._exists(new):  # RENAME_NOREPLACE
            raise errors.AlreadyExists(new)
        node = self.nodes.current(old)
        if node is not None and node.created:
            # Never committed: store it under the new name now, as the replace it stands for.
            render.check_new_name(new)
            if self._is_dir(new):
                raise errors.IsADirectory(new)
            self.nodes.move(node, new)
            self.files.commit(node, wait=False)  # the kernel holds the directories' locks
            return
        self.view.rename("/" + old, "/" + new)
        self.coherence.wrote(self.view.secret_of(old), self.view.secret_of(new))
        if node is not None:
            self.nodes.move(node, new)
            self.nodes.detach_below(old)
        else:
            self.nodes.detach(new)

    def _is_dir(self, path: str) -> bool:
        node = self.nodes.current(path)
        if node is not None:
            return node.is_dir
        try:
            return self.view.resolve(path).is_dir
        except errors.NotFound:
            return False

    def _exists(self, path: str) -> bool:
        node = self.nodes.current(path)
        if node is not None and node.created:
            return True
        try:
            self.view.resolve(path)
        except errors.NotFound:
            return False
        return True

    def mkdir(self, parent: int, name: str, mode: int) -> Entry:
        self._refuse_if_read_only()
        path = self._path(parent, name)
        self.view.mkdir("/" + path)
        return self._entry(self.nodes.add(path, is_dir=True))

    def rmdir(self, parent: int, name: str) -> None:
        self._refuse_if_read_only()
        path = self._path(parent, name)
        if self.nodes.created_in(path):  # a file being created is there before its first close
            raise errors.DirectoryNotEmpty(f"{path!r} is not empty")
        self.view.rmdir("/" + path)
        self.nodes.detach(path)

    def refuse(self, ino: int) -> int:
        """Links, symlinks, device files: EPERM (EROFS on a read-only mount)."""
        self._refuse_if_read_only()
        return errno.EPERM

    # ----- runtime status (user.secretfs.status on the root) ------------------------------------------

    def runtime_status(self) -> dict[str, Any]:
        """The daemon's runtime state for `secretfs status`: flags and counts, never a value."""
        from secretfs import hardening

        state: dict[str, Any] = {
            "pid": os.getpid(),
            "read_only": self.read_only,
            "cache_mode": self.policy.cache_mode,
            "nodes": len(self.nodes),
            "health": self.coherence.cache.health.as_dict(),
        }
        state.update((key, part()) for key, part in self.status_parts.items())
        return {**state, **hardening.state()}

    def getxattr(self, ino: int, name: str) -> bytes:
        if ino == ROOT_INO and name == STATUS_XATTR:
            return json.dumps(self.runtime_status(), sort_keys=True).encode()
        raise FuseError(errno.ENODATA)

    def listxattr(self, ino: int) -> list[str]:
        return [STATUS_XATTR] if ino == ROOT_INO else []
