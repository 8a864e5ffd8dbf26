"""The one import of the FUSE binding (mfusepy), always bound to libfuse 3.

mfusepy looks for libfuse 2 before libfuse 3 unless FUSE_LIBRARY_NAME says otherwise, so this
module sets it before the import. Everything else imports FUSE names from here.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy


class FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE, with ftruncate's file handle passed on (mfusepy drops it for libfuse 3).

    Without the handle, ftruncate() on an open file was applied to the stored value at once, apart
    from the handle's write buffer: `write; truncate; close` kept the old tail, and a crash between
    the two left a value mixing old bytes with the new length.
    """

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents if fip and self.raw_fi else None
        name = None if path is None else path.decode(self.encoding, self.errors)
        return int(self.operations.truncate(name, length, fh))


FuseOSError = mfusepy.FuseOSError
Operations = mfusepy.Operations
fuse_get_context = mfusepy.fuse_get_context


def libfuse_version() -> tuple[int, int]:
    """(major, minor) of the libfuse the binding loaded."""
    return int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor)


def libfuse_path() -> str:
    """The shared library file mfusepy loaded."""
    return str(getattr(mfusepy, "_libfuse_path", ""))


def current_fuse() -> int:
    """The `struct fuse *` of the running filesystem; valid when called from a FUSE callback."""
    context = mfusepy._libfuse.fuse_get_context()
    return int(context.contents.fuse or 0)


_invalidate = mfusepy._libfuse.fuse_invalidate_path
_invalidate.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_invalidate.restype = ctypes.c_int


def invalidate_path(fuse: int, path: str) -> int:
    """libfuse 3's fuse_invalidate_path: drop the kernel's cached pages and attributes of path.

    Returns 0, or a negative errno (-ENOENT when the kernel holds nothing for that path).
    """
    return int(_invalidate(ctypes.c_void_p(fuse), path.encode("utf-8", "surrogateescape")))


# libfuse calls Python from its own worker threads through ctypes callbacks. A callback on a thread
# that has no Python thread state creates one and destroys it again on return, which doubled the
# cost of every FUSE request here (measured: 62 -> 24 µs per open+read+close on a minimal
# filesystem). Taking one extra reference on the calling thread's state keeps it for the thread's
# life: at most libfuse's worker threads (10 by default), each holding one small thread state.
_gilstate_ensure = ctypes.pythonapi.PyGILState_Ensure
_gilstate_ensure.restype = ctypes.c_int
_thread_kept = threading.local()


def keep_thread_state() -> None:
    """Keep the current FUSE worker thread's Python thread state alive between requests."""
    if not getattr(_thread_kept, "kept", False):
        _gilstate_ensure()
        _thread_kept.kept = True


_get_session = mfusepy._libfuse.fuse_get_session
_get_session.argtypes = (ctypes.c_void_p,)
_get_session.restype = ctypes.c_void_p
_inval_entry = mfusepy._libfuse.fuse_lowlevel_notify_inval_entry
_inval_entry.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t)
_inval_entry.restype = ctypes.c_int


def invalidate_entry(fuse: int, parent_ino: int, name: str) -> int:
    """libfuse 3's fuse_lowlevel_notify_inval_entry: drop the kernel's directory entry parent/name.

    parent_ino is the parent directory's node id, which is its st_ino (secretfs does not set
    use_ino, so libfuse reports node ids as inode numbers). Must not be called while handling a
    lookup/create/rename/unlink/... of that parent; a flush or release is fine.
    """
    raw = name.encode("utf-8", "surrogateescape")
    return int(_inval_entry(_get_session(ctypes.c_void_p(fuse)), parent_ino, raw, len(raw)))
