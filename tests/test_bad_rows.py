"""Bad rows and the database files (issue 10, findings 1, 2, 11, 18).

A row whose `secret` column is not a JSON object, or whose name is not valid UTF-8, fails alone:
every other row keeps working, and the bad row is named (never shown) and counted. Plaintext
encrypted by secretfs leaves no copy in any database file, and those files are private (0600).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from secretfs import crypto
from secretfs.errors import EXIT_KEY, IntegrityError
from secretfs.stores.sql import SqlStore, make_engine
from secretfs.stores.sql_setup import prepare_database
from tests.support.mount import Instance, make_instance, mounted, os_read

STAMP = "2024-05-01 10:00:00"

# The stored `secret` column of a bad row, as another program could write it (SQLite keeps the
# integer 42 as an INTEGER in a JSON-typed column).
BAD_VALUES: dict[str, Any] = {
    "not_json": "not json BADMARKER",
    "number": 42,
    "list": '["BADMARKER"]',
    "string": '"BADMARKER"',
}


def db_path(instance: Instance) -> Path:
    return instance.data_dir / "secretfs.db"


def insert(db: Path, name: Any, stored: Any, *, conn: sqlite3.Connection | None = None) -> None:
    own = conn is None
    target = sqlite3.connect(db) if conn is None else conn
    try:
        target.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
            (str(uuid.uuid4()), name, stored, STAMP, STAMP),
        )
        target.commit()
    finally:
        if own:
            target.close()


def raw_secret(db: Path, name: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT secret FROM secret WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()


def no_traceback(result: Any) -> Any:
    assert b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")
    assert b"BADMARKER" not in result.stderr + result.stdout
    return result


def status(instance: Instance) -> dict[str, Any]:
    result = no_traceback(instance.cli("status", "--json"))
    return json.loads(result.stdout)["backend"]  # type: ignore[no-any-return]


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    inst = make_instance(tmp_path)
    inst.cli("put", "good", input=b"good-value")
    inst.cli("put", "other", input=b"other-value")
    return inst


# Finding 1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_a_bad_row_fails_alone_in_every_command(instance: Instance, kind: str) -> None:
    db = db_path(instance)
    insert(db, "plain", json.dumps({"value": "plain-value"}))
    insert(db, "bad", BAD_VALUES[kind])

    migrated = no_traceback(instance.cli("migrate", check=False))
    assert migrated.returncode == 0, migrated.stderr
    assert crypto.is_encrypted(json.loads(raw_secret(db, "plain")))  # the good plaintext row, encrypted
    assert raw_secret(db, "bad") == BAD_VALUES[kind]  # the bad row, left exactly as it was

    assert no_traceback(instance.cli("get", "good")).stdout == b"good-value"
    assert no_traceback(instance.cli("get", "plain")).stdout == b"plain-value"
    bad = no_traceback(instance.cli("get", "bad", check=False))
    assert bad.returncode == EXIT_KEY
    assert b"'bad'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2

    assert no_traceback(instance.cli("put", "new", input=b"new-value", check=False)).returncode == 0
    assert no_traceback(instance.cli("rm", "other", check=False)).returncode == 0
    listed = no_traceback(instance.cli("ls", check=False))
    assert listed.returncode == 0
    assert listed.stdout.split() == [b"bad", b"good", b"new", b"plain"]
    rotated = no_traceback(instance.cli("rotate-key", "--json", check=False))
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["bad_rows"] == 1
    assert status(instance)["bad_rows"] == 1
    assert no_traceback(instance.cli("get", "new")).stdout == b"new-value"


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_store_read_and_read_many_leave_the_bad_row_out(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "store.db"
    key = crypto.derive_key("store-key")
    engine = make_engine(f"sqlite:///{db}", timeout=5)
    prepare_database(engine, key)
    store = SqlStore(engine, key)
    try:
        store.write("good", {"value": "g"})
        insert(db, "plain", json.dumps({"value": "p"}))
        insert(db, "bad", BAD_VALUES[kind])
        records = store.read_many(["good", "plain", "bad"])
        assert sorted(records) == ["good", "plain"]
        assert records["good"].value == {"value": "g"}
        assert records["plain"].value == {"value": "p"}
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(IntegrityError, match="'bad'"):
            store.read("bad")
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "'bad'" in lines[0]
        assert "BADMARKER" not in lines[0]
        assert store.read("good").value == {"value": "g"}
        assert store.info()["bad_rows"] == 1
        assert [m.name for m in store.list()] == ["bad", "good", "plain"]
    finally:
        store.close()


def test_writable_mount_starts_over_a_bad_row(instance: Instance, tmp_path: Path) -> None:
    db = db_path(instance)
    insert(db, "plain", json.dumps({"value": "plain-value"}))
    insert(db, "bad", "not json BADMARKER")
    with mounted(instance, tmp_path / "mnt") as m:
        assert crypto.is_encrypted(json.loads(raw_secret(db, "plain")))
        assert sorted(os.listdir(m.path)) == ["bad", "good", "other", "plain"]
        for entry in os.scandir(m.path):  # ls -l: the bulk read after a listing
            if entry.name != "bad":
                entry.stat()
        assert os_read(m.path / "good") == b"good-value"
        assert os_read(m.path / "plain") == b"plain-value"
        with pytest.raises(OSError) as failed:
            os_read(m.path / "bad")
        assert failed.value.errno == errno.EIO
        assert os_read(m.path / "other") == b"other-value"
        (m.path / "written").write_bytes(b"w")
    assert no_traceback(instance.cli("get", "written")).stdout == b"w"
    assert b"BADMARKER" not in m.log.read_bytes()


# Finding 2 ---------------------------------------------------------------------------------------


def test_rows_with_invalid_utf8_names_are_hidden_and_counted(instance: Instance) -> None:
    db = db_path(instance)
    insert(db, b"blob-\xff-name", json.dumps({"value": "x"}))  # a BLOB name
    conn = sqlite3.connect(db)
    try:  # a TEXT name that is not UTF-8
        conn.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
            "VALUES (?, CAST(x'74fe78' AS TEXT), ?, 0, ?, ?)",
            (str(uuid.uuid4()), json.dumps({"value": "y"}), STAMP, STAMP),
        )
        conn.commit()
    finally:
        conn.close()

    listed = no_traceback(instance.cli("ls", check=False))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [b"good", b"other"]
    backend = status(instance)
    assert backend["healthy"] is True
    assert backend["hidden_invalid_rows"] == 2
    assert backend["secrets"] == 2
    rotated = no_traceback(instance.cli("rotate-key", check=False))
    assert rotated.returncode == 0, rotated.stderr
    assert no_traceback(instance.cli("put", "new", input=b"n", check=False)).returncode == 0
    assert no_traceback(instance.cli("migrate", check=False)).returncode == 0
    assert no_traceback(instance.cli("get", "good")).stdout == b"good-value"


# Finding 11 --------------------------------------------------------------------------------------


def database_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


@pytest.mark.parametrize("command", ["migrate", "put"])
def test_no_plaintext_left_in_any_database_file(instance: Instance, command: str) -> None:
    db = db_path(instance)
    marker = "PLAINTEXT-MARKER-" + uuid.uuid4().hex
    # Another program keeps the database open (as a running mount does), so no close deletes the WAL.
    holder = sqlite3.connect(db)
    try:
        assert holder.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        insert(db, "plain", json.dumps({"value": marker}), conn=holder)
        if command == "migrate":
            no_traceback(instance.cli("migrate"))
        else:  # start-up encryption, by any writable command
            no_traceback(instance.cli("put", "x", input=b"x"))
        assert crypto.is_encrypted(json.loads(raw_secret(db, "plain")))
        for path in database_files(db):
            if path.exists():
                assert marker.encode() not in path.read_bytes(), path.name
    finally:
        holder.close()


# Finding 18 --------------------------------------------------------------------------------------


def test_database_files_are_private(tmp_path: Path) -> None:
    instance = make_instance(tmp_path)
    instance.cli("put", "a", input=b"a")
    db = db_path(instance)
    holder = sqlite3.connect(db)  # keeps -wal and -shm in place between commands
    try:
        holder.execute("SELECT count(*) FROM secret").fetchone()
        instance.cli("put", "b", input=b"b")
        for path in database_files(db):
            assert path.exists(), path.name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        holder.close()
