"""`inotifywait -m` (Debian's inotify-tools) run as a user would, and the events it printed."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.wait import wait_until


@dataclass
class Watch:
    """The events one `inotifywait -m` printed: (path, event names) per line."""

    out: Path

    def events(self) -> list[tuple[str, set[str]]]:
        lines = self.out.read_text(errors="replace").splitlines()
        return [(path, set(names.split(","))) for path, _, names in (line.rpartition("|") for line in lines)]

    def count(self, event: str, path: Path | None = None) -> int:
        return sum(1 for p, names in self.events() if event in names and (path is None or p == str(path)))

    def wait_for(self, event: str, path: Path | None, count: int, timeout: float = 10) -> None:
        wait_until(
            lambda: self.count(event, path) >= count,
            timeout,
            interval=0.02,
            message=lambda: f"{count} x {event} on {path} not seen; events: {self.events()}",
        )


@contextlib.contextmanager
def inotifywait(*paths: Path, out: Path) -> Iterator[Watch]:
    """Watch paths until the block ends; returns once the watches are in place."""
    binary = shutil.which("inotifywait")
    assert binary, "inotifywait is missing: scripts/bootstrap --test installs inotify-tools"
    err = out.with_suffix(".err")
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([binary, "-m", "--format", "%w%f|%e", *map(str, paths)], stdout=stdout, stderr=stderr)
    try:
        wait_until(lambda: b"Watches established" in err.read_bytes(), 10, message=err.read_text)
        yield Watch(out)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
