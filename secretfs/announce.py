"""Telling inotify watchers of the mount about values that changed outside it.

The kernel makes inotify events only for what goes through its VFS. A value changed by the CLI,
another mount, another host or Vault reaches this mount as a new node (secretfs.coherence), and an
application watching the file or its directory would hear nothing. The announcer makes the kernel
produce the events a write through the mount would have made. For each secret whose value really
changed (secretfs.changes decides), once coherence has moved its name to the new node, the
announcer (its thread, through its worker process):

- opens the file through the mount for writing, truncates it to its own size and closes it: IN_OPEN,
  IN_MODIFY and IN_CLOSE_WRITE for the watches of the directory (with the file's name) and of the
  file;
- does the same, by handle (open_by_handle_at, which needs CAP_DAC_READ_SEARCH), to the older nodes
  of that name that the kernel still holds (a watch on a file pins its inode), so a watch on the file
  keeps hearing of every later value;
- for a secret that appeared in a directory the kernel holds, creates it: IN_CREATE first.

The filesystem recognises the announcer's requests by the worker's pid (`is_me`) and changes
nothing for them. A secret that went away is unlinked by the worker (its lookup gets a stand-in
node that the unlink drops): IN_DELETE.

The calls into the mount are made by a small child process (the announcer's worker), never by a
thread of the daemon: a thread blocked in a request to its own mount cannot be killed, so a SIGKILL
at that moment would leave an unkillable daemon. No request waits for the announcer: the requests
its worker causes are served by the request threads. A read-only mount refuses writes in the VFS,
before the daemon sees them: there, nothing is announced.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from secretfs.changes import Changes
from secretfs.coherence import Coherence
from secretfs.errors import SecretfsError
from secretfs.fusebind import caller
from secretfs.mounts import CHILD_ENV
from secretfs.nodes import Node

log = logging.getLogger(__name__)

# The worker: one request per line ([op, argument] as JSON), one errno per line back (0: done).
# "touch"/"create": open for writing (creating), truncate to its own size, close: IN_MODIFY and
# IN_CLOSE_WRITE (IN_CREATE first). "unlink": IN_DELETE. "handle": the same as touch for a node the
# kernel holds under no name, by its FUSE file handle (FILEID_INO64_GEN: node id as two u32, and
# generation 0, since secretfs never reuses a number). It runs isolated (-I), in an environment of
# its own, and holds no secret: it never reads a file.
WORKER = r"""
import ctypes, json, os, struct, sys
mount = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
WRITE = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW

def touch(fd):
    try:
        os.ftruncate(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)

def by_handle(ino):
    raw = struct.pack("=III", ino >> 32, ino & 0xFFFFFFFF, 0)
    handle = ctypes.create_string_buffer(struct.pack("=Ii", len(raw), 0x81) + raw)
    mount_fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = libc.open_by_handle_at(mount_fd, handle, WRITE)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "open_by_handle_at")
    finally:
        os.close(mount_fd)
    return fd

for line in sys.stdin:
    op, arg = json.loads(line)
    try:
        if op == "handle":
            touch(by_handle(int(arg)))
        elif op == "unlink":
            os.unlink(os.path.join(mount, arg))
        else:
            touch(os.open(os.path.join(mount, arg), WRITE | (os.O_CREAT if op == "create" else 0), 0o600))
        answer = 0
    except OSError as exc:
        answer = exc.errno or 5
    sys.stdout.write(f"{answer}\n")
    sys.stdout.flush()
"""


class Worker:
    """The child process that makes the announcer's calls into the mount (started when first needed)."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid = -1

    def call(self, op: str, arg: str | int) -> int:
        """Do one operation; 0, or the errno it failed with (EIO if the worker is gone)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", WORKER, os.fspath(self.mountpoint)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=CHILD_ENV,
                close_fds=True,
            )
            self.pid = proc.pid
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps([op, arg]).encode() + b"\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except OSError:
            answer = b""
        return int(answer) if answer.strip().isdigit() else errno.EIO

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Announcer:
    """One thread that turns changes into the inotify events of the mount."""

    def __init__(self, mountpoint: Path, coherence: Coherence) -> None:
        self.mountpoint = mountpoint
        self.coherence = coherence
        self.nodes = coherence.nodes
        self.view = coherence.view
        self._queue: queue.SimpleQueue[Changes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.worker = Worker(mountpoint)
        self._creating: set[str] = set()
        self._removing: set[str] = set()
        self.stand_in: Node | None = None  # the node a removed file's lookup gave the announcer
        self.announced = 0  # files given events
        self.failed = 0
        self._by_handle = True  # until the kernel says this process may not open by handle

    # ----- asked by the filesystem's request handlers ------------------------------------------------

    def is_me(self) -> bool:
        """Whether the request being handled comes from the announcer (it changes nothing)."""
        return caller().pid == self.worker.pid

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
        self.worker.stop()

    def _run(self) -> None:
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
            self._done(self.worker.call("create" if created else "touch", path))
        finally:
            self._creating.discard(path)

    def _announce_removal(self, path: str) -> None:
        parent = self.nodes.current(path.rpartition("/")[0])
        if parent is None or not parent.is_dir or self.nodes.current(path) is not None:
            return  # nobody watches the directory, or the name is back (or was never gone here)
        self._removing.add(path)
        try:
            self._done(self.worker.call("unlink", path))
        finally:
            self._removing.discard(path)
            self.stand_in = None

    def _shows_store_value(self, path: str, content: bytes | bytearray) -> bool:
        try:
            return self.view.resolve(path).content == content
        except SecretfsError:
            return False

    def _touch_node(self, ino: int) -> None:
        if not self._by_handle:
            return
        code = self.worker.call("handle", ino)
        if code == errno.EPERM:  # no CAP_DAC_READ_SEARCH: older inodes are not told
            self._by_handle = False
            log.warning("cannot open files by handle (not root): a watch on a file hears of one change only")
            return
        self._done(code)

    def _done(self, code: int) -> None:
        if code == 0:
            self.announced += 1
        else:
            self.failed += 1
            log.debug("could not announce a change: %s", os.strerror(code))
