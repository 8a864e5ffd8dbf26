"""Stores: the backends that hold secret values, behind one Store protocol.

`OPENERS` is the registry: the mode in force (`ARCHESTRA_SECRETS_MANAGER`) names the function that
opens its store. A new store is one module (a Store with an opener `(settings, *, read_only)`), one
line here, one settings block in `config`, and one contract test class (tests/contract.py).
Openers are imported on first use, so a mode loads only its own backend's libraries.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from secretfs.config import Settings
from secretfs.errors import ConfigError
from secretfs.stores.base import Capabilities, DirListing, SecretMeta, SecretRecord, Store

__all__ = ["OPENERS", "Capabilities", "DirListing", "Opener", "SecretMeta", "SecretRecord", "Store", "open_store"]


class Opener(Protocol):
    """Opens one kind of store from the settings; read_only is already decided by open_store."""

    def __call__(self, settings: Settings, *, read_only: bool) -> Store: ...


def lazy(module: str, function: str) -> Opener:
    """The opener `function` of `module`, imported when a store is first opened."""

    def open_lazily(settings: Settings, *, read_only: bool) -> Store:
        opener: Opener = getattr(importlib.import_module(module), function)
        return opener(settings, read_only=read_only)

    return open_lazily


OPENERS: dict[str, Opener] = {
    "DB": lazy("secretfs.stores.sql_setup", "open_sql_store"),
    "VAULT": lazy("secretfs.stores.vault", "open_vault_store"),
    "READONLY_VAULT": lazy("secretfs.stores.vault", "open_vault_store"),
}


def open_store(settings: Settings, *, read_only: bool = False) -> Store:
    """Open the store for the mode in force (read-only for READONLY_VAULT or when asked)."""
    opener = OPENERS.get(settings.mode)
    if opener is None:
        raise ConfigError(f"no store for mode {settings.mode!r}; known: {', '.join(OPENERS)}")
    return opener(settings, read_only=read_only or settings.read_only_mode)
