"""Running a mount: the foreground FUSE loop, and the background start that returns once it is live.

The foreground process checks the mount point (detaching a stale secretfs mount left by a dead
daemon), opens the store, runs the multi-threaded FUSE loop and reports readiness (a first listing
answered) to a waiting parent (a pipe) and to systemd (READY=1 on $NOTIFY_SOCKET).

Shutdown: SIGTERM and SIGINT are caught here (a wakeup pipe read by a thread, since the main thread
sits in libfuse's loop). The thread sends STOPPING=1 and unmounts; the loop then ends and the
process exits 0. When the mount is busy (files open under it) the thread hands over to libfuse's
own exit handler (SIGHUP, which libfuse keeps), which leaves the loop and detaches the mount lazily.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from secretfs import mounts, notify
from secretfs.config import Settings
from secretfs.errors import ConfigError, SecretfsError
from secretfs.view import ViewOptions

log = logging.getLogger(__name__)

READY_FD_ENV = "SECRETFS_READY_FD"
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class MountOptions:
    """Options of one mount, from the command line."""

    mountpoint: Path
    view: ViewOptions
    allow_other: bool = False
    cache_mode: str = "kernel"
    cache_ttl: float = 5.0
    max_stale: float = 300.0
    debug: bool = False


SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# libfuse installs its exit handler for SIGHUP, SIGINT and SIGTERM when they are SIG_DFL; secretfs
# takes SIGTERM and SIGINT and leaves SIGHUP to libfuse, to hand a busy mount over to it.
LIBFUSE_EXIT_SIGNAL = signal.SIGHUP
UNMOUNT_ATTEMPTS = 10
LOOP_END_WAIT = 3.0


def recover_stale(path: Path) -> bool:
    """Detach a secretfs mount at path whose daemon is gone (ENOTCONN); True if there was one."""
    if not mounts.is_stale(path):
        return False
    error = mounts.probe(path)
    reason = error.strerror if error is not None else "no daemon"
    log.warning(
        "found a stale secretfs mount at %s (%s: its daemon is gone); detaching it lazily and mounting again",
        path,
        reason,
    )
    result = mounts.unmount(path, lazy=True)
    if mounts.is_stale(path):
        raise SecretfsError(f"could not detach the stale mount at {path}: {result.stderr.strip() or 'unknown error'}")
    return True


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is missing, not a directory, not empty, or already mounted.

    A stale secretfs mount (its daemon died) is detached lazily first, with a warning.
    """
    entry = mounts.find_mount(path)
    if entry is not None:
        if mounts.is_live(path):
            raise ConfigError(f"secretfs is already mounted at {path}")
        if not recover_stale(path):
            error = mounts.probe(path)
            detail = error.strerror if error is not None else "a listing failed"
            raise ConfigError(
                f"secretfs is mounted at {path} but does not answer ({detail}); "
                f"unmount it first: secretfs umount --lazy {path}"
            )
    try:
        is_dir = path.is_dir()
    except OSError as exc:
        if exc.errno in mounts.DEAD_ERRNOS:
            raise ConfigError(
                f"mount point {path} is a dead mount of another filesystem ({exc.strerror}); "
                f"detach it first: umount -l {path}"
            ) from None
        raise ConfigError(f"cannot use mount point {path}: {exc.strerror}") from None
    if not path.exists():
        raise ConfigError(f"mount point {path} does not exist; create an empty directory there first")
    if not is_dir:
        raise ConfigError(f"mount point {path} is not a directory; secretfs mounts only over an empty directory")
    if any(path.iterdir()):
        raise ConfigError(f"mount point {path} is not empty; secretfs mounts only over an empty directory")


def _report_ready(
    mountpoint: Path, callbacks: list[Callable[[], None]], stop: threading.Event, live: threading.Event
) -> None:
    while not stop.is_set():
        # From a child process: this process serves the mount and must not call into it itself.
        if mounts.wait_until_live(mountpoint, 0.5, from_child=True):
            live.set()
            for callback in callbacks:
                callback()
            log.info("mounted at %s", mountpoint)
            return


class Shutdown:
    """Catches SIGTERM/SIGINT while the main thread is inside libfuse, and unmounts.

    A signal's C-level handler writes its number to the wakeup pipe at once, even while the main
    thread is blocked in C; a thread reads it, sends STOPPING=1 and unmounts. If the mount is busy,
    it signals the main thread with SIGHUP: libfuse's handler leaves the loop, closes the FUSE
    connection and detaches the mount lazily (umount2 MNT_DETACH, or fusermount3 -u -z when not root).
    """

    def __init__(self, mountpoint: Path, live: threading.Event, done: threading.Event) -> None:
        self.mountpoint = mountpoint
        self.live = live
        self.done = done
        self.requested: int | None = None
        self.stopping_sent = False
        self.lazy = False
        self.hup_to_libfuse = True
        self._lock = threading.Lock()
        self._read_fd = -1
        self._write_fd = -1
        self._old_handlers: dict[int, object] = {}
        self._old_wakeup = -1
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (main thread only)."""
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_fd, False)
        for signum in SHUTDOWN_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._python_handler)
        # libfuse takes SIGHUP only if it is SIG_DFL (not under `nohup`, say).
        self.hup_to_libfuse = signal.getsignal(LIBFUSE_EXIT_SIGNAL) == signal.SIG_DFL
        self._old_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="secretfs-shutdown", daemon=True)
        self._thread.start()

    def restore(self) -> None:
        """Put the previous handlers back and stop the watcher (main thread only)."""
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        os.close(self._write_fd)  # the watcher reads EOF and returns
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._read_fd)

    @staticmethod
    def _python_handler(signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread only after libfuse returns; the watcher thread did the work.
        del signum, frame

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SHUTDOWN_SIGNALS:
                    self._stop(signum)

    def send_stopping(self, status: str) -> None:
        with self._lock:
            if self.stopping_sent:
                return
            self.stopping_sent = True
        notify.stopping(status)

    def _stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            log.info("received %s again; still stopping", name)
            return
        self.requested = signum
        log.info("received %s: unmounting %s", name, self.mountpoint)
        self.send_stopping(f"received {name}; unmounting {self.mountpoint}")
        # A signal during start-up: wait until the loop serves (libfuse's handlers are then in place).
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self.live.is_set() or self.done.is_set()):
            if time.monotonic() > deadline:
                log.error("the mount at %s never became live; exiting", self.mountpoint)
                os._exit(1)
            self.live.wait(0.05)
        if self.done.is_set():
            return
        # A file closed a moment ago can keep the mount busy until its release is answered: retry briefly.
        for _ in range(UNMOUNT_ATTEMPTS):
            result = mounts.unmount(self.mountpoint)
            if result.returncode == 0 or self.done.is_set() or mounts.find_mount(self.mountpoint) is None:
                # The loop ends once the kernel drops the connection; a bind mount of this mount's
                # root elsewhere (another namespace) keeps it alive: then end it like a busy mount.
                if self.done.wait(LOOP_END_WAIT):
                    return
                log.warning("%s is unmounted but still referenced elsewhere (a bind mount); closing", self.mountpoint)
                self._hand_over()
                return
            time.sleep(0.1)
        self.lazy = True
        busy = result.stderr.strip() or "files or working directories are open under it"
        if not self.hup_to_libfuse:
            # The loop ends when the last file under the detached mount is closed.
            log.warning("%s is busy (%s); detached it lazily, serving open files until closed", self.mountpoint, busy)
            mounts.unmount(self.mountpoint, lazy=True)
            return
        log.warning(
            "%s is busy (%s); detaching it lazily: open files under it get ENOTCONN from now on", self.mountpoint, busy
        )
        self._hand_over()

    def _hand_over(self) -> None:
        """libfuse's exit handler (SIGHUP) leaves the loop, closes the connection, detaches lazily."""
        if not self.hup_to_libfuse:
            return
        with self._lock:
            if not self.done.is_set():
                signal.pthread_kill(threading.main_thread().ident or 0, LIBFUSE_EXIT_SIGNAL)


def _ready_pipe_callback() -> Callable[[], None] | None:
    raw = os.environ.pop(READY_FD_ENV, None)
    if not raw:
        return None
    fd = int(raw)

    def signal_parent() -> None:
        try:
            os.write(fd, b"R")
        finally:
            os.close(fd)

    return signal_parent


def run_foreground(settings: Settings, options: MountOptions, ready: list[Callable[[], None]] | None = None) -> int:
    """Mount and serve until unmounted or signalled; return the exit code."""
    from secretfs import hardening

    hardening.apply()  # before any secret is read: not dumpable, no core, memory locked if allowed
    from secretfs.assemble import build_operations
    from secretfs.coherence import FreshnessPolicy
    from secretfs.fusebind import Session
    from secretfs.stores import open_store

    mountpoint = options.mountpoint.absolute()
    callbacks = list(ready or [])
    if (pipe := _ready_pipe_callback()) is not None:
        callbacks.append(pipe)
    callbacks.append(lambda: _notify_ready(mountpoint))
    check_mountpoint(mountpoint)
    read_only = options.view.read_only or settings.read_only_mode
    store = open_store(settings, read_only=read_only)
    view_options = ViewOptions(
        layout=options.view.layout,
        read_only=read_only,
        uid=options.view.uid,
        gid=options.view.gid,
        file_mode=options.view.file_mode,
        dir_mode=options.view.dir_mode,
    )
    policy = FreshnessPolicy(
        cache_mode=options.cache_mode,  # type: ignore[arg-type]
        ttl=options.cache_ttl,
        max_stale=options.max_stale,
    )
    operations = build_operations(store, view_options, policy)
    stop = threading.Event()
    live = threading.Event()
    threading.Thread(target=_report_ready, args=(mountpoint, callbacks, stop, live), daemon=True).start()
    fuse_options = ["fsname=secretfs", "subtype=secretfs", "default_permissions"]
    if options.allow_other:
        fuse_options.append("allow_other")
    if read_only:
        fuse_options.append("ro")
    session = Session(operations, str(mountpoint), fuse_options, debug=options.debug)
    operations.coherence.invalidate_entry = session.invalidate_entry
    operations.coherence.invalidate_inode = session.invalidate_inode
    shutdown = Shutdown(mountpoint, live, stop)
    shutdown.install()
    try:
        session.run()
    except SecretfsError:
        if shutdown.requested is None or not live.is_set():
            raise
        # libfuse's exit handler ended the loop on our request (a busy mount): a clean stop.
    finally:
        with shutdown._lock:
            stop.set()
        shutdown.restore()
        shutdown.send_stopping(f"unmounted {mountpoint}")
        store.close()
    if shutdown.lazy:
        log.info("detached %s lazily", mountpoint)
    else:
        log.info("unmounted %s", mountpoint)
    return 0


def _notify_ready(mountpoint: Path) -> None:
    notify.ready(f"serving {mountpoint}")


def start_background(argv: list[str], mountpoint: Path, log_file: Path) -> int:
    """Start `secretfs mount -f` as a detached child; return once the mount is live (0) or it failed."""
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_end, write_end = os.pipe()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = os.lseek(fd, 0, os.SEEK_END)
    env = dict(os.environ, **{READY_FD_ENV: str(write_end)})
    child = subprocess.Popen(
        [sys.executable, "-m", "secretfs", *argv, "--foreground"],
        stdin=subprocess.DEVNULL,
        stdout=fd,
        stderr=fd,
        env=env,
        pass_fds=(write_end,),
        start_new_session=True,
    )
    os.close(write_end)
    os.close(fd)
    got = b""
    try:
        import select

        readable, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
        if readable:
            got = os.read(read_end, 1)
    finally:
        os.close(read_end)
    if got == b"R":
        _echo_log(log_file, start)
        return 0
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.terminate()
        code = 1
        print(f"secretfs: the mount at {mountpoint} did not become live in time", file=sys.stderr)
    _echo_log(log_file, start)
    return code or 1


def _echo_log(log_file: Path, start: int) -> None:
    """Show the user what the daemon logged while starting (notices, warnings, errors)."""
    with open(log_file, "rb") as handle:
        handle.seek(start)
        sys.stderr.write(handle.read().decode("utf-8", "replace"))
