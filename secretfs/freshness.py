"""Keeping what the kernel and the value cache hold no older than the TTL promises.

Three sources of news, one job: when a secret's value changes, drop it from the value cache and,
in `kernel` cache mode, invalidate its paths in the kernel (page cache and attributes).
- the mount's own writes (the adapter calls `changed()`);
- a watchdog observer on the SQLite file and its WAL (another process wrote): a refresh pass now,
  and one more `FOLLOWUP_DELAY` later (the event can precede the commit);
- a background refresher that, every TTL, re-reads the secrets the kernel was served recently
  and invalidates those that changed.

Sizes and contents agree. The kernel takes a file's size from a GETATTR and fills its pages with
READs, so a READ must answer from the record whose size the kernel holds. A change the refresher
finds is therefore held back as the *next* record: READs keep answering from the served one, the
kernel's copy is invalidated, and the next attribute request (GETATTR, an open for writing) moves
the name to the new record. If no attribute request comes within a TTL (a reader that reads only
within the old size), the refresher moves it itself and invalidates again.

Load on the backend: the refresher reads at most `max_tracked` secrets per TTL interval (the
ones served most recently; in bulk queries when the store has `read_many`); a secret dropped from
tracking is invalidated in the kernel first, so its next read reaches the daemon. Nothing is
tracked in `direct` mode, where the kernel keeps no contents: there, a change seen by the watcher
just empties the value cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secretfs.cache import CachingStore
from secretfs.errors import BackendUnavailable, NotFound, SecretfsError
from secretfs.stores.base import SecretRecord

log = logging.getLogger(__name__)

DEFAULT_MAX_TRACKED = 1000
FOLLOWUP_DELAY = 0.2  # seconds from a pass triggered by the SQLite watcher to its follow-up pass

# Called with (name, old record or None, new record or None) when a served secret changed.
ChangeCallback = Callable[[str, SecretRecord | None, SecretRecord | None], None]


def _fingerprint(record: SecretRecord | None) -> tuple[float, Any] | None:
    return None if record is None else (record.updated_at, record.value)


class Freshness:
    """The refresher thread, the SQLite watcher, and the record of what the kernel was served."""

    def __init__(
        self,
        cache: CachingStore,
        *,
        on_change: ChangeCallback | None,
        interval: float,
        watch_file: Path | None = None,
        max_tracked: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        self.cache = cache
        self.on_change = on_change
        self.interval = max(interval, 0.05)
        self.watch_file = watch_file
        self.max_tracked = max_tracked
        self._served: OrderedDict[str, SecretRecord] = OrderedDict()
        # A newer record per name, found by the refresher, not given to the kernel yet; and when.
        self._next: dict[str, tuple[SecretRecord, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._external = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self.passes = 0

    @property
    def tracking(self) -> bool:
        return self.on_change is not None

    # ----- what the kernel holds --------------------------------------------------------------

    def read(self, name: str) -> SecretRecord:
        """For attributes (or an open): the newest record known, which the kernel is now given.

        A record the refresher held back becomes the served one here; otherwise this is the record
        the kernel was last given, else a read through the cache (then tracked).
        """
        with self._lock:
            held = self._next.pop(name, None)
            if held is not None and name in self._served:
                self._served[name] = held[0]
            record = self._served.get(name)
            if record is not None:
                self._served.move_to_end(name)
                return record
        record = self.cache.read(name)
        self.served(name, record)
        return record

    def read_page(self, name: str) -> SecretRecord:
        """For the kernel's page cache: the record whose size the kernel was last given."""
        with self._lock:
            record = self._served.get(name)
            if record is not None:
                self._served.move_to_end(name)
                return record
        return self.read(name)

    def served(self, name: str, record: SecretRecord) -> None:
        """The kernel was given this record's contents or attributes."""
        if not self.tracking:
            return
        evicted: list[tuple[str, SecretRecord]] = []
        with self._lock:
            self._served[name] = record
            self._served.move_to_end(name)
            while len(self._served) > self.max_tracked:
                evicted.append(self._served.popitem(last=False))
                self._next.pop(evicted[-1][0], None)
        for old_name, old in evicted:
            self._notify(old_name, old, None)

    def changed(self, *names: str) -> None:
        """The mount itself changed these secrets: drop them everywhere now."""
        self.cache.invalidate(*names)
        for name in names:
            with self._lock:
                old = self._served.pop(name, None)
                self._next.pop(name, None)
            if self.tracking:
                self._notify(name, old, None)

    def _notify(self, name: str, old: SecretRecord | None, new: SecretRecord | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(name, old, new)
        except Exception as exc:  # a failed invalidation must not stop the refresher
            log.error("invalidating %r failed: %s", name, type(exc).__name__)

    # ----- the refresher ----------------------------------------------------------------------

    def refresh_once(self) -> int:
        """Re-read every tracked secret; invalidate those that changed. Returns how many changed."""
        external = self._external.is_set()
        self._external.clear()
        if not self.tracking:
            if external:
                self.cache.invalidate_all()
            return 0
        if external:
            self.cache.forget_dirs()
        with self._lock:
            tracked = list(self._served.items())
            held = dict(self._next)
        bulk: dict[str, SecretRecord] | None = None
        outage = False
        if self.cache.can_fetch_many and tracked:
            # One query per few hundred names instead of one per name (same records, same rules).
            try:
                bulk = self.cache.fetch_many([name for name, _ in tracked])
            except BackendUnavailable:
                outage = True
        changed = 0
        for name, old in tracked:
            found, new = self._reread(name, bulk, outage=outage)
            if found and self._settle(name, old, new, held.get(name)):
                changed += 1
        self.passes += 1
        return changed

    def _reread(
        self, name: str, bulk: dict[str, SecretRecord] | None, *, outage: bool
    ) -> tuple[bool, SecretRecord | None]:
        """(False, None) to leave a secret as the kernel has it; else (True, its record or None)."""
        if bulk is not None:
            return True, bulk.get(name)  # absent: missing or undecryptable, dropped either way
        if outage:
            return self.cache.stale_beyond_limit(name), None
        try:
            return True, self.cache.fetch(name)
        except NotFound:
            return True, None
        except BackendUnavailable:
            # Backend trouble: the kernel keeps what it has while the outage policy allows.
            return self.cache.stale_beyond_limit(name), None
        except SecretfsError:
            return True, None  # refused or undecryptable: drop it, so the next read gets the error

    def _settle(
        self, name: str, old: SecretRecord, new: SecretRecord | None, held: tuple[SecretRecord, float] | None
    ) -> bool:
        """Act on what a pass read for one served secret; whether it was a new change."""
        if _fingerprint(new) == _fingerprint(old):
            return False
        if held is not None and _fingerprint(new) == _fingerprint(held[0]):
            # Held back and unchanged since: after a TTL with no attribute request, move on.
            if time.monotonic() - held[1] >= self.interval and self._move_on(name, held):
                self._notify(name, old, new)
            return False
        with self._lock:
            if new is None:
                self._served.pop(name, None)
                self._next.pop(name, None)
            elif name in self._served:
                self._next[name] = (new, time.monotonic())
        self._notify(name, old, new)
        return True

    def _move_on(self, name: str, held: tuple[SecretRecord, float]) -> bool:
        """Serve a held-back record to READs too (no attribute request came for it)."""
        with self._lock:
            if self._next.get(name) is not held or name not in self._served:
                return False
            del self._next[name]
            self._served[name] = held[0]
        return True

    def _run(self) -> None:
        followup = False
        while not self._stop.is_set():
            woken = self._wake.wait(min(self.interval, FOLLOWUP_DELAY) if followup else self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if followup and not woken:
                # A watcher event can come before the writer's commit is visible (the WAL is
                # written first): the pass it triggered may have read the old value. One more
                # pass shortly after catches it, instead of the next periodic pass a TTL later.
                self._external.set()
            external = self._external.is_set()
            try:
                self.refresh_once()
            except Exception as exc:
                log.error("refresh pass failed: %s", type(exc).__name__)
            followup = external and not (followup and not woken)

    def poke(self) -> None:
        """Something outside changed the backend: refresh now."""
        self._external.set()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="secretfs-refresher", daemon=True)
        self._thread.start()
        if self.watch_file is not None:
            self._start_watcher(self.watch_file)

    def _start_watcher(self, db_file: Path) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        names = {db_file.name, db_file.name + "-wal", db_file.name + "-journal"}
        freshness = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                path = event.src_path if isinstance(event.src_path, str) else event.src_path.decode()
                if Path(path).name in names and event.event_type in ("modified", "created", "moved"):
                    freshness.poke()

        observer = Observer()
        observer.schedule(Handler(), str(db_file.parent), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_for_pass(self, timeout: float) -> bool:
        """For tests and benchmarks: block until one more refresh pass has completed."""
        target = self.passes + 1
        deadline = time.monotonic() + timeout
        while self.passes < target and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.passes >= target
