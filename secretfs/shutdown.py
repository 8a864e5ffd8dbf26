"""Shutdown of a foreground mount: SIGTERM and SIGINT unmount it, and the process exits 0.

The signals are caught here (a wakeup pipe read by a thread, since the main thread sits in libfuse's
loop). The thread sends STOPPING=1 and unmounts; the loop then ends and the process exits 0. When the
mount is busy (files open under it) the thread hands over to libfuse's own exit handler (SIGHUP,
which libfuse keeps), which leaves the loop and detaches the mount lazily.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from secretfs import mounts, notify
from secretfs.background import READY_TIMEOUT

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# libfuse installs its exit handler for SIGHUP, SIGINT and SIGTERM when they are SIG_DFL; secretfs
# takes SIGTERM and SIGINT and leaves SIGHUP to libfuse, to hand a busy mount over to it.
LIBFUSE_EXIT_SIGNAL = signal.SIGHUP
UNMOUNT_ATTEMPTS = 10
LOOP_END_WAIT = 3.0


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

    def loop_ended(self) -> None:
        """The FUSE loop has returned (main thread): nothing is handed over to libfuse from now on."""
        with self._lock:
            self.done.set()

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
