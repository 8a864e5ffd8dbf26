"""Opening the SQL store: schema creation, the key canary, and encryption of plaintext rows.

Order matters: the key is checked with reads only, so a wrong key refuses to start and changes
nothing. Only then are tables created (secretfs's own `secretfs_file_attrs` by writable opens only:
a read-only database user may create nothing, and a missing table means no per-secret attrs), the
canary written, plaintext rows encrypted (one transaction) and SQLite switched to WAL.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from secretfs import crypto
from secretfs.config import Secret, Settings
from secretfs.errors import ConfigError, IntegrityError, KeyMismatch
from secretfs.stores.sql import (
    RAW_SECRET,
    SURELY_ENCRYPTED,
    VISIBLE,
    SqlStore,
    backend_errors,
    checkpoint_wal,
    file_attrs_table,
    load_stored,
    make_engine,
    meta_table,
    metadata,
    name_index,
    secret_table,
)

log = logging.getLogger(__name__)

CANARY_KEY = "key_canary"
CANARY_VALUE = {"secretfs": "key-canary-v1"}
SAMPLE_ROWS = 16


def load_or_create_key_file(path: Path) -> Secret:
    """Read the generated secret, or create it once (mode 0600) with a notice saying where."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from None
    if text:
        return Secret(text)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    generated = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key_file(path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(generated + "\n")
    print(
        f"secretfs: no encryption secret was configured, so a new one was generated in {path} "
        "(mode 0600). Back it up: without it the database cannot be decrypted. Set "
        "ARCHESTRA_SECRETS_ENCRYPTION_SECRET to use your own.",
        file=sys.stderr,
    )
    return Secret(generated)


def resolve_secret(settings: Settings) -> Secret:
    """The configured encryption secret, or the generated one from the data directory."""
    if settings.encryption_secret is not None:
        return settings.encryption_secret
    return load_or_create_key_file(settings.key_file)


def _table_names(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def read_canary(conn: Connection, tables: set[str]) -> Any | None:
    if meta_table.name not in tables:
        return None
    raw = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == CANARY_KEY)).scalar()
    return json.loads(raw) if raw else None


def key_matches(conn: Connection, tables: set[str], key: bytes) -> bool:
    """Check the key with reads only: the canary if present, else a sample of encrypted rows."""
    canary = read_canary(conn, tables)
    if canary is not None:
        try:
            return bool(crypto.decrypt(key, canary) == CANARY_VALUE)
        except IntegrityError:
            return False
    if secret_table.name not in tables:
        return True
    rows = conn.execute(sa.select(RAW_SECRET).where(VISIBLE).limit(SAMPLE_ROWS * 4)).scalars()
    sampled = [value for value in map(_stored_or_none, rows) if crypto.is_encrypted(value)][:SAMPLE_ROWS]
    try:
        for value in sampled:
            crypto.decrypt(key, value)
    except IntegrityError:
        return False
    return True


def _stored_or_none(raw: Any) -> Any:
    """The stored JSON object, or None for a malformed row (reported by the reads of that row)."""
    try:
        return load_stored(raw)
    except IntegrityError:
        return None


def write_canary(conn: Connection, key: bytes) -> None:
    value = json.dumps(crypto.encrypt(key, CANARY_VALUE))
    updated = conn.execute(sa.update(meta_table).where(meta_table.c.key == CANARY_KEY).values(value=value)).rowcount
    if not updated:
        conn.execute(sa.insert(meta_table).values(key=CANARY_KEY, value=value))


def encrypt_plaintext_rows(conn: Connection, key: bytes) -> int:
    """Encrypt every plaintext visible row in place; return how many there were.

    The database filters out the rows that are surely encrypted already, so a start-up over a large
    table does not fetch and parse every row. A row whose stored value is not a JSON object is left
    as it is, named in one log line (never its content): it does not stop the others.
    """
    stmt = sa.select(secret_table.c.id, secret_table.c.name, RAW_SECRET).where(VISIBLE)
    surely = SURELY_ENCRYPTED.get(conn.dialect.name)
    if surely is not None:
        stmt = stmt.where(sa.text(f"({surely}) = 0"))
    rows = conn.execute(stmt).all()
    count = 0
    for row_id, name, raw in rows:
        try:
            value = load_stored(raw)
        except IntegrityError as exc:
            log.error("secret %r is left as it is (not encrypted): %s", name, exc)
            continue
        if crypto.is_encrypted(value):
            continue
        conn.execute(
            sa.update(secret_table).where(secret_table.c.id == row_id).values(secret=crypto.encrypt(key, value))
        )
        count += 1
    return count


def prepare_database(engine: Engine, key: bytes, *, accept_new_key: bool = False, writable: bool = True) -> int:
    """Check the key, create what is missing, encrypt plaintext rows; return how many were encrypted.

    With writable=False (read-only mounts) only the key check runs, and only missing tables are created.
    """
    with backend_errors("opening the database"), engine.connect() as conn:
        tables = _table_names(conn)
        matches = key_matches(conn, tables, key)
    if not matches:
        if not accept_new_key:
            raise KeyMismatch(
                "the encryption secret does not match this database (its key canary does not decrypt); "
                "nothing was changed. Set the secret the database was written with, or move to a new "
                "one with `secretfs rotate-key` and ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS."
            )
        log.warning(
            "ARCHESTRA_SECRETS_ACCEPT_NEW_ENCRYPTION_KEY is set: accepting a NEW encryption key for this "
            "database. Secrets written under the old key will fail to decrypt (EIO) until rotated."
        )
    with backend_errors("preparing the database"), engine.begin() as conn:
        created_secret_table = secret_table.name not in tables
        # Empty tables are created even for read-only use, so that reads of a new database work.
        metadata.create_all(conn, tables=[secret_table, meta_table], checkfirst=True)
        if created_secret_table:
            name_index.create(conn, checkfirst=True)
        if not writable:
            return 0  # no file attrs table is created: without one, no secret has its own mode or owner
        file_attrs_table.create(conn, checkfirst=True)
        write_canary(conn, key)
        migrated = encrypt_plaintext_rows(conn, key)
    if engine.dialect.name == "sqlite":
        with backend_errors("enabling WAL"), engine.connect() as conn:
            # Consumed: an unfinished statement would keep the connection busy (a checkpoint on it
            # would fail with "database table is locked").
            conn.exec_driver_sql("PRAGMA journal_mode=WAL").all()
        if migrated:
            # The plaintext rows just encrypted may still be in the WAL (written there by another
            # program, or by this transaction's overwritten pages): copy and truncate it.
            checkpoint_wal(engine)
    if migrated:
        log.warning("encrypted %d plaintext secret row(s) at startup", migrated)
    return migrated


def ensure_sqlite_dir(url: str) -> None:
    """Create a SQLite file's directory (0700) and the file itself, empty and 0600, if missing.

    SQLite creates the -wal and -shm files with the database file's mode, so they are 0600 too.
    An existing file's mode is left as it is (another program may share it).
    """
    parsed = sa.engine.make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or parsed.query:
        return  # a URI or options (read-only, in-memory...): left to SQLite
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # SQLite reports the problem, with its own error, when it opens the file
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


def open_engine(settings: Settings) -> Engine:
    """An engine for the configured database (creating the SQLite file's directory)."""
    ensure_sqlite_dir(settings.database_url)
    try:
        return make_engine(settings.database_url, timeout=settings.timeout)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"invalid ARCHESTRA_DATABASE_URL: {exc}") from None


def open_sql_store(settings: Settings, *, read_only: bool = False) -> SqlStore:
    """Open the configured database, checked and prepared, as a SqlStore."""
    key = crypto.derive_key(resolve_secret(settings))
    engine = open_engine(settings)
    try:
        prepare_database(engine, key, accept_new_key=settings.accept_new_key, writable=not read_only)
    except BaseException:
        engine.dispose()
        raise
    return SqlStore(engine, key, read_only=read_only)
