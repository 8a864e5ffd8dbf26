"""The one owner of coherence between the store, the value cache and the kernel.

The kernel may cache a file node's attributes and pages for as long as it likes, because a node's
version never changes (secretfs.nodes). What can change is which node a *name* leads to, and that is
decided here, in two ways:

- On access: every lookup (including the kernel revalidating a cached entry, which it does once
  `entry_timeout` has passed) resolves the name through the value cache. Same content (and the
  same mode and owner): the same node. New content, or a new mode or owner: a new node, and the
  kernel, seeing a new inode number, drops its old entry.
  `entry_timeout` and the cache TTL are each half the freshness bound (`--cache-ttl`), so no path
  leads to a value older than the bound.
- On news: the SQLite watcher calls `poke()`; the CLI and the other mounts of the store on this
  host call `changed(names)` over the control socket (secretfs.control), and are answered once the
  kernel dropped what changed. A background pass re-reads the current file nodes from the store
  and retires those whose value changed: their name is detached and the kernel is told to drop the
  entry (fuse_lowlevel_notify_inval_entry), so the next path walk looks it up again.

Kernel notifications go through one thread of their own: the kernel handles them synchronously and
one sent from a request handler that holds the same directory could deadlock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence

from secretfs.cache import CachingStore
from secretfs.control import ALL
from secretfs.errors import BackendUnavailable, NotFound, SecretfsError
from secretfs.freshness import FreshnessPolicy
from secretfs.nodes import Node, Nodes
from secretfs.view import View

log = logging.getLogger(__name__)

FOLLOWUP_DELAY = 0.2  # a watcher event can precede the visible commit: look once more this much later
WAIT_LIMIT = 2.0  # longest a request waits for its own notifications


class Notifier:
    """A queue of kernel notifications and the one thread that sends them, in order."""

    def __init__(self, name: str = "secretfs-notifier") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, job: Callable[[], object], *, wait: bool = False) -> None:
        """Queue a notification; with `wait`, return once it (and all before it) ran, or after WAIT_LIMIT."""
        self._queue.put(job)
        if wait and self._thread is not None:
            done = threading.Event()
            self._queue.put(done.set)
            if not done.wait(WAIT_LIMIT):
                log.warning("a kernel notification took longer than %.1fs; continuing", WAIT_LIMIT)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                job()
            except Exception as exc:
                log.error("kernel notification failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._queue.put(None)


class Coherence:
    """Which node each name leads to, and telling the kernel when that changes."""

    def __init__(self, view: View, cache: CachingStore, nodes: Nodes, policy: FreshnessPolicy) -> None:
        self.view = view
        self.cache = cache
        self.nodes = nodes
        self.policy = policy
        self.notifier = Notifier()
        # Set once the session runs: (parent ino, name) -> drop that entry; ino -> drop attrs/pages.
        self.invalidate_entry: Callable[[int, str], int] | None = None
        self.invalidate_inode: Callable[..., int] | None = None
        self.notify_delete: Callable[[int, int, str], int] | None = None  # (parent, child, name)
        # Set by the daemon: news that secrets may have changed (names, or None: any), for the
        # change feed that decides which really did (secretfs.changes, secretfs.announce).
        self.news: Callable[[Sequence[str] | None], None] | None = None
        self.store_news: Callable[[Sequence[str] | None], None] | None = None  # the same, from the store's watcher
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unwatch: Callable[[], None] | None = None
        # Set by the daemon: tells the other local mounts of the store (secretfs.control).
        self.publish: Callable[[Sequence[str]], None] | None = None
        self.passes = 0

    # ----- lookups ---------------------------------------------------------------------------------

    def lookup(self, name: str) -> Node:
        """The node a lookup of name answers with (counted as looked up); NotFound if none."""
        node = self.nodes.current(name)
        if node is not None and (node.is_dir or node.busy):
            self.nodes.looked_up(node)  # a directory, or a file being written here: it owns the name
            return node
        resolved = self.view.resolve(name)
        if (
            node is not None
            and node.is_dir == resolved.is_dir
            and (node.is_dir or node.same_as(resolved.content, resolved.perms))
        ):
            self.nodes.looked_up(node)
            return node
        return self.nodes.add(
            name,
            is_dir=resolved.is_dir,
            version=resolved.content,
            mtime=resolved.mtime,
            ctime=resolved.ctime,
            perms=resolved.perms,
        )

    def verify(self, node: Node) -> bool:
        """Before a write that keeps old bytes: is node still the store's value? If not, retire it."""
        if node.busy or node.name is None:
            return True
        snapshot = [(node, node.commits)]
        self._refetch([self.view.secret_of(node.name)])
        return not self._retire_changed(snapshot)

    # ----- retiring nodes ----------------------------------------------------------------------------

    def retire(self, node: Node, *, wait: bool = False, gone: bool = False) -> None:
        """The value behind node's name changed (`gone`: the secret was removed): the name no
        longer leads to it.

        A replaced node stays linked (a watch on the file keeps hearing of later values); a removed
        one is deleted in the kernel too (its link count drops to 0 there at once).
        """
        name = node.name
        if name is None or self.nodes.current(name) is not node:
            return
        self.nodes.detach(name, replaced=not gone)
        send = self.invalidate_inode
        if send is not None:  # its attributes may have changed (its pages not: its bytes never change)
            self.notifier.submit(lambda: send(node.ino, pages=False))
        delete = self.notify_delete
        parent = self.nodes.current(name.rpartition("/")[0])
        if gone and delete is not None and parent is not None:
            base = name.rpartition("/")[2]
            self.notifier.submit(lambda: delete(parent.ino, node.ino, base), wait=wait)
        else:
            self.drop_entry(name, wait=wait)

    def drop_entry(self, name: str, *, wait: bool = False) -> None:
        """Have the kernel forget its directory entry for name (it looks the name up again)."""
        parent_name, _, base = name.rpartition("/")
        parent = self.nodes.current(parent_name)
        send = self.invalidate_entry
        if parent is None or send is None:
            return  # the kernel cannot hold an entry under a directory it does not know
        self.notifier.submit(lambda: send(parent.ino, base), wait=wait)

    def drop_pages(self, node: Node, *, wait: bool = False) -> None:
        """Have the kernel forget what it cached of node (its pending writes were dropped); with
        `wait`, return once it has (its size and pages are the committed version's again)."""
        send = self.invalidate_inode
        if send is not None:
            self.notifier.submit(lambda: send(node.ino), wait=wait)

    # ----- news from outside -----------------------------------------------------------------------

    def changed(self, names: Sequence[str]) -> None:
        """These secrets changed elsewhere on this host (the control socket; `ALL`: any may have).

        Returns once the kernel has dropped the entries of those that changed, so the writer that
        told us knows this mount serves the new state.
        """
        self._tell_news(None if ALL in names else names)
        self.settle(names)

    def settle(self, names: Sequence[str]) -> None:
        """Retire the current nodes of these secrets (`ALL`: of any) whose value changed, and return
        once the kernel has dropped their entries."""
        if ALL in names:
            self.cache.invalidate_all()
            self.check()
        else:
            wanted = set(names)
            snapshot = [(n, n.commits) for n in self.nodes.files() if n.name and self.view.secret_of(n.name) in wanted]
            self.cache.invalidate(*names)
            if snapshot:
                with contextlib.suppress(BackendUnavailable):
                    self._refetch(sorted(wanted))
                    self._retire_changed(snapshot)
        self.notifier.submit(lambda: None, wait=True)

    def _tell_news(self, names: Sequence[str] | None) -> None:
        if self.news is not None:
            self.news(names)

    def _store_changed(self, names: Sequence[str] | None) -> None:
        """The store's own change report: names (PostgreSQL notifications), or None (SQLite watcher)."""
        if self.store_news is not None:
            self.store_news(names)
        if names is None:
            self.poke()
        else:
            self.changed(names)

    def wrote(self, *names: str) -> None:
        """This mount changed these secrets: tell the other mounts of the store on this host, and
        return once they answered (read-your-writes across local mounts).

        Other mounts are other kernels' locks: a request may wait for them even while the kernel
        holds one of this mount's directory locks. Two mounts renaming in their own directories at
        the same instant can wait on each other; the answer limit (2 s) breaks that.
        """
        if self.publish is not None and names:
            self.publish(names)

    def poke(self) -> None:
        """Something outside may have changed the store: check the current nodes soon."""
        self._wake.set()

    def check(self) -> int:
        """Re-read every current file node's secret; retire those that changed. Returns how many."""
        # Each node with the commit count it had before the store was read: one that commits
        # meanwhile is newer than what the read saw, and is left alone.
        snapshot = [(n, n.commits) for n in self.nodes.files() if n.name]
        secrets = sorted({self.view.secret_of(n.name) for n, _ in snapshot if n.name})
        changed = 0
        if secrets:
            try:
                self._refetch(secrets)
            except BackendUnavailable:
                pass  # the outage policy applies at the next lookup
            else:
                changed = self._retire_changed(snapshot)
        self.passes += 1
        return changed

    def _retire_changed(self, snapshot: list[tuple[Node, int]]) -> int:
        """Retire the nodes whose secret now reads differently (the cache was just refetched)."""
        changed = 0
        for node, commits in snapshot:
            if node.name is None:
                continue
            gone = False
            try:
                resolved = self.view.resolve(node.name)
            except BackendUnavailable:
                continue
            except NotFound:
                resolved, gone = None, True
            except SecretfsError:  # no longer readable: the next lookup reports why
                resolved = None
            if node.busy or node.commits != commits:
                continue
            if resolved is None or resolved.is_dir or not node.same_as(resolved.content, resolved.perms):
                self.retire(node, gone=gone)
                changed += 1
        return changed

    def _refetch(self, secrets: list[str]) -> None:
        """Bring the value cache up to date for these secrets (bulk where the store can)."""
        if self.cache.can_fetch_many:
            self.cache.fetch_many(secrets)
            return
        for secret in secrets:
            try:
                self.cache.fetch(secret)
            except NotFound:
                pass
            except BackendUnavailable:
                raise
            except SecretfsError:
                self.cache.invalidate(secret)

    def _run(self) -> None:
        followup = False
        while not self._stop.is_set():
            woken = self._wake.wait(FOLLOWUP_DELAY if followup else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception as exc:
                log.error("change check failed: %s", type(exc).__name__)
            followup = woken  # one more pass after an event, none after the follow-up itself

    # ----- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.notifier.start()
        self._thread = threading.Thread(target=self._run, name="secretfs-coherence", daemon=True)
        self._thread.start()
        self._unwatch = self.cache.watch(self._store_changed)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._unwatch is not None:
            self._unwatch()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.notifier.stop()
