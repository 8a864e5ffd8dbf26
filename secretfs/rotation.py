"""Key rotation: re-encrypt every row from the previous encryption secret to the current one.

One transaction, idempotent: rows already under the current key are left as they are, so a second
run changes nothing. The database is checked with reads only before anything is written (its key
canary must decrypt under the current or the previous key), and a row that decrypts under neither
aborts the whole rotation with nothing changed. A row whose stored value is not a JSON object is
left as it is, named in one log line and counted (bad_rows): it does not stop the others. The key
canary is refreshed in the same transaction. On SQLite the WAL is then checkpointed and truncated,
so no old value stays in it. Errors name rows by their secret name, never by value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from secretfs import crypto
from secretfs.errors import IntegrityError, KeyMismatch
from secretfs.stores.sql import (
    RAW_SECRET,
    VISIBLE,
    backend_errors,
    checkpoint_wal,
    load_stored,
    meta_table,
    metadata,
    secret_table,
)
from secretfs.stores.sql_setup import CANARY_VALUE, read_canary, write_canary

log = logging.getLogger(__name__)

T = secret_table.c

# progress(total) -> a context manager whose value has .update(n) (click.progressbar's shape).
Progress = Callable[[int], Any]


@dataclass(frozen=True)
class RotationResult:
    """What a rotation found and did (counts only: never a name's value)."""

    rows: int  # visible rows examined
    reencrypted: int  # moved from the previous key to the current one
    already_current: int  # left alone: already under the current key
    plaintext_encrypted: int  # plaintext rows, encrypted under the current key
    canary_refreshed: bool
    bad_rows: int = 0  # left alone: the stored value is not a JSON object

    @property
    def changed(self) -> bool:
        return bool(self.reencrypted or self.plaintext_encrypted or self.canary_refreshed)

    def as_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        if not self.bad_rows:
            del fields["bad_rows"]  # named only when there are some (the shape callers know)
        return {**fields, "changed": self.changed}


def _decrypts(key: bytes, envelope: Any) -> bool:
    try:
        crypto.decrypt(key, envelope)
    except IntegrityError:
        return False
    return True


def _canary_state(conn: Connection, current: bytes, previous: bytes | None) -> str:
    """'current', 'previous', 'absent' or 'neither', from reads only."""
    tables = set(sa.inspect(conn).get_table_names())
    canary = read_canary(conn, tables)
    if canary is None:
        return "absent"
    for label, key in (("current", current), ("previous", previous)):
        if key is None:
            continue
        try:
            if crypto.decrypt(key, canary) == CANARY_VALUE:
                return label
        except IntegrityError:
            continue
    return "neither"


def _sqlite_immediate(engine: Engine) -> None:
    """Make SQLite transactions BEGIN IMMEDIATE: the rows read are the rows written, no writer between."""

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def prepare_engine(engine: Engine) -> Engine:
    """Configure a fresh engine for rotation (call before its first connection)."""
    if engine.dialect.name == "sqlite":
        _sqlite_immediate(engine)
    return engine


@dataclass(frozen=True)
class _Row:
    row_id: str
    name: str
    secret: Any


def _plan(
    rows: list[_Row], current: bytes, previous: bytes | None, tick: Callable[[int], None]
) -> Iterator[tuple[str, str, Any]]:
    """Yield (kind, row id, new envelope) for each row; raise IntegrityError on the first row that
    decrypts under neither key. A row that is not a JSON object is "bad", logged, left alone."""
    for row in rows:
        try:
            stored = load_stored(row.secret)
        except IntegrityError as exc:
            log.error("secret %r is left as it is (not rotated): %s", row.name, exc)
            yield "bad", row.row_id, None
            tick(1)
            continue
        if not crypto.is_encrypted(stored):
            yield "plaintext", row.row_id, crypto.encrypt(current, stored)
        elif _decrypts(current, stored):
            yield "current", row.row_id, None
        elif previous is not None and _decrypts(previous, stored):
            yield "previous", row.row_id, crypto.encrypt(current, crypto.decrypt(previous, stored))
        else:
            raise IntegrityError(
                f"secret {row.name!r} decrypts under neither the current nor the previous encryption secret; "
                "the rotation was aborted and nothing was changed"
            )
        tick(1)


def rotate_key(
    engine: Engine, current: bytes, previous: bytes | None, *, progress: Progress | None = None
) -> RotationResult:
    """Re-encrypt every visible row under `current`, in one transaction; see the module docstring.

    `engine` should have been passed through prepare_engine() (SQLite: BEGIN IMMEDIATE).
    """
    with backend_errors("opening the database"), engine.connect() as conn:
        state = _canary_state(conn, current, previous)
    if state == "neither":
        raise KeyMismatch(
            "the database's key canary decrypts under neither the current encryption secret nor "
            "ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS; nothing was changed"
        )
    counts = {"plaintext": 0, "current": 0, "previous": 0, "bad": 0}
    with backend_errors("rotating the encryption key"), engine.begin() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        if secret_table.name not in tables:
            rows: list[_Row] = []
        else:
            if engine.dialect.name == "postgresql":
                # Writers wait until the rotation commits; readers go on.
                conn.exec_driver_sql("LOCK TABLE secret IN EXCLUSIVE MODE")
            selected = conn.execute(sa.select(T.id, T.name, RAW_SECRET).where(VISIBLE).order_by(T.name)).all()
            rows = [_Row(str(r[0]), r[1], r[2]) for r in selected]
        updates: list[dict[str, Any]] = []
        with progress(len(rows)) if progress is not None and rows else _NoProgress() as bar:
            for kind, row_id, envelope in _plan(rows, current, previous, bar.update):
                counts[kind] += 1
                if envelope is not None:
                    updates.append({"row_id": row_id, "new_secret": envelope})
        if updates:
            conn.execute(
                sa.update(secret_table)
                .where(T.id == sa.bindparam("row_id"))
                .values(secret=sa.bindparam("new_secret", type_=T.secret.type)),
                updates,
            )
        refresh = state != "current"
        if refresh:
            metadata.create_all(conn, tables=[meta_table], checkfirst=True)
            write_canary(conn, current)
    result = RotationResult(
        rows=len(rows),
        reencrypted=counts["previous"],
        already_current=counts["current"],
        plaintext_encrypted=counts["plaintext"],
        canary_refreshed=refresh,
        bad_rows=counts["bad"],
    )
    if result.changed:
        with backend_errors("checkpointing the database"):
            checkpoint_wal(engine)
        log.info(
            "key rotation: %d row(s) re-encrypted, %d already current, %d plaintext encrypted",
            result.reencrypted,
            result.already_current,
            result.plaintext_encrypted,
        )
    return result


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None
