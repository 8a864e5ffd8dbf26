"""Detecting real changes of secret values: a keyed digest per name, compared on news or by polling.

`ChangeFeed` keeps, for every secret under a prefix, a keyed digest (BLAKE2b, a random key per
process) of the canonical JSON of its value, never the value itself. A refresh reads the secrets
again and reports which were added, changed (a different value) or removed. Putting the same value
again (re-encrypted, a new updated_at) is not a change. A secret that cannot be read (a bad row, a
value that does not decrypt) keeps its old digest and is not reported until it reads again.

News comes from `hint(names)` (the control socket, a store's own watcher) or, without news, from a
poll every `poll_interval` seconds; a background thread coalesces the hints and calls the
subscribers with each non-empty `Changes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from secretfs.errors import BackendUnavailable, NotFound, SecretfsError
from secretfs.stores.base import Store, bulk_reader, watcher

log = logging.getLogger(__name__)

READ_CHUNK = 500  # names per read_many call
FOLLOWUP_DELAY = 0.2  # a store watcher's event can precede the visible commit: look once more this much later
RETRY_DELAY = 5.0  # without polling, how soon names whose refresh failed are tried again

_DIGEST_KEY = os.urandom(32)  # per process: digests mean nothing outside it


def value_digest(value: Any) -> bytes:
    """The keyed digest of a value's canonical JSON (never kept or logged: the value)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=_DIGEST_KEY, digest_size=16).digest()


@dataclass(frozen=True)
class Changes:
    """Which secrets were added, changed (a different value) or removed: names only, never values."""

    added: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        """Every name in this batch."""
        return self.added | self.changed | self.removed

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def kind(self, name: str) -> str:
        """ "added", "changed" or "removed"; KeyError for a name not in this batch."""
        if name in self.added:
            return "added"
        if name in self.changed:
            return "changed"
        if name in self.removed:
            return "removed"
        raise KeyError(name)


class _All:
    """The pending hint "any name may have changed"."""


ALL_NAMES = _All()
Pending = _All | frozenset[str] | None  # None: no hint pending


def _merge(pending: Pending, names: Sequence[str] | None) -> Pending:
    """Pending hints plus these names (None: any name)."""
    if names is None or isinstance(pending, _All):
        return ALL_NAMES
    return (pending or frozenset()) | frozenset(names)


def _merge_pending(pending: Pending, other: Pending) -> Pending:
    """Two pending sets of hints as one (no hint pending: None)."""
    if other is None:
        return pending
    return _merge(pending, None if isinstance(other, _All) else sorted(other))


class ChangeFeed:
    """Detects real value changes of the secrets of a store under a prefix, and reports them.

    `prime()` reads the baseline (before it, every secret counts as added). `refresh(names)` checks
    now, on the caller's thread. `start()` runs a thread that refreshes on each `hint()` (hints that
    arrive during a refresh are merged into the next one; a hint of None wins) and every
    `poll_interval` seconds without hints (0 or less: no polling), and calls each subscriber with
    every non-empty `Changes`. Subscribers run on that thread, one after the other: they must
    return quickly (hand long work to another thread). A subscriber that raises is logged (its
    exception's type only) and the feed goes on.
    """

    def __init__(self, store: Store, *, prefix: str = "", poll_interval: float = 5.0) -> None:
        self.store = store
        self.prefix = prefix
        self.poll_interval = poll_interval
        self.refreshes = 0  # completed refreshes (tests, diagnostics)
        self._digests: dict[str, bytes] = {}
        self._refresh_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the fields below
        self._pending: Pending = None
        self._followup: Pending = None  # a store watcher's names, looked at once more at _followup_at
        self._followup_at: float | None = None
        self._retry: Pending = None  # names whose check failed, tried again at _retry_at
        self._retry_at: float | None = None
        self._subscribers: list[Callable[[Changes], None]] = []
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._unwatch: Callable[[], None] | None = None
        self._failing = False

    # ----- the baseline and checks -------------------------------------------------------------------

    def prime(self) -> None:
        """Read every secret under the prefix once, as the baseline; nothing is reported.

        Raises BackendUnavailable when the store does not answer (the baseline is then unchanged).
        """
        with self._refresh_lock:
            current = self._read_all()
            self._digests = {name: digest for name, digest in current.items() if digest is not None}

    @property
    def known(self) -> frozenset[str]:
        """The names in the baseline."""
        with self._refresh_lock:
            return frozenset(self._digests)

    def refresh(self, names: Sequence[str] | None = None) -> Changes:
        """Check these names (None: every secret under the prefix) now; update the baseline and
        return what changed. When the backend does not answer: one warning line, nothing reported,
        the baseline untouched (the next poll tries again)."""
        try:
            return self._refresh(names)
        except BackendUnavailable:
            return Changes()

    def _refresh(self, names: Sequence[str] | None) -> Changes:
        """refresh(), raising BackendUnavailable."""
        with self._refresh_lock:
            try:
                if names is None:
                    current = self._read_all()
                    gone = set(self._digests) - set(current)
                else:
                    wanted = sorted({n for n in names if n.startswith(self.prefix)})
                    current, missing = self._read_names(wanted)
                    gone = missing & set(self._digests)
            except BackendUnavailable as exc:
                if not self._failing:
                    log.warning("change check failed, trying again later: %s", exc)
                self._failing = True
                raise
            if self._failing:
                log.info("change check: the backend answers again")
            self._failing = False
            added, changed = set(), set()
            for name, digest in current.items():
                if digest is None:
                    continue  # unreadable now: keeps its old digest, not reported
                old = self._digests.get(name)
                if old is None:
                    added.add(name)
                elif old != digest:
                    changed.add(name)
                self._digests[name] = digest
            for name in gone:
                del self._digests[name]
            self.refreshes += 1
            return Changes(frozenset(added), frozenset(changed), frozenset(gone))

    def _read_all(self) -> dict[str, bytes | None]:
        """Digest of every listed secret under the prefix (None: listed but unreadable)."""
        listed = [meta.name for meta in self.store.list(self.prefix)]
        bulk = bulk_reader(self.store)
        if bulk is None:
            current, _ = self._read_each(listed)
            return current
        found = self._read_bulk(listed)
        return {name: found.get(name) for name in listed}  # listed, left out of read_many: unreadable

    def _read_names(self, names: list[str]) -> tuple[dict[str, bytes | None], set[str]]:
        """Digests of these names (None: unreadable), and the names that do not exist."""
        bulk = bulk_reader(self.store)
        if bulk is None:
            return self._read_each(names)
        found = self._read_bulk(names)
        current: dict[str, bytes | None] = dict(found)
        missing: set[str] = set()
        for name in names:
            if name in found:
                continue
            try:  # left out of read_many: missing, or there but unreadable (stat does not decrypt)
                self.store.stat(name)
            except NotFound:
                missing.add(name)
            except BackendUnavailable:
                raise
            except SecretfsError:
                current[name] = None
            else:
                current[name] = None
        return current, missing

    def _read_bulk(self, names: list[str]) -> dict[str, bytes]:
        bulk = bulk_reader(self.store)
        assert bulk is not None
        found: dict[str, bytes] = {}
        for start in range(0, len(names), READ_CHUNK):
            records = bulk.read_many(names[start : start + READ_CHUNK])
            found.update((name, value_digest(record.value)) for name, record in records.items())
        return found

    def _read_each(self, names: Iterable[str]) -> tuple[dict[str, bytes | None], set[str]]:
        current: dict[str, bytes | None] = {}
        missing: set[str] = set()
        for name in names:
            try:
                current[name] = value_digest(self.store.read(name).value)
            except NotFound:
                missing.add(name)
            except BackendUnavailable:
                raise
            except SecretfsError:
                current[name] = None  # the store logged why; not reported
        return current, missing

    # ----- news and subscribers ----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Changes], None]) -> None:
        """Call callback with every non-empty Changes, from the feed's thread (it must be quick)."""
        with self._lock:
            self._subscribers.append(callback)

    def hint(self, names: Sequence[str] | None = None) -> None:
        """These secrets (None: any) may have changed: the thread checks them soon. Never blocks."""
        self._hint(names, followup=False)

    def store_hint(self, names: Sequence[str] | None = None) -> None:
        """News from a store's own watcher (start(watch_store=True) wires it itself): a hint, and one
        more look FOLLOWUP_DELAY later, since such an event can precede the visible commit."""
        self._hint(names, followup=True)

    def _hint(self, names: Sequence[str] | None, *, followup: bool) -> None:
        if self._stopped.is_set():
            return
        if names is not None:
            names = [n for n in names if n.startswith(self.prefix)]
            if not names:
                return
        with self._lock:
            self._pending = _merge(self._pending, names)
            if followup:
                self._followup = _merge(self._followup, names)
                self._followup_at = time.monotonic() + FOLLOWUP_DELAY
        self._wake.set()

    # ----- the thread ----------------------------------------------------------------------------------

    def start(self, *, watch_store: bool = True) -> None:
        """Run the feed's thread; with watch_store, the store's own watcher (when it has one) hints too."""
        if self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="secretfs-changes", daemon=True)
        self._thread.start()
        if watch_store:
            watching = watcher(self.store)
            if watching is not None:
                self._unwatch = watching.watch(self.store_hint)

    def stop(self) -> None:
        """Stop the thread and the store watcher; waits (a few seconds at most) for a refresh under way."""
        self._stopped.set()
        self._wake.set()
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            try:
                unwatch()
            except Exception as exc:
                log.warning("stopping the store watcher failed: %s", type(exc).__name__)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _next_wait(self, last_poll: float) -> float | None:
        """Seconds until the next thing to do without a hint (None: nothing until a hint)."""
        deadlines = []
        if self.poll_interval > 0:
            deadlines.append(last_poll + self.poll_interval)
        with self._lock:
            deadlines.extend(t for t in (self._followup_at, self._retry_at) if t is not None)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _take(self, last_poll: float) -> Pending:
        """What to check now: the hints, with a follow-up or a retry that is due; a poll checks all."""
        now = time.monotonic()
        with self._lock:
            self._wake.clear()
            work, self._pending = self._pending, None
            if self._followup_at is not None and now >= self._followup_at:
                work = _merge_pending(work, self._followup)
                self._followup, self._followup_at = None, None
            if self._retry_at is not None and now >= self._retry_at:
                work = _merge_pending(work, self._retry)
                self._retry, self._retry_at = None, None
            if self.poll_interval > 0 and now >= last_poll + self.poll_interval:
                work = ALL_NAMES
            return work

    def _run(self) -> None:
        last_poll = time.monotonic()
        while not self._stopped.is_set():
            self._wake.wait(self._next_wait(last_poll))
            if self._stopped.is_set():
                return
            work = self._take(last_poll)
            if work is None:
                continue
            names = None if isinstance(work, _All) else sorted(work)
            if names is None:
                last_poll = time.monotonic()  # a full check: the next poll is a whole interval away
            try:
                changes = self._refresh(names)
            except BackendUnavailable:
                with self._lock:  # try these again at the next poll (or after RETRY_DELAY without polling)
                    self._retry = _merge_pending(self._retry, work)
                    delay = self.poll_interval if self.poll_interval > 0 else RETRY_DELAY
                    self._retry_at = time.monotonic() + delay
                continue
            except Exception as exc:  # the thread never dies of a surprise
                log.error("change check failed: %s", type(exc).__name__)
                continue
            if changes:
                self._deliver(changes)

    def _deliver(self, changes: Changes) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            if self._stopped.is_set():
                return
            try:
                callback(changes)
            except Exception as exc:
                log.error("a change subscriber failed: %s", type(exc).__name__)
