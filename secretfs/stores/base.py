"""The store interface every backend implements, the records it deals in, and its capabilities.

A store maps secret names to JSON values. It raises only secretfs's own exceptions
(secretfs.errors). Stores know nothing of paths, files, or FUSE.

What a store can do beyond the Store protocol is declared, not discovered: its `capabilities`
says which of the optional protocols (BulkReader, Watcher, HealthReporter, FileAttrStore) it
implements, and callers reach them through `bulk_reader()`, `watcher()`, `health_reporter()` and
`file_attr_store()`, never through getattr. The store contract (tests/contract.py) checks that
each declaration is kept.
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
class FileAttrs:
    """A secret's own file mode and owner (docs/design.md, "Per-secret modes and owners").

    None in a field: nothing stored, the mount's default applies. Owners are names, resolved to ids
    on the host that shows the file; a uid or gid with no name is kept as its decimal text.
    """

    mode: int | None = None  # permission bits, within 0o777
    owner: str | None = None  # user name
    group: str | None = None  # group name

    def merged(self, newer: FileAttrs) -> FileAttrs:
        """These attrs with the fields newer sets replaced (what a store keeps after set_attrs)."""
        return FileAttrs(
            self.mode if newer.mode is None else newer.mode,
            self.owner if newer.owner is None else newer.owner,
            self.group if newer.group is None else newer.group,
        )

    @property
    def empty(self) -> bool:
        return self.mode is None and self.owner is None and self.group is None


NO_ATTRS = FileAttrs()


@dataclass(frozen=True)
class SecretRecord:
    """A secret's decrypted value with its metadata (and, from a FileAttrStore, its file attrs)."""

    name: str
    value: Any
    updated_at: float
    created_at: float
    attrs: FileAttrs | None = None  # None: the store keeps none for it (or keeps none at all)


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
    file_attrs: bool = False  # FileAttrStore: per-secret modes and owners, carried by read()'s records


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


@runtime_checkable
class FileAttrStore(Protocol):
    """Declared by Capabilities.file_attrs. Such a store also returns each secret's attrs in the
    `attrs` of the records read() and read_many() give (no query of their own), and keeps them
    through rename (they move with the secret) and delete (they go with it)."""

    def set_attrs(self, name: str, attrs: FileAttrs) -> None:
        """Store attrs for an existing secret, merged with what it has (a None field keeps what is
        stored); NotFound if there is no such secret."""
        ...

    def write_with_attrs(self, items: Mapping[str, Any], attrs: FileAttrs) -> None:
        """write_many, and set_attrs(name, attrs) for each item, in the same transaction where
        `capabilities.atomic_batch`."""
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


def file_attr_store(store: Store) -> FileAttrStore | None:
    """The store's per-secret modes and owners when it declares them, else None."""
    return cast(FileAttrStore, store) if store.capabilities.file_attrs else None


def attrs_from_columns(mode: Any, owner: Any, group: Any) -> FileAttrs | None:
    """FileAttrs from stored columns or metadata fields (text or numbers); what is not valid is left
    out (a mode outside 0o777, an empty name), so a foreign row never breaks a read."""
    try:
        number = int(mode, 8) if isinstance(mode, str) else int(mode) if isinstance(mode, int) else None
    except ValueError:
        number = None
    attrs = FileAttrs(
        number if number is not None and 0 <= number <= 0o777 else None,
        owner if isinstance(owner, str) and owner else None,
        group if isinstance(group, str) and group else None,
    )
    return None if attrs.empty else attrs


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
