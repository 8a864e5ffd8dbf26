"""A memory store with bulk reads that counts its backend calls and can be taken down."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from secretfs.errors import BackendUnavailable, NotFound
from secretfs.stores.base import Capabilities, SecretRecord
from secretfs.stores.memory import MemoryStore


class CountingStore(MemoryStore):
    """A memory store with read_many, counting backend calls."""

    capabilities = Capabilities(bulk_read=True, atomic_batch=True, file_attrs=True)

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.bulk: list[list[str]] = []
        self.down = False

    def read(self, name: str) -> SecretRecord:
        if self.down:
            raise BackendUnavailable("down")
        self.reads.append(name)
        return super().read(name)

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        if self.down:
            raise BackendUnavailable("down")
        self.bulk.append(list(names))
        out = {}
        for name in names:
            with contextlib.suppress(NotFound):
                out[name] = super().read(name)
        return out
