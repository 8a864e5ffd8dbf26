"""The in-memory store: the reference implementation of the Store protocol, and the test double.

It keeps per-secret modes and owners too (FileAttrStore), on the records themselves.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from secretfs.errors import NotFound, ReadOnly
from secretfs.stores.base import (
    NO_ATTRS,
    Capabilities,
    DirListing,
    FileAttrs,
    SecretMeta,
    SecretRecord,
    listing_from_names,
)


class MemoryStore:
    """Secrets in a dict, guarded by a lock; values are deep-copied in and out."""

    # A subclass adding a protocol declares it.
    capabilities: Capabilities = Capabilities(atomic_batch=True, file_attrs=True)

    def __init__(self, *, read_only: bool = False) -> None:
        self.read_only = read_only
        self._lock = threading.Lock()
        self._data: dict[str, SecretRecord] = {}

    def _require_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("the store is read-only")

    def list(self, prefix: str = "") -> list[SecretMeta]:
        with self._lock:
            records = [r for n, r in self._data.items() if n.startswith(prefix)]
        return sorted((SecretMeta(r.name, r.updated_at, r.created_at) for r in records), key=lambda m: m.name)

    def list_dir(self, directory: str) -> DirListing:
        with self._lock:
            names = list(self._data)
        return listing_from_names(names, directory)

    def read(self, name: str) -> SecretRecord:
        with self._lock:
            record = self._data.get(name)
        if record is None:
            raise NotFound(f"no secret named {name!r}")
        return SecretRecord(
            record.name, copy.deepcopy(record.value), record.updated_at, record.created_at, record.attrs
        )

    def stat(self, name: str) -> SecretMeta:
        record = self.read(name)
        return SecretMeta(record.name, record.updated_at, record.created_at)

    def write(self, name: str, value: Any) -> None:
        self.write_many({name: value})

    def write_many(self, items: Mapping[str, Any]) -> None:
        self.write_with_attrs(items, NO_ATTRS)

    def write_with_attrs(self, items: Mapping[str, Any], attrs: FileAttrs) -> None:
        self._require_writable()
        now = time.time()
        with self._lock:
            for name, value in items.items():
                old = self._data.get(name)
                created = old.created_at if old else now
                kept = (old.attrs if old else None) or NO_ATTRS
                merged = kept.merged(attrs)
                self._data[name] = SecretRecord(
                    name, copy.deepcopy(value), now, created, None if merged.empty else merged
                )

    def set_attrs(self, name: str, attrs: FileAttrs) -> None:
        self._require_writable()
        with self._lock:
            record = self._data.get(name)
            if record is None:
                raise NotFound(f"no secret named {name!r}")
            merged = (record.attrs or NO_ATTRS).merged(attrs)
            self._data[name] = replace(record, attrs=None if merged.empty else merged)

    def delete(self, name: str) -> None:
        self._require_writable()
        with self._lock:
            if self._data.pop(name, None) is None:
                raise NotFound(f"no secret named {name!r}")

    def rename(self, old: str, new: str) -> None:
        self._require_writable()
        with self._lock:
            record = self._data.pop(old, None)
            if record is None:
                raise NotFound(f"no secret named {old!r}")
            self._data[new] = SecretRecord(new, record.value, time.time(), record.created_at, record.attrs)

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"backend": "memory", "secrets": len(self._data)}

    def close(self) -> None:
        """Nothing to release."""
