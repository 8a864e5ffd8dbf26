"""The value cache: a Store wrapper keeping decrypted values in memory, and the outage policy.

- A value is served from memory for at most `ttl` seconds after it was fetched; then the next read
  fetches it again. `ttl` 0 means every read reaches the backend.
- Missing names are remembered for a shorter time (`negative_ttl`), so a burst of lookups of a
  file that does not exist costs one backend query.
- At most `max_entries` values are kept; the least recently used go first.
- Listings are read ahead: when a name missing from the cache appears in the last listing of its
  directory, it and the names listed after it (up to `PREFETCH_WINDOW`) are fetched in one query,
  when the store declares bulk reads (`Capabilities.bulk_read`). `ls -l` then costs one query per
  window instead of one per file.
  A value only read ahead, never read, is not served in an outage.
- A record carries its secret's file attrs (mode, owner) when the store keeps them, so they are
  cached with the value: a `stat` costs no query of its own.
- The mount's own writes, attr changes, deletes and renames invalidate at once; changes learned from outside
  come in through `fetch`, `fetch_many` and `invalidate` (coherence's check pass).
- Outage policy: when the backend is unavailable, a value fetched successfully within the last
  `max_stale` seconds is served and the cache reports itself degraded (since when); after that,
  or for a value never fetched, the read fails (EIO). When the backend answers again the cache is
  healthy again by itself.
Values live in process memory only; nothing here touches the disk.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from secretfs.errors import BackendUnavailable, NotFound
from secretfs.freshness import DEFAULTS
from secretfs.lru import BoundedLRU
from secretfs.stores.base import (
    BulkReader,
    Capabilities,
    DirListing,
    FileAttrs,
    FileAttrStore,
    SecretMeta,
    SecretRecord,
    Store,
    Watcher,
    bulk_reader,
    file_attr_store,
    watcher,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 10_000  # decrypted records held; the rest cost a backend read (RSS at 100k secrets)
NEGATIVE_TTL = 1.0
PREFETCH_WINDOW = 256  # names read ahead in one query after a miss in a listed directory
RETRY_AFTER = 1.0  # seconds between probes of a backend that is down
LISTED_DIRS = 16  # directories whose last listing is kept as a read-ahead hint

T = TypeVar("T")


@dataclass
class _Entry:
    record: SecretRecord | None  # None: the name was missing
    fetched_at: float
    # Whether a read was answered from it. A record only read ahead is not served in an outage
    # (a value nobody read fails as one never fetched does).
    served: bool = True


class Health:
    """Whether the backend answers, and since when it does not.

    While it does not, one request probes it at most every `RETRY_AFTER` seconds and the others
    fail at once: a frozen backend then costs one timeout per interval, not one per request (the
    kernel serializes lookups of one name, so 40 readers of a never-read directory waited 40
    timeouts one after the other).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.degraded_since: float | None = None
        self.last_error: str | None = None
        self._retry_at = 0.0

    def check(self) -> None:
        """Raise BackendUnavailable at once while the backend is down and not due for a probe."""
        if self.degraded_since is None:
            return
        with self._lock:
            now = self._clock()
            if now < self._retry_at:
                left = self._retry_at - now
                raise BackendUnavailable(f"backend unavailable ({self.last_error}); tried again in {left:.1f} s")
            self._retry_at = now + RETRY_AFTER  # this request is the probe

    def ok(self) -> None:
        if self.degraded_since is None:
            return
        with self._lock:
            if self.degraded_since is not None:
                log.warning("backend available again after %.1f s", time.time() - self.degraded_since)
                self.degraded_since = None
                self.last_error = None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.last_error = str(exc)
            self._retry_at = self._clock() + RETRY_AFTER
            if self.degraded_since is None:
                self.degraded_since = time.time()
                log.warning("backend unavailable, serving cached values while they last: %s", exc)

    def as_dict(self) -> dict[str, Any]:
        since = self.degraded_since
        return {"state": "healthy" if since is None else "degraded", "degraded_since": since, "error": self.last_error}


class CachingStore:
    """A Store that remembers what it read, within a TTL, and rides out backend outages.

    It tracks the backend's health (Capabilities.health) and passes the inner store's change
    watching through; the inner store's bulk reads serve read-ahead and `fetch_many`.
    """

    def __init__(
        self,
        inner: Store,
        *,
        ttl: float = DEFAULTS.cache_ttl,
        max_stale: float = DEFAULTS.max_stale,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        negative_ttl: float = NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.read_only = inner.read_only
        self.ttl = ttl
        self.max_stale = max_stale
        self.negative_ttl = min(negative_ttl, ttl)
        self.health = Health(clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: BoundedLRU[str, _Entry] = BoundedLRU(max_entries)
        self._dirs: dict[str, tuple[DirListing, float]] = {}
        self._generation = 0
        # The sorted file names of each recently listed directory: a read-ahead hint only (a stale
        # hint costs a useless prefetch, never a wrong answer). Kept across invalidations.
        self._listed: BoundedLRU[str, list[str]] = BoundedLRU(LISTED_DIRS)
        self._bulk: BulkReader | None = bulk_reader(inner)
        self._watcher: Watcher | None = watcher(inner)
        self._attrs: FileAttrStore | None = file_attr_store(inner)
        self.capabilities = Capabilities(
            watch=self._watcher is not None,
            health=True,
            atomic_batch=inner.capabilities.atomic_batch,
            file_attrs=self._attrs is not None,
        )

    # ----- the cache proper -------------------------------------------------------------------

    def _lookup(self, name: str) -> _Entry | None:
        with self._lock:
            return self._entries.get(name)

    def _store(self, name: str, entry: _Entry, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # invalidated while the fetch was in flight: do not resurrect old data
            self._entries.put(name, entry)

    def _guard(self, fetch: Callable[[], T]) -> T:
        self.health.check()  # outside the try: failing at once is not a new failure
        try:
            result = fetch()
        except BackendUnavailable as exc:
            self.health.failed(exc)
            raise
        self.health.ok()
        return result

    def read(self, name: str) -> SecretRecord:
        now = self._clock()
        entry = self._lookup(name)
        if entry is not None:
            fresh_for = self.ttl if entry.record is not None else self.negative_ttl
            if now - entry.fetched_at < fresh_for:
                if entry.record is None:
                    raise NotFound(f"no secret named {name!r}")
                if not entry.served:
                    entry.served = True
                return entry.record
        if self._bulk is not None and self._prefetch(name, now):
            entry = self._lookup(name)
            if entry is not None and entry.record is not None:
                entry.served = True
                return entry.record
        return self.fetch(name, entry)

    def _prefetch(self, name: str, now: float) -> bool:
        """Fetch name and the names listed after it that are not fresh here, in one query.

        Returns whether a prefetch ran. Names the query did not return (missing, or not
        decryptable) are left to their own reads, which report them.
        """
        bulk = self._bulk
        assert bulk is not None
        directory, _, base = name.rpartition("/")
        prefix = f"{directory}/" if directory else ""
        with self._lock:
            files = self._listed.peek(directory)
            if files is None:
                return False
            at = bisect_left(files, base)
            if at >= len(files) or files[at] != base:
                return False
            wanted = []
            for other in files[at : at + PREFETCH_WINDOW]:
                held = self._entries.peek(prefix + other)
                if held is None or held.record is None or now - held.fetched_at >= self.ttl:
                    wanted.append(prefix + other)
            generation = self._generation
        if len(wanted) < 2:
            return False  # nothing to gain over a plain read
        try:
            records = self._guard(lambda: bulk.read_many(wanted))
        except BackendUnavailable:
            return False  # the plain read applies the outage policy
        fetched_at = self._clock()
        with self._lock:
            if generation != self._generation:
                return False  # invalidated while the fetch was in flight
            for found, record in records.items():
                self._entries.put(found, _Entry(record, fetched_at, served=False))
        return True

    def fetch(self, name: str, entry: _Entry | None = None) -> SecretRecord:
        """Read from the backend (bypassing freshness), falling back to a value within max_stale."""
        generation = self._generation
        try:
            record = self._guard(lambda: self.inner.read(name))
        except NotFound:
            self._store(name, _Entry(None, self._clock()), generation)
            raise
        except BackendUnavailable:
            entry = entry or self._lookup(name)
            if (
                entry is not None
                and entry.record is not None
                and entry.served
                and self._clock() - entry.fetched_at < self.max_stale
            ):
                return entry.record
            raise
        self._store(name, _Entry(record, self._clock()), generation)
        return record

    @property
    def can_fetch_many(self) -> bool:
        """Whether fetch_many works: the inner store declares bulk reads."""
        return self._bulk is not None

    def fetch_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        """Read names from the backend in bulk (bypassing freshness), for coherence's check pass.

        Names absent from the result were missing or did not decrypt; they are dropped from the
        cache, so their next read asks the backend and reports which. BackendUnavailable is raised
        for the whole batch.
        """
        bulk = self._bulk
        assert bulk is not None
        generation = self._generation
        records = self._guard(lambda: bulk.read_many(names))
        fetched_at = self._clock()
        with self._lock:
            if generation == self._generation:
                for name in names:
                    record = records.get(name)
                    if record is None:
                        self._entries.pop(name)
                    else:
                        self._entries.put(name, _Entry(record, fetched_at))
        return records

    def invalidate(self, *names: str) -> None:
        with self._lock:
            self._generation += 1
            for name in names:
                self._entries.pop(name)
            self._dirs.clear()

    def invalidate_all(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._dirs.clear()

    # ----- the Store protocol -----------------------------------------------------------------

    def list(self, prefix: str = "") -> list[SecretMeta]:
        return self._guard(lambda: self.inner.list(prefix))

    def list_dir(self, directory: str) -> DirListing:
        now = self._clock()
        with self._lock:
            hit = self._dirs.get(directory)
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        generation = self._generation
        try:
            listing = self._guard(lambda: self.inner.list_dir(directory))
        except BackendUnavailable:
            if hit is not None and now - hit[1] < self.max_stale:
                return hit[0]
            raise
        with self._lock:
            if generation == self._generation:
                self._dirs[directory] = (listing, self._clock())
            if listing.files:
                self._listed.put(directory, listing.files)
        return listing

    def stat(self, name: str) -> SecretMeta:
        record = self.read(name)
        return SecretMeta(record.name, record.updated_at, record.created_at)

    def write(self, name: str, value: Any) -> None:
        try:
            self._guard(lambda: self.inner.write(name, value))
        finally:
            self.invalidate(name)

    def write_many(self, items: Mapping[str, Any]) -> None:
        try:
            self._guard(lambda: self.inner.write_many(items))
        finally:
            self.invalidate(*items)

    def set_attrs(self, name: str, attrs: FileAttrs) -> None:
        """The inner store's set_attrs (declared by capabilities.file_attrs)."""
        inner = self._attrs
        assert inner is not None
        try:
            self._guard(lambda: inner.set_attrs(name, attrs))
        finally:
            self.invalidate(name)

    def write_with_attrs(self, items: Mapping[str, Any], attrs: FileAttrs) -> None:
        """The inner store's write_with_attrs (declared by capabilities.file_attrs)."""
        inner = self._attrs
        assert inner is not None
        try:
            self._guard(lambda: inner.write_with_attrs(items, attrs))
        finally:
            self.invalidate(*items)

    def delete(self, name: str) -> None:
        try:
            self._guard(lambda: self.inner.delete(name))
        finally:
            self.invalidate(name)

    def rename(self, old: str, new: str) -> None:
        try:
            self._guard(lambda: self.inner.rename(old, new))
        finally:
            self.invalidate(old, new)

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        """The inner store's change watching, where it declares one (a stop function), else None."""
        return self._watcher.watch(on_change) if self._watcher is not None else None

    def info(self) -> dict[str, Any]:
        info = self.inner.info()
        with self._lock:
            held = len(self._entries)
        info["cache"] = {"ttl": self.ttl, "max_stale": self.max_stale, "entries": held}
        info["health"] = self.health.as_dict()
        return info

    def close(self) -> None:
        self.invalidate_all()
        self.inner.close()
