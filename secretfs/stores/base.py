"""The store interface every backend implements, and the records it deals in.

A store maps secret names to JSON values. It raises only secretfs's own exceptions
(secretfs.errors). Stores know nothing of paths, files, or FUSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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


@runtime_checkable
class Store(Protocol):
    """list, read, write, delete, rename, stat, close; names are full secret names ('a/b/c')."""

    read_only: bool

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
