"""PostgreSQL push between hosts: NOTIFY in the writing transaction, LISTEN in every mount.

secretfs's own writes send `pg_notify(CHANNEL, name)` in the same transaction as the write, so the
notification is delivered exactly when the change is committed. Writes by other programs
(Archestra itself, a plain SQL UPDATE) notify only once the opt-in trigger is installed
(`secretfs pg-trigger install`; never installed silently). A mount listens on its own connection;
when that connection drops it logs it, relies on its TTL meanwhile, reconnects, and then asks for a
full check (changes may have been missed). A notification carries a secret name, never a value.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

CHANNEL = "secretfs_changes"
TRIGGER = "secretfs_notify"
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
LISTEN_WAIT = 5.0  # seconds watch() waits for the first LISTEN

OnChange = Callable[[Sequence[str] | None], None]

_INSTALL = [
    f"""
    CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{CHANNEL}', OLD.name);
        RETURN OLD;
      END IF;
      PERFORM pg_notify('{CHANNEL}', NEW.name);
      IF TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name THEN
        PERFORM pg_notify('{CHANNEL}', OLD.name);
      END IF;
      RETURN NEW;
    END $$
    """,
    f"DROP TRIGGER IF EXISTS {TRIGGER} ON secret",
    f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON secret FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()",
]
_REMOVE = [f"DROP TRIGGER IF EXISTS {TRIGGER} ON secret", f"DROP FUNCTION IF EXISTS {TRIGGER}()"]


def notify(conn: Connection, names: Sequence[str]) -> None:
    """Inside a writing transaction: tell every listener which names it changes, at its commit."""
    for name in names:
        conn.execute(sa.text("SELECT pg_notify(:channel, :name)"), {"channel": CHANNEL, "name": name})


def trigger_installed(engine: Engine) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND NOT tgisinternal"), {"name": TRIGGER}
        ).first()
    return found is not None


def install_trigger(engine: Engine) -> None:
    with engine.begin() as conn:
        for statement in _INSTALL:
            conn.execute(sa.text(statement))


def remove_trigger(engine: Engine) -> None:
    with engine.begin() as conn:
        for statement in _REMOVE:
            conn.execute(sa.text(statement))


class Listener:
    """A thread that LISTENs on its own connection and reports the names it hears."""

    def __init__(self, engine: Engine, on_change: OnChange) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_change = on_change
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._run, name="secretfs-pg-listen", daemon=True)
        self._thread.start()
        # A write right after watch() returns must be heard: wait (boundedly) for the LISTEN.
        if not self._listening.wait(LISTEN_WAIT):
            log.warning("not listening for PostgreSQL notifications yet; changes from other hosts may wait")

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._listen(reconnected=failures > 0)
                failures = 0
            except Exception as exc:
                if self._stop.is_set():
                    return
                if failures == 0:
                    log.warning(
                        "lost the PostgreSQL notification connection (%s); changes from other hosts "
                        "arrive within --cache-ttl until it is back",
                        type(exc).__name__,
                    )
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                self._stop.wait(delay)

    def _listen(self, *, reconnected: bool) -> None:
        import psycopg

        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
            self._conn = conn
            conn.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            if reconnected:
                log.warning("listening for PostgreSQL notifications again")
                self._on_change(None)  # changes made while it was away were missed: check everything
            while not self._stop.is_set():
                names = [note.payload for note in conn.notifies(timeout=1.0, stop_after=1)]
                if names:
                    # The names of one transaction arrive together: take them as one change.
                    names += [note.payload for note in conn.notifies(timeout=0.02, stop_after=255)]
                    self._on_change(sorted(set(names)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
