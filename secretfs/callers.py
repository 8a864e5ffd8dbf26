"""Who a request comes from: the caller's process, executable, groups and cgroup, read from /proc.

The request gives the caller's uid, gid and thread id (secretfs.fusebind.caller). The rest is read
from /proc/TID (a thread id names its process's files there too): `status` (Tgid, supplementary
Groups), `exe` (readlink), `cgroup` (the v2 line `0::/path`) and `stat` (the start time, read before
and after, so a process that exits or is replaced during the check gives no process fields at all,
and every rule that needs them denies). Identities are cached per (thread id, start time) for
CACHE_TTL seconds; a hit still reads the `exe` link (one readlink) and is dropped when it changed
(an exec). SHA-256 digests of executables are cached per (device, inode, size, mtime).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

from secretfs.fusebind import Caller

CACHE_TTL = 1.0
CACHE_MAX = 4096


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def start_time(tid: int) -> int | None:
    """The start time (clock ticks since boot) of a thread: with the id, what names it uniquely."""
    try:
        text = _read(f"/proc/{tid}/stat")
        return int(text.rpartition(")")[2].split()[19])  # field 22; the name in () may hold anything
    except (OSError, ValueError, IndexError):
        return None


def unit_of(cgroup: str | None) -> str | None:
    """The systemd unit of a cgroup path: its last component ending in .service or .scope."""
    if cgroup is None:
        return None
    for part in reversed(cgroup.split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


class ExeHashes:
    """SHA-256 of the file a process runs (through /proc/PID/exe, so a replaced path does not matter)."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()

    def of(self, tid: int, started: int) -> str | None:
        try:
            fd = os.open(f"/proc/{tid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if start_time(tid) != started:
                return None  # exited, or another process: not the one checked
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                known = self._known.get(key)
            if known is not None:
                return known
            digest = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
            hexdigest = digest.hexdigest()
            with self._lock:
                if len(self._known) >= CACHE_MAX:
                    self._known.clear()
                self._known[key] = hexdigest
            return hexdigest
        except OSError:
            return None
        finally:
            os.close(fd)


@dataclass(slots=True)
class Identity:
    """The caller of one request. Process fields are None when /proc could not tell."""

    uid: int
    gid: int
    tid: int
    pid: int | None = None  # the process (thread group)
    started: int | None = None
    groups: frozenset[int] = frozenset()  # the gid and the supplementary groups
    exe: str | None = None
    cgroup: str | None = None
    hashes: ExeHashes | None = field(default=None, compare=False, repr=False)

    @property
    def unit(self) -> str | None:
        return unit_of(self.cgroup)

    def exe_sha256(self) -> str | None:
        if self.hashes is None or self.started is None or self.exe is None:
            return None
        return self.hashes.of(self.tid, self.started)


class Identities:
    """Caller identities of one mount, cached briefly."""

    def __init__(self, ttl: float = CACHE_TTL) -> None:
        self.ttl = ttl
        self.hashes = ExeHashes()
        self._cache: dict[int, tuple[float, Identity]] = {}
        self._lock = threading.Lock()

    def of(self, who: Caller) -> Identity:
        """The identity of a request's caller."""
        if who.pid <= 0:
            return Identity(who.uid, who.gid, who.pid, groups=frozenset({who.gid}))
        now = time.monotonic()
        cached = self._cache.get(who.pid)
        if cached is not None and cached[0] > now:
            identity = cached[1]
            try:
                exe = os.readlink(f"/proc/{who.pid}/exe")
            except OSError:
                exe = None
            if exe == identity.exe and exe is not None:
                if (identity.uid, identity.gid) != (who.uid, who.gid):
                    identity = dataclasses.replace(
                        identity, uid=who.uid, gid=who.gid, groups=identity.groups - {identity.gid} | {who.gid}
                    )
                return identity
        identity = self._resolve(who)
        if identity.started is not None:
            with self._lock:
                if len(self._cache) >= CACHE_MAX:
                    self._cache = {tid: entry for tid, entry in self._cache.items() if entry[0] > now}
                    if len(self._cache) >= CACHE_MAX:
                        self._cache.clear()
                self._cache[who.pid] = (now + self.ttl, identity)
        return identity

    def _resolve(self, who: Caller) -> Identity:
        tid = who.pid
        bare = Identity(who.uid, who.gid, tid, groups=frozenset({who.gid}))
        started = start_time(tid)
        if started is None:
            return bare
        try:
            pid, groups = tid, {who.gid}
            for line in _read(f"/proc/{tid}/status").splitlines():
                if line.startswith("Tgid:"):
                    pid = int(line.split()[1])
                elif line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
            exe = os.readlink(f"/proc/{tid}/exe")
            cgroup = None
            for line in _read(f"/proc/{tid}/cgroup").splitlines():
                if line.startswith("0::"):
                    cgroup = line[3:]
        except (OSError, ValueError):
            return bare
        if start_time(tid) != started:
            return bare  # exited (or replaced) while being read: nothing read can be trusted
        return Identity(who.uid, who.gid, tid, pid, started, frozenset(groups), exe, cgroup, self.hashes)
