"""The audit log: one JSON line per access event, written by one thread so no request waits for disk.

Requests put records on a bounded queue (`AuditLog.record`: a deque append, no lock, no wake-up);
the writer takes them every BATCH_WAIT seconds. When the queue is full a record is dropped and
counted (status, and one warning in the daemon log). Destinations: files (opened O_APPEND, mode
0600) and `-`, standard error (journald under systemd). A file is reopened when its path names
another file or none (logrotate's default move-and-create: no signal needed; SIGHUP stays
libfuse's, and unmounts); with `max_bytes`, a file that would grow past it is renamed to FILE.1
(one generation, replacing the previous FILE.1) and started again. Records never carry a value:
the caller builds them from names and identities only (secretfs.guard).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secretfs.errors import ConfigError

log = logging.getLogger(__name__)

QUEUE_MAX = 10000
BATCH_WAIT = 0.05  # seconds a line may wait for others to be written with it
Entry = dict[str, Any] | Callable[[], dict[str, Any]]
STDERR = "-"


@dataclass
class _File:
    path: Path
    fd: int = -1
    size: int = 0


def _open(path: Path) -> tuple[int, int]:
    """An audit file for appending: (fd, its size). ConfigError when it cannot be used."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the audit log {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, not by uid {os.geteuid()}"
    if problem is not None:
        os.close(fd)
        raise ConfigError(f"cannot use the audit log {path}: {problem}")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return fd, st.st_size


def check_destinations(destinations: Sequence[str]) -> None:
    """Refuse (ConfigError, one line) an audit log file that cannot be opened for appending: at the
    command, before a background mount starts."""
    for destination in destinations:
        if destination != STDERR:
            fd, _ = _open(Path(destination))
            os.close(fd)


class AuditLog:
    """A queue of audit records and the thread that writes them to every destination."""

    def __init__(self, destinations: Sequence[str], *, max_bytes: int = 0, queue_max: int = QUEUE_MAX) -> None:
        self.max_bytes = max_bytes
        self.to_stderr = STDERR in destinations
        self.files = [_File(Path(d).absolute()) for d in dict.fromkeys(destinations) if d != STDERR]
        for file in self.files:
            file.fd, file.size = _open(file.path)  # refused at start, before the mount
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._reported_drops = 0
        self._drop_lock = threading.Lock()
        self.queue_max = queue_max
        self._queue: collections.deque[Entry] = collections.deque()  # append and popleft are atomic
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secretfs-audit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, entry: Entry) -> None:
        """Queue one record (or a function the writer calls to make it); never blocks: a full queue
        drops it and counts."""
        if len(self._queue) >= self.queue_max:
            with self._drop_lock:
                self.dropped += 1
            return
        self._queue.append(entry)  # no lock, no wake-up: the writer looks every BATCH_WAIT

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close the files."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for file in self.files:
            if file.fd >= 0:
                os.close(file.fd)
                file.fd = -1

    def status(self) -> dict[str, Any]:
        return {
            "destinations": ", ".join([str(f.path) for f in self.files] + ([STDERR] if self.to_stderr else [])),
            "lines_written": self.written,
            "lines_dropped": self.dropped,
            "write_errors": self.failed,
        }

    # ----- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            done = self._stopping.wait(BATCH_WAIT)  # a burst gathers: one write, one stat, one wake-up
            while self._queue:
                batch: list[Entry] = []
                with contextlib.suppress(IndexError):
                    while len(batch) < 4096:
                        batch.append(self._queue.popleft())
                entries = [e() if callable(e) else e for e in batch]
                lines = [json.dumps(e, separators=(",", ":"), sort_keys=True) + "\n" for e in entries]
                self._write("".join(lines).encode("utf-8", "surrogateescape"), len(lines))
            if self.dropped != self._reported_drops:
                log.warning("audit log: %d line(s) dropped so far (the queue was full)", self.dropped)
                self._reported_drops = self.dropped
            if done:
                return

    def _write(self, data: bytes, count: int) -> None:
        ok = True
        if self.to_stderr:
            ok = self._write_fd(2, data) and ok
            with contextlib.suppress(Exception):
                sys.stderr.flush()
        for file in self.files:
            ok = self._write_file(file, data) and ok
        if ok:
            self.written += count
        else:
            self.failed += count

    def _write_file(self, file: _File, data: bytes) -> bool:
        try:
            self._reopen_if_moved(file)
            if self.max_bytes and file.size and file.size + len(data) > self.max_bytes:
                os.replace(file.path, file.path.with_name(file.path.name + ".1"))
                self._reopen(file)
        except (OSError, ConfigError) as exc:
            log.error("audit log %s: %s", file.path, getattr(exc, "strerror", None) or exc)
            if file.fd < 0:
                return False
        if file.fd < 0:
            return False
        if self._write_fd(file.fd, data):
            file.size += len(data)
            return True
        return False

    def _reopen_if_moved(self, file: _File) -> None:
        try:
            at_path = os.stat(file.path)
        except FileNotFoundError:
            at_path = None
        if file.fd >= 0:
            mine = os.fstat(file.fd)
            if at_path is not None and (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino):
                return
        self._reopen(file)

    def _reopen(self, file: _File) -> None:
        if file.fd >= 0:
            os.close(file.fd)
            file.fd = -1
        file.fd, file.size = _open(file.path)

    @staticmethod
    def _write_fd(fd: int, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            log.error("audit log write failed: %s", exc.strerror)
            return False
        return True
