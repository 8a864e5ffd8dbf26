"""The SQL store beyond the contract, on SQLite and PostgreSQL: startup encryption, the unique index,
foreign databases with duplicate names, hidden Vault rows, the key canary, and the generated key."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from secretfs import crypto
from secretfs.errors import EXIT_KEY, AccessDenied, KeyMismatch, NotFound
from secretfs.stores import sql_setup
from secretfs.stores.sql import SqlStore, make_engine
from secretfs.stores.sql_setup import prepare_database
from tests.support.mount import SECRETFS, Instance, base_env, mounted

# ----- fixtures -----------------------------------------------------------------------------------


@dataclass
class Db:
    """One empty database (SQLite file or PostgreSQL database) and raw access to it."""

    kind: str
    url: str
    path: Path | None  # the SQLite file

    def raw(self) -> sa.Engine:
        return sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    def execute(self, sql: str, params: list[dict[str, Any]] | dict[str, Any] | None = None) -> None:
        engine = self.raw()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql), params or {})
        finally:
            engine.dispose()

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        engine = self.raw()
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(sql), params or {})]
        finally:
            engine.dispose()

    def stored(self) -> dict[str, list[Any]]:
        """name -> the JSON values stored in its rows (as Python objects)."""
        out: dict[str, list[Any]] = {}
        for name, value in self.query("SELECT name, secret FROM secret ORDER BY name"):
            # SQLite hands back JSON text; PostgreSQL's driver decodes jsonb itself (a JSON string too).
            out.setdefault(name, []).append(json.loads(value) if self.kind == "sqlite" else value)
        return out

    def snapshot(self) -> Any:
        """Everything that could change: the SQLite file's bytes, or every row with its xmin on PostgreSQL."""
        if self.kind == "sqlite":
            assert self.path is not None
            wal = self.path.with_name(self.path.name + "-wal")
            return (
                hashlib.sha256(self.path.read_bytes()).hexdigest(),
                wal.stat().st_size if wal.exists() else 0,
            )
        tables = {r[0] for r in self.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        snap: dict[str, Any] = {"tables": sorted(tables)}
        for table in sorted(tables):
            snap[table] = self.query(f"SELECT xmin::text, t::text FROM {table} t ORDER BY t::text")
        return snap


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        path = tmp_path / "secretfs.db"
        return Db("sqlite", f"sqlite:///{path}", path)
    return Db("postgresql", request.getfixturevalue("pg_url"), None)


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def key(secret: str) -> bytes:
    return crypto.derive_key(secret)


def open_store(db: Db, key: bytes, *, read_only: bool = False) -> SqlStore:
    engine = make_engine(db.url, timeout=10)
    prepare_database(engine, key, writable=not read_only)
    return SqlStore(engine, key, read_only=read_only)


@pytest.fixture
def store(db: Db, key: bytes) -> Iterator[SqlStore]:
    s = open_store(db, key)
    yield s
    s.close()


def cli(db: Db, tmp_path: Path, secret: str | None, *args: str, stdin: bytes | None = None) -> Any:
    extra = {"ARCHESTRA_DATABASE_URL": db.url}
    if secret is not None:
        extra["ARCHESTRA_SECRETS_ENCRYPTION_SECRET"] = secret
    instance = Instance(tmp_path / "data", base_env(tmp_path / "data", **extra))
    return instance.cli(*args, input=stdin, check=False)


def iso(epoch: float, sep: str = " ") -> str:
    return time.strftime(f"%Y-%m-%d{sep}%H:%M:%S", time.gmtime(epoch))


FOREIGN_DDL = {
    # Archestra's table, as its migrations make it: no unique index on name.
    "postgresql": """
        CREATE TABLE secret (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name varchar(256) NOT NULL,
            secret jsonb NOT NULL,
            is_vault boolean NOT NULL DEFAULT false,
            created_at timestamp NOT NULL DEFAULT now(),
            updated_at timestamp NOT NULL DEFAULT now()
        )""",
    "sqlite": """
        CREATE TABLE secret (
            id text PRIMARY KEY,
            name text NOT NULL,
            secret text NOT NULL,
            is_vault integer NOT NULL DEFAULT 0,
            created_at text NOT NULL,
            updated_at text NOT NULL
        )""",
}


def insert_rows(db: Db, rows: list[dict[str, Any]]) -> None:
    """Insert raw rows: name, secret (a JSON-able value), is_vault, created/updated (epoch or text)."""
    prepared = []
    for row in rows:
        updated = row.get("updated", time.time())
        prepared.append(
            {
                "id": str(uuid.uuid4()),
                "name": row["name"],
                "secret": json.dumps(row["secret"]),
                "is_vault": bool(row.get("is_vault", False)),
                "created": row.get("created", updated if isinstance(updated, str) else iso(updated)),
                "updated": updated if isinstance(updated, str) else iso(updated),
            }
        )
    cast = "CAST(:secret AS jsonb)" if db.kind == "postgresql" else ":secret"
    db.execute(
        f"INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) "
        f"VALUES (:id, :name, {cast}, :is_vault, :created, :updated)",
        prepared,
    )


def make_foreign(db: Db) -> None:
    db.execute(FOREIGN_DDL[db.kind])


# ----- startup encryption -------------------------------------------------------------------------


def test_plaintext_rows_are_encrypted_at_startup(db: Db, key: bytes) -> None:
    make_foreign(db)
    plain = {f"plain/{i}": {"value": f"v{i}", "n": {"k": str(i)}} for i in range(5)}
    already = crypto.encrypt(key, {"value": "already"})
    insert_rows(db, [{"name": n, "secret": v} for n, v in plain.items()])
    insert_rows(db, [{"name": "enc", "secret": already}])
    insert_rows(db, [{"name": "vault/ref", "secret": {"path": "secret/x"}, "is_vault": True}])

    engine = make_engine(db.url, timeout=10)
    try:
        assert prepare_database(engine, key) == 5
        stored = db.stored()
        for name, original in plain.items():
            (value,) = stored[name]
            assert crypto.is_encrypted(value)
            assert crypto.decrypt(key, value) == original
        assert stored["enc"] == [already]  # not re-encrypted
        assert stored["vault/ref"] == [{"path": "secret/x"}]  # Vault references are not ours to touch
        assert prepare_database(engine, key) == 0  # idempotent
        store = SqlStore(engine, key)
        assert store.read("plain/3").value == plain["plain/3"]
    finally:
        engine.dispose()


def test_startup_encryption_is_one_transaction(db: Db, key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    make_foreign(db)
    insert_rows(db, [{"name": f"p{i}", "secret": {"value": str(i)}} for i in range(4)])
    before = db.stored()
    real_encrypt = crypto.encrypt
    calls = {"n": 0}

    def failing_encrypt(k: bytes, value: Any, **kw: Any) -> dict[str, str]:
        calls["n"] += 1
        if value != sql_setup.CANARY_VALUE and calls["n"] > 3:
            raise RuntimeError("simulated crash in the middle of the migration")
        return real_encrypt(k, value, **kw)

    monkeypatch.setattr("secretfs.stores.sql_setup.crypto.encrypt", failing_encrypt)
    engine = make_engine(db.url, timeout=10)
    try:
        with pytest.raises(RuntimeError):
            prepare_database(engine, key)
        # Two rows had been encrypted before the crash: both were rolled back, as was the canary.
        assert db.stored() == before
        assert not any(crypto.is_encrypted(v) for vs in db.stored().values() for v in vs)
        tables = set(sa.inspect(engine).get_table_names())
        if "secretfs_meta" in tables:
            assert db.query("SELECT count(*) FROM secretfs_meta") == [(0,)]
    finally:
        engine.dispose()


@pytest.mark.mount
def test_cli_migrate_and_mount_encrypt_plaintext(db: Db, tmp_path: Path, secret: str, key: bytes) -> None:
    make_foreign(db)
    insert_rows(db, [{"name": "a", "secret": {"value": "alpha"}}, {"name": "b", "secret": {"value": "beta"}}])
    result = cli(db, tmp_path, secret, "migrate", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"encrypted_rows": 2}
    assert all(crypto.is_encrypted(v) for vs in db.stored().values() for v in vs)
    assert json.loads(cli(db, tmp_path, secret, "migrate", "--json").stdout) == {"encrypted_rows": 0}

    insert_rows(db, [{"name": "c", "secret": {"value": "gamma"}}])
    instance = Instance(
        tmp_path / "data",
        base_env(tmp_path / "data", ARCHESTRA_DATABASE_URL=db.url, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secret),
    )
    with mounted(instance, tmp_path / "mnt") as m:
        assert (m.path / "c").read_bytes() == b"gamma"
        (value,) = db.stored()["c"]
        assert crypto.is_encrypted(value)
        assert crypto.decrypt(key, value) == {"value": "gamma"}


# ----- names --------------------------------------------------------------------------------------


def test_unique_index_in_databases_secretfs_creates(db: Db, store: SqlStore) -> None:
    engine = db.raw()
    try:
        indexes = sa.inspect(engine).get_indexes("secret")
    finally:
        engine.dispose()
    unique = [ix for ix in indexes if ix["unique"] and ix["column_names"] == ["name"]]
    assert unique, indexes
    store.write("x", {"value": "1"})
    with pytest.raises(sa.exc.IntegrityError):
        insert_rows(db, [{"name": "x", "secret": {"value": "dup"}}])


def test_duplicate_names_in_foreign_database(db: Db, tmp_path: Path, secret: str, key: bytes) -> None:
    make_foreign(db)
    now = time.time()
    insert_rows(
        db,
        [
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "old"}), "updated": now - 7200},
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "newest"}), "updated": now - 60},
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "middle"}), "updated": now - 3600},
            {"name": "single", "secret": crypto.encrypt(key, {"value": "s"}), "updated": now},
        ],
    )
    store = open_store(db, key)
    try:
        assert store.read("dup").value == {"value": "newest"}
        assert store.stat("dup").updated_at == pytest.approx(now - 60, abs=1.5)
        assert [m.name for m in store.list()] == ["dup", "single"]
        assert store.list()[0].updated_at == pytest.approx(now - 60, abs=1.5)
        assert store.list_dir("").files == ["dup", "single"]
        assert store.duplicate_names() == 1
    finally:
        store.close()
    # No unique index was added to a database secretfs did not create.
    engine = db.raw()
    try:
        assert not [ix for ix in sa.inspect(engine).get_indexes("secret") if ix["unique"]]
    finally:
        engine.dispose()

    result = cli(db, tmp_path, secret, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"]["duplicate_names"] == 1
    assert report["backend"]["secrets"] == 2
    assert cli(db, tmp_path, secret, "get", "dup").stdout == b"newest"
    assert cli(db, tmp_path, secret, "ls").stdout.decode().split() == ["dup", "single"]


def test_duplicates_with_mixed_timestamp_formats(tmp_path: Path, key: bytes) -> None:
    # Foreign SQLite rows may carry ISO 8601 with a 'T' and a 'Z': the newest by time wins, not by text.
    db = Db("sqlite", f"sqlite:///{tmp_path / 'f.db'}", tmp_path / "f.db")
    make_foreign(db)
    insert_rows(
        db,
        [
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "older"}), "updated": "2024-05-01T10:00:00.000Z"},
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "newer"}), "updated": "2024-05-01 12:00:00"},
        ],
    )
    store = open_store(db, key)
    try:
        assert store.read("dup").value == {"value": "newer"}
        assert store.stat("dup").updated_at == pytest.approx(1714564800.0)
        assert store.list()[0].updated_at == pytest.approx(1714564800.0)
    finally:
        store.close()


def test_write_and_delete_on_duplicated_name(db: Db, key: bytes) -> None:
    make_foreign(db)
    now = time.time()
    insert_rows(
        db,
        [
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "a"}), "updated": now - 100},
            {"name": "dup", "secret": crypto.encrypt(key, {"value": "b"}), "updated": now - 50},
        ],
    )
    store = open_store(db, key)
    try:
        store.write("dup", {"value": "written"})
        assert store.read("dup").value == {"value": "written"}
        store.delete("dup")
        with pytest.raises(NotFound):
            store.read("dup")
        assert "dup" not in db.stored()
    finally:
        store.close()


def test_foreign_postgres_timestamps_without_time_zone(pg_url: str, key: bytes) -> None:
    # Archestra's columns are `timestamp` (no time zone); a server whose TimeZone is not UTC must not
    # shift secretfs's times.
    db = Db("postgresql", pg_url, None)
    make_foreign(db)
    dbname = pg_url.rsplit("/", 1)[1]
    db.execute(f"ALTER DATABASE {dbname} SET timezone TO 'America/New_York'")
    insert_rows(db, [{"name": "old", "secret": crypto.encrypt(key, {"value": "o"}), "updated": 1714564800.0}])
    store = open_store(db, key)
    try:
        assert store.stat("old").updated_at == pytest.approx(1714564800.0)
        before = time.time()
        store.write("fresh", {"value": "f"})
        assert store.stat("fresh").updated_at == pytest.approx(before, abs=5)
    finally:
        store.close()


# ----- Vault rows ---------------------------------------------------------------------------------


def test_is_vault_rows_are_hidden(db: Db, store: SqlStore, tmp_path: Path, secret: str) -> None:
    store.write("visible", {"value": "v"})
    store.write("dir/visible", {"value": "v"})
    insert_rows(
        db,
        [
            {"name": "vaulted", "secret": {"path": "secret/data/x"}, "is_vault": True},
            {"name": "dir/vaulted", "secret": {"path": "secret/data/y"}, "is_vault": True},
            {"name": "onlyvault/x", "secret": {"path": "secret/data/z"}, "is_vault": True},
        ],
    )
    assert [m.name for m in store.list()] == ["dir/visible", "visible"]
    assert store.list_dir("").files == ["visible"]
    assert store.list_dir("").dirs == ["dir"]
    assert store.list_dir("dir").files == ["visible"]
    for name in ("vaulted", "dir/vaulted", "onlyvault/x"):
        with pytest.raises(NotFound):
            store.read(name)
        with pytest.raises(NotFound):
            store.stat(name)
        with pytest.raises(NotFound):
            store.delete(name)
    # The name is held by a Vault reference: secretfs refuses rather than shadowing or replacing it.
    with pytest.raises(AccessDenied):
        store.write("vaulted", {"value": "mine"})
    with pytest.raises(AccessDenied):
        store.rename("visible", "vaulted")
    assert db.stored()["vaulted"] == [{"path": "secret/data/x"}]
    assert store.read("visible").value == {"value": "v"}
    assert store.info()["hidden_vault_rows"] == 3

    result = cli(db, tmp_path, secret, "ls")
    assert result.stdout.decode().split() == ["dir/visible", "visible"]
    assert cli(db, tmp_path, secret, "get", "vaulted").returncode == 6


# ----- the key canary -----------------------------------------------------------------------------


def _populate(db: Db, tmp_path: Path, secret: str) -> None:
    for name in ("a", "b/c"):
        result = cli(db, tmp_path, secret, "put", name, stdin=f"value of {name}".encode())
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "command",
    [("ls",), ("get", "a"), ("put", "a"), ("rm", "a"), ("migrate",), ("status", "--json")],
)
def test_wrong_key_refuses_and_changes_nothing(db: Db, tmp_path: Path, secret: str, command: tuple[str, ...]) -> None:
    _populate(db, tmp_path, secret)
    # A plaintext row that a started store would encrypt: it must stay as it is.
    insert_rows(db, [{"name": "plain", "secret": {"value": "p"}}])
    before = db.snapshot()
    wrong = secrets.token_urlsafe(24)
    result = cli(db, tmp_path, wrong, *command, stdin=b"overwrite")
    assert result.returncode == EXIT_KEY, (result.stdout, result.stderr)
    message = result.stderr.decode() + result.stdout.decode()
    assert "does not match" in message
    assert wrong not in message and secret not in message
    assert db.snapshot() == before
    if db.kind == "sqlite":
        assert db.path is not None
        wal = db.path.with_name(db.path.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
    # The right key still works, and sees what was there.
    assert cli(db, tmp_path, secret, "get", "a").stdout == b"value of a"


@pytest.mark.mount
def test_wrong_key_refuses_to_mount(db: Db, tmp_path: Path, secret: str) -> None:
    _populate(db, tmp_path, secret)
    before = db.snapshot()
    (tmp_path / "mnt").mkdir()
    result = cli(db, tmp_path, secrets.token_urlsafe(24), "mount", "-f", str(tmp_path / "mnt"))
    assert result.returncode == EXIT_KEY, result.stderr
    assert b"does not match" in result.stderr
    assert db.snapshot() == before
    assert not os.path.ismount(tmp_path / "mnt")


def test_no_canary_but_rows_under_another_key(db: Db, tmp_path: Path) -> None:
    make_foreign(db)
    other = crypto.derive_key("the key archestra used")
    insert_rows(db, [{"name": f"s{i}", "secret": crypto.encrypt(other, {"value": str(i)})} for i in range(3)])
    before = db.snapshot()
    with pytest.raises(KeyMismatch):
        open_store(db, crypto.derive_key("a different key"))
    result = cli(db, tmp_path, "a different key", "ls")
    assert result.returncode == EXIT_KEY
    assert db.snapshot() == before
    # The right key is accepted, and a canary is written for next time.
    store = open_store(db, other)
    try:
        assert store.read("s2").value == {"value": "2"}
    finally:
        store.close()
    with pytest.raises(KeyMismatch):
        open_store(db, crypto.derive_key("a different key"))


def test_canary_is_written_and_checked(db: Db, key: bytes) -> None:
    open_store(db, key).close()
    (raw,) = db.query("SELECT value FROM secretfs_meta WHERE key = 'key_canary'")[0]
    canary = json.loads(raw)
    assert crypto.is_encrypted(canary)
    assert crypto.decrypt(key, canary) == sql_setup.CANARY_VALUE
    # An empty database with a canary still refuses a different key (no rows to sample).
    with pytest.raises(KeyMismatch):
        open_store(db, crypto.derive_key("other"))


# ----- the generated key --------------------------------------------------------------------------


def test_key_generated_on_first_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    instance = Instance(data, base_env(data))
    first = instance.cli("put", "k", input=b"value-one")
    key_file = data / "encryption.secret"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    generated = key_file.read_text().strip()
    assert len(generated) >= 32
    notice = first.stderr.decode()
    assert str(key_file) in notice
    assert generated not in notice and generated not in first.stdout.decode()

    second = instance.cli("get", "k")
    assert second.stdout == b"value-one"
    assert str(key_file) not in second.stderr.decode()
    assert "generated" not in second.stderr.decode()
    assert generated not in second.stderr.decode() + second.stdout.decode()
    assert key_file.read_text().strip() == generated  # not regenerated

    status = instance.cli("status", "--json")
    report = json.loads(status.stdout)
    assert report["encryption_secret_source"].startswith("generated file")
    assert generated not in status.stdout.decode() + status.stderr.decode()

    # The generated key is a real key: the database refuses another one.
    other = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET="not-the-generated-one"))
    assert other.cli("get", "k", check=False).returncode == EXIT_KEY


def test_key_file_notice_only_once_across_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = base_env(data)
    procs = [
        subprocess.Popen(
            [*SECRETFS, "put", f"k{i}"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(input=b"v", timeout=120) for p in procs]
    notices = sum(1 for _, err in outputs if b"encryption.secret" in err)
    assert notices == 1, [err for _, err in outputs]
    instance = Instance(data, env)
    for i in range(4):
        assert instance.cli("get", f"k{i}").stdout == b"v"


def test_sqlite_connections_zero_freed_content(tmp_path: Path, key: bytes) -> None:
    # Plaintext rows encrypted at startup must not linger in free pages, whatever SQLite's build default.
    db = Db("sqlite", f"sqlite:///{tmp_path / 's.db'}", tmp_path / "s.db")
    store = open_store(db, key)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
            assert str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() == "wal"
    finally:
        store.close()
