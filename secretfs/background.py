"""The background start: `secretfs mount` without -f starts `secretfs mount -f` as a detached child
and returns once the mount is live, or with the child's failure.

The child reports readiness through a pipe whose descriptor it finds in $SECRETFS_READY_FD; the
parent then shows what the child logged while starting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

READY_FD_ENV = "SECRETFS_READY_FD"
READY_TIMEOUT = 60.0  # seconds a mount may take to become live (here, and for a signal during start-up)


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


def ready_pipe_callback() -> Callable[[], None] | None:
    """In the child: the callback that tells the waiting parent the mount is live, if one waits."""
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
