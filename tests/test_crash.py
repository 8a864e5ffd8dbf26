"""Crash safety: SIGKILL the daemon in the middle of writes, and concurrent writers on one database.

1. A loop of writes through the mount (shell `printf > f`, Python whole-file writes in chunks, and
   in-place rewrites with truncate) while the daemon is SIGKILLed at random moments. After every
   restart each secret holds its old or its new value (both candidates are tracked): never a
   partial, mixed or undecryptable one, by `secretfs get` and by reading through the new mount.
   Short by default (CRASH_SECONDS); the long version runs with --run-slow.
2. Two mounts and the CLI write the same SQLite or PostgreSQL database at once: every final value
   is a value some writer committed, no committed write is lost beyond last-writer-wins, and the
   only error is the documented one (EIO / exit 4 when the database stays busy past the timeout).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from secretfs import mounts
from tests.support.mount import SECRETFS, Instance, Mounted, base_env, force_unmount, make_instance, mounted
from tests.support.wait import wait_until

pytestmark = pytest.mark.mount

CRASH_SECONDS = float(os.environ.get("SECRETFS_CRASH_SECONDS", "30"))
SIZES = (0, 1, 17, 4095, 4096, 65537, 200_000, 700_000)
NAMES = ("one", "dir/two", "dir/sub/three", "four", "five")


def make_value(name: str, seq: int, size: int) -> bytes:
    """A value whose every part names its write: a prefix of one and a suffix of another never match."""
    tag = hashlib.sha256(f"{name}#{seq}".encode()).hexdigest()[:16].encode()
    head = b"<" + tag + b">"
    if size <= len(head) * 2:
        return (head * 2)[: max(size, 1)] if size else b""
    body = (tag * (size // len(tag) + 1))[: size - 2 * len(head)]
    return head + body + head


# ----- 1. SIGKILL during writes -----------------------------------------------------------------


@dataclass
class Tracker:
    """For each secret, the values it may hold now (one when settled, two while a write is in doubt)."""

    candidates: dict[str, set[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0
    writes_ok: int = 0
    writes_failed: int = 0

    def begin(self, name: str, value: bytes) -> None:
        with self.lock:
            self.candidates[name].add(value)

    def done(self, name: str, value: bytes, *, certain: bool = True) -> None:
        with self.lock:
            if value and certain:
                self.candidates[name] = {value}
            # Truncating to empty without a write is committed at release, just after close()
            # returns (see _flush_commits in fuse_ops): until seen, the old value is still possible.
            self.writes_ok += 1

    def failed(self) -> None:
        with self.lock:
            self.writes_failed += 1


def write_shell(path: Path, value: bytes) -> None:
    # printf is a shell builtin: the value passes through the environment, not any argv.
    # The shell's last close of the file is the dup2() that restores its stdout, and dup2 drops
    # the error of the close it implies: a commit that failed because the daemon was killed still
    # exits 0. So a shell write that "succeeded" stays in doubt (see writer_loop).
    result = subprocess.run(
        ["sh", "-c", 'printf "%s" "$V" > "$F"'],
        env={"PATH": "/usr/bin:/bin", "V": value.decode("ascii"), "F": str(path)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise OSError(errno.EIO, f"printf exited {result.returncode}")


def write_chunks(path: Path, value: bytes) -> None:
    with open(path, "wb") as handle:
        for start in range(0, len(value), 32768):
            handle.write(value[start : start + 32768])
            handle.flush()


def rewrite_in_place(path: Path, value: bytes) -> None:
    # Overwrite from offset 0 in small pieces, then cut: halfway, the buffer holds new + old bytes.
    fd = os.open(path, os.O_RDWR)
    try:
        for start in range(0, len(value), 50_000):
            os.pwrite(fd, value[start : start + 50_000], start)
        os.ftruncate(fd, len(value))
    finally:
        os.close(fd)


WRITERS = (write_shell, write_chunks, rewrite_in_place)


def writer_loop(
    root: Path, names: tuple[str, ...], tracker: Tracker, stop: threading.Event, rng: random.Random
) -> None:
    # Each writer has its own names: writes to one name are sequential, so old/new is well defined.
    while not stop.is_set():
        name = rng.choice(names)
        with tracker.lock:
            tracker.seq += 1
            seq = tracker.seq
        method = rng.choice(WRITERS)
        size = rng.choice(SIZES[:6] if method is write_shell else SIZES)
        value = make_value(name, seq, size)
        tracker.begin(name, value)
        try:
            method(root / name, value)
        except OSError:
            tracker.failed()
            return  # the daemon is gone (ENOTCONN / ECONNABORTED): stop until the next round
        tracker.done(name, value, certain=method is not write_shell)


def start_daemon(instance: Instance, mountpoint: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*SECRETFS, "mount", "-f", str(mountpoint), *os.environ.get("CRASH_MOUNT_ARGS", "").split()],
            env=instance.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def live() -> bool:
        if mounts.is_live(mountpoint):
            return True
        if proc.poll() is not None:
            raise AssertionError(f"mount exited {proc.returncode}: {log.read_text()[-3000:]}")
        return False

    try:
        wait_until(live, 30, message=lambda: f"mount not live: {log.read_text()[-3000:]}")
    except AssertionError:
        proc.kill()  # nothing to do if it exited already
        raise
    return proc


def check_values(instance: Instance, tracker: Tracker, mountpoint: Path, cli_names: tuple[str, ...]) -> None:
    """Every secret holds one of its candidates (through the live mount, and `secretfs get` for
    cli_names); then it is settled to that value."""
    for name in NAMES:
        got = (mountpoint / name).read_bytes()
        options = tracker.candidates[name]
        if got not in options:
            stored = instance.cli("get", name, check=False)
            raise AssertionError(
                f"{name}: {len(got)} bytes through the mount ({len(stored.stdout)} by `secretfs get`, "
                f"exit {stored.returncode}), neither old nor new ({sorted(len(o) for o in options)})"
            )
        if name in cli_names:
            result = instance.cli("get", name, check=False)
            assert result.returncode == 0, f"{name}: exit {result.returncode}: {result.stderr.decode()[-500:]}"
            assert result.stdout == got, name
        tracker.candidates[name] = {got}


def crash_loop(tmp_path: Path, seconds: float, seed: int) -> tuple[int, Tracker]:
    rng = random.Random(seed)
    instance = make_instance(tmp_path)
    tracker = Tracker()
    for name in NAMES:
        value = make_value(name, 0, 100)
        instance.cli("put", name, input=value)
        tracker.candidates[name] = {value}
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "mnt.log"
    deadline = time.monotonic() + seconds
    rounds = 0
    try:
        while time.monotonic() < deadline:
            proc = start_daemon(instance, mountpoint, log)
            # After a restart: old or new value, through the new mount and (one name a round) the CLI.
            check_values(instance, tracker, mountpoint, (rng.choice(NAMES),))
            stop = threading.Event()
            writers = [
                threading.Thread(
                    target=writer_loop, args=(mountpoint, NAMES[i::2], tracker, stop, random.Random(rng.random()))
                )
                for i in range(2)
            ]
            for thread in writers:
                thread.start()
            time.sleep(rng.uniform(0.05, 0.9))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            for thread in writers:
                thread.join(timeout=60)
                assert not thread.is_alive(), "a writer hung after the daemon was killed"
            force_unmount(mountpoint)
            assert mounts.find_mount(mountpoint) is None
            rounds += 1
        proc = start_daemon(instance, mountpoint, log)
        try:
            check_values(instance, tracker, mountpoint, NAMES)
        finally:
            force_unmount(mountpoint)
            proc.wait(timeout=10)
    finally:
        force_unmount(mountpoint)
    db = sqlite3.connect(instance.data_dir / "secretfs.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    return rounds, tracker


def test_sigkill_during_writes_keeps_old_or_new(tmp_path: Path) -> None:
    rounds, tracker = crash_loop(tmp_path, CRASH_SECONDS, seed=int(time.time()))
    assert rounds >= 5, rounds
    assert tracker.writes_ok >= rounds  # the loop really wrote between kills
    assert tracker.writes_failed >= 1  # and really killed the daemon mid-write at least once


@pytest.mark.slow
def test_sigkill_during_writes_long(tmp_path: Path) -> None:
    rounds, tracker = crash_loop(tmp_path, 300, seed=int(time.time()))
    assert rounds >= 50 and tracker.writes_failed >= 10


# ----- flushes that are not the writer's last close ----------------------------------------------


def stored(instance: Instance, name: str) -> bytes:
    return instance.cli("get", name).stdout


def test_flush_of_a_dup_before_any_write_does_not_store_empty(instance: Instance, mnt: Mounted) -> None:
    # What a shell does for `printf x > f`: open(O_TRUNC), dup2 onto stdout, close the original
    # (a flush with nothing written yet), write, exit. The value goes from old to new, never empty.
    instance.cli("put", "f", input=b"old")
    fd = os.open(mnt.path / "f", os.O_WRONLY | os.O_TRUNC)
    copy = os.dup(fd)
    os.close(fd)
    assert stored(instance, "f") == b"old"
    os.write(copy, b"new")
    os.close(copy)
    assert stored(instance, "f") == b"new"


def test_flush_from_a_forked_child_does_not_store_a_partial_value(instance: Instance, mnt: Mounted) -> None:
    # A child that inherited the descriptor closes it (exec): that flush is not the writer's close.
    instance.cli("put", "f", input=b"old")
    fd = os.open(mnt.path / "f", os.O_WRONLY | os.O_TRUNC)
    os.set_inheritable(fd, True)
    os.write(fd, b"first half, ")
    subprocess.run(["true"], close_fds=False, check=True)
    assert stored(instance, "f") == b"old"
    os.write(fd, b"second half")
    os.close(fd)
    assert stored(instance, "f") == b"first half, second half"


def test_truncate_to_empty_without_writing_is_stored(instance: Instance, mnt: Mounted) -> None:
    instance.cli("put", "f", input=b"old")
    subprocess.run(["sh", "-c", ': > "$F"'], env={"F": str(mnt.path / "f"), "PATH": "/usr/bin:/bin"}, check=True)
    # committed at release, which the kernel sends after close() returns
    wait_until(lambda: stored(instance, "f") == b"", 10, interval=0.1, message="f was not stored empty")


def test_ftruncate_applies_to_the_open_files_buffer(instance: Instance, mnt: Mounted) -> None:
    instance.cli("put", "f", input=b"xyz123")
    with open(mnt.path / "f", "r+b") as handle:
        handle.write(b"ab")
        handle.truncate()
        assert stored(instance, "f") == b"xyz123"  # nothing committed before close
    assert stored(instance, "f") == b"ab"


# ----- 2. Concurrent writers on one database ------------------------------------------------------


@dataclass
class Write:
    writer: str
    name: str
    value: bytes
    started: float
    ended: float
    error: int | None  # errno (mounts) or exit code (CLI); None when committed


SHARED = ("shared/a", "shared/b", "c")


def shared_inode_winners(writes: list[Write], final: bytes) -> list[Write]:
    """The writes that, together, left `final` through one shared inode.

    Two threads of one process writing one name through the same mount share the file's inode and
    its pending content (docs/design.md, "Open files"), as on a local filesystem: when their opens
    and writes interleave, the later write lands on the earlier one's bytes, and a shorter value
    leaves the longer one's tail. Such a pair, overlapping in time, may leave x + y[len(x):].
    Returns the pair, the later-ended first, or [] when no such pair explains final."""
    for x in writes:
        for y in writes:
            same_mount = x.writer[:2] == y.writer[:2] and x.writer.startswith("m")
            overlapping = x.started < y.ended and y.started < x.ended
            if x is not y and same_mount and overlapping and x.value + y.value[len(x.value) :] == final:
                return sorted((x, y), key=lambda w: w.ended, reverse=True)
    return []


def mount_writer(
    label: str, root: Path, stop: threading.Event, log: list[Write], lock: threading.Lock, rng: random.Random
) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        name = rng.choice(SHARED)
        value = f"{label}-{seq}-".encode() + os.urandom(rng.choice((4, 400, 40_000))).hex().encode()
        started = time.monotonic()
        error: int | None = None
        try:
            with open(root / name, "wb") as handle:
                handle.write(value)
        except OSError as exc:
            error = exc.errno or -1
        with lock:
            log.append(Write(label, name, value, started, time.monotonic(), error))
        if rng.random() < 0.3:
            try:
                got = (root / rng.choice(SHARED)).read_bytes()
            except FileNotFoundError:
                got = b""
            assert got == b"" or got[:1].isalpha(), "a read returned something no writer wrote"


def cli_writer(
    instance: Instance, stop: threading.Event, log: list[Write], lock: threading.Lock, rng: random.Random
) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        name = rng.choice(SHARED)
        value = f"cli-{seq}-".encode() + os.urandom(16).hex().encode()
        started = time.monotonic()
        result = instance.cli("put", name, input=value, check=False)
        with lock:
            log.append(Write("cli", name, value, started, time.monotonic(), result.returncode or None))


def concurrent_writers(instance: Instance, tmp_path: Path, seconds: float) -> None:
    opts = ("--cache-mode", "direct", "--cache-ttl", "0")
    with mounted(instance, tmp_path / "m1", *opts) as m1, mounted(instance, tmp_path / "m2", *opts) as m2:
        stop = threading.Event()
        log: list[Write] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(target=mount_writer, args=(f"m{i}w{j}", m.path, stop, log, lock, random.Random()))
            for i, m in enumerate((m1, m2), 1)
            for j in range(2)
        ]
        threads.append(threading.Thread(target=cli_writer, args=(instance, stop, log, lock, random.Random())))
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive()
        finals: dict[str, bytes] = {}
        for name in SHARED:
            result = instance.cli("get", name, check=False)
            if result.returncode == 6:
                continue
            assert result.returncode == 0, result.stderr
            finals[name] = result.stdout
            assert (m1.path / name).read_bytes() == result.stdout
            assert (m2.path / name).read_bytes() == result.stdout

    committed = [w for w in log if w.error is None]
    errors = [w for w in log if w.error is not None]
    assert len(committed) >= 20, len(committed)
    assert {w.writer for w in committed} >= {"m1w0", "m2w0", "cli"}
    # The documented errors only: EIO from a mount, exit 4 (backend unavailable) from the CLI.
    for w in errors:
        assert (w.writer == "cli" and w.error == 4) or (w.writer != "cli" and w.error == errno.EIO), w
    assert len(errors) <= len(log) // 10, f"{len(errors)} of {len(log)} writes failed"
    for name in SHARED:
        writes = [w for w in committed if w.name == name]
        if not writes:
            continue
        final = finals[name]
        winners = [w for w in writes if w.value == final] or shared_inode_winners(
            [w for w in log if w.name == name], final
        )
        assert winners, f"{name}: the final value ({len(final)} bytes, {final[:12]!r}) is no committed write's"
        # Last writer wins: no committed write began after the winner had finished.
        winner = winners[0]
        later = [w for w in writes if w.started > winner.ended]
        assert not later, f"{name}: {len(later)} committed write(s) after the final one were lost"


def test_two_mounts_and_cli_on_one_sqlite_database(tmp_path: Path) -> None:
    instance = make_instance(tmp_path)
    for name in ("seed", *SHARED):
        instance.cli("put", name, input=b"x")
    concurrent_writers(instance, tmp_path, 8)
    db = sqlite3.connect(instance.data_dir / "secretfs.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert instance.cli("get", "seed").stdout == b"x"


def test_two_mounts_and_cli_on_one_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    data = tmp_path / "data"
    instance = Instance(
        data, base_env(data, ARCHESTRA_DATABASE_URL=pg_url, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=os.urandom(16).hex())
    )
    for name in ("seed", *SHARED):
        instance.cli("put", name, input=b"x")
    concurrent_writers(instance, tmp_path, 8)
    assert instance.cli("get", "seed").stdout == b"x"
