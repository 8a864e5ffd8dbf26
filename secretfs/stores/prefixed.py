"""Subtree mounts: a Store that shows only the secrets under one prefix, named relative to it.

`PrefixedStore(inner, "tls/")` maps every name `n` it is given to `tls/n` in the inner store and
every name the inner store reports back to `n`; names outside the prefix are never reported. It is
the one place that keeps a prefixed mount inside its subtree: a relative name with an empty, `.` or
`..` segment (which a backend joining paths, such as Vault's HTTP API, could resolve outside) is
refused before it reaches the inner store, so no name given to the wrapper reaches a secret outside
the prefix. It declares the inner store's capabilities and forwards each optional protocol
(secretfs.stores.base) that the inner store declares, translating names both ways.

`relative_names` and `full_names` translate the names of the control socket, which carries full
names between the processes of a host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from secretfs import render
from secretfs.control import ALL
from secretfs.errors import ConfigError, InvalidName, NameTooLong, NotFound, ReadOnly
from secretfs.stores.base import (
    Capabilities,
    DirListing,
    FileAttrs,
    FileAttrStore,
    HealthState,
    SecretMeta,
    SecretRecord,
    Store,
    bulk_reader,
    file_attr_store,
    health_reporter,
    watcher,
)


def normalize_prefix(prefix: str) -> str:
    """`tls`, `tls/` and `/tls/` as `tls/`; '' (or '/') as '' (no prefix). ConfigError for a prefix
    that is not a directory a secret name can have: an empty, `.` or `..` segment, a NUL, a segment
    over 255 bytes, text that is not UTF-8, or no room left for a name under it."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"--prefix {prefix!a} is not valid UTF-8") from None
    bad = [s for s in stripped.split("/") if not render.segment_ok(s)]
    if bad:
        what = repr(bad[0]) if bad[0] else "an empty segment"
        raise ConfigError(
            f"--prefix {prefix!r} is not a secret directory: {what} cannot be a path segment "
            "(no empty, '.' or '..' segments, no NUL, at most 255 bytes each)"
        )
    if len(stripped) + 2 > render.MAX_NAME_CHARS:
        raise ConfigError(f"--prefix {prefix!r} leaves no room for names (at most {render.MAX_NAME_CHARS} characters)")
    return stripped + "/"


def _segments_ok(name: str) -> bool:
    """Whether a relative name names something under the prefix: no empty, `.` or `..` segment."""
    return all(segment not in ("", ".", "..") for segment in name.split("/"))


def relative_names(prefix: str, names: Iterable[str]) -> list[str]:
    """Full names as a prefixed mount knows them: those outside the prefix dropped, the prefix
    stripped; `ALL` passes through. An empty prefix changes nothing."""
    names, prefix = list(names), normalize_prefix(prefix)
    if not prefix:
        return names
    return [n if n == ALL else n[len(prefix) :] for n in names if n == ALL or (n.startswith(prefix) and n != prefix)]


def full_names(prefix: str, names: Iterable[str]) -> list[str]:
    """A prefixed mount's names as every other process knows them; `ALL` passes through."""
    prefix = normalize_prefix(prefix)
    return [n if n == ALL else prefix + n for n in names]


def open_prefixed(store: Store, prefix: str) -> Store:
    """The store as a mount with `--prefix` sees it: wrapped when the prefix is not empty."""
    normalized = normalize_prefix(prefix)
    return PrefixedStore(store, normalized) if normalized else store


class PrefixedStore:
    """The secrets of `inner` under `prefix` (normalized, ending in '/'), named relative to it.

    Construction picks the subclass that has exactly the optional protocols `inner` declares, so
    `isinstance(store, BulkReader)` keeps matching `capabilities.bulk_read` (the store contract).
    """

    def __new__(cls, inner: Store, prefix: str) -> PrefixedStore:
        chosen = _class_for(inner.capabilities) if cls is PrefixedStore else cls
        return super().__new__(chosen)

    def __init__(self, inner: Store, prefix: str) -> None:
        normalized = normalize_prefix(prefix)
        if not normalized:
            raise ConfigError("a PrefixedStore needs a prefix")
        self.inner = inner
        self.prefix = normalized
        self.read_only = inner.read_only
        self.capabilities: Capabilities = inner.capabilities
        self._room = render.MAX_NAME_CHARS - len(normalized)

    # ----- names ------------------------------------------------------------------------------------

    def _full(self, name: str) -> str | None:
        """The inner name of a relative name, or None when it names nothing under the prefix."""
        return self.prefix + name if _segments_ok(name) else None

    def _existing(self, name: str) -> str:
        """The inner name of a secret to read or change; NotFound for a name that cannot be one."""
        full = self._full(name)
        if full is None:
            raise NotFound(f"no secret named {name!r}")
        return full

    def _new(self, name: str) -> str:
        """The inner name of a secret to create; InvalidName or NameTooLong when it cannot be one."""
        full = self._full(name)
        if full is None:
            raise InvalidName(f"{name!r} is not a valid secret name")
        if len(name) > self._room:
            raise NameTooLong(f"secret names under {self.prefix!r} are at most {self._room} characters")
        return full

    def _relative(self, name: str) -> str | None:
        """An inner name relative to the prefix, or None when it lies outside."""
        if name.startswith(self.prefix) and len(name) > len(self.prefix):
            return name[len(self.prefix) :]
        return None

    def _require_writable(self) -> None:
        if self.inner.read_only:  # ReadOnly wins over a name refused here, as in every store
            raise ReadOnly("the store is read-only")

    def _record(self, record: SecretRecord, name: str) -> SecretRecord:
        return dataclasses.replace(record, name=name)  # every other field (value, times, attrs) as it is

    # ----- the Store protocol -----------------------------------------------------------------------

    def list(self, prefix: str = "") -> list[SecretMeta]:
        head, sep, _ = prefix.rpartition("/")
        if sep and not _segments_ok(head):
            return []
        metas = []
        for meta in self.inner.list(self.prefix + prefix):
            relative = self._relative(meta.name)
            if relative is not None and relative.startswith(prefix):
                metas.append(dataclasses.replace(meta, name=relative))
        return metas

    def list_dir(self, directory: str) -> DirListing:
        if not directory:
            return self.inner.list_dir(self.prefix[:-1])
        if not _segments_ok(directory):
            return DirListing()
        return self.inner.list_dir(self.prefix + directory)

    def read(self, name: str) -> SecretRecord:
        return self._record(self.inner.read(self._existing(name)), name)

    def stat(self, name: str) -> SecretMeta:
        return dataclasses.replace(self.inner.stat(self._existing(name)), name=name)

    def write(self, name: str, value: Any) -> None:
        self._require_writable()
        self.inner.write(self._new(name), value)

    def write_many(self, items: Mapping[str, Any]) -> None:
        self._require_writable()
        self.inner.write_many({self._new(name): value for name, value in items.items()})

    def delete(self, name: str) -> None:
        self._require_writable()
        self.inner.delete(self._existing(name))

    def rename(self, old: str, new: str) -> None:
        self._require_writable()
        self.inner.rename(self._existing(old), self._new(new))

    def info(self) -> dict[str, Any]:
        return {**self.inner.info(), "prefix": self.prefix}

    def close(self) -> None:
        self.inner.close()


class _BulkReading(PrefixedStore):
    """BulkReader, where the inner store declares it."""

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        reader = bulk_reader(self.inner)
        assert reader is not None  # this class is chosen only for such an inner store
        wanted = {full: name for name in names if (full := self._full(name)) is not None}
        found = reader.read_many(list(wanted)) if wanted else {}
        return {wanted[full]: self._record(record, wanted[full]) for full, record in found.items() if full in wanted}


class _Watching(PrefixedStore):
    """Watcher, where the inner store declares it: names outside the prefix dropped."""

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        watching = watcher(self.inner)
        assert watching is not None  # this class is chosen only for such an inner store

        def translated(names: Sequence[str] | None) -> None:
            if names is None:
                on_change(None)
                return
            relative = [r for n in names if (r := self._relative(n)) is not None]
            if relative or not names:
                on_change(relative)

        return watching.watch(translated)


class _HealthReporting(PrefixedStore):
    """HealthReporter, where the inner store declares it."""

    @property
    def health(self) -> HealthState:
        reporter = health_reporter(self.inner)
        assert reporter is not None  # this class is chosen only for such an inner store
        return reporter.health


class _FileAttrStoring(PrefixedStore):
    """FileAttrStore, where the inner store declares it (the attrs of records come with them)."""

    def set_attrs(self, name: str, attrs: FileAttrs) -> None:
        self._require_writable()
        self._attr_store().set_attrs(self._existing(name), attrs)

    def write_with_attrs(self, items: Mapping[str, Any], attrs: FileAttrs) -> None:
        self._require_writable()
        self._attr_store().write_with_attrs({self._new(name): value for name, value in items.items()}, attrs)

    def _attr_store(self) -> FileAttrStore:
        store = file_attr_store(self.inner)
        assert store is not None  # this class is chosen only for such an inner store
        return store


_MIXINS: tuple[tuple[str, type[PrefixedStore]], ...] = (
    ("bulk_read", _BulkReading),
    ("watch", _Watching),
    ("health", _HealthReporting),
    ("file_attrs", _FileAttrStoring),
)


@functools.cache
def _class_for(capabilities: Capabilities) -> type[PrefixedStore]:
    """The PrefixedStore subclass with the optional protocols these capabilities declare."""
    bases = tuple(mixin for flag, mixin in _MIXINS if getattr(capabilities, flag, False))
    if not bases:
        return PrefixedStore
    return cast(type[PrefixedStore], type("PrefixedStore", bases, {}))
