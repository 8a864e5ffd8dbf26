"""The FUSE adapter: paths and errnos in and out, nothing else.

It holds the one errno table, buffers writes per open file (committed whole at flush, so an error
reaches the writer's close()), and hands everything else to the view.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from secretfs import errors, render
from secretfs.freshness import Freshness
from secretfs.fusebind import (
    FuseOSError,
    Operations,
    current_fuse,
    fuse_get_context,
    invalidate_entry,
    keep_thread_state,
)
from secretfs.kernel_cache import KernelInvalidator
from secretfs.stores.base import SecretRecord
from secretfs.view import View

log = logging.getLogger(__name__)

STATUS_XATTR = "user.secretfs.status"  # JSON runtime state of the daemon, on the mount root only

CacheMode = Literal["direct", "kernel"]

# In `kernel` mode the kernel keeps contents and attributes until the daemon invalidates them.
KERNEL_TIMEOUT = 3600.0

# The one errno table (DESIGN §3). Order matters only for subclasses; none of these subclass another.
ERRNO: dict[type[errors.SecretfsError], int] = {
    errors.NotFound: errno.ENOENT,
    errors.AccessDenied: errno.EACCES,
    errors.ReadOnly: errno.EROFS,
    errors.BackendUnavailable: errno.EIO,
    errors.IntegrityError: errno.EIO,
    errors.KeyMismatch: errno.EIO,
    errors.InvalidName: errno.EINVAL,
    errors.NameTooLong: errno.ENAMETOOLONG,
    errors.ValueTooLarge: errno.EFBIG,
    errors.NotPermitted: errno.EPERM,
    errors.IsADirectory: errno.EISDIR,
    errors.NotADirectory: errno.ENOTDIR,
    errors.DirectoryNotEmpty: errno.ENOTEMPTY,
    errors.AlreadyExists: errno.EEXIST,
    errors.CrossDevice: errno.EXDEV,
    errors.ConfigError: errno.EIO,
}


def _tgid(pid: int) -> int:
    """The process (thread group) of a FUSE request's thread id; the id itself if /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


def errno_for(exc: BaseException) -> int:
    """The errno an application sees for an exception."""
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO


F = TypeVar("F", bound=Callable[..., Any])


def fs_op(func: F) -> F:
    """Map secretfs errors to errno; anything unexpected is logged (type only) and becomes EIO."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        keep_thread_state()
        try:
            return func(*args, **kwargs)
        except FuseOSError:
            raise
        except errors.SecretfsError as exc:
            code = errno_for(exc)
            if code == errno.EIO:
                log.error("%s failed: %s", func.__name__, exc)
            raise FuseOSError(code) from None
        except Exception as exc:
            log.error("%s failed unexpectedly: %s", func.__name__, type(exc).__name__)
            raise FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class Handle:
    """One open file: a snapshot of its content, or the write buffer."""

    path: str
    content: bytearray
    writable: bool
    dirty: bool = False
    created: bool = False
    failed: int = 0  # errno of a failed write: the handle then never commits
    lock: threading.Lock = field(default_factory=threading.Lock)
    opener: int = 0  # process (tgid) that opened it: only its own close commits at flush
    written: bool = False  # a write or truncate came through this handle
    generation: int = 0  # commits to its path through this mount when it was opened


class SecretFS(Operations):  # type: ignore[misc]
    """mfusepy operations over a View."""

    use_ns = True

    def __init__(self, view: View, *, cache_mode: CacheMode = "direct", freshness: Freshness | None = None) -> None:
        self.view = view
        self.cache_mode = cache_mode
        self.freshness = freshness
        self.read_only = view.options.read_only or view.store.read_only
        # Both modes: in `direct` mode the kernel still keeps attributes (libfuse's 1 s default),
        # which a commit must settle too; only `kernel` mode wires the refresher to it.
        self.invalidator = KernelInvalidator()
        self.mountpoint: str | None = None  # set by the daemon: where the kernel sees this tree
        self._fuse = 0
        self._handles: dict[int, Handle] = {}
        self._generations: dict[str, int] = {}  # commits per path through this mount (see release)
        self._path_locks: dict[str, threading.Lock] = {}  # one commit at a time per path
        self._handles_lock = threading.Lock()
        self._next_fh = itertools.count(1)
        # Read-only opens in `direct` mode: the content as opened, by file handle (no Handle, no lock).
        self._snapshots: dict[int, bytes] = {}

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Set the kernel cache policy, and learn the `struct fuse *` for invalidations."""
        if config is not None and self.cache_mode == "kernel":
            config.kernel_cache = 1
            config.attr_timeout = KERNEL_TIMEOUT
            config.entry_timeout = KERNEL_TIMEOUT
            config.negative_timeout = 0.0
        self._fuse = current_fuse()
        self.invalidator.attach(self._fuse)
        if self.freshness is not None:
            self.freshness.start()

    def destroy(self, path: str) -> None:
        if self.freshness is not None:
            self.freshness.stop()
        self.invalidator.stop()

    def kernel_paths(self, name: str, old: SecretRecord | None, new: SecretRecord | None) -> list[str]:
        """The paths under which the kernel may hold a secret's contents or attributes."""
        if self.view.options.layout == "file":
            return ["/" + name]
        keys: set[str] = {"value"}
        for record in (old, new):
            if record is not None and isinstance(record.value, dict):
                keys.update(record.value)
        return ["/" + name, *(f"/{name}/{key}" for key in sorted(keys))]

    def on_change(self, name: str, old: SecretRecord | None, new: SecretRecord | None) -> None:
        """A secret changed (or is no longer tracked): invalidate what the kernel holds of it."""
        self.invalidator.invalidate(*self.kernel_paths(name, old, new))

    def _changed(self, *paths: str) -> None:
        """The mount itself changed the secrets behind these paths."""
        if self.freshness is None:
            return
        names = [path.strip("/") for path in paths]
        if self.view.options.layout == "keys":
            # A path is a key file (its secret is the parent) or a secret's directory.
            names += [name.rpartition("/")[0] for name in names]
        self.freshness.changed(*(name for name in names if name))

    # ----- helpers ----------------------------------------------------------------------------

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise errors.ReadOnly("the mount is read-only")

    def _add_handle(self, handle: Handle, fi: Any) -> int:
        fh = next(self._next_fh)
        handle.opener = _tgid(fuse_get_context()[2])
        with self._handles_lock:
            handle.generation = self._generations.get(handle.path, 0)
            self._handles[fh] = handle
        fi.fh = fh
        if self.cache_mode == "direct" or handle.writable:
            # Writers bypass the page cache in both modes: other readers must never see a value
            # being written, only the committed one (the kernel learns it by invalidation).
            fi.direct_io = 1
        else:
            fi.keep_cache = 1
        return 0

    def _handle(self, fh: Any) -> Handle:
        key = fh.fh if hasattr(fh, "fh") else fh
        with self._handles_lock:
            handle = self._handles.get(key)
        if handle is None:
            raise FuseOSError(errno.EBADF)
        return handle

    def _pending(self, path: str) -> Handle | None:
        """A created file that is not committed yet (so stat sees it between create and close)."""
        with self._handles_lock:
            for handle in self._handles.values():
                if handle.created and handle.dirty and handle.path == path:
                    return handle
        return None

    def _commit(self, handle: Handle, *, unless_superseded: bool = False) -> None:
        """Store a handle's buffer (from flush, fsync or release), then settle the kernel's cache.

        The kernel may hold the old size (and, in `kernel` mode, pages) if a reader or a stat came
        between the write and the close: they are invalidated before the close returns, so the
        writer's next stat or read sees what it wrote (close-to-open), in both cache modes.
        """
        if self._store_buffer(handle, unless_superseded=unless_superseded):
            self.invalidator.invalidate_and_wait(handle.path)

    def _store_buffer(self, handle: Handle, *, unless_superseded: bool) -> bool:
        """Write a dirty handle's content to the view; whether anything was stored."""
        with self._handles_lock:
            path_lock = self._path_locks.setdefault(handle.path, threading.Lock())
        with handle.lock, path_lock:
            if handle.failed:
                # A write already failed: keep the old value rather than store a partial one.
                self._forget_failed_create(handle)
                raise FuseOSError(handle.failed)
            if not handle.dirty:
                return False
            if unless_superseded and self._generations.get(handle.path, 0) != handle.generation:
                return False  # a later open already committed: a delayed release must not undo it
            try:
                self.view.write_file(handle.path, bytes(handle.content))
            except errors.SecretfsError as exc:
                handle.failed = errno_for(exc)  # reported to this close(); never retried at release
                self._forget_failed_create(handle)
                raise
            finally:
                self._changed(handle.path)
            handle.dirty = False
            handle.created = False
            self._generations[handle.path] = self._generations.get(handle.path, 0) + 1
            return True

    def _forget_failed_create(self, handle: Handle) -> None:
        """A new file whose value was never stored: drop the name the kernel made for it at create.

        Called from flush/release (never from a request on the parent directory, which would
        deadlock the entry invalidation).
        """
        if not handle.created:
            return
        handle.created = False  # stat no longer sees it as pending
        if not (self.mountpoint and self._fuse):
            return
        parent, _, name = handle.path.strip("/").rpartition("/")
        try:
            parent_ino = os.stat(os.path.join(self.mountpoint, parent)).st_ino
        except OSError:
            return
        invalidate_entry(self._fuse, parent_ino, name)

    # ----- metadata ---------------------------------------------------------------------------

    @fs_op
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        writer = fh is not None and fh.fh and fh.fh not in self._snapshots
        handle = self._handle(fh) if writer else self._pending(path)
        if handle is not None and handle.writable and handle.dirty:
            when = time.time() if handle.created else self.view.getattr(path).mtime
            return self.view.file_attr(len(handle.content), when, when).as_stat()
        return self.view.getattr(path).as_stat()

    @fs_op
    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *self.view.readdir(path)]

    @fs_op
    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": render.MAX_SEGMENT_BYTES}

    # ----- files ------------------------------------------------------------------------------

    @property
    def kernel_only_reads(self) -> bool:
        """Read-only `kernel` mode: open and flush answer ENOSYS, so the kernel stops sending them."""
        return self.read_only and self.cache_mode == "kernel"

    @fs_op
    def open(self, path: str, fi: Any) -> int:
        if self.kernel_only_reads:
            raise FuseOSError(errno.ENOSYS)
        accmode = fi.flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if not writable:
            # A read-only open has nothing to commit: no flush request at its close.
            fi.noflush = 1
            if self.cache_mode == "kernel":
                # The page cache serves its reads; a page it lacks is read by path (read() without a
                # handle), so no snapshot and no handle: open and release stay trivial.
                fi.keep_cache = 1
                return 0
            # `direct` mode: every read of this open sees the content as it was at open.
            fh = next(self._next_fh)
            self._snapshots[fh] = self.view.read_file(path)
            fi.fh = fh
            fi.direct_io = 1
            return 0
        if writable:
            self._refuse_if_read_only()
        if writable and fi.flags & os.O_TRUNC:
            self.view.getattr(path)
            handle = Handle(path, bytearray(), writable=True, dirty=True)
        else:
            handle = Handle(path, bytearray(self.view.read_file(path)), writable=writable)
        return self._add_handle(handle, fi)

    @fs_op
    def create(self, path: str, mode: int, fi: Any) -> int:
        self.view.check_creatable(path)
        return self._add_handle(Handle(path, bytearray(), writable=True, dirty=True, created=True), fi)

    @fs_op
    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        if fh is None or not fh.fh:
            # No open handle (read-only kernel mode): the kernel fills its page cache from here.
            return self.view.read_file(path, page=True)[offset : offset + size]
        snapshot = self._snapshots.get(fh.fh)
        if snapshot is not None:
            return snapshot[offset : offset + size]
        handle = self._handle(fh)
        with handle.lock:
            return bytes(handle.content[offset : offset + size])

    @fs_op
    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        self._refuse_if_read_only()
        handle = self._handle(fh)
        if not handle.writable:
            raise FuseOSError(errno.EBADF)
        end = offset + len(data)
        if end > render.MAX_VALUE_BYTES:
            handle.failed = errno.EFBIG
            raise errors.ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
        with handle.lock:
            if offset > len(handle.content):
                handle.content.extend(b"\0" * (offset - len(handle.content)))
            handle.content[offset:end] = data
            handle.dirty = True
            handle.written = True
        return len(data)

    @fs_op
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._refuse_if_read_only()
        if length > render.MAX_VALUE_BYTES:
            raise errors.ValueTooLarge(f"values are at most {render.MAX_VALUE_BYTES} bytes")
        handle = self._handle(fh) if fh is not None and fh.fh else self._pending(path)
        if handle is not None and handle.writable:
            with handle.lock:
                # An O_TRUNC open's own truncate to 0 changes nothing and does not count as written.
                handle.written = handle.written or length != len(handle.content)
                del handle.content[length:]
                handle.content.extend(b"\0" * (length - len(handle.content)))
                handle.dirty = True
            return 0
        content = bytearray(self.view.read_file(path))
        del content[length:]
        content.extend(b"\0" * (length - len(content)))
        try:
            self.view.write_file(path, bytes(content))
        finally:
            self._changed(path)
        return 0

    @fs_op
    def flush(self, path: str, fh: Any) -> int:
        if self.kernel_only_reads:
            raise FuseOSError(errno.ENOSYS)
        if not fh.fh or fh.fh in self._snapshots:
            return 0  # a read-only open (no handle), on a kernel that ignores noflush
        handle = self._handle(fh)
        if self._flush_commits(handle):
            self._commit(handle)
        return 0

    @staticmethod
    def _flush_commits(handle: Handle) -> bool:
        """Whether this flush commits the buffer, or leaves it to a later flush or to release.

        The kernel sends a flush at every close() of any descriptor of the file. Two closes come
        before the writer is done, and must not store a partial or empty value (which a crash
        would then keep): a child closing a descriptor inherited across fork+exec (another
        process), and a shell's close of the opened descriptor after dup2 (`printf x > f`: an
        O_TRUNC open with nothing written yet).
        """
        if handle.opener and _tgid(fuse_get_context()[2]) != handle.opener:
            return False
        return handle.written or handle.created

    @fs_op
    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        if not fh.fh or fh.fh in self._snapshots:
            return 0  # a read-only open: nothing to commit
        self._commit(self._handle(fh))
        return 0

    @fs_op
    def release(self, path: str, fh: Any) -> int:
        key = fh.fh if hasattr(fh, "fh") else fh
        if self._snapshots.pop(key, None) is not None:
            return 0
        with self._handles_lock:
            handle = self._handles.pop(key, None)
        if handle is not None and handle.dirty:
            # What no flush committed (see _flush_commits); errors are logged.
            self._commit(handle, unless_superseded=True)
        return 0

    # ----- namespace --------------------------------------------------------------------------

    @fs_op
    def unlink(self, path: str) -> int:
        self._refuse_if_read_only()
        try:
            self.view.unlink(path)
        finally:
            self._changed(path)
        return 0

    @fs_op
    def rename(self, old: str, new: str) -> int:
        self._refuse_if_read_only()
        try:
            self.view.rename(old, new)
        finally:
            self._changed(old, new)
        return 0

    @fs_op
    def mkdir(self, path: str, mode: int) -> int:
        self._refuse_if_read_only()
        self.view.mkdir(path)
        return 0

    @fs_op
    def rmdir(self, path: str) -> int:
        self._refuse_if_read_only()
        self.view.rmdir(path)
        return 0

    @fs_op
    def utimens(self, path: str, times: Any = None) -> int:
        self._refuse_if_read_only()
        if self._pending(path) is None:
            self.view.getattr(path)
        return 0

    def _current_attr(self, path: str) -> dict[str, int]:
        pending = self._pending(path)
        if pending is not None:
            return self.view.file_attr(len(pending.content), 0, 0).as_stat()
        return self.view.getattr(path).as_stat()

    @fs_op
    def chmod(self, path: str, mode: int) -> int:
        self._refuse_if_read_only()
        # Tools that preserve modes (cp -p, mv across directories) set the mode a file already
        # has; that is a no-op. Any real change is refused: modes come from the mount options.
        if mode & 0o7777 != self._current_attr(path)["st_mode"] & 0o7777:
            raise errors.NotPermitted("modes are set by the mount options")
        return 0

    @fs_op
    def chown(self, path: str, uid: int, gid: int) -> int:
        self._refuse_if_read_only()
        attr = self._current_attr(path)
        unchanged = uid in (-1, 0xFFFFFFFF, attr["st_uid"]) and gid in (-1, 0xFFFFFFFF, attr["st_gid"])
        if not unchanged:
            raise errors.NotPermitted("owners are set by the mount options")
        return 0

    @fs_op
    def symlink(self, target: str, source: str) -> int:
        self._refuse_if_read_only()
        raise errors.NotPermitted("secretfs has no symlinks")

    @fs_op
    def link(self, target: str, source: str) -> int:
        self._refuse_if_read_only()
        raise errors.NotPermitted("secretfs has no hard links")

    @fs_op
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._refuse_if_read_only()
        raise errors.NotPermitted("secretfs has no device files")

    @fs_op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._refuse_if_read_only()
        raise FuseOSError(errno.ENOTSUP)

    @fs_op
    def removexattr(self, path: str, name: str) -> int:
        self._refuse_if_read_only()
        raise FuseOSError(errno.ENOTSUP)

    # ----- runtime status (user.secretfs.status on the root) ------------------------------------

    def runtime_status(self) -> dict[str, Any]:
        """The daemon's runtime state for `secretfs status`: flags and counts, never a value."""
        from secretfs import hardening

        state: dict[str, Any] = {"pid": os.getpid(), "read_only": self.read_only, "cache_mode": self.cache_mode}
        health = getattr(self.view.store, "health", None)
        if health is not None:
            state["health"] = health.as_dict()
        return {**state, **hardening.state()}

    @fs_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if path == "/" and name == STATUS_XATTR:
            return json.dumps(self.runtime_status(), sort_keys=True).encode()
        raise FuseOSError(errno.ENODATA)

    @fs_op
    def listxattr(self, path: str) -> list[str]:
        return [STATUS_XATTR] if path == "/" else []
