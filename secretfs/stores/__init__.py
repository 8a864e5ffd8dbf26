"""Stores: the backends that hold secret values, behind one Store protocol."""

from __future__ import annotations

from secretfs.config import Settings
from secretfs.stores.base import DirListing, SecretMeta, SecretRecord, Store

__all__ = ["DirListing", "SecretMeta", "SecretRecord", "Store", "open_store"]


def open_store(settings: Settings, *, read_only: bool = False) -> Store:
    """Open the store for the mode in force (read-only for READONLY_VAULT or when asked)."""
    if settings.mode == "DB":
        from secretfs.stores.sql_setup import open_sql_store

        return open_sql_store(settings, read_only=read_only)
    from secretfs.stores.vault import open_vault_store

    return open_vault_store(settings, read_only=read_only or settings.read_only_mode)
