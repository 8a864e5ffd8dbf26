"""The one binding to libfuse: its 3.x low-level API through ctypes, always libfuse 3.

The low-level API speaks inode numbers, which secretfs needs: each committed version of a file is
its own inode (docs/design.md, "Coherence"). mfusepy loads the library and supplies the C structs it
shares with the high-level API (stat, fuse_file_info, fuse_conn_info); this module adds the session,
the request callbacks and the replies. A filesystem is a plain Python object whose methods take and
return Python values (see `Filesystem`); errors are raised as exceptions and become errnos here.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy

from secretfs import errors

log = logging.getLogger(__name__)

lib = mfusepy._libfuse
Stat = mfusepy.c_stat
FileInfo = mfusepy.fuse_file_info
ConnInfo = mfusepy.fuse_conn_info
StatVfs = mfusepy.c_statvfs

ROOT_INO = 1

# fuse_common.h capability bits (libfuse 3.x)
CAP_ATOMIC_O_TRUNC = 1 << 3
CAP_AUTO_INVAL_DATA = 1 << 12

# setattr's to_set bits
SET_MODE, SET_UID, SET_GID, SET_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
SET_ATIME, SET_MTIME, SET_ATIME_NOW, SET_MTIME_NOW = 1 << 4, 1 << 5, 1 << 7, 1 << 8


class FuseError(Exception):
    """Raise with an errno to answer a request with it."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code


@dataclass(frozen=True)
class Caller:
    """Who sent the current request: the one request context (policy and audit use it)."""

    uid: int
    gid: int
    pid: int


@dataclass
class Entry:
    """A lookup's answer: the inode, its attributes and how long the kernel may keep them."""

    ino: int
    attr: dict[str, int]
    attr_timeout: float
    entry_timeout: float


@dataclass
class SetAttr:
    """What a setattr asks to change (None: leave as is)."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: float | None = None  # seconds; "now" is resolved here
    mtime: float | None = None


class Filesystem(Protocol):
    """What the binding calls. Methods raise FuseError or secretfs errors; `fi` is a FileInfo."""

    def init(self, conn: Any) -> None: ...
    def destroy(self) -> None: ...
    def lookup(self, parent: int, name: str) -> Entry: ...
    def forget(self, ino: int, nlookup: int) -> None: ...
    def getattr(self, ino: int, fh: int | None) -> tuple[dict[str, int], float]: ...
    def setattr(self, ino: int, change: SetAttr, fh: int | None) -> tuple[dict[str, int], float]: ...
    def open(self, ino: int, fi: Any) -> None: ...
    def create(self, parent: int, name: str, mode: int, fi: Any) -> Entry: ...
    def read(self, ino: int, size: int, offset: int, fh: int) -> bytes: ...
    def write(self, ino: int, data: bytes, offset: int, fh: int) -> int: ...
    def flush(self, ino: int, fh: int) -> None: ...
    def release(self, ino: int, fh: int) -> None: ...
    def fsync(self, ino: int, fh: int) -> None: ...
    def readdir(self, ino: int) -> Sequence[tuple[str, int, int]]: ...
    def mkdir(self, parent: int, name: str, mode: int) -> Entry: ...
    def unlink(self, parent: int, name: str) -> None: ...
    def rmdir(self, parent: int, name: str) -> None: ...
    def rename(self, parent: int, name: str, new_parent: int, new_name: str, flags: int) -> None: ...
    def statfs(self) -> dict[str, int]: ...
    def getxattr(self, ino: int, name: str) -> bytes: ...
    def listxattr(self, ino: int) -> list[str]: ...
    def refuse(self, ino: int) -> int: ...


# ----- C declarations -----------------------------------------------------------------------------

req_t = ctypes.c_void_p
ino_t = ctypes.c_uint64
fi_p = ctypes.POINTER(FileInfo)
stat_p = ctypes.POINTER(Stat)


class _EntryParam(ctypes.Structure):
    _fields_ = [
        ("ino", ino_t),
        ("generation", ctypes.c_uint64),
        ("attr", Stat),
        ("attr_timeout", ctypes.c_double),
        ("entry_timeout", ctypes.c_double),
    ]


class _Ctx(ctypes.Structure):
    _fields_ = [("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("pid", ctypes.c_int32), ("umask", ctypes.c_uint32)]


class _Args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


def _cb(*args: Any) -> Any:
    return ctypes.CFUNCTYPE(None, *args)


_C = ctypes.c_char_p
_SIZE = ctypes.c_size_t
_OFF = ctypes.c_int64
_INT = ctypes.c_int
_UINT = ctypes.c_uint
# struct fuse_lowlevel_ops, in libfuse 3's order; None leaves an operation unimplemented (ENOSYS).
_OPS: list[tuple[str, Any]] = [
    ("init", _cb(ctypes.c_void_p, ctypes.POINTER(ConnInfo))),
    ("destroy", _cb(ctypes.c_void_p)),
    ("lookup", _cb(req_t, ino_t, _C)),
    ("forget", _cb(req_t, ino_t, ctypes.c_uint64)),
    ("getattr", _cb(req_t, ino_t, fi_p)),
    ("setattr", _cb(req_t, ino_t, stat_p, _INT, fi_p)),
    ("readlink", _cb(req_t, ino_t)),
    ("mknod", _cb(req_t, ino_t, _C, _UINT, ctypes.c_uint64)),
    ("mkdir", _cb(req_t, ino_t, _C, _UINT)),
    ("unlink", _cb(req_t, ino_t, _C)),
    ("rmdir", _cb(req_t, ino_t, _C)),
    ("symlink", _cb(req_t, _C, ino_t, _C)),
    ("rename", _cb(req_t, ino_t, _C, ino_t, _C, _UINT)),
    ("link", _cb(req_t, ino_t, ino_t, _C)),
    ("open", _cb(req_t, ino_t, fi_p)),
    ("read", _cb(req_t, ino_t, _SIZE, _OFF, fi_p)),
    ("write", _cb(req_t, ino_t, ctypes.POINTER(ctypes.c_char), _SIZE, _OFF, fi_p)),
    ("flush", _cb(req_t, ino_t, fi_p)),
    ("release", _cb(req_t, ino_t, fi_p)),
    ("fsync", _cb(req_t, ino_t, _INT, fi_p)),
    ("opendir", _cb(req_t, ino_t, fi_p)),
    ("readdir", _cb(req_t, ino_t, _SIZE, _OFF, fi_p)),
    ("releasedir", _cb(req_t, ino_t, fi_p)),
    ("fsyncdir", _cb(req_t, ino_t, _INT, fi_p)),
    ("statfs", _cb(req_t, ino_t)),
    ("setxattr", _cb(req_t, ino_t, _C, ctypes.c_void_p, _SIZE, _INT)),
    ("getxattr", _cb(req_t, ino_t, _C, _SIZE)),
    ("listxattr", _cb(req_t, ino_t, _SIZE)),
    ("removexattr", _cb(req_t, ino_t, _C)),
    ("access", _cb(req_t, ino_t, _INT)),
    ("create", _cb(req_t, ino_t, _C, _UINT, fi_p)),
]


class _LowLevelOps(ctypes.Structure):
    _fields_ = _OPS


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = argtypes
    return func


_reply_err = _declare("fuse_reply_err", _INT, req_t, _INT)
_reply_none = _declare("fuse_reply_none", None, req_t)
_reply_entry = _declare("fuse_reply_entry", _INT, req_t, ctypes.POINTER(_EntryParam))
_reply_create = _declare("fuse_reply_create", _INT, req_t, ctypes.POINTER(_EntryParam), fi_p)
_reply_attr = _declare("fuse_reply_attr", _INT, req_t, stat_p, ctypes.c_double)
_reply_open = _declare("fuse_reply_open", _INT, req_t, fi_p)
_reply_write = _declare("fuse_reply_write", _INT, req_t, _SIZE)
_reply_buf = _declare("fuse_reply_buf", _INT, req_t, ctypes.c_char_p, _SIZE)
_reply_statfs = _declare("fuse_reply_statfs", _INT, req_t, ctypes.POINTER(StatVfs))
_reply_xattr = _declare("fuse_reply_xattr", _INT, req_t, _SIZE)
_add_direntry = _declare("fuse_add_direntry", _SIZE, req_t, ctypes.c_void_p, _SIZE, _C, stat_p, _OFF)
_req_ctx = _declare("fuse_req_ctx", ctypes.POINTER(_Ctx), req_t)
_session_new = _declare(
    "fuse_session_new", ctypes.c_void_p, ctypes.POINTER(_Args), ctypes.c_void_p, _SIZE, ctypes.c_void_p
)
_session_mount = _declare("fuse_session_mount", _INT, ctypes.c_void_p, _C)
_session_unmount = _declare("fuse_session_unmount", None, ctypes.c_void_p)
_session_destroy = _declare("fuse_session_destroy", None, ctypes.c_void_p)
_session_exit = _declare("fuse_session_exit", None, ctypes.c_void_p)
_set_signal_handlers = _declare("fuse_set_signal_handlers", _INT, ctypes.c_void_p)
_remove_signal_handlers = _declare("fuse_remove_signal_handlers", None, ctypes.c_void_p)
_loop_cfg_create = _declare("fuse_loop_cfg_create", ctypes.c_void_p)
_loop_cfg_destroy = _declare("fuse_loop_cfg_destroy", None, ctypes.c_void_p)
_loop_cfg_max_threads = _declare("fuse_loop_cfg_set_max_threads", None, ctypes.c_void_p, _UINT)
_loop_cfg_idle_threads = _declare("fuse_loop_cfg_set_idle_threads", None, ctypes.c_void_p, _UINT)
_loop_mt = _declare("fuse_session_loop_mt_312", _INT, ctypes.c_void_p, ctypes.c_void_p)
_inval_inode = _declare("fuse_lowlevel_notify_inval_inode", _INT, ctypes.c_void_p, ino_t, _OFF, _OFF)
_inval_entry = _declare("fuse_lowlevel_notify_inval_entry", _INT, ctypes.c_void_p, ino_t, ctypes.c_char_p, _SIZE)
_notify_delete = _declare("fuse_lowlevel_notify_delete", _INT, ctypes.c_void_p, ino_t, ino_t, ctypes.c_char_p, _SIZE)


def libfuse_version() -> tuple[int, int]:
    """(major, minor) of the libfuse loaded."""
    return int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor)


def libfuse_path() -> str:
    """The shared library file loaded."""
    return str(getattr(mfusepy, "_libfuse_path", ""))


# libfuse calls Python from its own worker threads. A callback on a thread without a Python thread
# state creates one and destroys it on return, which doubled the cost of every request (62 -> 24 µs
# per open+read+close measured on a minimal filesystem). One extra reference keeps it for the
# thread's life: at most libfuse's worker threads, each holding one small thread state.
_gilstate_ensure = ctypes.pythonapi.PyGILState_Ensure
_gilstate_ensure.restype = ctypes.c_int
_local = threading.local()


def _keep_thread_state() -> None:
    if not getattr(_local, "kept", False):
        _gilstate_ensure()
        _local.kept = True


def caller() -> Caller:
    """The caller of the request this thread is handling (zeros outside a request)."""
    return getattr(_local, "caller", None) or Caller(0, 0, 0)


def _fill_stat(st: Any, attr: dict[str, int]) -> None:
    mfusepy.set_st_attrs(st, attr, use_ns=True)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class Session:
    """One mount: the callbacks into a Filesystem, the loop, and notifications to the kernel."""

    def __init__(self, fs: Filesystem, mountpoint: str, options: Iterable[str], *, debug: bool = False) -> None:
        self.fs = fs
        self.mountpoint = mountpoint
        argv = [b"secretfs", b"-o", ",".join(options).encode()]
        if debug:
            argv.append(b"-d")
        self._argv = (ctypes.c_char_p * len(argv))(*argv)
        self._args = _Args(len(argv), self._argv, 0)
        self._ops = _LowLevelOps()
        self._keep: list[Any] = []  # the C callbacks must outlive the session
        for name, ctype in _OPS:
            handler = getattr(self, "_op_" + name, None)
            if handler is not None:
                callback = ctype(handler)
                self._keep.append(callback)
                setattr(self._ops, name, callback)
        self._se: int | None = None
        self._dirs: dict[int, Sequence[tuple[str, int, int]]] = {}
        self._next_dir = 1
        self._dirs_lock = threading.Lock()

    # ----- running -------------------------------------------------------------------------------

    def run(self, max_threads: int = 64) -> int:
        """Mount, serve until unmounted or told to exit, unmount; libfuse's loop result."""
        se = _session_new(ctypes.byref(self._args), ctypes.byref(self._ops), ctypes.sizeof(self._ops), None)
        if not se:
            raise errors.SecretfsError("libfuse refused the mount options")
        self._se = se
        try:
            if _set_signal_handlers(se) != 0:
                raise errors.SecretfsError("libfuse could not install its signal handlers")
            try:
                if _session_mount(se, _encode(self.mountpoint)) != 0:
                    raise errors.SecretfsError(f"FUSE could not mount {self.mountpoint}")
                cfg = _loop_cfg_create()
                _loop_cfg_max_threads(cfg, max_threads)
                # Workers never exit once started: each keeps its Python thread state (see
                # _keep_thread_state), which a worker that exits would leak.
                _loop_cfg_idle_threads(cfg, max_threads)
                try:
                    return int(_loop_mt(se, cfg))
                finally:
                    _loop_cfg_destroy(cfg)
                    _session_unmount(se)
            finally:
                _remove_signal_handlers(se)
        finally:
            self._se = None
            _session_destroy(se)

    def exit(self) -> None:
        """Ask the loop to end (it returns at the next request or signal)."""
        if self._se:
            _session_exit(self._se)

    # ----- notifications (never from a request on the same inode or directory) --------------------

    def invalidate_inode(self, ino: int, *, pages: bool = True) -> int:
        """Drop the kernel's attributes (and pages) of an inode; 0 or a negative errno."""
        se = self._se
        return int(_inval_inode(se, ino, 0 if pages else -1, 0)) if se else -errno.ENOTCONN

    def invalidate_entry(self, parent: int, name: str) -> int:
        """Drop the kernel's directory entry parent/name, so the next path walk looks it up."""
        se = self._se
        raw = _encode(name)
        return int(_inval_entry(se, parent, raw, len(raw))) if se else -errno.ENOTCONN

    def notify_delete(self, parent: int, child: int, name: str) -> int:
        """The file parent/name (inode child) is gone: the kernel drops its entry and tells inotify
        watchers (IN_DELETE on the directory, IN_DELETE_SELF on the file), where it holds the entry."""
        se = self._se
        raw = _encode(name)
        return int(_notify_delete(se, parent, child, raw, len(raw))) if se else -errno.ENOTCONN

    # ----- requests ----------------------------------------------------------------------------------

    def _call(self, req: int, reply: Callable[[], Any]) -> None:
        """Run one request; its errors become errnos; anything unexpected is logged (type only) and EIO."""
        _keep_thread_state()
        ctx = _req_ctx(req).contents
        _local.caller = Caller(ctx.uid, ctx.gid, ctx.pid)
        try:
            reply()
        except FuseError as exc:
            _reply_err(req, exc.errno)
        except errors.SecretfsError as exc:
            code = errors.errno_for(exc)
            if code == errno.EIO:
                log.error("request failed: %s", exc)
            _reply_err(req, code)
        except Exception as exc:
            log.error("request failed unexpectedly: %s", type(exc).__name__)
            _reply_err(req, errno.EIO)
        finally:
            _local.caller = None

    def _reply_entry(self, req: int, entry: Entry) -> None:
        param = _EntryParam(entry.ino, 0, Stat(), entry.attr_timeout, entry.entry_timeout)
        _fill_stat(param.attr, entry.attr)
        _reply_entry(req, ctypes.byref(param))

    def _reply_attr(self, req: int, result: tuple[dict[str, int], float]) -> None:
        st = Stat()
        _fill_stat(st, result[0])
        _reply_attr(req, ctypes.byref(st), result[1])

    def _op_init(self, userdata: Any, conn: Any) -> None:
        _keep_thread_state()
        try:
            self.fs.init(conn.contents)
        except Exception as exc:
            log.error("init failed: %s", type(exc).__name__)

    def _op_destroy(self, userdata: Any) -> None:
        _keep_thread_state()
        try:
            self.fs.destroy()
        except Exception as exc:
            log.error("destroy failed: %s", type(exc).__name__)

    def _op_lookup(self, req: int, parent: int, name: bytes) -> None:
        self._call(req, lambda: self._reply_entry(req, self.fs.lookup(parent, _decode(name))))

    def _op_forget(self, req: int, ino: int, nlookup: int) -> None:
        _keep_thread_state()
        try:
            self.fs.forget(ino, nlookup)
        except Exception as exc:
            log.error("forget failed: %s", type(exc).__name__)
        _reply_none(req)

    def _op_getattr(self, req: int, ino: int, fi: Any) -> None:
        fh = fi.contents.fh if fi else None
        self._call(req, lambda: self._reply_attr(req, self.fs.getattr(ino, fh)))

    def _op_setattr(self, req: int, ino: int, attr: Any, to_set: int, fi: Any) -> None:
        def run() -> None:
            st = attr.contents
            change = SetAttr()
            if to_set & SET_MODE:
                change.mode = st.st_mode & 0o7777
            if to_set & SET_UID:
                change.uid = st.st_uid
            if to_set & SET_GID:
                change.gid = st.st_gid
            if to_set & SET_SIZE:
                change.size = st.st_size
            now = time.time()
            if to_set & SET_ATIME_NOW:
                change.atime = now
            elif to_set & SET_ATIME:
                change.atime = st.st_atimespec.tv_sec + st.st_atimespec.tv_nsec / 1e9
            if to_set & SET_MTIME_NOW:
                change.mtime = now
            elif to_set & SET_MTIME:
                change.mtime = st.st_mtimespec.tv_sec + st.st_mtimespec.tv_nsec / 1e9
            self._reply_attr(req, self.fs.setattr(ino, change, fi.contents.fh if fi else None))

        self._call(req, run)

    def _op_open(self, req: int, ino: int, fi: Any) -> None:
        def run() -> None:
            self.fs.open(ino, fi.contents)
            _reply_open(req, fi)

        self._call(req, run)

    def _op_create(self, req: int, parent: int, name: bytes, mode: int, fi: Any) -> None:
        def run() -> None:
            entry = self.fs.create(parent, _decode(name), mode, fi.contents)
            param = _EntryParam(entry.ino, 0, Stat(), entry.attr_timeout, entry.entry_timeout)
            _fill_stat(param.attr, entry.attr)
            _reply_create(req, ctypes.byref(param), fi)

        self._call(req, run)

    def _op_read(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        def run() -> None:
            data = self.fs.read(ino, size, off, fi.contents.fh if fi else 0)
            _reply_buf(req, data, len(data))

        self._call(req, run)

    def _op_write(self, req: int, ino: int, buf: Any, size: int, off: int, fi: Any) -> None:
        self._call(req, lambda: _reply_write(req, self.fs.write(ino, ctypes.string_at(buf, size), off, fi.contents.fh)))

    def _file_op(self, req: int, op: Callable[[], None]) -> None:
        def run() -> None:
            op()
            _reply_err(req, 0)

        self._call(req, run)

    def _op_flush(self, req: int, ino: int, fi: Any) -> None:
        self._file_op(req, lambda: self.fs.flush(ino, fi.contents.fh))

    def _op_release(self, req: int, ino: int, fi: Any) -> None:
        self._file_op(req, lambda: self.fs.release(ino, fi.contents.fh))

    def _op_fsync(self, req: int, ino: int, datasync: int, fi: Any) -> None:
        self._file_op(req, lambda: self.fs.fsync(ino, fi.contents.fh))

    def _op_opendir(self, req: int, ino: int, fi: Any) -> None:
        def run() -> None:
            entries = self.fs.readdir(ino)
            with self._dirs_lock:
                handle = self._next_dir
                self._next_dir += 1
                self._dirs[handle] = entries
            fi.contents.fh = handle
            _reply_open(req, fi)

        self._call(req, run)

    def _op_readdir(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        def run() -> None:
            with self._dirs_lock:
                entries = self._dirs.get(fi.contents.fh, ())
            buf = ctypes.create_string_buffer(size)
            used = 0
            st = Stat()
            for index in range(off, len(entries)):
                name, entry_ino, mode = entries[index]
                st.st_ino, st.st_mode = entry_ino, mode
                raw = _encode(name)
                need = _add_direntry(req, None, 0, raw, None, 0)
                if used + need > size:
                    break
                _add_direntry(req, ctypes.addressof(buf) + used, size - used, raw, ctypes.byref(st), index + 1)
                used += need
            _reply_buf(req, buf.raw[:used], used)

        self._call(req, run)

    def _op_releasedir(self, req: int, ino: int, fi: Any) -> None:
        def run() -> None:
            with self._dirs_lock:
                self._dirs.pop(fi.contents.fh, None)

        self._file_op(req, run)

    def _op_fsyncdir(self, req: int, ino: int, datasync: int, fi: Any) -> None:
        self._file_op(req, lambda: None)

    def _op_mkdir(self, req: int, parent: int, name: bytes, mode: int) -> None:
        self._call(req, lambda: self._reply_entry(req, self.fs.mkdir(parent, _decode(name), mode)))

    def _op_unlink(self, req: int, parent: int, name: bytes) -> None:
        self._file_op(req, lambda: self.fs.unlink(parent, _decode(name)))

    def _op_rmdir(self, req: int, parent: int, name: bytes) -> None:
        self._file_op(req, lambda: self.fs.rmdir(parent, _decode(name)))

    def _op_rename(self, req: int, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        self._file_op(req, lambda: self.fs.rename(parent, _decode(name), new_parent, _decode(new_name), flags))

    def _refuse(self, req: int, ino: int) -> None:
        self._call(req, lambda: _reply_err(req, self.fs.refuse(ino)))

    def _op_mknod(self, req: int, parent: int, name: bytes, mode: int, rdev: int) -> None:
        self._refuse(req, parent)

    def _op_symlink(self, req: int, link: bytes, parent: int, name: bytes) -> None:
        self._refuse(req, parent)

    def _op_link(self, req: int, ino: int, new_parent: int, new_name: bytes) -> None:
        self._refuse(req, new_parent)

    def _op_statfs(self, req: int, ino: int) -> None:
        def run() -> None:
            st = StatVfs()
            for key, value in self.fs.statfs().items():
                setattr(st, key, value)
            _reply_statfs(req, ctypes.byref(st))

        self._call(req, run)

    def _op_getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        def run() -> None:
            value = self.fs.getxattr(ino, _decode(name))
            self._reply_sized(req, value, size)

        self._call(req, run)

    def _op_listxattr(self, req: int, ino: int, size: int) -> None:
        def run() -> None:
            names = b"".join(_encode(n) + b"\0" for n in self.fs.listxattr(ino))
            self._reply_sized(req, names, size)

        self._call(req, run)

    @staticmethod
    def _reply_sized(req: int, value: bytes, size: int) -> None:
        if size == 0:
            _reply_xattr(req, len(value))
        elif len(value) > size:
            _reply_err(req, errno.ERANGE)
        else:
            _reply_buf(req, value, len(value))

    def _op_setxattr(self, req: int, ino: int, name: bytes, value: Any, size: int, flags: int) -> None:
        self._refuse_xattr(req, ino)

    def _op_removexattr(self, req: int, ino: int, name: bytes) -> None:
        self._refuse_xattr(req, ino)

    def _refuse_xattr(self, req: int, ino: int) -> None:
        def run() -> None:
            self.fs.refuse(ino)  # EROFS on a read-only mount
            _reply_err(req, errno.ENOTSUP)

        self._call(req, run)
