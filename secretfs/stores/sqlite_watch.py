"""Watching a SQLite database file: a call whenever another process may have written to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def watch_file(db_file: Path, on_change: Callable[[], None]) -> Callable[[], None]:
    """Call on_change when the database, its WAL or its journal is written; returns a stop function."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    names = {db_file.name, db_file.name + "-wal", db_file.name + "-journal"}

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            path = event.src_path if isinstance(event.src_path, str) else event.src_path.decode()
            if Path(path).name in names and event.event_type in ("modified", "created", "moved"):
                on_change()

    observer = Observer()
    observer.schedule(Handler(), str(db_file.parent), recursive=False)
    observer.daemon = True
    observer.start()
    return observer.stop
