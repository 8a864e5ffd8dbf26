"""Helpers for the open-file and concurrency torture tests: committed values, reader processes, a watchdog.

The readers run as other processes (`python -m tests.support.torture KIND PATH SECONDS`), so they
share nothing with the test process but the mounts. This module imports nothing from secretfs, so a
reader starts in a few tens of milliseconds. Each reader prints JSON lines,
`{"kind", "count", "bad_count", "bad_samples": [[len, first16, last16], ...], "seen": [value index, ...]}`,
every PROGRESS_EVERY seconds and at the end; the last one counts. An error (OSError, an empty mapping)
is a bad read, its sample says which.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import functools
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The values a torture run ever commits, the initial one first. Each repeats its own short pattern
# (disjoint characters, prime lengths) over its whole length, so a read that splices two values, cuts
# one, shifts a page or fills a hole with NULs matches none of them. Sizes straddle a page.
SIZES = (10, 4095, 4097, 8000, 200 * 1024)
PATTERNS = ("abcdefg", "hijklmnopqr", "ABCDEFGHIJKLM", "NOPQRSTUVWXYZ0123", "456789!#$%&()*+-./:")
SAMPLES_KEPT = 5
PROGRESS_EVERY = 0.25  # seconds between a reader's progress lines
CHUNK = 1 << 16  # read in 64 KiB steps: the 200 KiB value takes several reads, which must not tear


def committed_values() -> list[bytes]:
    values = []
    for size, pattern in zip(SIZES, PATTERNS, strict=True):
        values.append((pattern * (size // len(pattern) + 1))[:size].encode("ascii"))
    return values


def sample(data: bytes) -> list[object]:
    """What a bad read looked like: its length, its first and last 16 bytes."""
    return [len(data), repr(data[:16]), repr(data[-16:])]


def error_sample(exc: BaseException) -> list[object]:
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, str(code)) if isinstance(code, int) else type(exc).__name__
    return [-1, f"<{name}>", str(exc)[:80]]


# ----- readers (run in other processes) ---------------------------------------------------------


def read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def pread_whole(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def open_read(path: str | Path) -> bytes:
    """(a) open, read until EOF, close."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_to_eof(fd)
    finally:
        os.close(fd)


def map_read(path: str | Path, shared: bool) -> bytes:
    """(c) open, map the whole file (MAP_SHARED read-only, or MAP_PRIVATE), copy every byte."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if shared:
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        else:
            mapping = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        with mapping:
            return mapping[:]
    finally:
        os.close(fd)


READER_KINDS = ("open-read", "held-pread", "mmap-private", "mmap-shared")


def run_reader(kind: str, path: str, seconds: float) -> None:
    """Read in a loop for `seconds`; print a report line now and then and at the end.

    The progress lines matter when the process dies: a mapping whose file shrank under it raises
    SIGBUS, which Python cannot catch; the test then still learns what the reader had seen.
    """
    values = {value: index for index, value in enumerate(committed_values())}
    if kind not in READER_KINDS:
        raise SystemExit(f"unknown reader kind {kind!r}")
    held = os.open(path, os.O_RDONLY) if kind == "held-pread" else None
    read: Callable[[], bytes]
    if held is not None:
        read = functools.partial(pread_whole, held)  # (b) the descriptor held for the whole run
    elif kind == "open-read":
        read = functools.partial(open_read, path)
    else:
        read = functools.partial(map_read, path, shared=kind == "mmap-shared")
    count = bad = 0
    samples: list[list[object]] = []
    seen: set[int] = set()

    def report() -> None:
        line = {"kind": kind, "count": count, "bad_count": bad, "bad_samples": samples, "seen": sorted(seen)}
        print(json.dumps(line), flush=True)

    deadline = time.monotonic() + seconds
    next_report = time.monotonic() + PROGRESS_EVERY
    try:
        while time.monotonic() < deadline:
            if time.monotonic() > next_report:
                report()
                next_report += PROGRESS_EVERY
            count += 1
            try:
                data = read()
            except (OSError, ValueError) as exc:  # ValueError: mmap of a file that looks empty
                bad += 1
                if len(samples) < SAMPLES_KEPT:
                    samples.append(error_sample(exc))
                continue
            index = values.get(data)
            if index is None:
                bad += 1
                if len(samples) < SAMPLES_KEPT:
                    samples.append(sample(data))
            else:
                seen.add(index)
    finally:
        if held is not None:
            os.close(held)
    report()


def main(argv: list[str]) -> int:
    faulthandler.enable()  # a SIGBUS from a mapping (the file shrank under it) leaves a trace on stderr
    kind, path, seconds = argv
    run_reader(kind, path, float(seconds))
    return 0


# ----- the test side ----------------------------------------------------------------------------


@dataclass
class Report:
    """What a reader process printed."""

    kind: str
    count: int
    bad_count: int
    bad_samples: list[list[object]]
    seen: list[int]


@dataclass
class Reader:
    """A reader process and what it reported."""

    label: str
    proc: subprocess.Popen[bytes]
    report: Report | None = None
    problem: str | None = None  # it died, hung or printed no report

    def collect(self, timeout: float) -> None:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=30)
            self.problem = f"still running after {timeout:.0f}s (killed)"
        code = self.proc.returncode
        if self.problem is None and code != 0:
            why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            self.problem = f"died ({why}) after the reads counted here"
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            self.report = Report(**json.loads(lines[-1]))
        except (ValueError, IndexError, TypeError):
            self.problem = self.problem or f"no report (stdout {out[-200:]!r})"
        if self.problem is not None:
            self.problem += f"; stderr: {err.decode(errors='replace')[-600:]}"

    def summary(self) -> str:
        r = self.report
        seen = "no report" if r is None else f"{r.count} reads, {r.bad_count} bad {r.bad_samples}, values seen {r.seen}"
        return f"{self.label}: {seen}" + (f"; {self.problem}" if self.problem else "")


def start_reader(label: str, kind: str, path: Path, seconds: float) -> Reader:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.torture", kind, str(path), str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    return Reader(label, proc)


@contextlib.contextmanager
def kill_after(proc: subprocess.Popen[bytes] | None, seconds: float) -> Iterator[None]:
    """Bound a test that drives a mount: past `seconds`, SIGKILL the daemon.

    The kernel then ends every pending request of that mount with ENOTCONN, so a hung FUSE call
    fails the test instead of hanging it (`mounted()` unmounts afterwards as usual).
    """
    if proc is None:
        yield
        return

    def kill() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
