"""The baseline: the smallest useful mfusepy filesystem, one constant file served with direct_io.

Run as `python bench/minimalfs.py MOUNTPOINT SIZE` (foreground; unmount to stop). It binds libfuse 3
like secretfs does, answers getattr, readdir, open (direct_io) and read, and nothing else, so its
per-read cost is mfusepy's and libfuse's own: the floor that a Python FUSE daemon starts from.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy

NAME = "/secret"


class Minimal(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, size: int) -> None:
        self.content = b"x" * size
        now = int(time.time() * 1e9)
        self.file = {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size, "st_mtime": now}
        self.root = {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_mtime": now}

    def getattr(self, path: str, fh: object = None) -> dict[str, int]:
        if path == "/":
            return self.root
        if path == NAME:
            return self.file
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: object) -> list[str]:
        return [".", "..", NAME[1:]]

    def open(self, path: str, fi: object) -> int:
        fi.direct_io = 1  # type: ignore[attr-defined]
        return 0

    def read(self, path: str, size: int, offset: int, fh: object) -> bytes:
        return self.content[offset : offset + size]


def main() -> None:
    mountpoint, size = sys.argv[1], int(sys.argv[2])
    mfusepy.FUSE(Minimal(size), mountpoint, raw_fi=True, foreground=True, nothreads=False, fsname="minimalfs", ro=True)


if __name__ == "__main__":
    main()
