"""Invalidating paths in the kernel's cache (the `kernel` cache mode), off the request threads.

libfuse's invalidation writes a notification to /dev/fuse that the kernel handles synchronously;
issued from inside a request handler for the same file it can deadlock, so invalidations go
through a queue to one thread of their own.
"""

from __future__ import annotations

import logging
import queue
import threading

from secretfs.fusebind import invalidate_path

log = logging.getLogger(__name__)


class KernelInvalidator:
    """A queue of paths to invalidate, and the thread that does it."""

    def __init__(self) -> None:
        self._fuse = 0
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.done = 0

    def attach(self, fuse: int) -> None:
        """Start, once the `struct fuse *` is known (from the init callback)."""
        if self._thread is not None or not fuse:
            return
        self._fuse = fuse
        self._thread = threading.Thread(target=self._run, name="secretfs-invalidator", daemon=True)
        self._thread.start()

    def invalidate(self, *paths: str) -> None:
        for path in paths:
            self._queue.put(path)

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            result = invalidate_path(self._fuse, path)
            if result not in (0, -2):  # -ENOENT: the kernel held nothing for it
                log.debug("kernel invalidation of a path returned %d", result)
            self.done += 1

    def stop(self) -> None:
        self._queue.put(None)
