"""Running a mount: the foreground FUSE loop, and the background start that returns once it is live.

The foreground process opens the store, checks the mount point, runs the multi-threaded FUSE loop
and reports readiness (a first listing answered) on a pipe to a waiting parent. libfuse's own
handlers make SIGTERM/SIGINT leave the loop and unmount.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from secretfs import mounts
from secretfs.config import Settings
from secretfs.errors import ConfigError, SecretfsError
from secretfs.view import ViewOptions

log = logging.getLogger(__name__)

READY_FD_ENV = "SECRETFS_READY_FD"
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class MountOptions:
    """Options of one mount, from the command line."""

    mountpoint: Path
    view: ViewOptions
    allow_other: bool = False
    cache_mode: str = "direct"
    debug: bool = False


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is missing, not a directory, or not empty."""
    if not path.exists():
        raise ConfigError(f"mount point {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"mount point {path} is not a directory")
    if mounts.find_mount(path) is None and any(path.iterdir()):
        raise ConfigError(f"mount point {path} is not empty; secretfs mounts only over an empty directory")
    if mounts.find_mount(path) is not None and mounts.is_live(path):
        raise ConfigError(f"secretfs is already mounted at {path}")


def _report_ready(mountpoint: Path, callbacks: list[Callable[[], None]], stop: threading.Event) -> None:
    while not stop.is_set():
        if mounts.wait_until_live(mountpoint, 0.5):
            for callback in callbacks:
                callback()
            log.info("mounted at %s", mountpoint)
            return


def _ready_pipe_callback() -> Callable[[], None] | None:
    raw = os.environ.pop(READY_FD_ENV, None)
    if not raw:
        return None
    fd = int(raw)

    def signal_parent() -> None:
        try:
            os.write(fd, b"R")
        finally:
            os.close(fd)

    return signal_parent


def run_foreground(settings: Settings, options: MountOptions, ready: list[Callable[[], None]] | None = None) -> int:
    """Mount and serve until unmounted or signalled; return the exit code."""
    from secretfs import hardening

    hardening.apply()  # before any secret is read: not dumpable, no core, memory locked if allowed
    from secretfs.fuse_ops import SecretFS
    from secretfs.fusebind import FUSE
    from secretfs.stores import open_store
    from secretfs.view import View

    callbacks = list(ready or [])
    if (pipe := _ready_pipe_callback()) is not None:
        callbacks.append(pipe)
    mountpoint = options.mountpoint.absolute()
    check_mountpoint(mountpoint)
    read_only = options.view.read_only or settings.read_only_mode
    store = open_store(settings, read_only=read_only)
    view_options = ViewOptions(
        layout=options.view.layout,
        read_only=read_only,
        uid=options.view.uid,
        gid=options.view.gid,
        file_mode=options.view.file_mode,
        dir_mode=options.view.dir_mode,
    )
    operations = SecretFS(View(store, view_options), cache_mode=options.cache_mode)  # type: ignore[arg-type]
    stop = threading.Event()
    threading.Thread(target=_report_ready, args=(mountpoint, callbacks, stop), daemon=True).start()
    fuse_options: dict[str, object] = {
        "foreground": True,
        "nothreads": False,
        "fsname": "secretfs",
        "subtype": "secretfs",
        "default_permissions": True,
        "debug": options.debug,
    }
    if options.allow_other:
        fuse_options["allow_other"] = True
    if read_only:
        fuse_options["ro"] = True
    try:
        FUSE(operations, str(mountpoint), raw_fi=True, **fuse_options)
    except RuntimeError as exc:
        raise SecretfsError(f"FUSE could not mount {mountpoint}: {exc}") from None
    finally:
        stop.set()
        store.close()
    log.info("unmounted %s", mountpoint)
    return 0


def start_background(argv: list[str], mountpoint: Path, log_file: Path) -> int:
    """Start `secretfs mount -f` as a detached child; return once the mount is live (0) or it failed."""
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_end, write_end = os.pipe()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = os.lseek(fd, 0, os.SEEK_END)
    env = dict(os.environ, **{READY_FD_ENV: str(write_end)})
    child = subprocess.Popen(
        [sys.executable, "-m", "secretfs", *argv, "--foreground"],
        stdin=subprocess.DEVNULL,
        stdout=fd,
        stderr=fd,
        env=env,
        pass_fds=(write_end,),
        start_new_session=True,
    )
    os.close(write_end)
    os.close(fd)
    got = b""
    try:
        import select

        readable, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
        if readable:
            got = os.read(read_end, 1)
    finally:
        os.close(read_end)
    if got == b"R":
        _echo_log(log_file, start)
        return 0
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.terminate()
        code = 1
        print(f"secretfs: the mount at {mountpoint} did not become live in time", file=sys.stderr)
    _echo_log(log_file, start)
    return code or 1


def _echo_log(log_file: Path, start: int) -> None:
    """Show the user what the daemon logged while starting (notices, warnings, errors)."""
    with open(log_file, "rb") as handle:
        handle.seek(start)
        sys.stderr.write(handle.read().decode("utf-8", "replace"))
