"""Files open for writing: their handles, the pending content on the node, and the commit.

Together with `nodes` this owns open-file state. Pending content lives on the node, so every
descriptor of the file shares it (reads, sizes, O_APPEND); a handle only records who opened it and
whether it wrote. A commit stores the whole content in one view write (docs/design.md, "Open files").
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from dataclasses import dataclass

from secretfs import errors, render
from secretfs.coherence import Coherence
from secretfs.fusebind import FuseError, caller
from secretfs.nodes import Node


def tgid(pid: int) -> int:
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
    refused: int = 0  # errno of a write refused through this handle (EFBIG), reported at its close


class OpenFiles:
    """The write handles of one mount, and the commits they make."""

    def __init__(self, coherence: Coherence) -> None:
        self.coherence = coherence
        self.view = coherence.view
        self.nodes = coherence.nodes
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._lock = threading.Lock()

    def open(self, node: Node, flags: int) -> int:
        """A new write handle on node (O_TRUNC empties the shared content); its file handle number."""
        self.nodes.hold(node, 1)
        handle = Handle(node, tgid(caller().pid), bool(flags & os.O_APPEND))
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = handle
        if flags & os.O_TRUNC:
            with node.lock:
                node.pending = bytearray()
        return fh

    def get(self, fh: int | None) -> Handle | None:
        return self._handles.get(fh or 0)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handles.get(fh)
        if handle is None:
            raise FuseError(errno.EBADF)
        node = handle.node
        with node.lock:
            content = node.content
            start = len(content) if handle.append else offset
            if start + len(data) > render.MAX_VALUE_BYTES:
                handle.refused = errno.EFBIG
                raise errors.ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
            buf = node.pending if node.pending is not None else bytearray(content)
            if start > len(buf):
                buf.extend(b"\0" * (start - len(buf)))
            buf[start : start + len(data)] = data
            node.pending = buf
            node.mtime = time.time()
        handle.written = True
        return len(data)

    def truncate(self, node: Node, size: int, fh: int | None) -> None:
        """ftruncate (with a handle) changes the shared content; truncate(2) by path commits at once."""
        if size > render.MAX_VALUE_BYTES:
            raise errors.ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
        handle = self.get(fh)
        with node.lock:
            content = bytearray(node.content)
            if handle is not None:
                handle.written = handle.written or size != len(content)
            del content[size:]
            content.extend(b"\0" * (size - len(content)))
            node.pending = content
            node.mtime = time.time()
        if node.writers == 0:
            self.commit(node)

    def flush(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None and handle.refused:
            self._refused(handle)
        elif handle is not None and self._flush_commits(handle):
            self.commit(handle.node)

    def _refused(self, handle: Handle) -> None:
        """The close of a descriptor whose write was refused: report it; if no other descriptor is
        writing the file, what it wrote before is dropped (a value cut at the limit never existed)."""
        code, handle.refused = handle.refused, 0
        if handle.node.writers <= 1:
            self._forget_failed(handle.node, wait=True)
        raise FuseError(code)

    @staticmethod
    def _flush_commits(handle: Handle) -> bool:
        """Whether this flush commits, or leaves it to a later flush or to release.

        The kernel sends a flush at every close() of any descriptor. Two closes come before the
        writer is done and must not store a partial or empty value: a child closing a descriptor
        inherited across fork+exec, and a shell's close of the opened descriptor after dup2
        (`printf x > f`: an O_TRUNC open with nothing written yet).
        """
        if handle.opener and tgid(caller().pid) != handle.opener:
            return False
        return handle.written or handle.node.created

    def fsync(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None:
            self.commit(handle.node)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.refused:  # no flush reported it (another process closed last)
            with contextlib.suppress(FuseError):
                self._refused(handle)
        self.nodes.hold(handle.node, -1)
        if handle.node.writers == 0:
            self.commit(handle.node)  # what no flush committed (see _flush_commits)

    def commit(self, node: Node, *, wait: bool = True) -> None:
        """Store a node's pending content under its name (flush, fsync, release, rename of a new file).

        The other local mounts are told before it returns. With `wait` (flush, fsync, release: the
        kernel holds no lock for them) this mount's kernel is settled too; a request that holds a
        directory lock in the kernel (rename) must not wait for that, or the notification it waits
        for would wait for it. No wait happens under the node's lock (docs/design.md, "Lock order").
        """
        try:
            retire = self._store(node)
        except errors.SecretfsError:
            self._forget_failed(node, wait=wait)
            raise
        if retire is None:
            return
        name, canonical = retire
        self.coherence.wrote(self.view.secret_of(name))
        if canonical:
            # Stored in canonical form (a JSON object): the name now leads to a node with what the
            # file shows; this one keeps what its descriptors wrote.
            self.coherence.retire(node, wait=wait)

    def _store(self, node: Node) -> tuple[str, bool] | None:
        """The store write, under the node's lock: (name, shown in another form) when stored."""
        with node.lock:
            if not node.dirty:
                return None
            if node.name is None:  # unlinked: nothing is stored, open descriptors keep what they wrote
                node.version, node.pending, node.created = bytes(node.content), None, False
                return None
            content = bytes(node.content)
            # A mode or owner set before the first commit (install -m, tar -x) is stored with it.
            shown = self.view.write_file(node.name, content, node.pending_attrs)
            node.version, node.pending, node.created, node.pending_attrs = content, None, False, None
            node.mtime = node.ctime = time.time()
            node.commits += 1
            return node.name, shown != content

    def _forget_failed(self, node: Node, *, wait: bool) -> None:
        """A failed commit: the old value stays, and the kernel forgets what it cached of the writes."""
        with node.lock:
            node.pending, node.pending_attrs = None, None
            name = node.name if node.created else None
            node.created = False
        if name is not None:
            self.nodes.detach(name)
            self.coherence.drop_entry(name, wait=wait)  # gone before close() returns
        self.coherence.drop_pages(node, wait=wait)  # close() returns with the old size and pages
