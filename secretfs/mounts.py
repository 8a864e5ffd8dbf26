"""Mount points: reading /proc/self/mountinfo, telling live from stale mounts, waiting, unmounting."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

STATUS_XATTR = "user.secretfs.status"  # JSON runtime state of a live daemon, on its mount root only

FSTYPE = "fuse.secretfs"

T = TypeVar("T")


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[MountEntry]:
    """Every mount this process can see."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 6 or len(tail) < 2:
                continue
            entries.append(MountEntry(_unescape(fields[4]), tail[0], _unescape(tail[1]), fields[5]))
    return entries


def secretfs_mounts() -> list[MountEntry]:
    return [m for m in mount_table() if m.fstype == FSTYPE]


def find_mount(mountpoint: str | Path) -> MountEntry | None:
    """The secretfs mount at mountpoint, if any (the last one mounted there)."""
    target = os.path.abspath(mountpoint)
    found = None
    for entry in secretfs_mounts():
        if entry.mountpoint == target:
            found = entry
    return found


def is_live(mountpoint: str | Path) -> bool:
    """Whether a secretfs mount is at mountpoint and answers a listing."""
    if find_mount(mountpoint) is None:
        return False
    try:
        os.listdir(mountpoint)
    except OSError:
        return False
    return True


# A FUSE mount whose daemon is gone answers every call with ENOTCONN ("Transport endpoint is not
# connected"), or ECONNABORTED once its connection was aborted through /sys/fs/fuse/connections.
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def probe(mountpoint: str | Path) -> OSError | None:
    """Stat the mount point: None if it answers, else the error it answered with."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc
    return None


def is_stale(mountpoint: str | Path) -> bool:
    """Whether a secretfs mount is at mountpoint whose daemon is gone (ENOTCONN)."""
    if find_mount(mountpoint) is None:
        return False
    error = probe(mountpoint)
    return error is not None and error.errno in DEAD_ERRNOS


def mount_state(mountpoint: str | Path) -> str:
    """ "absent", "live" (answers a listing), "stale" (daemon gone) or "unresponsive" (other errors)."""
    if find_mount(mountpoint) is None:
        return "absent"
    # The root's attributes come from the daemon itself, never from the backend: a mount whose
    # backend is down is still live (and its status says degraded).
    if probe(mountpoint) is None:
        return "live"
    return "stale" if is_stale(mountpoint) else "unresponsive"


def run_bounded(func: Callable[[], T], timeout: float) -> T | None:
    """func() in a daemon thread; None if it has not returned within timeout seconds.

    A FUSE daemon that never answers leaves that thread blocked in the kernel, never the caller.
    """
    result: list[T] = []
    worker = threading.Thread(target=lambda: result.append(func()), daemon=True)
    worker.start()
    worker.join(timeout)
    return result[0] if result else None


# The environment of the tools secretfs runs itself (ls, fusermount3): nothing of the caller's (no
# key variable, no token), and a PATH of system directories only, so a program named like a tool
# early in the caller's PATH is never run.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHILD_ENV = {"PATH": SYSTEM_PATH, "LC_ALL": "C"}


def _tool(name: str) -> str:
    """The system's program of that name (the name itself if none: the run then fails cleanly)."""
    return shutil.which(name, path=SYSTEM_PATH) or name


def is_live_from_child(mountpoint: str | Path, timeout: float = 10.0) -> bool:
    """Like is_live, but the listing is made by a child process (`ls`).

    The daemon serving a mount must never call into that mount itself: a thread blocked in a
    request to its own mount cannot be killed (the kernel waits for an answer only the dying
    process could give), so a SIGKILL at that moment would leave an unkillable process and a mount
    that cannot be aborted without /sys/fs/fuse/connections.
    """
    if find_mount(mountpoint) is None:
        return False
    try:
        result = subprocess.run(
            [_tool("ls"), "-A", "--", os.path.abspath(mountpoint)],
            env=CHILD_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def wait_until_live(mountpoint: str | Path, timeout: float, *, alive: object = None, from_child: bool = False) -> bool:
    """Poll until the mount answers a first listing, or timeout seconds pass.

    from_child: list from a child process; the daemon of that very mount must pass True.
    """
    probe = is_live_from_child if from_child else is_live
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe(mountpoint):
            return True
        if callable(alive) and not alive():
            return False
        time.sleep(0.02)
    return False


def unmount(mountpoint: str | Path, *, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    """fusermount3 -u (and -z when lazy); on failure its stderr names the reason ("Device or resource busy")."""
    args = [_tool("fusermount3"), "-u"]
    if lazy:
        args.append("-z")
    return subprocess.run(
        [*args, "--", os.path.abspath(mountpoint)], env=CHILD_ENV, capture_output=True, text=True, check=False
    )
