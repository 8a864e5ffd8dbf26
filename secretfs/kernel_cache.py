"""Invalidating paths in the kernel's cache (pages and attributes), off the request threads.

libfuse's invalidation writes a notification to /dev/fuse that the kernel handles synchronously;
issued from inside a request handler for the same file it can deadlock, so invalidations go
through a queue to one thread of their own. A request handler that needs an invalidation done
before it replies (a commit at close: the writer's next stat must see the new size) waits for it,
boundedly, so a kernel that blocks the invalidation cannot hold a FUSE worker for ever.
"""

from __future__ import annotations

import logging
import queue
import threading

from secretfs.fusebind import invalidate_path

log = logging.getLogger(__name__)

# How long a request handler waits for its invalidations (they take microseconds each).
WAIT_LIMIT = 2.0


class KernelInvalidator:
    """A queue of paths to invalidate, and the thread that does it."""

    def __init__(self) -> None:
        self._fuse = 0
        self._queue: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
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
        """Queue paths for invalidation and return at once."""
        for path in paths:
            self._queue.put(path)

    def invalidate_and_wait(self, *paths: str, limit: float = WAIT_LIMIT) -> bool:
        """Queue paths and wait until they (and everything queued before them) are done.

        Returns False if the thread is not running or the wait hit `limit`; the invalidations
        still happen later.
        """
        self.invalidate(*paths)
        if self._thread is None:
            return False
        finished = threading.Event()
        self._queue.put(finished)
        if finished.wait(limit):
            return True
        log.warning("kernel cache invalidation took longer than %.1fs; continuing", limit)
        return False

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            result = invalidate_path(self._fuse, item)
            if result not in (0, -2):  # -ENOENT: the kernel held nothing for it
                log.debug("kernel invalidation of a path returned %d", result)
            self.done += 1

    def stop(self) -> None:
        self._queue.put(None)
