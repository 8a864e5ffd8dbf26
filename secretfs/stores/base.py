"""The store interface every backend implements, the records it deals in, and its capabilities.

A store maps secret names to JSON values. It raises only secretfs's own exceptions
(secretfs.errors). Stores know nothing of paths, files, or FUSE.

What a store can do beyond the Store protocol is declared, not discovered: its `capabilities`
says which of the optional protocols (BulkReader, Watcher, HealthReporter) it implements, and
callers reach them through `bulk_reader()`, `watcher()` and `health_reporter()`, never through
getattr. The store contract (tests/contract.py) checks that each declaration is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable


@dataclass(frozen=True)
class SecretMeta:
    """A secret's name and times (epoch seconds)."""

    name: str
    updated_at: float
    created_at: float


@dataclass(frozen=True)
class SecretRecord:
    """A secret's decrypted value with its metadata."""

    name: str
    value: Any
    updated_at: float
    created_at: float


@dataclass(frozen=True)
class DirListing:
    """What lies directly under a directory: secret basenames and subdirectory basenames."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Capabilities:
    """What a store offers beyond the Store protocol. Each flag names an optional protocol below."""

    bulk_read: bool = False  # BulkReader: read_many(names), many values in one backend query
    watch: bool = False  # Watcher: watch(on_change), a call when the data may have changed elsewhere
    health: bool = False  # HealthReporter: `health`, whether the backend answers and since when not
    atomic_batch: bool = False  # write_many is all-or-nothing (one transaction), not one write per name


NO_CAPABILITIES = Capabilities()


@runtime_checkable
class Store(Protocol):
    """list, read, write, delete, rename, stat, close; names are full secret names ('a/b/c')."""

    read_only: bool

    @property
    def capabilities(self) -> Capabilities:
        """What this store offers beyond this protocol (see Capabilities)."""
        ...

    def list(self, prefix: str = "") -> list[SecretMeta]:
        """Every secret whose name starts with prefix, in name order."""
        ...

    def list_dir(self, directory: str) -> DirListing:
        """Entries directly under directory ('' is the root; no trailing slash)."""
        ...

    def read(self, name: str) -> SecretRecord:
        """The secret's value; NotFound if there is none."""
        ...

    def stat(self, name: str) -> SecretMeta:
        """The secret's metadata without its value; NotFound if there is none."""
        ...

    def write(self, name: str, value: Any) -> None:
        """Create or replace the whole value, atomically."""
        ...

    def write_many(self, items: Mapping[str, Any]) -> None:
        """Create or replace several values: all or none where `capabilities.atomic_batch`, else in order."""
        ...

    def delete(self, name: str) -> None:
        """Remove the secret (every version); NotFound if there is none."""
        ...

    def rename(self, old: str, new: str) -> None:
        """Move old to new, replacing new; NotFound if old does not exist."""
        ...

    def info(self) -> dict[str, Any]:
        """Facts for `secretfs status` (never a secret value or credential)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class BulkReader(Protocol):
    """Declared by Capabilities.bulk_read."""

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        """The records of those names that exist, in as few backend queries as it can.

        Names missing, or whose value cannot be read (not decryptable), are left out: their own
        read() reports why. BackendUnavailable is raised for the whole batch.
        """
        ...


@runtime_checkable
class Watcher(Protocol):
    """Declared by Capabilities.watch."""

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        """Call on_change (from any thread) whenever the data may have changed, by another process
        or mount in particular, with the names that changed, or None when it cannot tell which (its
        own writes may be reported too, and a spurious call is harmless); returns a function that
        stops watching, or None when there is nothing to watch."""
        ...


class HealthState(Protocol):
    """A backend's health, as `secretfs status` shows it."""

    degraded_since: float | None

    def as_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class HealthReporter(Protocol):
    """Declared by Capabilities.health."""

    @property
    def health(self) -> HealthState: ...


def bulk_reader(store: Store) -> BulkReader | None:
    """The store's bulk reads when it declares them, else None."""
    return cast(BulkReader, store) if store.capabilities.bulk_read else None


def watcher(store: Store) -> Watcher | None:
    """The store's change watching when it declares it, else None."""
    return cast(Watcher, store) if store.capabilities.watch else None


def health_reporter(store: Store) -> HealthReporter | None:
    """The store's health tracking when it declares it, else None."""
    return cast(HealthReporter, store) if store.capabilities.health else None


def listing_from_names(names: list[str], directory: str) -> DirListing:
    """Split flat names into the files and subdirectories directly under directory."""
    prefix = f"{directory}/" if directory else ""
    files: set[str] = set()
    dirs: set[str] = set()
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        head, sep, _ = rest.partition("/")
        if not head:
            continue
        (dirs if sep else files).add(head)
    return DirListing(files=sorted(files), dirs=sorted(dirs))
