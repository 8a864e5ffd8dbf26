"""`secretfs rotate-key` and ARCHESTRA_SECRETS_ACCEPT_NEW_ENCRYPTION_KEY, on SQLite and PostgreSQL.

The wrong-key refusals of ls/get/put/rm/migrate/status/mount (database unchanged) are in
tests/test_sql_store.py; this file adds rotate-key's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import secrets
import select
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from secretfs import crypto
from secretfs.errors import EXIT_KEY
from secretfs.stores.sql_setup import CANARY_VALUE
from tests.support.mount import SECRETFS, Instance, base_env, mounted

VALUES = {
    "app/db_password": b"hunter2-" + secrets.token_hex(4).encode(),
    "app/config": b'{\n  "port": 5432,\n  "user": "app"\n}\n',  # canonical JSON: round-trips exactly
    "bin/keystore": bytes(range(256)),
    "plain": b"text with trailing newline\n",
}


@dataclass
class Db:
    kind: str
    url: str
    path: Path | None

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(sql), params or {})]
        finally:
            engine.dispose()

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql), params or {})
        finally:
            engine.dispose()

    def envelopes(self) -> dict[str, Any]:
        return {
            name: json.loads(value) if isinstance(value, str) else value
            for name, value in self.query("SELECT name, secret FROM secret")
        }

    def canary(self) -> Any:
        (raw,) = self.query("SELECT value FROM secretfs_meta WHERE key = 'key_canary'")[0]
        return json.loads(raw)

    def snapshot(self) -> Any:
        """SQLite: the main file's bytes and the WAL's size; PostgreSQL: every row with its xmin."""
        if self.kind == "sqlite":
            assert self.path is not None
            wal = self.path.with_name(self.path.name + "-wal")
            return hashlib.sha256(self.path.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0
        return {
            table: self.query(f"SELECT xmin::text, t::text FROM {table} t ORDER BY t::text")
            for table in ("secret", "secretfs_meta")
        }


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        path = tmp_path / "rot.db"
        return Db("sqlite", f"sqlite:///{path}", path)
    return Db("postgresql", request.getfixturevalue("pg_url"), None)


def instance(db: Db, tmp_path: Path, current: str, previous: str | None = None, **extra: str) -> Instance:
    env = {"ARCHESTRA_DATABASE_URL": db.url, "ARCHESTRA_SECRETS_ENCRYPTION_SECRET": current, **extra}
    if previous is not None:
        env["ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS"] = previous
    return Instance(tmp_path / "data", base_env(tmp_path / "data", **env))


def populate(db: Db, tmp_path: Path, key_secret: str) -> None:
    old = instance(db, tmp_path, key_secret)
    for name, value in VALUES.items():
        old.cli("put", name, input=value)


def under(key_secret: str, envelope: Any) -> bool:
    try:
        crypto.decrypt(crypto.derive_key(key_secret), envelope)
    except Exception:
        return False
    return True


def rotate_json(inst: Instance) -> dict[str, Any]:
    result = inst.cli("rotate-key", "--json", check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


# ----- rotation -----------------------------------------------------------------------------------


@pytest.mark.mount
def test_rotate_key_reencrypts_every_row_then_is_idempotent(db: Db, tmp_path: Path) -> None:
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    populate(db, tmp_path, old)
    assert all(under(old, e) for e in db.envelopes().values())
    rot = instance(db, tmp_path, new, previous=old)
    # Normal startup refuses the new key (the canary is under the old one) ...
    assert rot.cli("get", "plain", check=False).returncode == EXIT_KEY
    # ... but rotate-key opens the database checking the canary against either key.
    first = rotate_json(rot)
    assert first == {
        "rows": len(VALUES),
        "reencrypted": len(VALUES),
        "already_current": 0,
        "plaintext_encrypted": 0,
        "canary_refreshed": True,
        "changed": True,
    }
    envelopes = db.envelopes()
    assert set(envelopes) == set(VALUES)
    for envelope in envelopes.values():
        assert under(new, envelope) and not under(old, envelope)
    assert crypto.decrypt(crypto.derive_key(new), db.canary()) == CANARY_VALUE

    # A second run changes nothing (not even the canary) and says so.
    before = db.snapshot()
    second = rotate_json(rot)
    assert second["changed"] is False and second["reencrypted"] == 0
    assert second["already_current"] == len(VALUES)
    assert db.snapshot() == before
    text = rot.cli("rotate-key")
    assert b"nothing changed" in text.stdout
    assert db.snapshot() == before

    # The new key alone now opens the database and reads every value; the old one is refused.
    only_new = instance(db, tmp_path, new)
    for name, value in VALUES.items():
        assert only_new.cli("get", name).stdout == value
    assert instance(db, tmp_path, old).cli("ls", check=False).returncode == EXIT_KEY
    with mounted(only_new, tmp_path / "mnt") as m:
        assert (m.path / "app" / "db_password").read_bytes() == VALUES["app/db_password"]


def test_rotate_key_half_done_database(db: Db, tmp_path: Path) -> None:
    # Rows written under the new key by someone else (Archestra) sit beside rows under the old key.
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    populate(db, tmp_path, old)
    cast = "CAST(:s AS jsonb)" if db.kind == "postgresql" else ":s"
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    envelope = crypto.encrypt(crypto.derive_key(new), {"value": "fresh"})
    db.execute(
        f"INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
        f"VALUES (:id, 'fresh', {cast}, false, :t, :t)",
        {"id": str(uuid.uuid4()), "s": json.dumps(envelope), "t": now},
    )
    # A plaintext row and an Archestra Vault reference (not secretfs's to touch).
    db.execute(
        f"INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
        f"VALUES (:id, 'vaultref', {cast}, true, :t, :t)",
        {"id": str(uuid.uuid4()), "s": json.dumps({"path": "secret/x"}), "t": now},
    )
    db.execute(
        f"INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
        f"VALUES (:id, 'plainrow', {cast}, false, :t, :t)",
        {"id": str(uuid.uuid4()), "s": json.dumps({"value": "p"}), "t": now},
    )
    result = rotate_json(instance(db, tmp_path, new, previous=old))
    assert result["reencrypted"] == len(VALUES)
    assert result["already_current"] == 1
    assert result["plaintext_encrypted"] == 1
    envelopes = db.envelopes()
    assert envelopes["fresh"] == envelope  # left exactly as it was
    assert envelopes["vaultref"] == {"path": "secret/x"}
    assert under(new, envelopes["plainrow"])
    assert instance(db, tmp_path, new).cli("get", "plainrow").stdout == b"p"


def test_rotate_key_aborts_on_a_row_under_neither_key(db: Db, tmp_path: Path) -> None:
    old, new, stranger = (secrets.token_urlsafe(24) for _ in range(3))
    populate(db, tmp_path, old)
    foreign_value = "foreign-" + secrets.token_hex(8)
    envelope = crypto.encrypt(crypto.derive_key(stranger), {"value": foreign_value})
    db.execute(
        "UPDATE secret SET secret = " + ("CAST(:s AS jsonb)" if db.kind == "postgresql" else ":s") + " WHERE name = :n",
        {"s": json.dumps(envelope), "n": "plain"},
    )
    before = db.snapshot()
    result = instance(db, tmp_path, new, previous=old).cli("rotate-key", check=False)
    assert result.returncode == EXIT_KEY
    err = result.stderr.decode()
    assert "'plain'" in err and "nothing was changed" in err
    assert foreign_value not in err + result.stdout.decode()
    for value in VALUES.values():
        assert value not in result.stderr + result.stdout
    assert db.snapshot() == before  # one transaction: the rows before 'plain' (in name order) were not rewritten
    assert all(under(old, e) for n, e in db.envelopes().items() if n != "plain")


@pytest.mark.parametrize("with_previous", [True, False])
def test_rotate_key_wrong_keys_refuse_and_change_nothing(db: Db, tmp_path: Path, with_previous: bool) -> None:
    old = secrets.token_urlsafe(24)
    populate(db, tmp_path, old)
    before = db.snapshot()
    wrong = instance(db, tmp_path, secrets.token_urlsafe(24), secrets.token_urlsafe(24) if with_previous else None)
    result = wrong.cli("rotate-key", check=False)
    assert result.returncode == EXIT_KEY, result.stderr
    assert b"nothing was changed" in result.stderr
    assert db.snapshot() == before
    if db.kind == "sqlite":
        assert db.path is not None
        wal = db.path.with_name(db.path.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
    assert instance(db, tmp_path, old).cli("get", "plain").stdout == VALUES["plain"]


def test_rotate_key_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "p.db")
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    populate(db, tmp_path, old)
    inst = instance(db, tmp_path, new, previous=old)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*SECRETFS, "rotate-key"], env=inst.env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
        )
        os.close(slave)
        output = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
    assert b"re-encrypting" in output and b"100%" in output
    assert b"re-encrypted 4 row(s)" in output
    # Not a terminal: no progress bar.
    piped = instance(db, tmp_path, secrets.token_urlsafe(24), previous=new).cli("rotate-key")
    assert b"re-encrypting" not in piped.stderr + piped.stdout
    assert b"re-encrypted 4 row(s)" in piped.stdout


# ----- ARCHESTRA_SECRETS_ACCEPT_NEW_ENCRYPTION_KEY ----------------------------------------------------


@pytest.mark.mount
def test_accept_new_key_is_loud(db: Db, tmp_path: Path) -> None:
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    populate(db, tmp_path, old)
    plain = instance(db, tmp_path, new)
    assert plain.cli("ls", check=False).returncode == EXIT_KEY  # not accepted without the variable
    accepting = instance(db, tmp_path, new, ARCHESTRA_SECRETS_ACCEPT_NEW_ENCRYPTION_KEY="true")
    result = accepting.cli("put", "after", input=b"written under the new key")
    err = result.stderr.decode()
    assert "WARNING" in err and "NEW encryption key" in err and "fail to decrypt" in err
    assert new not in err and old not in err
    # The canary moved to the new key: the variable is no longer needed, and the old key is refused.
    assert crypto.decrypt(crypto.derive_key(new), db.canary()) == CANARY_VALUE
    assert plain.cli("get", "after").stdout == b"written under the new key"
    again = plain.cli("get", "after")
    assert b"NEW encryption key" not in again.stderr  # loud only when a new key is actually accepted
    # Old rows do not decrypt: exit 5 from the CLI, EIO through a mount, named in the log.
    old_read = plain.cli("get", "plain", check=False)
    assert old_read.returncode == EXIT_KEY and b"'plain'" in old_read.stderr
    with mounted(plain, tmp_path / "mnt") as m:
        with pytest.raises(OSError) as info:
            (m.path / "plain").read_bytes()
        assert info.value.errno == 5
        assert (m.path / "after").read_bytes() == b"written under the new key"
    assert instance(db, tmp_path, old).cli("ls", check=False).returncode == EXIT_KEY
    # rotate-key with the old key as PREVIOUS brings the old rows back.
    assert rotate_json(instance(db, tmp_path, new, previous=old))["reencrypted"] == len(VALUES)
    assert plain.cli("get", "plain").stdout == VALUES["plain"]


@pytest.mark.mount
def test_accept_new_key_warning_in_mount_log(tmp_path: Path) -> None:
    db = Db("sqlite", f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "m.db")
    populate(db, tmp_path, secrets.token_urlsafe(24))
    accepting = instance(db, tmp_path, secrets.token_urlsafe(24), ARCHESTRA_SECRETS_ACCEPT_NEW_ENCRYPTION_KEY="1")
    with mounted(accepting, tmp_path / "mnt") as m:
        assert sorted(os.listdir(m.path)) == ["app", "bin", "plain"]
    log = (tmp_path / "mnt.log").read_text()
    assert "WARNING" in log and "NEW encryption key" in log and "fail to decrypt" in log
