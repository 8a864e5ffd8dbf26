"""The freshness policy: the one place that holds the freshness bound, the outage bound and the cache
mode, with their defaults, and derives every timeout from them (docs/design.md, "Coherence")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CacheMode = Literal["direct", "kernel"]

KERNEL_TIMEOUT = 3600.0  # attributes of a node never change behind the kernel's back


@dataclass(frozen=True)
class FreshnessPolicy:
    """The freshness bound and what follows from it, defined once."""

    cache_mode: CacheMode = "kernel"
    ttl: float = 5.0  # no path leads to a value older than this
    max_stale: float = 300.0  # in an outage, serve a value read within this long, then EIO

    @property
    def cache_ttl(self) -> float:
        return self.ttl / 2

    @property
    def entry_timeout(self) -> float:
        return self.ttl / 2

    @property
    def attr_timeout(self) -> float:
        return KERNEL_TIMEOUT


DEFAULTS = FreshnessPolicy()
