"""Running a mount in the foreground: the mount-point checks and the FUSE loop.

The foreground process checks the mount point (detaching a stale secretfs mount left by a dead
daemon), opens the store, runs the multi-threaded FUSE loop and reports readiness (a first listing
answered) to a waiting parent (the pipe of `background`) and to systemd (READY=1 on $NOTIFY_SOCKET).
SIGTERM and SIGINT unmount it (`shutdown`). The parts of one mount are wired in `assemble`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secretfs import control, mounts, notify
from secretfs.actions import Action
from secretfs.background import ready_pipe_callback
from secretfs.coherence import Coherence
from secretfs.config import Settings
from secretfs.errors import ConfigError, SecretfsError
from secretfs.freshness import DEFAULTS, FreshnessPolicy
from secretfs.reactions import Reactions
from secretfs.shutdown import Shutdown
from secretfs.view import ViewOptions

if TYPE_CHECKING:
    from secretfs.fuse_ops import SecretFS
    from secretfs.fusebind import Session
    from secretfs.policy import Policy
    from secretfs.stores.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountOptions:
    """Options of one mount, from the command line."""

    mountpoint: Path
    view: ViewOptions
    allow_other: bool = False
    freshness: FreshnessPolicy = DEFAULTS
    debug: bool = False
    actions: tuple[Action, ...] = ()  # on-change actions (secretfs.actions)
    prefix: str = ""  # a subtree mount: only the secrets under this prefix, normalized (secretfs.stores.prefixed)
    policy: Policy | None = None  # who may read what (secretfs.policy)
    audit_log: tuple[str, ...] = ()  # audit log destinations: files, or "-" for stderr (secretfs.audit)
    audit_log_max_size: int = 0  # bytes; then FILE is renamed FILE.1 (0: no limit)


def recover_stale(path: Path) -> bool:
    """Detach a secretfs mount at path whose daemon is gone (ENOTCONN); True if there was one."""
    if not mounts.is_stale(path):
        return False
    error = mounts.probe(path)
    reason = error.strerror if error is not None else "no daemon"
    log.warning(
        "found a stale secretfs mount at %s (%s: its daemon is gone); detaching it lazily and mounting again",
        path,
        reason,
    )
    result = mounts.unmount(path, lazy=True)
    if mounts.is_stale(path):
        raise SecretfsError(f"could not detach the stale mount at {path}: {result.stderr.strip() or 'unknown error'}")
    return True


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is missing, not a directory, not empty, or already mounted.

    A stale secretfs mount (its daemon died) is detached lazily first, with a warning.
    """
    entry = mounts.find_mount(path)
    if entry is not None:
        if mounts.is_live(path):
            raise ConfigError(f"secretfs is already mounted at {path}")
        if not recover_stale(path):
            error = mounts.probe(path)
            detail = error.strerror if error is not None else "a listing failed"
            raise ConfigError(
                f"secretfs is mounted at {path} but does not answer ({detail}); "
                f"unmount it first: secretfs umount --lazy {path}"
            )
    try:
        is_dir = path.is_dir()
    except OSError as exc:
        if exc.errno in mounts.DEAD_ERRNOS:
            raise ConfigError(
                f"mount point {path} is a dead mount of another filesystem ({exc.strerror}); "
                f"detach it first: umount -l {path}"
            ) from None
        raise ConfigError(f"cannot use mount point {path}: {exc.strerror}") from None
    if not path.exists():
        raise ConfigError(f"mount point {path} does not exist; create an empty directory there first")
    if not is_dir:
        raise ConfigError(f"mount point {path} is not a directory; secretfs mounts only over an empty directory")
    if any(path.iterdir()):
        raise ConfigError(f"mount point {path} is not empty; secretfs mounts only over an empty directory")


def _report_ready(
    mountpoint: Path, callbacks: list[Callable[[], None]], stop: threading.Event, live: threading.Event
) -> None:
    while not stop.is_set():
        # From a child process: this process serves the mount and must not call into it itself.
        if mounts.wait_until_live(mountpoint, 0.5, from_child=True):
            live.set()
            for callback in callbacks:
                callback()
            log.info("mounted at %s", mountpoint)
            return


def _control(settings: Settings, coherence: Coherence, prefix: str = "") -> control.ControlServer | None:
    """The mount's control socket, and its link to the other local mounts of the store.

    The socket carries full names: a subtree mount (`prefix`) keeps those under its prefix, made
    relative, and publishes its own with the prefix put back."""
    from secretfs.stores.prefixed import full_names, relative_names

    store = control.store_id(settings)
    pid = os.getpid()

    def publish(names: Sequence[str]) -> None:
        for warning in control.tell_mounts(store, full_names(prefix, names), exclude_pid=pid):
            log.warning("%s", warning)

    def changed(names: Sequence[str]) -> None:
        coherence.changed(relative_names(prefix, names))

    coherence.publish = publish
    try:
        server = control.ControlServer(store, changed)
    except OSError as exc:
        log.warning("no control socket (%s): other processes' writes reach this mount within --cache-ttl", exc)
        return None
    server.start()
    return server


def _connect(
    session: Session, operations: SecretFS, store: Store, options: MountOptions, *, announce: bool
) -> Reactions:
    """Give coherence the session's kernel notifications, and start what reacts to changes."""
    coherence = operations.coherence
    coherence.invalidate_entry = session.invalidate_entry
    coherence.invalidate_inode = session.invalidate_inode
    coherence.notify_delete = session.notify_delete
    mountpoint = options.mountpoint.absolute() if announce else None
    reactions = Reactions(store, coherence, options.freshness, mountpoint=mountpoint, actions=options.actions)
    operations.announcer = reactions.announcer
    operations.status_parts["changes"] = reactions.status
    if options.prefix:
        operations.status_parts["prefix"] = lambda: options.prefix
    reactions.start()
    return reactions


def run_foreground(settings: Settings, options: MountOptions) -> int:
    """Mount and serve until unmounted or signalled; return the exit code."""
    from secretfs import hardening

    hardening.apply()  # before any secret is read: not dumpable, no core, memory locked if allowed
    from secretfs.assemble import build_operations
    from secretfs.fusebind import Session
    from secretfs.guard import guard_for
    from secretfs.stores import open_store
    from secretfs.stores.prefixed import open_prefixed

    mountpoint = options.mountpoint.absolute()
    callbacks: list[Callable[[], None]] = []
    if (pipe := ready_pipe_callback()) is not None:
        callbacks.append(pipe)
    callbacks.append(lambda: _notify_ready(mountpoint))
    check_mountpoint(mountpoint)
    read_only = options.view.read_only or settings.read_only_mode
    store = open_prefixed(open_store(settings, read_only=read_only), options.prefix)
    view_options = ViewOptions(
        layout=options.view.layout,
        read_only=read_only,
        uid=options.view.uid,
        gid=options.view.gid,
        file_mode=options.view.file_mode,
        dir_mode=options.view.dir_mode,
    )
    guard = guard_for(options.policy, options.audit_log, max_bytes=options.audit_log_max_size, prefix=options.prefix)
    operations = build_operations(store, view_options, options.freshness, guard)  # a guard's log closes at destroy
    stop = threading.Event()
    live = threading.Event()
    threading.Thread(target=_report_ready, args=(mountpoint, callbacks, stop, live), daemon=True).start()
    fuse_options = ["fsname=secretfs", "subtype=secretfs", "default_permissions"]
    if options.allow_other:
        fuse_options.append("allow_other")
    if read_only:
        fuse_options.append("ro")
    session = Session(operations, str(mountpoint), fuse_options, debug=options.debug)
    control = _control(settings, operations.coherence, options.prefix)
    reactions = _connect(session, operations, store, options, announce=not read_only)
    shutdown = Shutdown(mountpoint, live, stop)
    shutdown.install()
    try:
        session.run()
    except SecretfsError:
        if shutdown.requested is None or not live.is_set():
            raise
        # libfuse's exit handler ended the loop on our request (a busy mount): a clean stop.
    finally:
        shutdown.loop_ended()
        shutdown.restore()
        shutdown.send_stopping(f"unmounted {mountpoint}")
        if control is not None:
            control.close()
        reactions.stop()
        store.close()
    if shutdown.lazy:
        log.info("detached %s lazily", mountpoint)
    else:
        log.info("unmounted %s", mountpoint)
    return 0


def _notify_ready(mountpoint: Path) -> None:
    notify.ready(f"serving {mountpoint}")
