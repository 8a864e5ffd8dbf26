"""Mount points: reading /proc/self/mountinfo, waiting until a mount answers, unmounting."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.secretfs"


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


def wait_until_live(mountpoint: str | Path, timeout: float, *, alive: object = None) -> bool:
    """Poll until the mount answers a first listing, or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_live(mountpoint):
            return True
        if callable(alive) and not alive():
            return False
        time.sleep(0.02)
    return False


def unmount(mountpoint: str | Path, *, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    """fusermount3 -u (and -z when lazy)."""
    args = ["fusermount3", "-u", "-q"]
    if lazy:
        args.append("-z")
    return subprocess.run([*args, "--", os.path.abspath(mountpoint)], capture_output=True, text=True, check=False)
