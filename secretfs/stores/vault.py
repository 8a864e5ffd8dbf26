"""The Vault store: secrets in Vault/OpenBao KV (v1 or v2) at raw paths `{prefix}/{name}` (README "Vault modes").

KV v2: read `GET {prefix}/{name}` -> data.data; write `POST {prefix}/{name}` {"data": value}; delete
every version with `DELETE {metadata}/{name}`; list `LIST {metadata}/{dir}/`. KV v1: everything at
`{prefix}/...`. A value must be a JSON object (Vault KV data is one). KV v1 keeps no times, so its
times are those this process saw (its own writes, else the moment the store was opened).

Per-secret modes and owners (KV v2 only): the secret's `custom_metadata` keys `secretfs_mode` (octal
text), `secretfs_owner` and `secretfs_group`, changed with a merge-patch of `{metadata}/{name}` (other
keys are left alone) and read back with the value (a KV v2 read returns the custom metadata). KV v1
keeps no metadata: that store declares no file attrs.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from secretfs.config import Settings, VaultSettings
from secretfs.errors import AccessDenied, InvalidName, NotFound, NotPermitted, ReadOnly, VaultRejected
from secretfs.stores.base import (
    NO_CAPABILITIES,
    Capabilities,
    DirListing,
    FileAttrs,
    SecretMeta,
    SecretRecord,
    attrs_from_columns,
)
from secretfs.stores.vault_auth import VaultAuth
from secretfs.stores.vault_http import api_path, call, make_adapter

log = logging.getLogger(__name__)

_FRACTION = re.compile(r"\.(\d{6})\d*")
MODE_KEY, OWNER_KEY, GROUP_KEY = "secretfs_mode", "secretfs_owner", "secretfs_group"  # in custom_metadata
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def attrs_from_metadata(custom: Any) -> FileAttrs | None:
    """A KV v2 secret's file attrs from its custom_metadata (None when it has none)."""
    if not isinstance(custom, dict):
        return None
    return attrs_from_columns(custom.get(MODE_KEY), custom.get(OWNER_KEY), custom.get(GROUP_KEY))


def metadata_patch(attrs: FileAttrs, *, replace: bool) -> dict[str, Any]:
    """The custom_metadata merge-patch for attrs: fields set are written; with `replace`, fields not
    set are removed (None), else left as they are."""
    fields = {
        MODE_KEY: None if attrs.mode is None else f"{attrs.mode:04o}",
        OWNER_KEY: attrs.owner,
        GROUP_KEY: attrs.group,
    }
    return {key: value for key, value in fields.items() if value is not None or replace}


def parse_time(text: Any) -> float:
    """Epoch seconds from Vault's RFC 3339 times (nanosecond fractions, 'Z'); 0.0 when absent."""
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(_FRACTION.sub(r".\1", text.replace("Z", "+00:00"))).astimezone(UTC).timestamp()
    except ValueError:
        return 0.0


class VaultStore:
    """Secrets as Vault KV entries under one prefix."""

    # KV has no bulk read; Vault pushes no changes; KV v2 keeps file attrs in custom metadata.
    capabilities: Capabilities = NO_CAPABILITIES

    def __init__(
        self, settings: VaultSettings, *, read_only: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`clock` (monotonic seconds) times the token's lifecycle; tests pass one they can advance."""
        self.settings = settings
        self.read_only = read_only
        self.kv_version = settings.kv_version
        self.prefix = settings.secret_path.strip("/")
        self.metadata_prefix = (settings.metadata_path or "").strip("/") if settings.kv_version == 2 else None
        self._adapter = make_adapter(settings)
        self.auth = VaultAuth(settings, self._adapter, clock=clock)
        self._opened_at = time.time()
        self._times: dict[str, tuple[float, float]] = {}  # KV v1: name -> (created, updated) seen here
        self._created: dict[str, float] = {}  # KV v2: name -> created_time, to spare a metadata read
        if settings.kv_version == 2:
            self.capabilities = Capabilities(file_attrs=True)

    # ----- requests -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One request with the current token; after a 403, log in again (K8S/AWS) and retry once."""
        token = self.auth.token()
        try:
            return call(self._adapter, method, path, token=token, what=what, json=json, headers=headers)
        except AccessDenied:
            if not self.auth.forbidden(token):
                raise
        return call(self._adapter, method, path, token=self.auth.token(), what=what, json=json, headers=headers)

    def _data_path(self, name: str) -> str:
        return api_path(self.prefix, name)

    def _meta_path(self, name: str) -> str:
        return api_path(self.metadata_prefix or self.prefix, name)

    def _require_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("the Vault store is read-only")

    # ----- listing --------------------------------------------------------------------------------

    def _keys(self, directory: str) -> list[str]:
        """The keys directly under directory ('sub/' for subdirectories); [] when there is nothing."""
        path = self._meta_path(directory) + "/"
        try:
            body = self._call("list", path, f"listing {directory or '/'!r}")
        except NotFound:
            return []
        keys = ((body or {}).get("data") or {}).get("keys") or []
        return [k for k in keys if isinstance(k, str)]

    def list_dir(self, directory: str) -> DirListing:
        files: set[str] = set()
        dirs: set[str] = set()
        for key in self._keys(directory):
            if key.endswith("/"):
                if key[:-1]:
                    dirs.add(key[:-1])
            elif key:
                files.add(key)
        return DirListing(files=sorted(files), dirs=sorted(dirs))

    def _names(self, prefix: str) -> list[str]:
        start = prefix.rpartition("/")[0]
        names: list[str] = []
        pending = [start]
        while pending:
            directory = pending.pop()
            base = f"{directory}/" if directory else ""
            for key in self._keys(directory):
                full = base + key
                if key.endswith("/"):
                    if full.startswith(prefix) or prefix.startswith(full):
                        pending.append(full[:-1])
                elif full.startswith(prefix):
                    names.append(full)
        return sorted(set(names))

    def list(self, prefix: str = "") -> list[SecretMeta]:
        metas: list[SecretMeta] = []
        for name in self._names(prefix):
            try:
                metas.append(self.stat(name))
            except NotFound:
                continue  # deleted meanwhile, or its newest KV v2 version is soft-deleted
        return metas

    # ----- reading --------------------------------------------------------------------------------

    def _v1_times(self, name: str) -> tuple[float, float]:
        return self._times.get(name, (self._opened_at, self._opened_at))

    def read(self, name: str) -> SecretRecord:
        body = self._call("get", self._data_path(name), f"reading {name!r}")
        data = (body or {}).get("data")
        if self.kv_version == 1:
            if not isinstance(data, dict):
                raise NotFound(f"no secret named {name!r}")
            created, updated = self._v1_times(name)
            return SecretRecord(name, copy.deepcopy(data), updated, created)
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise NotFound(f"no secret named {name!r}")
        meta = data.get("metadata") or {}
        updated = parse_time(meta.get("created_time"))
        if meta.get("version") == 1:
            created = updated
            self._created[name] = created
        elif name in self._created:
            created = self._created[name]
        else:
            created = self.stat(name).created_at
        return SecretRecord(name, data["data"], updated, created, attrs_from_metadata(meta.get("custom_metadata")))

    def stat(self, name: str) -> SecretMeta:
        if self.kv_version == 1:
            self.read(name)
            created, updated = self._v1_times(name)
            return SecretMeta(name, updated, created)
        body = self._call("get", self._meta_path(name), f"reading metadata of {name!r}")
        data = (body or {}).get("data") or {}
        current = data.get("current_version")
        version = (data.get("versions") or {}).get(str(current)) or {}
        if not version or version.get("deletion_time") or version.get("destroyed"):
            raise NotFound(f"no secret named {name!r}")
        created = parse_time(data.get("created_time"))
        self._created[name] = created
        return SecretMeta(name, parse_time(version.get("created_time")), created)

    # ----- writing --------------------------------------------------------------------------------

    def write_many(self, items: Mapping[str, Any]) -> None:
        """One KV write per secret, in order: Vault has no transaction across paths."""
        for name, value in items.items():
            self.write(name, value)

    def write(self, name: str, value: Any) -> None:
        self._require_writable()
        if not isinstance(value, dict):
            raise InvalidName(f"cannot store {name!r} in Vault: a Vault KV value must be a JSON object")
        if self.kv_version == 1:
            self._call("post", self._data_path(name), f"writing {name!r}", json=copy.deepcopy(value))
            now = time.time()
            created = self._times[name][0] if name in self._times else now
            self._times[name] = (created, now)
            return
        body = self._call("post", self._data_path(name), f"writing {name!r}", json={"data": value})
        written = (body or {}).get("data") or {}
        if written.get("version") == 1:
            self._created[name] = parse_time(written.get("created_time"))

    def set_attrs(self, name: str, attrs: FileAttrs) -> None:
        """KV v2: merge attrs into the secret's custom metadata; NotFound if it has none."""
        self._patch_attrs(name, attrs, replace=False)

    def _patch_attrs(self, name: str, attrs: FileAttrs, *, replace: bool) -> None:
        self._require_writable()
        if self.kv_version != 2:
            raise NotPermitted("KV v1 keeps no per-secret modes; use a policy file")
        patch = {"custom_metadata": metadata_patch(attrs, replace=replace)}
        self._call("patch", self._meta_path(name), f"setting the mode or owner of {name!r}", patch, MERGE_PATCH)

    def write_with_attrs(self, items: Mapping[str, Any], attrs: FileAttrs) -> None:
        """Each value, then its attrs (two KV requests per secret: Vault has no transactions)."""
        for name, value in items.items():
            self.write(name, value)
            if not attrs.empty:
                self.set_attrs(name, attrs)

    def delete(self, name: str) -> None:
        self._require_writable()
        if self.kv_version == 1:
            self.read(name)  # KV v1 deletes silently: NotFound must come from a read first
            self._call("delete", self._data_path(name), f"deleting {name!r}")
            self._times.pop(name, None)
            return
        self._call("get", self._meta_path(name), f"reading metadata of {name!r}")
        self._call("delete", self._meta_path(name), f"deleting every version of {name!r}")
        self._created.pop(name, None)

    def rename(self, old: str, new: str) -> None:
        """Write the value under the new name, then delete the old one (Vault has no transactions).

        The token's capabilities are checked first, so a rename it may not finish (no `delete`)
        fails before anything is written: a failed rename has no side effect.
        """
        self._require_writable()
        record = self.read(old)
        if old == new:
            return
        delete_from = self.metadata_prefix if self.kv_version == 2 and self.metadata_prefix else self.prefix
        self._require_capabilities(
            {f"{self.prefix}/{new}": ("create", "update"), f"{delete_from}/{old}": ("delete",)},
            f"renaming {old!r} to {new!r}",
        )
        self.write(new, record.value)
        if self.kv_version == 2 and (record.attrs is not None or self.read(new).attrs is not None):
            try:
                self._patch_attrs(new, record.attrs or FileAttrs(), replace=True)  # the attrs move too
            except AccessDenied:
                log.warning(
                    "%r was renamed to %r without its mode and owner: the token may not patch metadata", old, new
                )
        self.delete(old)

    def _require_capabilities(self, wanted: Mapping[str, tuple[str, ...]], what: str) -> None:
        """AccessDenied unless the token has, on each path, one of the capabilities named (any of
        them: Vault asks for `create` or `update` depending on whether the path exists)."""
        try:
            body = call(
                self._adapter,
                "post",
                api_path("sys/capabilities-self"),
                token=self.auth.token(),
                what=f"checking the token's rights for {what}",
                json={"paths": list(wanted)},
            )
        except (AccessDenied, NotFound, VaultRejected):
            return  # the token may not ask: the requests themselves will tell
        granted = {**(body or {}), **((body or {}).get("data") or {})}
        for path, needed in wanted.items():
            have = set(granted.get(path) or [])
            if "root" in have or "sudo" in have:
                continue
            if not have.intersection(needed):
                raise AccessDenied(f"Vault denied {what}: the token lacks {' or '.join(needed)} on {path}")

    # ----- status ---------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        self.auth.token()
        facts: dict[str, Any] = {
            "backend": "vault",
            "address": self.settings.addr,
            "kv_version": self.kv_version,
            "secret_path": self.prefix,
        }
        if self.metadata_prefix is not None:
            facts["metadata_path"] = self.metadata_prefix
        if self.settings.namespace:
            facts["namespace"] = self.settings.namespace
        facts.update(self.auth.info())
        facts["timeout"] = self.settings.timeout
        facts["read_only"] = self.read_only
        return facts

    def close(self) -> None:
        self.auth.close()
        self._adapter.close()


def open_vault_store(
    settings: Settings, *, read_only: bool = False, clock: Callable[[], float] = time.monotonic
) -> VaultStore:
    """Open the Vault store and get a usable token now, so a bad configuration fails at start."""
    if settings.vault is None:
        from secretfs.errors import ConfigError

        raise ConfigError(f"{settings.mode} mode needs the Vault settings")
    store = VaultStore(settings.vault, read_only=read_only, clock=clock)
    try:
        store.auth.token()
        check_kv_version(store)
    except BaseException:
        store.close()
        raise
    store.auth.start_renewer()
    return store


def check_kv_version(store: VaultStore) -> None:
    """Refuse a KV version that does not match the secrets engine the path is on (the server says
    which: sys/internal/ui/mounts). Against a KV v1 engine, v2 paths read nothing and writes store
    `{"data": ...}` wrappers; against v2, v1 paths are refused. Where the server does not say (a
    token that may not ask, an old server), nothing is checked."""
    from secretfs.errors import ConfigError, SecretfsError

    try:
        body = call(
            store._adapter,
            "get",
            api_path("sys/internal/ui/mounts", store.prefix),
            token=store.auth.token(),
            what="asking which secrets engine holds the path",
        )
    except (AccessDenied, NotFound, VaultRejected):
        return
    except SecretfsError:
        raise
    data = (body or {}).get("data") or {}
    if data.get("type") not in ("kv", "generic"):
        return
    actual = str((data.get("options") or {}).get("version") or "1")
    if actual != str(store.kv_version):
        mount = str(data.get("path") or "").strip("/") or store.prefix
        raise ConfigError(
            f"ARCHESTRA_HASHICORP_VAULT_KV_VERSION={store.kv_version}, but the secrets engine at {mount}/ "
            f"is KV version {actual}; set ARCHESTRA_HASHICORP_VAULT_KV_VERSION={actual}"
        )
