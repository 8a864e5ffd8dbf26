"""Putting one mount together: store -> value cache -> view -> FUSE operations, with freshness.

This is the one place that decides, from the mount options, how the parts are wired: the cache
wraps the store, the view reports what it serves to the freshness tracker, and in `kernel` mode
the tracker invalidates the kernel's cache through the adapter.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from secretfs.cache import CachingStore
from secretfs.config import Settings
from secretfs.freshness import Freshness
from secretfs.fuse_ops import CacheMode, SecretFS
from secretfs.stores.base import Store
from secretfs.view import View, ViewOptions


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database file in DB mode (watched for changes by other processes), else None."""
    if settings.mode != "DB":
        return None
    url = sa.engine.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).absolute()


def build_operations(
    settings: Settings,
    store: Store,
    view_options: ViewOptions,
    *,
    cache_mode: CacheMode,
    cache_ttl: float,
    max_stale: float,
) -> SecretFS:
    """The FUSE operations for one mount over an opened store."""
    cache = CachingStore(store, ttl=cache_ttl, max_stale=max_stale)
    freshness = Freshness(cache, on_change=None, interval=cache_ttl or 1.0, watch_file=sqlite_file(settings))
    kernel = cache_mode == "kernel"
    view = View(
        cache,
        view_options,
        reader=freshness.read if kernel else None,
        page_reader=freshness.read_page if kernel else None,
    )
    operations = SecretFS(view, cache_mode=cache_mode, freshness=freshness)
    if kernel:
        freshness.on_change = operations.on_change
    return operations
