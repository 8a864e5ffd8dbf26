"""What mode and owner a secret's files show: the precedence, and owner names <-> ids on this host.

A secret's own mode and owner are stored as a mode and user and group *names*
(secretfs.stores.base.FileAttrs), so they mean the same on every host and in every container. Here
they become what `stat` shows, in this order (docs/design.md, "Per-secret modes and owners"):

1. a policy override for the secret (`View.attr_override`), field by field;
2. the secret's stored attrs; a name this host does not know falls back to the mount's owner;
3. the mount's defaults (`--file-mode`, `--uid`, `--gid`).

The other way, `chown` gives ids, stored as the names this host has for them; an id with no name
here is stored as its decimal text, which later resolves to that same id on any host.
"""

from __future__ import annotations

import grp
import pwd
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from secretfs.stores.base import FileAttrs

NAME_TTL = 30.0  # seconds a name <-> id answer is reused (the user database may change while mounted)

Override = Callable[[str], tuple[int | None, int | None, int | None]]  # secret -> (mode, uid, gid)


class Perms(NamedTuple):
    """What stat shows of a file besides its type: permission bits, uid, gid."""

    mode: int
    uid: int
    gid: int


class _Ttl:
    """A small map of lookups, each answer reused for NAME_TTL seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[object, tuple[float, object]] = {}

    def get(self, key: object, compute: Callable[[], object]) -> object:
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None and now - hit[0] < NAME_TTL:
            return hit[1]
        value = compute()
        with self._lock:
            if len(self._answers) > 4096:
                self._answers.clear()
            self._answers[key] = (now, value)
        return value


_lookups = _Ttl()


def _uid_of(owner: str) -> int | None:
    try:
        return pwd.getpwnam(owner).pw_uid
    except (KeyError, UnicodeEncodeError, ValueError):
        return int(owner) if owner.isdecimal() and owner.isascii() else None


def _gid_of(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return int(group) if group.isdecimal() and group.isascii() else None


def uid_for(owner: str | None, default: int) -> int:
    """The uid of a stored owner name on this host (decimal text: that uid); default if unknown."""
    if owner is None:
        return default
    found = _lookups.get(("u", owner), lambda: _uid_of(owner))
    return found if isinstance(found, int) else default


def gid_for(group: str | None, default: int) -> int:
    """The gid of a stored group name on this host (decimal text: that gid); default if unknown."""
    if group is None:
        return default
    found = _lookups.get(("g", group), lambda: _gid_of(group))
    return found if isinstance(found, int) else default


def user_name(uid: int) -> str:
    """The name to store for a uid: its user name here, else the uid as decimal text."""

    def name() -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            return str(uid)

    return str(_lookups.get(("uid", uid), name))


def group_name(gid: int) -> str:
    """The name to store for a gid: its group name here, else the gid as decimal text."""

    def name() -> str:
        try:
            return grp.getgrgid(gid).gr_name
        except (KeyError, OverflowError):
            return str(gid)

    return str(_lookups.get(("gid", gid), name))


def shown(defaults: Perms, attrs: FileAttrs | None, override: tuple[int | None, int | None, int | None]) -> Perms:
    """What a secret's files show: override, then stored attrs, then the mount's defaults."""
    mode, uid, gid = defaults
    if attrs is not None:
        mode = attrs.mode if attrs.mode is not None else mode
        uid = uid_for(attrs.owner, uid)
        gid = gid_for(attrs.group, gid)
    forced_mode, forced_uid, forced_gid = override
    return Perms(
        mode if forced_mode is None else forced_mode,
        uid if forced_uid is None else forced_uid,
        gid if forced_gid is None else forced_gid,
    )
