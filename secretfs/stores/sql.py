"""The SQL store: Archestra's `secret` table on SQLite or PostgreSQL, values AES-256-GCM encrypted.

Queries use SQLAlchemy Core (no ORM objects on the read path). Every value is encrypted before it
reaches the database and decrypted after it leaves; plaintext never touches the table.

Per-secret modes and owners live in secretfs's own table `secretfs_file_attrs` beside Archestra's
(whose columns secretfs never changes), read with the value through a LEFT JOIN; a database without
that table (older, or opened read-only without it) has none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, Engine

from secretfs import crypto
from secretfs.errors import AccessDenied, BackendUnavailable, IntegrityError, NotFound, ReadOnly
from secretfs.stores import pg_notify
from secretfs.stores.base import (
    NO_ATTRS,
    Capabilities,
    DirListing,
    FileAttrs,
    SecretMeta,
    SecretRecord,
    attrs_from_columns,
    listing_from_names,
)

log = logging.getLogger(__name__)

NAME_LENGTH = 256
READ_MANY_CHUNK = 500  # names per query in read_many (SQLite allows 32766 parameters)


class Timestamp(sa.types.TypeDecorator[float]):
    """Epoch seconds in Python; timestamptz on PostgreSQL, tolerant text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: float | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        moment = datetime.fromtimestamp(value, tz=UTC)
        if dialect.name == "sqlite":
            return moment.strftime("%Y-%m-%d %H:%M:%S.%f")
        return moment

    def process_result_value(self, value: Any, dialect: Dialect) -> float:
        return to_epoch(value)


def to_epoch(value: Any) -> float:
    """Seconds since the epoch from a datetime, ISO text, or number (naive means UTC)."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        # Millisecond epochs (JavaScript's Date.now()) are far larger than second epochs.
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return 0.0
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())
    return 0.0


metadata = sa.MetaData()

# The id is native uuid on PostgreSQL, text on SQLite (so ids written by others round-trip exactly).
secret_table = sa.Table(
    "secret",
    metadata,
    sa.Column("id", sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite"), primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("secret", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column("is_vault", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)
name_index = sa.Index("secret_name_unique_idx", secret_table.c.name, unique=True)

meta_table = sa.Table(
    "secretfs_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Per-secret modes and owners (FileAttrStore): one row per secret name that has any, secretfs's own.
file_attrs_table = sa.Table(
    "secretfs_file_attrs",
    metadata,
    sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("mode", sa.Integer, nullable=True),
    sa.Column("owner", sa.String(NAME_LENGTH), nullable=True),
    sa.Column("grp", sa.String(NAME_LENGTH), nullable=True),
)
ATTRS_RECHECK = 60.0  # seconds between checks for a file-attrs table that was missing

VISIBLE = secret_table.c.is_vault.isnot(True)
T = secret_table.c
A = file_attrs_table.c
WITH_ATTRS = secret_table.outerjoin(file_attrs_table, A.name == T.name)
# The `secret` column as text, parsed by load_stored (the JSON type would raise on a malformed row).
RAW_SECRET = sa.cast(T.secret, sa.Text)


def valid_name(name: Any) -> bool:
    """True for a name that is text in valid UTF-8 (other rows are hidden and counted)."""
    if not isinstance(name, str):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_stored(raw: Any) -> Any:
    """The stored JSON object from the raw `secret` column; IntegrityError for a malformed one.

    The reason never quotes the stored content. On SQLite the text may carry surrogate escapes
    (invalid UTF-8, see _decode_text); the JSON type's own parsing is bypassed (RAW_SECRET).
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError("its stored value is not UTF-8 text") from None
    if isinstance(raw, dict):  # a driver that parses JSON itself
        return raw
    if not isinstance(raw, str):
        raise IntegrityError(f"its stored value is not JSON text ({type(raw).__name__})")
    if not valid_name(raw):
        raise IntegrityError("its stored value is not UTF-8 text")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise IntegrityError("its stored value is not JSON") from None
    if not isinstance(value, dict):
        raise IntegrityError(f"its stored value is a JSON {_json_kind(value)}, not an object")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _decode_text(data: bytes) -> str:
    """SQLite text as str; invalid UTF-8 (written by another program) kept as surrogate escapes."""
    return data.decode("utf-8", "surrogateescape")


# SQL that is 1 for a row whose value is surely a v1 envelope (crypto.is_encrypted: an object whose
# "__encrypted" is a string starting "v1:"), else 0. Only rows where it is 0 need to come back to
# Python, which applies load_stored and crypto.is_encrypted itself; so the SQL may return too many
# rows, never too few. CASE branches are evaluated in order (json_type would fail on malformed
# JSON). On SQLite, an object with more keys than "__encrypted" (or with it twice, where SQLite and
# Python would pick different values) is left to Python.
SURELY_ENCRYPTED = {
    "sqlite": """CASE
        WHEN typeof(secret) != 'text' THEN 0
        WHEN NOT json_valid(secret) THEN 0
        WHEN json_type(secret) != 'object' THEN 0
        WHEN json_type(secret, '$.__encrypted') IS NOT 'text' THEN 0
        WHEN substr(json_extract(secret, '$.__encrypted'), 1, 3) != 'v1:' THEN 0
        WHEN json_remove(secret, '$.__encrypted') != '{}' THEN 0
        ELSE 1 END""",
    "postgresql": """CASE
        WHEN jsonb_typeof(CAST(secret AS jsonb)) != 'object' THEN 0
        WHEN jsonb_typeof(CAST(secret AS jsonb) -> '__encrypted') IS DISTINCT FROM 'string' THEN 0
        WHEN left(CAST(secret AS jsonb) ->> '__encrypted', 3) = 'v1:' THEN 1
        ELSE 0 END""",
}


# SQLite engines made by make_engine, with their timeout: SqlStore reads them on a raw connection.
_SQLITE_TIMEOUTS: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def _sqlite_pragmas(cursor: Any, timeout: float) -> None:
    # Invalid UTF-8 in a TEXT column would make the driver fail the whole query: decode it
    # tolerantly, then hide (names) or refuse (values) what is not valid text.
    cursor.connection.text_factory = _decode_text
    cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    cursor.execute("PRAGMA synchronous=FULL")
    # Overwritten and deleted content is zeroed, so plaintext rows encrypted at startup (and
    # old ciphertexts) do not survive in free pages. Debian's SQLite does this by default.
    cursor.execute("PRAGMA secure_delete=ON")


def make_engine(url: str, *, timeout: float) -> Engine:
    """An engine with bounded timeouts; SQLite connections get WAL-friendly pragmas."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            url,
            connect_args={"timeout": timeout, "check_same_thread": False},
            pool_size=8,
            max_overflow=16,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            _sqlite_pragmas(cursor, timeout)
            cursor.close()

        _SQLITE_TIMEOUTS[engine] = timeout
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {
            "connect_timeout": max(1, int(timeout)),
            # UTC sessions: times bound to Archestra's `timestamp` (no time zone) columns are stored
            # and read back as UTC whatever the server's TimeZone is.
            "options": f"-c statement_timeout={int(timeout * 1000)} -c timezone=UTC",
        }
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=8, max_overflow=16)


@contextlib.contextmanager
def backend_errors(what: str) -> Iterator[None]:
    """Turn driver errors into BackendUnavailable, without SQL parameters in the message."""
    try:
        yield
    except sa.exc.IntegrityError:
        raise
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        cause = type(getattr(exc, "orig", None) or exc).__name__
        raise BackendUnavailable(f"database unavailable while {what} ({cause})") from None
    except sa.exc.DBAPIError as exc:
        cause = type(exc.orig).__name__
        raise BackendUnavailable(f"database error while {what} ({cause})") from None


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching names that start with prefix (with % and _ escaped)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class _SqliteReader:
    """Reads on one raw sqlite3 connection per thread (no SQLAlchemy execution machinery).

    The same file, timeout and pragmas as the engine's connections; autocommit, so every SELECT
    sees the latest committed state. Used for read() and read_many() on SQLite files only.
    """

    READ = "SELECT updated_at, created_at, CAST(secret AS TEXT) FROM secret WHERE name = ? AND is_vault IS NOT 1"
    READ_MANY = (
        "SELECT name, updated_at, created_at, CAST(secret AS TEXT) FROM secret WHERE name IN ({}) AND is_vault IS NOT 1"
    )
    # The same with the secret's file attrs (when the secretfs_file_attrs table exists).
    READ_ATTRS = (
        "SELECT s.updated_at, s.created_at, CAST(s.secret AS TEXT), a.mode, a.owner, a.grp FROM secret s "
        "LEFT JOIN secretfs_file_attrs a ON a.name = s.name WHERE s.name = ? AND s.is_vault IS NOT 1"
    )
    READ_MANY_ATTRS = (
        "SELECT s.name, s.updated_at, s.created_at, CAST(s.secret AS TEXT), a.mode, a.owner, a.grp FROM secret s "
        "LEFT JOIN secretfs_file_attrs a ON a.name = s.name WHERE s.name IN ({}) AND s.is_vault IS NOT 1"
    )

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[sqlite3.Connection] = []
        self._generation = 0

    @staticmethod
    def for_engine(engine: Engine) -> _SqliteReader | None:
        timeout = _SQLITE_TIMEOUTS.get(engine)
        url = engine.url
        database = url.database
        if timeout is None or url.query or not database or database == ":memory:" or database.startswith("file:"):
            return None
        return _SqliteReader(os.path.abspath(database), timeout)

    def connection(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != self._generation:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            cursor = conn.cursor()
            _sqlite_pragmas(cursor, self.timeout)
            cursor.close()
            with self._lock:
                self._open.append(conn)
                local.generation = self._generation
            local.conn = conn
        return conn

    def rows(self, name: str, *, attrs: bool) -> list[Any]:
        return self.connection().execute(self.READ_ATTRS if attrs else self.READ, (name,)).fetchall()

    def rows_many(self, names: list[str], *, attrs: bool) -> list[Any]:
        sql = (self.READ_MANY_ATTRS if attrs else self.READ_MANY).format(",".join("?" * len(names)))
        return self.connection().execute(sql, names).fetchall()

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
            self._generation += 1
        for conn in conns:
            conn.close()


@contextlib.contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    """The raw reader's errors, mapped as backend_errors maps the engine's."""
    try:
        yield
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"database unavailable while {what} ({type(exc).__name__})") from None


def _parse_row(updated: Any, created: Any, stored: Any, *attrs: Any) -> tuple[Any, ...]:
    """A raw SQLite row as the engine's column types would give it (epoch times; the raw value;
    the file attrs columns as they are)."""
    return (to_epoch(updated), to_epoch(created), stored, *attrs)


def _attrs_of(row: Sequence[Any], at: int) -> FileAttrs | None:
    """The file attrs in a row's columns from `at` on (None when the query had none)."""
    return attrs_from_columns(*row[at : at + 3]) if len(row) >= at + 3 else None


def checkpoint_wal(engine: Engine) -> None:
    """SQLite: copy the WAL into the database and truncate it, so no overwritten plaintext (or old
    ciphertext) stays in the -wal file. A no-op elsewhere; a busy database is logged, not fatal."""
    db_file = sqlite_file(engine)
    if db_file is None:
        return
    timeout = _SQLITE_TIMEOUTS.get(engine, 5.0)
    try:
        # A connection of its own: a pooled one may hold an unfinished statement (SQLITE_LOCKED).
        conn = sqlite3.connect(db_file, timeout=timeout, isolation_level=None)
        try:
            result = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("could not checkpoint the SQLite WAL (%s): old values may remain in it", type(exc).__name__)
        return
    if result is not None and result[0]:
        log.warning("could not truncate the SQLite WAL (the database is busy): old values may remain in it")


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None for other databases and in-memory SQLite)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).absolute()


class SqlStore:
    """The `secret` table, read and written through one key.

    Capabilities: bulk reads (read_many) and per-secret modes and owners (FileAttrStore) always;
    change watching (watch) on SQLite files and PostgreSQL.
    """

    def __init__(self, engine: Engine, key: bytes, *, read_only: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self._key = key
        self.capabilities = Capabilities(
            bulk_read=True,
            watch=sqlite_file(engine) is not None or engine.dialect.name == "postgresql",
            atomic_batch=True,
            file_attrs=True,
        )
        # No LIMIT: a foreign database may hold a name twice, with timestamps in mixed text formats
        # that SQL cannot order (SQLite); the newest row is picked by its parsed time in Python.
        self._read_stmt = sa.select(T.updated_at, T.created_at, RAW_SECRET).where(
            T.name == sa.bindparam("name"), VISIBLE
        )
        self._stat_stmt = sa.select(T.updated_at, T.created_at).where(T.name == sa.bindparam("name"), VISIBLE)
        self._fast = _SqliteReader.for_engine(engine)
        self._read_many_stmt = sa.select(T.name, T.updated_at, T.created_at, RAW_SECRET).where(
            T.name.in_(sa.bindparam("names", expanding=True)), VISIBLE
        )
        self._read_attrs_stmt = (
            sa.select(T.updated_at, T.created_at, RAW_SECRET, A.mode, A.owner, A.grp)
            .select_from(WITH_ATTRS)
            .where(T.name == sa.bindparam("name"), VISIBLE)
        )
        self._read_many_attrs_stmt = (
            sa.select(T.name, T.updated_at, T.created_at, RAW_SECRET, A.mode, A.owner, A.grp)
            .select_from(WITH_ATTRS)
            .where(T.name.in_(sa.bindparam("names", expanding=True)), VISIBLE)
        )
        self._attrs_checked_at: float | None = None  # when the file-attrs table was last found missing
        self._attrs_table = False

    def has_attrs_table(self) -> bool:
        """Whether the secretfs_file_attrs table exists (a missing one is looked for again every
        ATTRS_RECHECK seconds: a writable mount of the same database may create it)."""
        if self._attrs_table:
            return True
        now = time.monotonic()
        if self._attrs_checked_at is not None and now - self._attrs_checked_at < ATTRS_RECHECK:
            return False
        with backend_errors("looking for the file attrs table"), self.engine.connect() as conn:
            self._attrs_table = sa.inspect(conn).has_table(file_attrs_table.name)
        self._attrs_checked_at = now
        return self._attrs_table

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def _require_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("the store is read-only")

    def list(self, prefix: str = "") -> list[SecretMeta]:
        stmt = sa.select(T.name, T.updated_at, T.created_at).where(VISIBLE)
        if prefix:
            stmt = stmt.where(T.name.like(like_prefix(prefix), escape="\\"))
        with backend_errors("listing secrets"), self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        newest: dict[str, SecretMeta] = {}
        for name, updated, created in rows:
            if not valid_name(name):
                continue  # hidden, counted by info()
            known = newest.get(name)
            if known is None or updated > known.updated_at:
                newest[name] = SecretMeta(name, updated, created)
        return [newest[n] for n in sorted(newest)]

    def list_dir(self, directory: str) -> DirListing:
        stmt = sa.select(T.name).where(VISIBLE).distinct()
        if directory:
            stmt = stmt.where(T.name.like(like_prefix(directory + "/"), escape="\\"))
        with backend_errors("listing secrets"), self.engine.connect() as conn:
            names = [name for name in conn.execute(stmt).scalars() if valid_name(name)]
        return listing_from_names(names, directory)

    def read(self, name: str) -> SecretRecord:
        rows: Sequence[Any]
        attrs = self.has_attrs_table()
        if self._fast is not None:
            with _sqlite_errors(f"reading {name!r}"):
                raw = self._fast.rows(name, attrs=attrs)
            rows = [_parse_row(*row) for row in raw]
        else:
            stmt = self._read_attrs_stmt if attrs else self._read_stmt
            with backend_errors(f"reading {name!r}"), self.engine.connect() as conn:
                rows = conn.execute(stmt, {"name": name}).all()
        if not rows:
            raise NotFound(f"no secret named {name!r}")
        newest = max(rows, key=lambda r: r[0])
        updated, created, raw = newest[:3]
        try:
            stored = load_stored(raw)
        except IntegrityError as exc:
            log.error("secret %r cannot be read: %s", name, exc)
            raise IntegrityError(f"secret {name!r} cannot be read: {exc}") from None
        if crypto.is_encrypted(stored):
            try:
                value = crypto.decrypt(self._key, stored)
            except IntegrityError as exc:
                log.error("secret %r cannot be decrypted: %s", name, exc)
                raise IntegrityError(f"secret {name!r} cannot be decrypted: {exc}") from None
        else:
            value = stored
        return SecretRecord(name, value, updated, created, _attrs_of(newest, 3))

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        """The records of those names that exist, in one query per READ_MANY_CHUNK names.

        The newest row per name wins, as in read(). A name whose value does not decrypt is left
        out, as is one whose stored value is not a JSON object (its own read() reports the error).
        """
        newest: dict[str, tuple[Any, ...]] = {}
        attrs = self.has_attrs_table() if names else False
        stmt = self._read_many_attrs_stmt if attrs else self._read_many_stmt
        for start in range(0, len(names), READ_MANY_CHUNK):
            chunk = list(names[start : start + READ_MANY_CHUNK])
            rows: Sequence[Any]
            if self._fast is not None:
                with _sqlite_errors("reading secrets"):
                    raw = self._fast.rows_many(chunk, attrs=attrs)
                rows = [(row[0], *_parse_row(*row[1:])) for row in raw]
            else:
                with backend_errors("reading secrets"), self.engine.connect() as conn:
                    rows = conn.execute(stmt, {"names": chunk}).all()
            for row in rows:
                known = newest.get(row[0])
                if known is None or row[1] > known[0]:
                    newest[row[0]] = tuple(row[1:])
        records: dict[str, SecretRecord] = {}
        for name, row in newest.items():
            updated, created, raw = row[:3]
            try:
                stored = load_stored(raw)
                value = crypto.decrypt(self._key, stored) if crypto.is_encrypted(stored) else stored
            except IntegrityError:
                continue
            records[name] = SecretRecord(name, value, updated, created, _attrs_of(row, 3))
        return records

    def stat(self, name: str) -> SecretMeta:
        with backend_errors(f"reading {name!r}"), self.engine.connect() as conn:
            rows = conn.execute(self._stat_stmt, {"name": name}).all()
        if not rows:
            raise NotFound(f"no secret named {name!r}")
        updated, created = max(rows, key=lambda r: r[0])
        return SecretMeta(name, updated, created)

    def write(self, name: str, value: Any) -> None:
        self.write_many({name: value})

    def write_many(self, items: Mapping[str, Any]) -> None:
        """Create or replace every item in one transaction: all or none."""
        self.write_with_attrs(items, NO_ATTRS)

    def write_with_attrs(self, items: Mapping[str, Any], attrs: FileAttrs) -> None:
        """Create or replace every item, and merge attrs into each one's file attrs (unless attrs is
        empty), in one transaction: all or none."""
        self._require_writable()
        envelopes = {name: crypto.encrypt(self._key, value) for name, value in items.items()}
        what = ", ".join(repr(name) for name in envelopes)
        if not attrs.empty:
            self._ensure_attrs_table()
        else:
            self.has_attrs_table()  # known before _upsert clears what a new secret must not inherit
        for _attempt in range(3):
            try:
                with backend_errors(f"writing {what}"), self.engine.begin() as conn:
                    now = time.time()
                    for name, envelope in envelopes.items():
                        self._upsert(conn, name, envelope, now)
                        if not attrs.empty:
                            self._merge_attrs(conn, name, attrs)
                    self._notify(conn, list(envelopes))
                return
            except sa.exc.IntegrityError:
                # A concurrent writer inserted the same name first: retry as an update.
                continue
        raise AccessDenied(f"cannot write {what}: a name is held by a row secretfs does not manage")

    def _upsert(self, conn: Connection, name: str, envelope: dict[str, str], now: float) -> None:
        updated = conn.execute(
            sa.update(secret_table).where(T.name == name, VISIBLE).values(secret=envelope, updated_at=now)
        ).rowcount
        if updated == 0:
            conn.execute(
                sa.insert(secret_table).values(
                    id=str(uuid.uuid4()),
                    name=name,
                    secret=envelope,
                    is_vault=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            if self._attrs_table:  # a new secret: no row left by one of that name deleted elsewhere
                conn.execute(sa.delete(file_attrs_table).where(A.name == name))

    def set_attrs(self, name: str, attrs: FileAttrs) -> None:
        """Merge attrs into the secret's file attrs (one transaction); NotFound if it does not exist."""
        self._require_writable()
        self._ensure_attrs_table()
        for _attempt in range(3):
            try:
                with backend_errors(f"setting the mode or owner of {name!r}"), self.engine.begin() as conn:
                    if conn.execute(sa.select(T.id).where(T.name == name, VISIBLE).limit(1)).first() is None:
                        raise NotFound(f"no secret named {name!r}")
                    self._merge_attrs(conn, name, attrs)
                    self._notify(conn, [name])
                return
            except sa.exc.IntegrityError:
                continue  # a concurrent first set_attrs inserted the row: merge into it
        raise BackendUnavailable(f"could not set the mode or owner of {name!r} (concurrent changes)")

    def _merge_attrs(self, conn: Connection, name: str, attrs: FileAttrs) -> None:
        row = conn.execute(sa.select(A.mode, A.owner, A.grp).where(A.name == name)).first()
        if row is None:
            conn.execute(
                sa.insert(file_attrs_table).values(name=name, mode=attrs.mode, owner=attrs.owner, grp=attrs.group)
            )
            return
        merged = (attrs_from_columns(*row) or NO_ATTRS).merged(attrs)
        conn.execute(
            sa.update(file_attrs_table)
            .where(A.name == name)
            .values(mode=merged.mode, owner=merged.owner, grp=merged.group)
        )

    def _ensure_attrs_table(self) -> None:
        """Create the file attrs table if missing (an older database opened by a writable store)."""
        if not self.has_attrs_table():
            with backend_errors("creating the file attrs table"), self.engine.begin() as conn:
                file_attrs_table.create(conn, checkfirst=True)
            self._attrs_table = True

    def delete(self, name: str) -> None:
        self._require_writable()
        attrs = self.has_attrs_table()
        with backend_errors(f"deleting {name!r}"), self.engine.begin() as conn:
            deleted = conn.execute(sa.delete(secret_table).where(T.name == name, VISIBLE)).rowcount
            if deleted and attrs:
                conn.execute(sa.delete(file_attrs_table).where(A.name == name))
            self._notify(conn, [name])
        if deleted == 0:
            raise NotFound(f"no secret named {name!r}")

    def rename(self, old: str, new: str) -> None:
        self._require_writable()
        if old == new:
            self.stat(old)
            return
        attrs = self.has_attrs_table()
        try:
            with backend_errors(f"renaming {old!r}"), self.engine.begin() as conn:
                exists = conn.execute(sa.select(T.id).where(T.name == old, VISIBLE).limit(1)).first()
                if exists is None:
                    raise NotFound(f"no secret named {old!r}")
                conn.execute(sa.delete(secret_table).where(T.name == new, VISIBLE))
                conn.execute(
                    sa.update(secret_table).where(T.name == old, VISIBLE).values(name=new, updated_at=time.time())
                )
                if attrs:  # the file attrs move with the secret, replacing the target's
                    conn.execute(sa.delete(file_attrs_table).where(A.name == new))
                    conn.execute(sa.update(file_attrs_table).where(A.name == old).values(name=new))
                self._notify(conn, [old, new])
        except sa.exc.IntegrityError:
            raise AccessDenied(
                f"cannot rename to {new!r}: the name is held by a row secretfs does not manage"
            ) from None

    def duplicate_names(self) -> int:
        """How many visible names are held by more than one row (the newest row wins)."""
        stmt = sa.select(sa.func.count()).select_from(
            sa.select(T.name).where(VISIBLE).group_by(T.name).having(sa.func.count() > 1).subquery()
        )
        with backend_errors("counting duplicates"), self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def hidden_vault_rows(self) -> int:
        stmt = sa.select(sa.func.count()).select_from(secret_table).where(T.is_vault.is_(True))
        with backend_errors("counting rows"), self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def bad_rows(self) -> tuple[int, int]:
        """(rows whose stored value is not a JSON object, rows whose name is not valid UTF-8).

        A row of the first kind fails alone (EIO for its file); one of the second kind is hidden.
        On SQLite, the rows whose value is surely an envelope are not fetched (SURELY_ENCRYPTED).
        """
        stmt = sa.select(T.name, RAW_SECRET).where(VISIBLE)
        surely = SURELY_ENCRYPTED.get(self.backend)
        if surely is not None and self.backend == "sqlite":
            stmt = stmt.where(sa.or_(sa.text(f"({surely}) = 0"), sa.func.typeof(T.name) != "text"))
        bad = invalid = 0
        with backend_errors("counting rows"), self.engine.connect() as conn:
            for name, raw in conn.execute(stmt):
                if not valid_name(name):
                    invalid += 1
                    continue
                try:
                    load_stored(raw)
                except IntegrityError:
                    bad += 1
        return bad, invalid

    def info(self) -> dict[str, Any]:
        from secretfs.config import redact_url

        bad, invalid = self.bad_rows()
        return {
            "backend": self.backend,
            "database": redact_url(self.engine.url.render_as_string(hide_password=False)),
            "secrets": len(self.list()),
            "duplicate_names": self.duplicate_names(),
            "hidden_vault_rows": self.hidden_vault_rows(),
            "bad_rows": bad,
            "hidden_invalid_rows": invalid,
            **({"notify_trigger": pg_notify.trigger_installed(self.engine)} if self.backend == "postgresql" else {}),
        }

    def _notify(self, conn: Connection, names: Sequence[str]) -> None:
        """PostgreSQL: notify every listening mount of these names when this transaction commits."""
        if self.backend == "postgresql":
            pg_notify.notify(conn, names)

    def watch(self, on_change: Callable[[Sequence[str] | None], None]) -> Callable[[], None] | None:
        """Report changes by other processes: the SQLite file watcher (names unknown: None), or
        PostgreSQL notifications (the names); a stop function, or None for other databases."""
        db_file = sqlite_file(self.engine)
        if db_file is not None:
            from secretfs.stores.sqlite_watch import watch_file

            return watch_file(db_file, lambda: on_change(None))
        if self.backend == "postgresql":
            return pg_notify.Listener(self.engine, on_change).stop
        return None

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self.engine.dispose()
