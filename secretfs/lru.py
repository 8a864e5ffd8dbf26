"""BoundedLRU: a map that keeps at most a fixed number of entries, least recently used out first.

The one bounded map of the project: the value cache's records and listing hints (`cache`) and the
file layout's render memo (`layouts`).

Thread safety: none of its own. Each method is a few `OrderedDict` operations, each atomic under the
GIL, and a race between them (an entry popped or evicted by another thread in between) is tolerated:
unlocked concurrent use never raises or corrupts the map, but the bound may be passed for a moment
and the order is approximate. That suffices for a memo (the render memo is used so). A caller that
needs consistency across calls holds its own lock around them (the value cache does).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """At most `max_entries` entries; storing one more drops the least recently used.

    Values are never None: None is what `get`, `peek` and `pop` answer for an absent key.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value for key (None if absent), which becomes the most recently used."""
        value = self._data.get(key)
        if value is not None:
            with contextlib.suppress(KeyError):  # popped by another thread meanwhile
                self._data.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value for key (None if absent), leaving the order as it is."""
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        """Store value for key as the most recently used, dropping the least recently used over the bound."""
        self._data[key] = value
        with contextlib.suppress(KeyError):
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            try:
                self._data.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                break

    def pop(self, key: K) -> V | None:
        """Remove key; its value, or None if it was absent."""
        return self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
