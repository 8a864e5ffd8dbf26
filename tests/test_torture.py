"""Concurrency torture: readers in other processes never see anything but a whole committed value.

One secret. Every value ever committed is one of tests.support.torture.committed_values() (10, 4095,
4097, 8000 and 200 KiB bytes, each its own repeating pattern, so a splice, a cut, a shifted page or a
NUL-filled hole matches none of them); the initial value is the first. Readers are other processes,
each in a loop: (a) open, read to EOF, close; (b) pread the whole file on a descriptor held for the
whole run (a held descriptor may keep returning the version it opened: any committed value passes);
(c) open and mmap the file, MAP_PRIVATE and, in kernel mode, MAP_SHARED, and copy every byte. They read
through mount A and through a `--read-only` mount C of the same store. Writers meanwhile: through A as
editors save (a temp file in the same directory, renamed onto the secret), through a second mount B
(O_WRONLY|O_TRUNC, write, close) and through the CLI (`secretfs put`). README: "readers see committed
values only" (the O_TRUNC exception is for readers on the writer's own mount; B has none).

SECRETFS_TORTURE_SECONDS sets the short run (default 4 s per mode); `--run-slow` adds a 30 s run.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.mount import Instance, Mounted, make_instance, mounted
from tests.support.torture import Reader, committed_values, kill_after, open_read, start_reader
from tests.support.wait import wait_until

pytestmark = pytest.mark.mount

NAME = "torture"
TTL = "1"
SHORT = float(os.environ.get("SECRETFS_TORTURE_SECONDS", "4"))
LONG = 30.0
MIN_READS = 20
VALUES = committed_values()


@dataclass
class Writer:
    label: str
    write: Callable[[bytes], None]
    count: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event, start: int) -> None:
        for index in itertools.count(start):
            if stop.is_set():
                return
            try:
                self.write(VALUES[index % len(VALUES)])
                self.count += 1
            except Exception as exc:  # every failure is reported by the test
                self.errors.append(repr(exc))
                if len(self.errors) >= 5:
                    return
            time.sleep(0.005)


def renaming_writer(m: Mounted) -> Callable[[bytes], None]:
    """Mount A, as editors save: a temp file in the same directory, renamed onto the secret."""
    serial = itertools.count()

    def write(value: bytes) -> None:
        temp = m.path / f"tmp-{NAME}-{next(serial)}"
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            assert os.write(fd, value) == len(value)
        finally:
            os.close(fd)
        os.rename(temp, m.path / NAME)

    return write


def truncating_writer(m: Mounted) -> Callable[[bytes], None]:
    """Mount B: open O_WRONLY|O_TRUNC, write, close."""

    def write(value: bytes) -> None:
        fd = os.open(m.path / NAME, os.O_WRONLY | os.O_TRUNC)
        try:
            assert os.write(fd, value) == len(value)
        finally:
            os.close(fd)

    return write


def cli_writer(instance: Instance) -> Callable[[bytes], None]:
    def write(value: bytes) -> None:
        instance.cli("put", NAME, input=value)

    return write


def torture(tmp_path: Path, mode: str, seconds: float) -> None:
    instance = make_instance(tmp_path)
    instance.cli("put", NAME, input=VALUES[0])
    args = ("--cache-mode", mode, "--cache-ttl", TTL)
    with (
        mounted(instance, tmp_path / "a", *args) as a,
        mounted(instance, tmp_path / "b", *args) as b,
        mounted(instance, tmp_path / "c", *args, "--read-only") as c,
        kill_after(a.proc, seconds + 120),
        kill_after(b.proc, seconds + 120),
        kill_after(c.proc, seconds + 120),
    ):
        assert open_read(a.path / NAME) == VALUES[0]
        assert open_read(c.path / NAME) == VALUES[0]
        writers = [
            Writer("rename on mount A", renaming_writer(a)),
            Writer("O_TRUNC on mount B", truncating_writer(b)),
            Writer("secretfs put", cli_writer(instance)),
        ]
        stop = threading.Event()
        threads = [
            threading.Thread(target=w.run, args=(stop, 1 + i), daemon=True, name=w.label) for i, w in enumerate(writers)
        ]
        # MAP_SHARED only in kernel mode: direct mode opens every file direct_io, and the kernel may
        # refuse a shared mapping of a direct_io file with ENODEV, which README documents. Direct mode
        # still maps MAP_PRIVATE (the page-cache copy a mapping needs).
        kinds = ["open-read", "held-pread", "mmap-private"] + (["mmap-shared"] if mode == "kernel" else [])
        for thread in threads:
            thread.start()
        readers: list[Reader] = []
        try:
            for mount_label, m in (("A", a), ("C read-only", c)):
                for kind in kinds:
                    readers.append(start_reader(f"{kind} on {mount_label}", kind, m.path / NAME, seconds))
            for reader in readers:
                reader.collect(timeout=seconds + 60)
        finally:
            stop.set()
            for reader in readers:
                if reader.proc.poll() is None:
                    reader.proc.kill()
                    reader.proc.wait(timeout=30)
            for thread in threads:
                thread.join(timeout=150)
        last = instance.cli("get", NAME).stdout
        settled = {label: converged(m.path / NAME, last) for label, m in (("A", a), ("B", b), ("C", c))}

    report = "\n".join(
        [r.summary() for r in readers] + [f"writer {w.label}: {w.count} writes, errors {w.errors}" for w in writers]
    )
    print(f"\ntorture {mode} {seconds:.0f}s:\n{report}")
    died = [r.label for r in readers if r.problem]
    assert not died, f"a reader died or hung:\n{report}"
    reports = [r.report for r in readers if r.report is not None]
    assert all(r.bad_count == 0 for r in reports), f"bad reads:\n{report}"
    assert all(r.count > MIN_READS for r in reports), f"a reader did too few reads to mean anything:\n{report}"
    assert not any(t.is_alive() for t in threads), f"a writer hung:\n{report}"
    assert all(w.count > 0 and not w.errors for w in writers), f"a writer failed:\n{report}"
    seen = {index for r in reports for index in r.seen}
    assert len(seen) >= 2, f"the readers saw only values {sorted(seen)}: the run proves nothing\n{report}"
    assert set(settled.values()) == {"ok"}, f"after the writers stopped, not every mount shows {last[:16]!r}: {settled}"


def converged(path: Path, expected: bytes) -> str:
    """Once writes stop, a mount shows the last committed value within the TTL (and some slack)."""
    try:
        wait_until(lambda: open_read(path) == expected, float(TTL) + 2, message=f"{path} does not show it")
    except AssertionError as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_torture(tmp_path: Path, mode: str) -> None:
    torture(tmp_path, mode, SHORT)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_torture_long(tmp_path: Path, mode: str) -> None:
    torture(tmp_path, mode, LONG)
