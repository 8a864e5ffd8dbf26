"""Open files behave as on a local filesystem: appends, a writer's own size, unlink and rename of open
files, created files before their close, unlinked open files, mmap, and held descriptors.

Each test drives a real mount in both cache modes and expects exactly what ext4 or tmpfs does;
test_expectations_hold_on_a_local_filesystem runs the same bodies against a plain directory, so an
expectation here is POSIX's, not a guess. Every body collects its observations and fails once, with
all of them (an operation that fails shows as its errno, e.g. `<ENOENT>`).

"Another process changes the secret" is `secretfs put` for a mount, and an atomic replacement
(write a temp file, rename it over) for the plain directory, which is what a store commit is.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.mount import Instance, Mounted, make_instance, mounted
from tests.support.torture import kill_after, open_read, read_to_eof

MODES = ["kernel", "direct"]
TTL = 1.0
TEST_LIMIT = 150.0  # seconds: past this the daemon is killed, so a hung call fails instead of hanging


# ----- observing --------------------------------------------------------------------------------


def err(exc: OSError) -> str:
    return f"<{errno.errorcode.get(exc.errno or 0, str(exc.errno))}>"


def attempt(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """func's result, or its errno as `<ENAME>`: a failed operation is an observation too."""
    try:
        return func(*args, **kwargs)
    except OSError as exc:
        return err(exc)


def short(value: object) -> str:
    if isinstance(value, bytes) and len(value) > 48:
        return f"{len(value)} bytes {value[:20]!r}...{value[-20:]!r} ({value.count(0)} NUL)"
    if isinstance(value, bytes):
        return f"{value!r} ({len(value)} bytes)"
    return repr(value)


def first_difference(got: bytes, want: bytes) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))


class Expect:
    """Collects mismatches; verify() fails once with all of them."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def equal(self, what: str, got: object, want: object) -> None:
        if got == want:
            return
        where = ""
        if isinstance(got, bytes) and isinstance(want, bytes):
            where = f" (first difference at offset {first_difference(got, want)})"
        self.problems.append(f"{what}: got {short(got)}, expected {short(want)}{where}")

    def one_of(self, what: str, got: object, allowed: Sequence[object]) -> None:
        if got not in allowed:
            self.problems.append(f"{what}: got {short(got)}, expected one of {[short(a) for a in allowed]}")

    def verify(self) -> None:
        assert not self.problems, "\n".join(self.problems)


def stat_of(path: Path | str) -> str:
    """`ok` if path can be stat'ed, else its errno."""
    result = attempt(os.stat, path)
    return "ok" if isinstance(result, os.stat_result) else str(result)


def listing(directory: Path) -> Any:
    result = attempt(os.listdir, directory)
    return sorted(result) if isinstance(result, list) else result


def length(data: Any) -> Any:
    """len() of what a read returned, or the errno it gave instead."""
    return len(data) if isinstance(data, bytes) else data


def field_of(result: Any, name: str) -> Any:
    """An attribute of an os.stat_result, or the errno the call gave instead."""
    return getattr(result, name) if isinstance(result, os.stat_result) else result


def write_file(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o600)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def mapped(fd: int, **how: int) -> Any:
    """Every byte of a mapping of fd (mmap.mmap(fd, 0, **how)), or the errno of the mmap."""
    try:
        with mmap.mmap(fd, 0, **how) as mapping:
            return mapping[:]
    except OSError as exc:
        return err(exc)


def pattern(size: int, alphabet: bytes = b"0123456789abcdefghijklmnopqrstuvwxyz") -> bytes:
    return (alphabet * (size // len(alphabet) + 1))[:size]


# ----- where the bodies run: a mount, or a plain directory --------------------------------------


@dataclass
class Target:
    root: Path
    mode: str  # "kernel", "direct", or "local" (a plain directory: the POSIX reference)
    instance: Instance | None = None
    mount: Mounted | None = None

    def put(self, name: str, value: bytes) -> None:
        """Another process replaces the value (`secretfs put`)."""
        if self.instance is None:
            temp = self.root / f".put-{os.getpid()}"
            write_file(temp, value)
            os.replace(temp, self.root / name)
        else:
            self.instance.cli("put", name, input=value)

    def seed(self, values: dict[str, bytes]) -> None:
        """Store values without this mount (many at once: in process, on the same database)."""
        if self.instance is None:
            for name, value in values.items():
                (self.root / name).parent.mkdir(parents=True, exist_ok=True)
                self.put(name, value)
            return
        from secretfs.config import load_settings
        from secretfs.render import parse
        from secretfs.stores.sql_setup import open_sql_store

        store = open_sql_store(load_settings(env=self.instance.env))
        try:
            for name, value in values.items():
                store.write(name, parse(value))
        finally:
            store.close()

    def stored(self, name: str) -> bytes | None:
        """What the store holds (`secretfs get`), None if it has no such secret (non-zero exit)."""
        if self.instance is None:
            result = attempt(open_read, self.root / name)
            return result if isinstance(result, bytes) else None
        got = self.instance.cli("get", name, check=False)
        return got.stdout if got.returncode == 0 else None

    def log(self) -> str:
        return "" if self.mount is None else self.mount.log.read_text(errors="replace")


@contextlib.contextmanager
def target(tmp_path: Path, mode: str) -> Iterator[Target]:
    if mode == "local":
        root = tmp_path / "local"
        root.mkdir()
        yield Target(root, mode)
        return
    instance = make_instance(tmp_path)
    with (
        mounted(instance, tmp_path / "m", "--cache-mode", mode, "--cache-ttl", str(TTL)) as m,
        kill_after(m.proc, TEST_LIMIT),
    ):
        yield Target(m.path, mode, instance, m)


# ----- the bodies -------------------------------------------------------------------------------


def check_appends(t: Target) -> None:
    """`printf x >> f` 300 times after reading 50 other secrets; then write, close, reopen, pwrite."""
    e = Expect()
    # Fifty others of 64 KiB (a certificate bundle's size): the appends race with what the mount
    # does for secrets it has served, and bigger values widen the race. Two files of 300 appends each:
    # one opened and written here, one by `sh -c 'printf x >> f'`.
    others = {f"others/s{i:02d}": pattern(64 * 1024, f"other secret {i}\n".encode()) for i in range(50)}
    t.seed(others)
    initial = b"initial line\n"
    for round_ in range(2):
        t.put(f"appended-{round_}", initial)
    for name, value in others.items():
        e.equal(f"read {name}", attempt(open_read, t.root / name), value)
    for round_ in range(2):
        path = t.root / f"appended-{round_}"
        for _ in range(300):
            if round_ == 0:  # what the shell does for `printf x >> f`, in this process
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    assert os.write(fd, b"x") == 1
                finally:
                    os.close(fd)
            else:  # the shell itself: open, dup2 onto stdout, close the original, write, exit
                subprocess.run(["sh", "-c", 'printf x >> "$1"', "sh", str(path)], check=True, timeout=30)
        got = attempt(open_read, path)
        e.equal(f"{path.name}: NUL bytes after 300 appends", got.count(b"\0") if isinstance(got, bytes) else got, 0)
        e.equal(f"{path.name}: content after 300 appends", got, initial + b"x" * 300)

    path = t.root / "reopened"
    for i in range(50):
        value = f"value {i:02d} ".encode() + bytes([97 + i % 26]) * (i * 37 % 300) + b"\n"
        write_file(path, value)  # O_WRONLY|O_CREAT|O_TRUNC, write, close
        fd = os.open(path, os.O_WRONLY)  # at once: no O_TRUNC, one byte at offset 0
        try:
            assert os.pwrite(fd, b"#", 0) == 1
        finally:
            os.close(fd)
        e.equal(f"round {i}: after the reopen's pwrite at 0", attempt(open_read, path), b"#" + value[1:])
    e.verify()


def check_writer_size(t: Target) -> None:
    """A writer's fstat and lseek(SEEK_END) see its own extending writes before close; O_APPEND too."""
    e = Expect()
    t.seed({"grown": b"12345", "journal": b"abc\n"})
    path = t.root / "grown"
    fd = os.open(path, os.O_RDWR)
    try:
        e.equal("pread before writing", os.pread(fd, 100, 0), b"12345")
        assert os.pwrite(fd, b"abcdefghij", 3) == 10
        e.equal("fstat st_size after pwrite to 13", field_of(attempt(os.fstat, fd), "st_size"), 13)
        e.equal("lseek(0, SEEK_END) after pwrite to 13", attempt(os.lseek, fd, 0, os.SEEK_END), 13)
        assert os.pwrite(fd, b"Z", 20) == 1  # past the end: a hole of NULs, then Z
        e.equal("fstat st_size after pwrite to 21", field_of(attempt(os.fstat, fd), "st_size"), 21)
        e.equal("lseek(0, SEEK_END) after pwrite to 21", attempt(os.lseek, fd, 0, os.SEEK_END), 21)
        e.equal("pread through the writer", attempt(os.pread, fd, 100, 0), b"123abcdefghij" + b"\0" * 7 + b"Z")
    finally:
        os.close(fd)
    e.equal("content after close", attempt(open_read, path), b"123abcdefghij" + b"\0" * 7 + b"Z")

    path = t.root / "journal"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        assert os.write(fd, b"one\n") == 4
        e.equal("O_APPEND: fstat after 'one'", field_of(attempt(os.fstat, fd), "st_size"), 8)
        # A stat by path between the writes (as another process's `ls -l` would) sees the size written
        # so far, and must not move where the next append lands.
        e.equal("O_APPEND: stat by path after 'one'", field_of(attempt(os.stat, path), "st_size"), 8)
        assert os.write(fd, b"two\n") == 4
        e.equal("O_APPEND: fstat after 'two'", field_of(attempt(os.fstat, fd), "st_size"), 12)
        assert os.write(fd, b"three\n") == 6
        e.equal("O_APPEND: fstat after 'three'", field_of(attempt(os.fstat, fd), "st_size"), 18)
    finally:
        os.close(fd)
    e.equal("O_APPEND: content after close", attempt(open_read, path), b"abc\none\ntwo\nthree\n")
    e.verify()


def check_unlink_and_rename_while_writing(t: Target) -> None:
    """A file unlinked while open for writing stays gone after close; renamed, its data go with it."""
    e = Expect()
    t.seed({"doomed": b"old", "a": b"old-a", "b": b"old-b"})
    path = t.root / "doomed"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.write(fd, b"new") == 3
        e.equal("unlink while open for writing", attempt(os.unlink, path), None)
    finally:
        e.equal("close after unlink", attempt(os.close, fd), None)
    for when in ("right after close", "0.5 s after close"):
        e.equal(f"listed {when}", "doomed" in listing(t.root), False)
        e.equal(f"stat {when}", stat_of(path), "<ENOENT>")
        e.equal(f"`secretfs get doomed` {when} (None: exits non-zero)", t.stored("doomed"), None)
        time.sleep(0.5)

    a, b = t.root / "a", t.root / "b"
    fd = os.open(a, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.write(fd, b"new-a") == 5
        e.equal("rename a -> b while a is open for writing", attempt(os.rename, a, b), None)
    finally:
        e.equal("close after rename", attempt(os.close, fd), None)
    for when in ("right after close", "0.5 s after close"):
        e.equal(f"b {when}", attempt(open_read, b), b"new-a")
        e.equal(f"stat a {when}", stat_of(a), "<ENOENT>")
        e.equal(f"listing {when}", listing(t.root), ["b"])
        e.equal(f"`secretfs get b` {when}", t.stored("b"), b"new-a")
        e.equal(f"`secretfs get a` {when} (None: exits non-zero)", t.stored("a"), None)
        time.sleep(0.5)
    e.verify()


def check_created_file_before_close(t: Target) -> None:
    """A created file is there before its close: listed, stat'able, re-openable (sharing the content
    written so far), renamable, unlinkable; and an editor's save (write a temp file, flush it,
    os.replace it onto the target, then close) works."""
    e = Expect()
    t.seed({"dir/kept": b"kept\n", "dir/config": b"old config\n"})
    d = t.root / "dir"
    fds: list[int] = []
    try:
        fd1 = os.open(d / "new", os.O_CREAT | os.O_WRONLY, 0o600)
        fds.append(fd1)
        assert os.write(fd1, b"hello") == 5
        e.equal("listing before close", listing(d), ["config", "kept", "new"])
        st = attempt(os.stat, d / "new")
        e.equal("stat before close: regular file", stat.S_ISREG(st.st_mode) if not isinstance(st, str) else st, True)
        e.equal("stat before close: st_size", field_of(st, "st_size"), 5)
        fd2 = attempt(os.open, d / "new", os.O_CREAT | os.O_RDWR, 0o600)
        e.equal("second open O_CREAT|O_RDWR before close", isinstance(fd2, int) or fd2, True)
        if isinstance(fd2, int):
            fds.append(fd2)
            e.equal("second descriptor reads the pending content", attempt(os.pread, fd2, 100, 0), b"hello")
        assert os.write(fd1, b" world") == 6
        if isinstance(fd2, int):
            e.equal("... and what the first writes next", attempt(os.pread, fd2, 100, 0), b"hello world")
        e.equal("rename before close", attempt(os.rename, d / "new", d / "renamed"), None)
        e.equal("listing after the rename", listing(d), ["config", "kept", "renamed"])

        fd3 = os.open(d / "scratch", os.O_CREAT | os.O_WRONLY, 0o600)
        fds.append(fd3)
        assert os.write(fd3, b"scratch") == 7
        e.equal("unlink of another created file before close", attempt(os.unlink, d / "scratch"), None)
        e.equal("listing after the unlink", listing(d), ["config", "kept", "renamed"])
    finally:
        for fd in fds:
            e.equal("close", attempt(os.close, fd), None)
    e.equal("renamed file after close", attempt(open_read, d / "renamed"), b"hello world")
    e.equal("listing after close", listing(d), ["config", "kept", "renamed"])
    e.equal("`secretfs get dir/renamed`", t.stored("dir/renamed"), b"hello world")
    e.equal("`secretfs get dir/new` (None: exits non-zero)", t.stored("dir/new"), None)
    e.equal("`secretfs get dir/scratch` (None: exits non-zero)", t.stored("dir/scratch"), None)

    # The save pattern: a temp file in the same directory, flushed, replaced onto the target, closed.
    with tempfile.NamedTemporaryFile(dir=d, delete=False) as temp:
        temp.write(b"new config\n")
        temp.flush()
        e.equal("os.replace(temp, config) before close", attempt(os.replace, temp.name, d / "config"), None)
        e.equal("closing the temp file", attempt(temp.close), None)
    e.equal("config after close", attempt(open_read, d / "config"), b"new config\n")
    e.equal("the temp name after close", stat_of(temp.name), "<ENOENT>")
    e.equal("listing after the save", listing(d), ["config", "kept", "renamed"])
    e.equal("`secretfs get dir/config`", t.stored("dir/config"), b"new config\n")
    e.verify()


def check_unlinked_open_file(t: Target) -> None:
    """An open file that was unlinked: fstat works (st_nlink 0), the descriptor reads its content."""
    e = Expect()
    content = pattern(300 * 1024)  # larger than a read-ahead window: most of it is unread at unlink
    t.seed({"gone-ro": content, "gone-rw": content})
    for name, flags in (("gone-ro", os.O_RDONLY), ("gone-rw", os.O_RDWR)):
        path = t.root / name
        fd = os.open(path, flags)
        try:
            head = os.read(fd, 10)
            e.equal(f"{name}: unlink while open", attempt(os.unlink, path), None)
            st = attempt(os.fstat, fd)
            e.equal(f"{name}: fstat st_nlink after unlink", field_of(st, "st_nlink"), 0)
            e.equal(f"{name}: fstat st_size after unlink", field_of(st, "st_size"), len(content))
            rest = attempt(read_to_eof, fd)
            e.equal(
                f"{name}: reading the descriptor after unlink",
                head + rest if isinstance(rest, bytes) else rest,
                content,
            )
        finally:
            e.equal(f"{name}: close", attempt(os.close, fd), None)
        e.equal(f"{name}: stat after close", stat_of(path), "<ENOENT>")
    e.equal("'AttributeError' in the mount log", "AttributeError" in t.log(), False)
    e.verify()


def check_mmap(t: Target) -> None:
    """mmap of a read-only descriptor (and, outside direct mode, a shared mapping of an O_RDWR one)."""
    e = Expect()
    content = pattern(5000)  # not a whole number of pages
    t.seed({"mapped": content})
    path = t.root / "mapped"
    fd = os.open(path, os.O_RDONLY)
    try:
        e.equal("MAP_PRIVATE, PROT_READ", mapped(fd, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ), content)
        shared = mapped(fd, access=mmap.ACCESS_READ)  # MAP_SHARED, PROT_READ
        if t.mode == "direct":
            # direct mode opens every file direct_io, and the kernel may refuse a shared mapping of
            # such a file with ENODEV; README documents it. If it maps, the content must be right.
            e.one_of("MAP_SHARED of a read-only descriptor", shared, [content, "<ENODEV>"])
        else:
            e.equal("MAP_SHARED of a read-only descriptor", shared, content)
    finally:
        os.close(fd)
    if t.mode != "direct":
        fd = os.open(path, os.O_RDWR)
        try:
            e.equal("MAP_SHARED, PROT_READ|PROT_WRITE of an O_RDWR descriptor", mapped(fd), content)
        finally:
            os.close(fd)
    e.equal("content afterwards", attempt(open_read, path), content)
    e.verify()


def check_held_descriptor_agrees_with_fstat(t: Target) -> None:
    """A descriptor held across changes by another process: its fstat size and its reads agree."""
    e = Expect()
    values = [b"old value\n", b"a new value, longer than the old one\n", b"short\n"]
    t.put("held", values[0])
    fd = os.open(t.root / "held", os.O_RDONLY)
    try:
        e.equal("read before any change", os.pread(fd, 1 << 20, 0), values[0])
        for i, new in enumerate(values[1:], 1):
            t.put("held", new)
            time.sleep(TTL + 0.5)
            size = field_of(attempt(os.fstat, fd), "st_size")
            data = attempt(os.pread, fd, 1 << 20, 0)
            e.equal(f"change {i}: fstat st_size vs the length pread returns", size, length(data))
            e.one_of(f"change {i}: content", data, values[: i + 1])
            data = attempt(os.pread, fd, 1 << 20, 0)
            size = field_of(attempt(os.fstat, fd), "st_size")
            e.equal(f"change {i}: length pread returns vs fstat st_size after it", length(data), size)
    finally:
        os.close(fd)
    e.verify()


# ----- the tests --------------------------------------------------------------------------------


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_append_opens_and_reopen_overwrite(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_appends(t)


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_writer_sees_its_own_size(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_writer_size(t)


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_unlink_and_rename_of_a_file_open_for_writing(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_unlink_and_rename_while_writing(t)


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_created_file_is_there_before_close(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_created_file_before_close(t)


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_unlinked_open_file(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_unlinked_open_file(t)


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_mmap(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_mmap(t)


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_held_descriptor_agrees_with_fstat(tmp_path: Path, mode: str) -> None:
    with target(tmp_path, mode) as t:
        check_held_descriptor_agrees_with_fstat(t)


CHECKS: dict[str, Callable[[Target], None]] = {
    "appends": check_appends,
    "writer-size": check_writer_size,
    "unlink-rename-while-writing": check_unlink_and_rename_while_writing,
    "created-before-close": check_created_file_before_close,
    "unlinked-open-file": check_unlinked_open_file,
    "mmap": check_mmap,
    "held-descriptor": check_held_descriptor_agrees_with_fstat,
}


@pytest.mark.parametrize("finding", list(CHECKS))
def test_expectations_hold_on_a_local_filesystem(tmp_path: Path, finding: str) -> None:
    """The control: every body above passes on a plain directory (ext4 or tmpfs)."""
    with target(tmp_path, "local") as t:
        CHECKS[finding](t)
