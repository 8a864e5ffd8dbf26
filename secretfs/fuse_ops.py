"""The FUSE adapter: inode requests in, replies and errnos out, nothing else.

Names and contents come from the view, which inode a name leads to from the coherence owner, and
open-file state lives on the nodes (secretfs.nodes). Writes are buffered on the node, shared by all
its descriptors, and committed whole at flush, so an error reaches the writer's close().
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from secretfs import errors, render
from secretfs.coherence import Coherence
from secretfs.fusebind import (
    CAP_ATOMIC_O_TRUNC,
    CAP_AUTO_INVAL_DATA,
    ROOT_INO,
    Entry,
    FuseError,
    SetAttr,
    caller,
)
from secretfs.mounts import STATUS_XATTR
from secretfs.nodes import Node, entry_ino, join

UNCHANGED_ID = (-1, 0xFFFFFFFF)


def _tgid(pid: int) -> int:
    """The process (thread group) of a request's thread id; the id itself if /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


@dataclass
class Handle:
    """One open file description with write access."""

    node: Node
    opener: int  # process that opened it: only its own close commits at flush
    append: bool
    written: bool = False  # a write or truncate came through this handle


class SecretFS:
    """The filesystem the binding calls (secretfs.fusebind.Filesystem)."""

    def __init__(self, coherence: Coherence) -> None:
        self.coherence = coherence
        self.view = coherence.view
        self.nodes = coherence.nodes
        self.policy = coherence.policy
        self.read_only = self.view.options.read_only or self.view.store.read_only
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    # ----- helpers -------------------------------------------------------------------------------------

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise errors.ReadOnly("the mount is read-only")

    def _attr(self, node: Node) -> dict[str, int]:
        if node.is_dir:
            attr = self.view.dir_attr(node.mtime).as_stat()
        else:
            attr = self.view.file_attr(len(node.content), node.mtime, node.ctime).as_stat()
            attr["st_nlink"] = 0 if node.name is None else 1
        attr["st_ino"] = node.ino
        return attr

    def _entry(self, node: Node) -> Entry:
        return Entry(node.ino, self._attr(node), self.policy.attr_timeout, self.policy.entry_timeout)

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
        if not writable:
            fi.noflush = 1  # nothing to commit at close
            fi.fh = 0
            return
        self.nodes.hold(node, 1)
        handle = Handle(node, _tgid(caller().pid), bool(fi.flags & os.O_APPEND))
        with node.lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = handle
            if fi.flags & os.O_TRUNC:
                node.pending = bytearray()
        fi.fh = fh

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FuseError(errno.EBADF)
        return handle

    def _commit(self, node: Node) -> None:
        """Store a node's pending content under its name (flush, fsync, release)."""
        with node.lock:
            if node.failed:
                code, node.failed = node.failed, 0
                self._drop_pending(node)
                raise FuseError(code)
            if not node.dirty:
                return
            if node.name is None:  # unlinked: nothing is stored, open descriptors keep what they wrote
                node.version, node.pending, node.created = bytes(node.content), None, False
                return
            content = bytes(node.content)
            try:
                shown = self.view.write_file(node.name, content)
            except errors.SecretfsError:
                self._drop_pending(node)
                raise
            node.version, node.pending, node.created = content, None, False
            node.mtime = node.ctime = time.time()
            node.commits += 1
            if shown != content:
                # Stored in canonical form (a JSON object): the name now leads to a node with what
                # the file shows; this one keeps what its descriptors wrote.
                self.coherence.retire(node, wait=True)

    def _drop_pending(self, node: Node) -> None:
        """A failed commit: the old value stays, and the kernel forgets what it cached of the writes."""
        node.pending = None
        name = node.name
        if node.created and name is not None:
            node.created = False
            self.nodes.detach(name)
            self.coherence.drop_entry(name, wait=True)  # gone before close() returns
        self.coherence.drop_pages(node)

    # ----- lifecycle -------------------------------------------------------------------------------------

    def init(self, conn: Any) -> None:
        conn.want = (conn.want | (conn.capable & CAP_ATOMIC_O_TRUNC)) & ~CAP_AUTO_INVAL_DATA
        self.coherence.start()

    def destroy(self) -> None:
        self.coherence.stop()

    # ----- metadata -----------------------------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> Entry:
        return self._entry(self.coherence.lookup(self._path(parent, name)))

    def forget(self, ino: int, nlookup: int) -> None:
        self.nodes.forget(ino, nlookup)

    def getattr(self, ino: int, fh: int | None) -> tuple[dict[str, int], float]:
        return self._attr(self.nodes.get(ino)), self.policy.attr_timeout

    def setattr(self, ino: int, change: SetAttr, fh: int | None) -> tuple[dict[str, int], float]:
        node = self.nodes.get(ino)
        self._refuse_if_read_only()
        attr = self._attr(node)
        if change.mode is not None and change.mode != attr["st_mode"] & 0o7777:
            raise errors.NotPermitted("modes are set by the mount options")
        if change.uid not in (None, *UNCHANGED_ID, attr["st_uid"]) or change.gid not in (
            None,
            *UNCHANGED_ID,
            attr["st_gid"],
        ):
            raise errors.NotPermitted("owners are set by the mount options")
        if change.size is not None:
            self._truncate(self._file(ino), change.size, self._handles.get(fh or 0))
        if change.mtime is not None:
            node.mtime = change.mtime
        return self._attr(node), self.policy.attr_timeout

    def _truncate(self, node: Node, size: int, handle: Handle | None) -> None:
        if size > render.MAX_VALUE_BYTES:
            raise errors.ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
        with node.lock:
            content = bytearray(node.content)
            if handle is not None:
                handle.written = handle.written or size != len(content)
            del content[size:]
            content.extend(b"\0" * (size - len(content)))
            node.pending = content
            node.mtime = time.time()
        if node.writers == 0:
            self._commit(node)  # truncate(2) by path: one whole replace now

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
        """Read-only `kernel` mode: open answers ENOSYS, so the kernel stops sending opens at all."""
        return self.read_only and self.policy.cache_mode == "kernel"

    def open(self, ino: int, fi: Any) -> None:
        if self.kernel_only_reads:
            raise FuseError(errno.ENOSYS)
        node = self._file(ino)
        writable = fi.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if writable:
            self._refuse_if_read_only()
            if not fi.flags & os.O_TRUNC and not self.coherence.verify(node):
                # The value changed elsewhere since the kernel looked this name up: ESTALE makes
                # the kernel look it up again and open the current node instead.
                raise FuseError(errno.ESTALE)
        self._open_handle(node, fi, writable=writable)

    def create(self, parent: int, name: str, mode: int, fi: Any) -> Entry:
        self._refuse_if_read_only()
        path = self._path(parent, name)
        self.view.check_creatable(path)
        try:
            node = self.coherence.lookup(path)
        except errors.NotFound:
            node = self.nodes.add(path, is_dir=False)
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
        handle = self._handle(fh)
        node = handle.node
        with node.lock:
            content = node.content
            start = len(content) if handle.append else offset
            if start + len(data) > render.MAX_VALUE_BYTES:
                node.failed = errno.EFBIG
                raise errors.ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
            buf = node.pending if node.pending is not None else bytearray(content)
            if start > len(buf):
                buf.extend(b"\0" * (start - len(buf)))
            buf[start : start + len(data)] = data
            node.pending = buf
            node.mtime = time.time()
        handle.written = True
        return len(data)

    def flush(self, ino: int, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None and self._flush_commits(handle):
            self._commit(handle.node)

    @staticmethod
    def _flush_commits(handle: Handle) -> bool:
        """Whether this flush commits, or leaves it to a later flush or to release.

        The kernel sends a flush at every close() of any descriptor. Two closes come before the
        writer is done and must not store a partial or empty value: a child closing a descriptor
        inherited across fork+exec, and a shell's close of the opened descriptor after dup2
        (`printf x > f`: an O_TRUNC open with nothing written yet).
        """
        if handle.opener and _tgid(caller().pid) != handle.opener:
            return False
        return handle.written or handle.node.created

    def fsync(self, ino: int, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None:
            self._commit(handle.node)

    def release(self, ino: int, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        self.nodes.hold(handle.node, -1)
        if handle.node.writers == 0:
            self._commit(handle.node)  # what no flush committed (see _flush_commits)

    # ----- namespace -------------------------------------------------------------------------------------

    def unlink(self, parent: int, name: str) -> None:
        self._refuse_if_read_only()
        path = self._path(parent, name)
        node = self.nodes.current(path)
        if node is None or not node.created:
            self.view.unlink("/" + path)
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
            if self._exists(new) and self.view.resolve(new).is_dir:
                raise errors.IsADirectory(new)
            self.nodes.move(node, new)
            self._commit(node)
            return
        self.view.rename("/" + old, "/" + new)
        if node is not None:
            self.nodes.move(node, new)
            self.nodes.detach_below(old)
        else:
            self.nodes.detach(new)

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
        return {**state, **hardening.state()}

    def getxattr(self, ino: int, name: str) -> bytes:
        if ino == ROOT_INO and name == STATUS_XATTR:
            return json.dumps(self.runtime_status(), sort_keys=True).encode()
        raise FuseError(errno.ENODATA)

    def listxattr(self, ino: int) -> list[str]:
        return [STATUS_XATTR] if ino == ROOT_INO else []
