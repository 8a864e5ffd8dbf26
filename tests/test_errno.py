"""Each row of the errno table (README "The file view"), provoked for real through a mount."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.mount import Instance, Mounted, mounted


def errno_of(func, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        func(*args)
    return int(info.value.errno or 0)


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def test_enoent_no_such_secret(mnt: Mounted) -> None:
    assert errno_of(open, mnt.path / "missing") == errno.ENOENT
    assert errno_of(os.unlink, mnt.path / "missing") == errno.ENOENT


def test_eacces_store_refused(instance: Instance, mnt: Mounted) -> None:
    # A name held by an Archestra Vault-reference row (is_vault) cannot be written by secretfs:
    # the database refuses (unique name), and the writer's close() reports it.
    db = sqlite3.connect(instance.data_dir / "secretfs.db")
    with db:
        db.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
            "VALUES ('0b7c7f4e-0000-4000-8000-000000000001', 'vaultref', '{\"path\": \"x\"}', 1, "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
        )
    db.close()
    assert errno_of(write, mnt.path / "vaultref", b"value") == errno.EACCES


@pytest.mark.mount
def test_erofs_read_only_mount(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "x", input=b"v")
    with mounted(instance, tmp_path / "ro", "--read-only") as m:
        assert errno_of(write, m.path / "x", b"new") == errno.EROFS
        assert errno_of(os.unlink, m.path / "x") == errno.EROFS
        assert errno_of(os.mkdir, m.path / "d") == errno.EROFS
        assert (m.path / "x").read_bytes() == b"v"


@pytest.mark.mount
def test_eio_backend_busy_beyond_timeout(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "x", input=b"old")
    with mounted(instance, tmp_path / "m", "--timeout", "1") as m:
        # Another process holds the write lock longer than the timeout: the write fails with EIO
        # within bounded time, and the old value is kept.
        db = sqlite3.connect(instance.data_dir / "secretfs.db", timeout=0, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            assert errno_of(write, m.path / "x", b"new") == errno.EIO
            assert time.monotonic() - started < 10
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert (m.path / "x").read_bytes() == b"old"


@pytest.mark.mount
def test_eio_tampered_ciphertext_only_that_file(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "good", input=b"fine")
    instance.cli("put", "bad", input=b"tampered-marker-value")
    db = sqlite3.connect(instance.data_dir / "secretfs.db")
    with db:
        (raw,) = db.execute("SELECT secret FROM secret WHERE name = 'bad'").fetchone()
        envelope = json.loads(raw)
        version, iv, tag, ct = envelope["__encrypted"].split(":")
        flipped = ("B" if ct[0] != "B" else "C") + ct[1:]
        envelope["__encrypted"] = ":".join((version, iv, tag, flipped))
        db.execute("UPDATE secret SET secret = ? WHERE name = 'bad'", (json.dumps(envelope),))
    db.close()
    with mounted(instance, tmp_path / "m") as m:
        assert errno_of((m.path / "bad").read_bytes) == errno.EIO
        assert (m.path / "good").read_bytes() == b"fine"
    log = (tmp_path / "m.log").read_text()
    assert "'bad'" in log and "cannot be decrypted" in log
    assert "tampered-marker-value" not in log


def test_einval_enametoolong_efbig(instance: Instance, tmp_path: Path, mnt: Mounted) -> None:
    # A name over 256 characters (each segment is fine for the kernel).
    (mnt.path / ("d" * 200)).mkdir()
    assert errno_of(write, mnt.path / ("d" * 200) / ("f" * 100), b"x") == errno.ENAMETOOLONG
    # A segment over 255 bytes: the kernel itself refuses before secretfs sees it.
    assert errno_of(write, mnt.path / ("g" * 256), b"x") == errno.ENAMETOOLONG
    # A name that is not UTF-8 cannot be a secret name.
    assert errno_of(write, os.fsencode(str(mnt.path)) + b"/bad\xff", b"x") == errno.EINVAL
    # Over 1 MiB.
    assert errno_of(write, mnt.path / "big", b"x" * (1024 * 1024 + 1)) == errno.EFBIG
    assert not (mnt.path / "big").exists()
    # In the keys layout a file cannot sit at the root: EINVAL.
    with mounted(instance, tmp_path / "keys", "--layout", "keys") as k:
        assert errno_of(write, k.path / "loose", b"x") == errno.EINVAL


def test_eperm_special_bits_and_links(mnt: Mounted) -> None:
    (mnt.path / "f").write_bytes(b"v")
    assert errno_of(os.chmod, mnt.path / "f", 0o4644) == errno.EPERM  # setuid
    assert errno_of(os.chmod, mnt.path / "f", 0o1600) == errno.EPERM  # sticky
    assert errno_of(os.symlink, "f", mnt.path / "link") == errno.EPERM
    assert errno_of(os.link, mnt.path / "f", mnt.path / "hard") == errno.EPERM
    os.chmod(mnt.path / "f", 0o644)  # a secret keeps its own mode and owner (tests/test_file_attrs.py)
    os.chown(mnt.path / "f", 12345, 12345)
    assert (os.stat(mnt.path / "f").st_mode & 0o7777, os.stat(mnt.path / "f").st_uid) == (0o644, 12345)
    # chmod/chown to another mode on Vault KV v1: tests/test_file_attrs.py::test_kv1_accepts_only_what_the_file_shows


def test_failed_write_keeps_old_value_and_reaches_close(instance: Instance, mnt: Mounted) -> None:
    instance.cli("put", "keep", input=b"old-value")
    handle = open(mnt.path / "keep", "r+b")  # noqa: SIM115
    handle.write(b"x" * 10)
    db = sqlite3.connect(instance.data_dir / "secretfs.db", timeout=0, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    done = threading.Event()

    def interrupt() -> None:
        if not done.is_set():
            db.interrupt()

    threading.Timer(8, interrupt).start()
    try:
        with pytest.raises(OSError) as info:
            handle.close()
        assert info.value.errno == errno.EIO
    finally:
        done.set()
        db.execute("ROLLBACK")
        db.close()
    assert instance.cli("get", "keep").stdout == b"old-value"


def test_cli_exit_codes(instance: Instance) -> None:
    assert instance.cli("get", "nope", check=False).returncode == 6
    bad_mode = dict(instance.env, ARCHESTRA_SECRETS_MANAGER="bogus")
    result = subprocess.run(
        [*__import__("tests.support.mount", fromlist=["SECRETFS"]).SECRETFS, "ls"],
        env=bad_mode,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 3 and b"DB, VAULT, READONLY_VAULT" in result.stderr
    assert instance.cli("put", "a//b", input=b"x", check=False).returncode == 2
