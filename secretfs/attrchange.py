"""chmod and chown through the mount: what is accepted, what is stored, and when.

See docs/design.md, "Per-secret modes and owners". In short:

- A file's new mode (permission bits only: setuid, setgid and sticky are refused with EPERM) and
  owner are stored for its secret (the owner as names, secretfs.fileattrs), and the node shows them
  at once, so the reply to the request carries them.
- A file created and not committed yet (`install -m`, `tar -x`, `cp -p` set the mode before the
  close) keeps them on its node; its first commit stores them with the value.
- Directories keep the mount's mode and owner: a chmod or chown of one is accepted and changes
  nothing, so copy tools that set a directory's mode (`rsync -a`, `tar -x`) work.
- A store that keeps no per-secret attrs (Vault KV v1) accepts only what the file already shows.
"""

from __future__ import annotations

import logging

from secretfs.coherence import Coherence
from secretfs.errors import NotPermitted
from secretfs.fileattrs import group_name, shown, user_name
from secretfs.nodes import Node
from secretfs.stores.base import NO_ATTRS, FileAttrs

log = logging.getLogger(__name__)

SPECIAL_BITS = 0o7000  # setuid, setgid, sticky


class AttrChanges:
    """Applies chmod and chown requests to file nodes and their secrets."""

    def __init__(self, coherence: Coherence) -> None:
        self.coherence = coherence
        self.view = coherence.view
        self.nodes = coherence.nodes

    def apply(self, node: Node, mode: int | None, uid: int | None, gid: int | None) -> None:
        """Set what is not None; NotPermitted for what cannot be kept."""
        if node.is_dir or (mode is None and uid is None and gid is None):
            return
        if mode is not None and mode & SPECIAL_BITS:
            raise NotPermitted("setuid, setgid and sticky bits are not kept on secrets")
        current = node.perms or self.view.default_perms()
        if not self.view.keeps_file_attrs:
            if mode in (None, current.mode) and uid in (None, current.uid) and gid in (None, current.gid):
                return  # what the file shows already
            log.warning(
                "chmod/chown of %r refused: this store keeps no per-secret modes (KV v1 keeps no per-secret "
                "modes; use a policy file)",
                node.name,
            )
            raise NotPermitted("this store keeps no per-secret modes or owners; use a policy file")
        wanted = FileAttrs(mode, None if uid is None else user_name(uid), None if gid is None else group_name(gid))
        with node.lock:
            name = node.name
            if node.created or name is None:  # never committed (or unlinked): kept for the commit
                node.pending_attrs = (node.pending_attrs or NO_ATTRS).merged(wanted)
                if name is None:
                    node.perms = shown(self.view.default_perms(), node.pending_attrs, (None, None, None))
                else:
                    node.perms = self.view.perms(self.view.secret_of(name), node.pending_attrs)
                return
        secret = self.view.secret_of(name)
        stored = self.view.store.read(secret).attrs or NO_ATTRS
        if stored.merged(wanted) == stored:
            return  # stored already (the node shows it)
        node.perms = self.view.set_attrs("/" + name, wanted)
        self.coherence.wrote(secret)
        if secret == name:
            return
        # The other files of the secret (keys layout) show the new attrs through new nodes (retired
        # here, or by a change check that saw the store first). The request holds only its own
        # inode's lock in the kernel, so it may wait for the notifications (bounded,
        # secretfs.coherence.WAIT_LIMIT): a stat of those files right after sees the change.
        for other in self.nodes.files():
            if other is not node and other.name and self.view.secret_of(other.name) == secret:
                self.coherence.retire(other)
        self.coherence.notifier.submit(lambda: None, wait=True)
