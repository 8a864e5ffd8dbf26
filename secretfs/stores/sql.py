"""The SQL store: Archestra's `secret` table on SQLite or PostgreSQL, values AES-256-GCM encrypted.

Queries use SQLAlchemy Core (no ORM objects on the read path). Every value is encrypted before it
reaches the database and decrypted after it leaves; plaintext never touches the table.
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
from secretfs.stores.base import Capabilities, DirListing, SecretMeta, SecretRecord, listing_from_names

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

VISIBLE = secret_table.c.is_vault.isnot(True)
T = secret_table.c


# SQLite engines made by make_engine, with their timeout: SqlStore reads them on a raw connection.
_SQLITE_TIMEOUTS: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def _sqlite_pragmas(cursor: Any, timeout: float) -> None:
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

    READ = "SELECT updated_at, created_at, secret FROM secret WHERE name = ? AND is_vault IS NOT 1"
    READ_MANY = "SELECT name, updated_at, created_at, secret FROM secret WHERE name IN ({}) AND is_vault IS NOT 1"

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

    def rows(self, name: str) -> list[Any]:
        return self.connection().execute(self.READ, (name,)).fetchall()

    def rows_many(self, names: list[str]) -> list[Any]:
        sql = self.READ_MANY.format(",".join("?" * len(names)))
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


def _parse_row(updated: Any, created: Any, stored: Any) -> tuple[float, float, Any]:
    """A raw SQLite row as the engine's column types would give it (epoch times, parsed JSON)."""
    return to_epoch(updated), to_epoch(created), None if stored is None else json.loads(stored)


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None for other databases and in-memory SQLite)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).absolute()


class SqlStore:
    """The `secret` table, read and written through one key.

    Capabilities: bulk reads (read_many) always; change watching (watch) on SQLite files only.
    """

    def __init__(self, engine: Engine, key: bytes, *, read_only: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self._key = key
        self.capabilities = Capabilities(
            bulk_read=True,
            watch=sqlite_file(engine) is not None or engine.dialect.name == "postgresql",
            atomic_batch=True,
        )
        # No LIMIT: a foreign database may hold a name twice, with timestamps in mixed text formats
        # that SQL cannot order (SQLite); the newest row is picked by its parsed time in Python.
        self._read_stmt = sa.select(T.updated_at, T.created_at, T.secret).where(T.name == sa.bindparam("name"), VISIBLE)
        self._stat_stmt = sa.select(T.updated_at, T.created_at).where(T.name == sa.bindparam("name"), VISIBLE)
        self._fast = _SqliteReader.for_engine(engine)
        self._read_many_stmt = sa.select(T.name, T.updated_at, T.created_at, T.secret).where(
            T.name.in_(sa.bindparam("names", expanding=True)), VISIBLE
        )

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
            known = newest.get(name)
            if known is None or updated > known.updated_at:
                newest[name] = SecretMeta(name, updated, created)
        return [newest[n] for n in sorted(newest)]

    def list_dir(self, directory: str) -> DirListing:
        stmt = sa.select(T.name).where(VISIBLE).distinct()
        if directory:
            stmt = stmt.where(T.name.like(like_prefix(directory + "/"), escape="\\"))
        with backend_errors("listing secrets"), self.engine.connect() as conn:
            names = list(conn.execute(stmt).scalars())
        return listing_from_names(names, directory)

    def read(self, name: str) -> SecretRecord:
        rows: Sequence[Any]
        if self._fast is not None:
            with _sqlite_errors(f"reading {name!r}"):
                raw = self._fast.rows(name)
            rows = [_parse_row(*row) for row in raw]
        else:
            with backend_errors(f"reading {name!r}"), self.engine.connect() as conn:
                rows = conn.execute(self._read_stmt, {"name": name}).all()
        if not rows:
            raise NotFound(f"no secret named {name!r}")
        updated, created, stored = max(rows, key=lambda r: r[0])
        if crypto.is_encrypted(stored):
            try:
                value = crypto.decrypt(self._key, stored)
            except IntegrityError as exc:
                log.error("secret %r cannot be decrypted: %s", name, exc)
                raise IntegrityError(f"secret {name!r} cannot be decrypted: {exc}") from None
        else:
            value = stored
        return SecretRecord(name, value, updated, created)

    def read_many(self, names: Sequence[str]) -> dict[str, SecretRecord]:
        """The records of those names that exist, in one query per READ_MANY_CHUNK names.

        The newest row per name wins, as in read(). A name whose value does not decrypt is left
        out (its own read() reports the error).
        """
        newest: dict[str, tuple[float, float, Any]] = {}
        for start in range(0, len(names), READ_MANY_CHUNK):
            chunk = list(names[start : start + READ_MANY_CHUNK])
            rows: Sequence[Any]
            if self._fast is not None:
                with _sqlite_errors("reading secrets"):
                    raw = self._fast.rows_many(chunk)
                rows = [(row[0], *_parse_row(*row[1:])) for row in raw]
            else:
                with backend_errors("reading secrets"), self.engine.connect() as conn:
                    rows = conn.execute(self._read_many_stmt, {"names": chunk}).all()
            for name, updated, created, stored in rows:
                known = newest.get(name)
                if known is None or updated > known[0]:
                    newest[name] = (updated, created, stored)
        records: dict[str, SecretRecord] = {}
        for name, (updated, created, stored) in newest.items():
            try:
                value = crypto.decrypt(self._key, stored) if crypto.is_encrypted(stored) else stored
            except IntegrityError:
                continue
            records[name] = SecretRecord(name, value, updated, created)
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
        self._require_writable()
        envelopes = {name: crypto.encrypt(self._key, value) for name, value in items.items()}
        what = ", ".join(repr(name) for name in envelopes)
        for _attempt in range(3):
            try:
                with backend_errors(f"writing {what}"), self.engine.begin() as conn:
                    now = time.time()
                    for name, envelope in envelopes.items():
                        self._upsert(conn, name, envelope, now)
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

    def delete(self, name: str) -> None:
        self._require_writable()
        with backend_errors(f"deleting {name!r}"), self.engine.begin() as conn:
            deleted = conn.execute(sa.delete(secret_table).where(T.name == name, VISIBLE)).rowcount
            self._notify(conn, [name])
        if deleted == 0:
            raise NotFound(f"no secret named {name!r}")

    def rename(self, old: str, new: str) -> None:
        self._require_writable()
        if old == new:
            self.stat(old)
            return
        try:
            with backend_errors(f"renaming {old!r}"), self.engine.begin() as conn:
                exists = conn.execute(sa.select(T.id).where(T.name == old, VISIBLE).limit(1)).first()
                if exists is None:
                    raise NotFound(f"no secret named {old!r}")
                conn.execute(sa.delete(secret_table).where(T.name == new, VISIBLE))
                conn.execute(
                    sa.update(secret_table).where(T.name == old, VISIBLE).values(name=new, updated_at=time.time())
                )
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

    def info(self) -> dict[str, Any]:
        from secretfs.config import redact_url

        return {
            "backend": self.backend,
            "database": redact_url(self.engine.url.render_as_string(hide_password=False)),
            "secrets": len(self.list()),
            "duplicate_names": self.duplicate_names(),
            "hidden_vault_rows": self.hidden_vault_rows(),
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
