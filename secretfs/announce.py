"""Telling inotify watchers of the mount about values that changed outside it.

The kernel makes inotify events only for what goes through its VFS. A value changed by the CLI,
another mount, another host or Vault reaches this mount as a new node (secretfs.coherence), and an
application watching the file or its directory would hear nothing. The announcer makes the kernel
produce the events a write through the mount would have made. For each secret whose value really
changed (secretfs.changes decides), once coherence has moved its name to the new node, the
announcer's own thread:

- opens the file through the mount for writing, truncates it to its own size and closes it: IN_OPEN,
  IN_MODIFY and IN_CLOSE_WRITE for the watches of the directory (with the file's name) and of the
  file;
- does the same, by handle (open_by_handle_at, which needs CAP_DAC_READ_SEARCH), to the older nodes
  of that name that the kernel still holds (a watch on a file pins its inode), so a watch on the file
  keeps hearing of every later value;
- for a secret that appeared in a directory the kernel holds, creates it: IN_CREATE first.

The filesystem recognises the announcer's requests by its thread (`is_me`) and changes nothing for
them. A secret that went away is deleted by a kernel notification instead (coherence: IN_DELETE).

It never runs on a request thread and no request waits for it: the requests it causes are served by
the other request threads. A read-only mount refuses writes in the VFS, before the daemon sees them:
there, only deletions are announced.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from secretfs.changes import Changes
from secretfs.coherence import Coherence
from secretfs.errors import SecretfsError
from secretfs.fusebind import caller
from secretfs.nodes import Node

log = logging.getLogger(__name__)

FILEID_INO64_GEN = 0x81  # the kernel's FUSE file handle: node id (two u32) and generation
_libc = ctypes.CDLL(None, use_errno=True)
_WRITE = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW


def fuse_handle(ino: int) -> ctypes.Array[ctypes.c_char]:
    """A `struct file_handle` naming a FUSE node (generation 0: secretfs never reuses a number)."""
    raw = struct.pack("=III", ino >> 32, ino & 0xFFFF_FFFF, 0)
    return ctypes.create_string_buffer(struct.pack("=Ii", len(raw), FILEID_INO64_GEN) + raw)


class Announcer:
    """One thread that turns changes into the inotify events of the mount."""

    def __init__(self, mountpoint: Path, coherence: Coherence) -> None:
        self.mountpoint = mountpoint
        self.coherence = coherence
        self.nodes = coherence.nodes
        self.view = coherence.view
        self._queue: queue.SimpleQueue[Changes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tid = -1
        self._creating: set[str] = set()
        self._removing: set[str] = set()
        self.stand_in: Node | None = None  # the node a removed file's lookup gave the announcer
        self.announced = 0  # files given events
        self.failed = 0
        self._by_handle = True  # until the kernel says this process may not open by handle

    # ----- asked by the filesystem's request handlers ------------------------------------------------

    def is_me(self) -> bool:
        """Whether the request being handled comes from the announcer (it changes nothing)."""
        return caller().pid == self._tid

    def pretend(self, path: str) -> str | None:
        """How a lookup of path by the announcer answers: "absent" (ENOENT, so that its open creates
        the file), "present" (a removed file, so that it can unlink it), or None (as it is)."""
        if path in self._creating and self.is_me():
            return "absent"
        if path in self._removing and self.is_me():
            return "present"
        return None

    # ----- life cycle ----------------------------------------------------------------------------------

    def submit(self, changes: Changes) -> None:
        """Announce these changes (never blocks: called from the change feed's thread)."""
        if changes:
            self._queue.put(changes)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="secretfs-announcer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        self._tid = threading.get_native_id()
        while (changes := self._queue.get()) is not None:
            try:
                self.announce(changes)
            except Exception as exc:
                log.error("announcing changes failed: %s", type(exc).__name__)

    # ----- the work --------------------------------------------------------------------------------------

    def announce(self, changes: Changes) -> None:
        """Settle the kernel on the new values, then give each changed file its events."""
        self.coherence.settle(sorted(changes.names))
        for secret in sorted(changes.added | changes.changed):
            for path in self._paths(secret):
                self._announce_file(path, created=secret in changes.added)
        if self.view.options.layout == "file":
            for secret in sorted(changes.removed):
                self._announce_removal(secret)

    def _paths(self, secret: str) -> Iterator[str]:
        """The files that show the secret: itself, or its keys (the `keys` layout)."""
        try:
            if not self.view.resolve(secret).is_dir:
                yield secret
                return
            for base in self.view.readdir("/" + secret):
                if not self.view.resolve(f"{secret}/{base}").is_dir:
                    yield f"{secret}/{base}"
        except SecretfsError:
            return  # gone again, or unreadable: nothing to announce

    def _announce_file(self, path: str, *, created: bool) -> None:
        for node in self.nodes.replaced(path):
            self._touch_node(node.ino)
        parent = self.nodes.current(path.rpartition("/")[0])
        if parent is None or not parent.is_dir:
            return  # nothing can watch a directory the kernel does not hold
        current = self.nodes.current(path)
        if current is not None and current.commits and self._shows_store_value(path, current.content):
            return  # written through this mount: the kernel made the events itself
        if created and current is None:
            self._creating.add(path)
            self.coherence.drop_entry(path, wait=True)  # a cached "no such file" would skip our lookup
        try:
            self._touch(os.fspath(self.mountpoint / path), os.O_CREAT if created else 0)
        finally:
            self._creating.discard(path)

    def _announce_removal(self, path: str) -> None:
        parent = self.nodes.current(path.rpartition("/")[0])
        if parent is None or not parent.is_dir or self.nodes.current(path) is not None:
            return  # nobody watches the directory, or the name is back (or was never gone here)
        self._removing.add(path)
        try:
            os.unlink(self.mountpoint / path)
        except OSError as exc:
            self._failed(exc)
        else:
            self.announced += 1
        finally:
            self._removing.discard(path)
            self.stand_in = None

    def _shows_store_value(self, path: str, content: bytes | bytearray) -> bool:
        try:
            return self.view.resolve(path).content == content
        except SecretfsError:
            return False

    def _touch(self, path: str, extra: int) -> None:
        try:
            fd = os.open(path, _WRITE | extra, 0o600)
        except OSError as exc:
            self._failed(exc)
            return
        self._truncate_close(fd)

    def _touch_node(self, ino: int) -> None:
        if not self._by_handle:
            return
        with self._mount_fd() as mount_fd:
            fd = _libc.open_by_handle_at(mount_fd, fuse_handle(ino), _WRITE)
            if fd < 0:
                code = ctypes.get_errno()
                if code == 1:  # EPERM: no CAP_DAC_READ_SEARCH; older inodes are not told
                    self._by_handle = False
                    log.warning("cannot open by handle (not root): a watch on a file hears of one change only")
                else:
                    self._failed(OSError(code, os.strerror(code)))
                return
        self._truncate_close(fd)

    @contextlib.contextmanager
    def _mount_fd(self) -> Iterator[int]:
        fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    def _truncate_close(self, fd: int) -> None:
        try:
            os.ftruncate(fd, os.fstat(fd).st_size)  # IN_MODIFY; the filesystem changes nothing
            self.announced += 1
        except OSError as exc:
            self._failed(exc)
        finally:
            os.close(fd)  # IN_CLOSE_WRITE

    def _failed(self, exc: OSError) -> None:
        self.failed += 1
        log.debug("could not announce a change: %s", exc.strerror or exc)
