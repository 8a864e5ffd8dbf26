"""The policy and the audit log at the adapter: who may open or change which secret, and the record of it.

`Guard` decides (secretfs.policy against the caller's identity, secretfs.callers) and records
(secretfs.audit); `GuardedFS` is the adapter (secretfs.fuse_ops.SecretFS) with the guard in front of
every open, create, truncate by path, chmod/chown, unlink and rename, and behind every commit. The
announcer's own requests pass unchecked and unrecorded (they change nothing). Records name secrets
and callers, never a value.
"""

from __future__ import annotations

import errno
import functools
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from secretfs import errors
from secretfs.audit import AuditLog
from secretfs.callers import Identities, Identity
from secretfs.fuse_ops import SecretFS
from secretfs.fusebind import Entry, FuseError, SetAttr, caller
from secretfs.nodes import Node, join
from secretfs.policy import Policy, Readers


def _result(exc: BaseException) -> str:
    code = exc.errno if isinstance(exc, FuseError) else errors.errno_for(exc) if isinstance(exc, Exception) else 0
    return "error " + (errno.errorcode.get(code, str(code)) if code else "EIO")


class Guard:
    """One mount's policy, caller identities, audit log and counts."""

    def __init__(self, policy: Policy | None, audit: AuditLog | None, *, prefix: str = "") -> None:
        self.policy = policy
        self.audit = audit
        self.prefix = prefix  # a subtree mount's names are relative: rules and records use full names
        self.identities = Identities()
        self.opens_allowed = 0
        self.opens_denied = 0
        self.denied = 0
        self._count_lock = threading.Lock()

    @property
    def sees_opens(self) -> bool:
        """Whether every open must reach the daemon (a rule names readers, or opens are recorded)."""
        return self.audit is not None or (self.policy is not None and self.policy.restricts)

    @property
    def hide_denied(self) -> bool:
        return self.policy is not None and self.policy.hide_denied

    def full(self, secret: str) -> str:
        return self.prefix + secret

    def readers(self, secrets: tuple[str, ...]) -> list[Readers]:
        """The readers conditions of the rules of these (relative) names."""
        if self.policy is None:
            return []
        return [r for r in (self.policy.readers_for(self.full(s)) for s in secrets) if r is not None]

    def who(self, readers: list[Readers] | None = None) -> Identity:
        """The caller: from the request alone when neither the audit log nor these readers need /proc."""
        request = caller()
        if self.audit is None and readers is not None and not any(r.needs_process for r in readers):
            return Identity(request.uid, request.gid, request.pid, groups=frozenset({request.gid}))
        return self.identities.of(request)

    def check(self, op: str, secret: str, also: tuple[str, ...] = (), *, to: str | None = None) -> Identity:
        """The caller, if allowed to do op on secret (and the names in `also`); else audited and EACCES."""
        readers = self.readers((secret, *also))
        who = self.who(readers)
        if not all(r.allows(who) for r in readers):
            with self._count_lock:
                self.denied += 1
                if op in ("open", "create"):
                    self.opens_denied += 1
            self.record(op, secret, who, "denied", to=to)
            raise FuseError(errno.EACCES)
        return who

    def record(self, op: str, secret: str, who: Identity, result: str, *, to: str | None = None) -> None:
        """One audit line (when a log is configured); counts allowed opens. The line is made by the
        log's writer thread: the request only queues what it holds."""
        if result == "allowed" and op in ("open", "create"):
            with self._count_lock:
                self.opens_allowed += 1
        if self.audit is not None:
            self.audit.record(functools.partial(self._entry, time.time(), op, secret, who, result, to))

    def _entry(self, when: float, op: str, secret: str, who: Identity, result: str, to: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "secret": self.full(secret),
            "op": op,
            "result": result,
            "pid": who.pid if who.pid is not None else who.tid,
            "exe": who.exe,
            "uid": who.uid,
            "gid": who.gid,
        }
        if who.unit is not None:
            entry["unit"] = who.unit
        if who.cgroup is not None:
            entry["cgroup"] = who.cgroup
        if to is not None:
            entry["to"] = self.full(to)
        return entry

    def close(self) -> None:
        """Write what the audit log holds, and close it."""
        if self.audit is not None:
            self.audit.stop()

    def status(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "policy": self.policy.source if self.policy is not None else None,
            "opens_allowed": self.opens_allowed,
            "opens_denied": self.opens_denied,
            "denied": self.denied,
        }
        if self.audit is not None:
            state.update(self.audit.status())
        return state


class GuardedFS(SecretFS):
    """The adapter with a guard: checks before, records after."""

    guard: Guard

    def __init__(self, coherence: Any, guard: Guard) -> None:
        super().__init__(coherence)
        self.guard = guard
        self.status_parts["audit"] = guard.status
        self._writers: dict[int, Identity] = {}  # write handle -> who opened it (the writer of its commits)

    @property
    def kernel_only_reads(self) -> bool:
        return super().kernel_only_reads and not self.guard.sees_opens

    def destroy(self) -> None:
        try:
            super().destroy()
        finally:
            self.guard.close()  # the session ended: write what the audit log holds

    def _names(self, path: str) -> tuple[str, tuple[str, ...]]:
        """The secret a path shows, and every name a rule may cover for it (the path itself too)."""
        try:
            secret = self.view.secret_of(path)
        except errors.SecretfsError:
            secret = path
        return secret, (secret,) if secret == path else (secret, path)

    def _hidden(self, path: str) -> bool:
        """Whether hide_denied hides path from this caller."""
        readers = self.guard.readers(self._names(path)[1])
        if not readers:
            return False
        who = self.guard.who(readers)
        return not all(r.allows(who) for r in readers)

    # ----- names -----------------------------------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> Entry:
        if self._announcing() or not self.guard.hide_denied:
            return super().lookup(parent, name)
        path = self._path(parent, name)
        readers = self.guard.readers(self._names(path)[1])
        if not readers:
            return super().lookup(parent, name)
        who = self.guard.who(readers)
        if not all(r.allows(who) for r in readers):
            raise errors.NotFound(path)
        entry = super().lookup(parent, name)
        entry.entry_timeout = 0.0  # the kernel's entry is shared by all callers: ask at every walk
        return entry

    def readdir(self, ino: int) -> list[tuple[str, int, int]]:
        entries = super().readdir(ino)
        if not self.guard.hide_denied or self._announcing():
            return entries
        directory = self._dir(ino)
        return [e for e in entries if e[0] in (".", "..") or not self._hidden(join(directory, e[0]))]

    # ----- opens -----------------------------------------------------------------------------------------

    def open(self, ino: int, fi: Any) -> None:
        node = self.nodes.get(ino)
        if self._announcing() or self.kernel_only_reads or node.is_dir or node.name is None:
            super().open(ino, fi)
            return
        secret, names = self._names(node.name)
        who = self.guard.check("open", secret, names)
        self._audited("open", secret, who, lambda: super(GuardedFS, self).open(ino, fi))
        if fi.fh:
            self._writers[fi.fh] = who

    def create(self, parent: int, name: str, mode: int, fi: Any) -> Entry:
        if self._announcing():
            return super().create(parent, name, mode, fi)
        secret, names = self._names(self._path(parent, name))
        who = self.guard.check("create", secret, names)
        entry: Entry = self._audited(
            "create", secret, who, lambda: super(GuardedFS, self).create(parent, name, mode, fi)
        )
        if fi.fh:
            self._writers[fi.fh] = who
        return entry

    def _audited(self, op: str, secret: str, who: Identity, call: Any, *, to: str | None = None) -> Any:
        """Run call (an allowed operation) and record how it went: allowed, or the error it raised."""
        try:
            result = call()
        except Exception as exc:
            self.guard.record(op, secret, who, _result(exc), to=to)
            raise
        self.guard.record(op, secret, who, "allowed", to=to)
        return result

    # ----- commits ---------------------------------------------------------------------------------------

    def _committing(self, node: Node, fh: int | None, call: Any) -> Any:
        """Run call; record a commit it made (op write), or the error of one it failed."""
        before, dirty, name = node.commits, node.dirty, node.name
        try:
            result = call()
        except Exception as exc:
            if dirty and name is not None:
                self._record_write(name, fh, _result(exc))
            raise
        if node.commits != before and node.name is not None:
            self._record_write(node.name, fh, "allowed")
        return result

    def _record_write(self, path: str, fh: int | None, result: str) -> None:
        who = self._writers.get(fh or 0)
        if who is None:
            who = self.guard.who()
        self.guard.record("write", self._names(path)[0], who, result)

    def flush(self, ino: int, fh: int) -> None:
        if self.kernel_only_reads:
            super().flush(ino, fh)
            return
        self._committing(self.nodes.get(ino), fh, lambda: super(GuardedFS, self).flush(ino, fh))

    def fsync(self, ino: int, fh: int) -> None:
        self._committing(self.nodes.get(ino), fh, lambda: super(GuardedFS, self).fsync(ino, fh))

    def release(self, ino: int, fh: int) -> None:
        if not fh:  # a read-only handle: nothing to commit
            super().release(ino, fh)
            return
        try:
            self._committing(self.nodes.get(ino), fh, lambda: super(GuardedFS, self).release(ino, fh))
        finally:
            self._writers.pop(fh, None)

    def setattr(self, ino: int, change: SetAttr, fh: int | None) -> tuple[dict[str, int], float]:
        node = self.nodes.get(ino)
        if self._announcing() or node.is_dir or node.name is None:
            return super().setattr(ino, change, fh)
        secret, names = self._names(node.name)
        owner = change.mode is not None or change.uid is not None or change.gid is not None

        def change_attrs() -> tuple[dict[str, int], float]:
            return self._committing(node, fh, lambda: super(GuardedFS, self).setattr(ino, change, fh))  # type: ignore[no-any-return]

        if not owner:
            if change.size is not None and fh is None:  # truncate(2) by path: checked like an open
                self.guard.check("write", secret, names)
            return change_attrs()
        who = self.guard.check("setattr", secret, names)
        return self._audited("setattr", secret, who, change_attrs)  # type: ignore[no-any-return]

    # ----- namespace -------------------------------------------------------------------------------------

    def unlink(self, parent: int, name: str) -> None:
        if self._announcing():
            super().unlink(parent, name)
            return
        secret, names = self._names(self._path(parent, name))
        who = self.guard.check("unlink", secret, names)
        self._audited("unlink", secret, who, lambda: super(GuardedFS, self).unlink(parent, name))

    def rename(self, parent: int, name: str, new_parent: int, new_name: str, flags: int) -> None:
        old, new = self._names(self._path(parent, name)), self._names(self._path(new_parent, new_name))
        who = self.guard.check("rename", old[0], old[1] + new[1], to=new[0])

        def rename() -> None:
            super(GuardedFS, self).rename(parent, name, new_parent, new_name, flags)

        self._audited("rename", old[0], who, rename, to=new[0])


def guard_for(policy: Policy | None, audit_log: Sequence[str], *, max_bytes: int = 0, prefix: str = "") -> Guard | None:
    """The guard of a mount with a policy or an audit log (its writer started), else None."""
    if policy is None and not audit_log:
        return None
    audit = AuditLog(audit_log, max_bytes=max_bytes) if audit_log else None
    if audit is not None:
        audit.start()
    return Guard(policy, audit, prefix=prefix)
