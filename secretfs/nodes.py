"""The inode table: the one owner of open-file state.

A node is what the kernel knows as an inode. A file node stands for one committed version of a
secret's file, whose bytes never change under the kernel (`version`), plus, while it is open for
writing, the pending content that every descriptor of that inode shares (`pending`). A name points
to at most one current node; when the value behind a name changes anywhere but through this node,
the node is retired (detached from its name, as a file replaced by rename is) and the next lookup
makes a new node. Unlink and rename move or drop the name, never the node, so open descriptors keep
their state. Nodes live until the kernel forgets them (and no write handle holds them).

Lock order: a node's `lock`, then the table's lock (never the other way round).
"""

from __future__ import annotations

import stat
import threading
import time
import zlib
from dataclasses import dataclass, field

from secretfs.fileattrs import Perms
from secretfs.fusebind import ROOT_INO, FuseError
from secretfs.stores.base import FileAttrs


@dataclass(eq=False)
class Node:
    """One inode: a directory, or one version of a file and the pending writes to it."""

    ino: int
    name: str | None  # secret path ('' for the root); None once unlinked or replaced
    is_dir: bool
    version: bytes = b""  # the committed content this inode stands for
    mtime: float = 0.0
    ctime: float = 0.0
    pending: bytearray | None = None  # content written through open descriptors, not committed yet
    created: bool = False  # made by create() and never committed: exists only in this mount
    commits: int = 0  # commits through this node (a release must not undo a later commit)
    nlookup: int = 0
    writers: int = 0  # open write handles
    former: str | None = None  # the name a node replaced by a newer value had (it still counts as linked)
    perms: Perms | None = None  # a file's mode and owner as shown (None: the mount's defaults)
    pending_attrs: FileAttrs | None = None  # chmod/chown of a file never committed: stored with its commit
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def content(self) -> bytes | bytearray:
        """What reads see: the pending content while there is one, else the version."""
        return self.version if self.pending is None else self.pending

    @property
    def nlink(self) -> int:
        """1 while the node has a name, or stands for an older value of one; 0 once unlinked.

        A node replaced by a newer value (`Nodes.detach(replaced=True)`) keeps its link: the kernel
        then never tells an inotify watch of the file that it was deleted, so the watch keeps
        hearing of later values (secretfs.announce)."""
        return 0 if self.name is None and self.former is None else 1

    @property
    def busy(self) -> bool:
        """Being written here: the node keeps its name whatever the store says meanwhile."""
        return self.writers > 0 or self.pending is not None or self.created

    @property
    def dirty(self) -> bool:
        """Whether there is something to commit: pending content, or a file never committed."""
        return self.pending is not None or self.created

    def same_as(self, content: bytes, perms: Perms | None = None) -> bool:
        """Whether a freshly read content (with the mode and owner it shows) is the version this node
        stands for (nothing pending): a changed mode or owner is a new version too."""
        return (
            self.pending is None
            and not self.created
            and self.version == content
            and (perms is None or self.perms is None or self.perms == perms)
        )


def entry_ino(name: str) -> int:
    """A stable stand-in inode number for a listed name the kernel has not looked up."""
    return 0x8000_0000_0000_0000 | zlib.crc32(name.encode("utf-8", "surrogateescape"))


def join(parent: str, base: str) -> str:
    return f"{parent}/{base}" if parent else base


@dataclass
class Nodes:
    """Nodes by inode number, and the current node of each name."""

    _by_ino: dict[int, Node] = field(default_factory=dict)
    _by_name: dict[str, Node] = field(default_factory=dict)
    _next: int = ROOT_INO + 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _replaced: dict[str, list[Node]] = field(default_factory=dict)  # former name -> nodes the kernel holds

    def __post_init__(self) -> None:
        root = Node(ROOT_INO, "", True, mtime=time.time(), ctime=time.time(), nlookup=1)
        self._by_ino[ROOT_INO] = root
        self._by_name[""] = root

    def get(self, ino: int) -> Node:
        node = self._by_ino.get(ino)
        if node is None:
            raise FuseError(116)  # ESTALE: the kernel asked about an inode it had forgotten
        return node

    def current(self, name: str) -> Node | None:
        return self._by_name.get(name)

    def add(
        self,
        name: str,
        *,
        is_dir: bool,
        version: bytes = b"",
        mtime: float = 0.0,
        ctime: float = 0.0,
        perms: Perms | None = None,
    ) -> Node:
        """A new node, current for name (a node that was current is retired); looked up once.

        A current node that is busy being written keeps the name: it is returned instead.
        """
        with self._lock:
            current = self._by_name.get(name)
            if current is not None and not current.is_dir and current.busy and not is_dir:
                current.nlookup += 1
                return current
            node = Node(
                self._next, name, is_dir, version, mtime or time.time(), ctime or time.time(), nlookup=1, perms=perms
            )
            self._next += 1
            self._by_ino[node.ino] = node
            old = self._by_name.get(name)
            if old is not None:
                old.name = None
                if not old.is_dir and not is_dir:  # a newer value: the old node stays linked
                    old.former = name
                    self._replaced.setdefault(name, []).append(old)
            self._by_name[name] = node
            return node

    def stand_in(self, name: str) -> Node | None:
        """A new empty file node for name if no node is current for it (else None); looked up once."""
        with self._lock:
            if name in self._by_name:
                return None
            node = Node(self._next, name, False, b"", time.time(), time.time(), nlookup=1)
            self._next += 1
            self._by_ino[node.ino] = node
            self._by_name[name] = node
            return node

    def looked_up(self, node: Node) -> None:
        """The kernel is given node once more. A forget may have dropped it meanwhile (a lookup
        found it just before): it is put back, since the kernel will know it again."""
        with self._lock:
            node.nlookup += 1
            if self._by_ino.setdefault(node.ino, node) is node and node.name is not None:
                self._by_name.setdefault(node.name, node)

    def detach(self, name: str, *, replaced: bool = False) -> Node | None:
        """name no longer points to its node: unlinked, or (`replaced`) its value changed elsewhere."""
        with self._lock:
            node = self._by_name.pop(name, None)
            if node is not None:
                node.name = None
                if replaced:
                    node.former = name
                    self._replaced.setdefault(name, []).append(node)
                self._drop_if_unused(node)
            return node

    def replaced(self, name: str) -> list[Node]:
        """The nodes of older values of name that the kernel still holds (an inotify watch pins one)."""
        with self._lock:
            return list(self._replaced.get(name, ()))

    def detach_below(self, prefix: str) -> None:
        """Detach every name under a directory (it moved or went away)."""
        with self._lock:
            for name in [n for n in self._by_name if n.startswith(prefix + "/")]:
                node = self._by_name.pop(name)
                node.name = None
                self._drop_if_unused(node)

    def move(self, node: Node, new: str) -> Node | None:
        """rename: node takes new's name; the node new had is retired and returned."""
        with self._lock:
            if node.name is not None and self._by_name.get(node.name) is node:
                del self._by_name[node.name]
            old = self._by_name.get(new)
            if old is not None and old is not node:
                old.name = None
                self._drop_if_unused(old)
            node.name = new
            self._by_name[new] = node
            return old

    def forget(self, ino: int, nlookup: int) -> None:
        with self._lock:
            node = self._by_ino.get(ino)
            if node is None or ino == ROOT_INO:
                return
            node.nlookup = max(0, node.nlookup - nlookup)
            self._drop_if_unused(node)

    def hold(self, node: Node, delta: int) -> None:
        """A write handle opens (+1) or closes (-1) on node."""
        with self._lock:
            node.writers += delta
            self._drop_if_unused(node)

    def _drop_if_unused(self, node: Node) -> None:
        if node.nlookup > 0 or node.writers > 0 or node.ino == ROOT_INO:
            return
        self._by_ino.pop(node.ino, None)
        if node.name is not None and self._by_name.get(node.name) is node:
            del self._by_name[node.name]
        if node.former is not None and (older := self._replaced.get(node.former)) is not None:
            older[:] = [n for n in older if n is not node]
            if not older:
                del self._replaced[node.former]

    def files(self) -> list[Node]:
        """The current file nodes with nothing pending (what a change check re-reads)."""
        with self._lock:
            return [n for n in self._by_name.values() if not n.is_dir and not n.busy]

    def created_in(self, directory: str) -> list[str]:
        """Basenames of files created in directory and not committed yet (they are listed too)."""
        prefix = directory + "/" if directory else ""
        with self._lock:
            return [
                name[len(prefix) :]
                for name, node in self._by_name.items()
                if node.created and name.startswith(prefix) and "/" not in name[len(prefix) :]
            ]

    def __len__(self) -> int:
        return len(self._by_ino)


def file_mode(node: Node) -> int:
    return stat.S_IFDIR if node.is_dir else stat.S_IFREG
