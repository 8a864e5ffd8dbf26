"""No plaintext at rest: after writes through a mount and `secretfs put`, no value appears in the
bytes of the SQLite file, its -wal and -shm, the data directory, or the daemon's log.

Each marker is searched in every form it could take on disk: raw bytes, JSON-escaped, and base64
(standard and URL-safe). Positive controls show that the same search finds a plaintext row.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.mount import Instance, base_env, mounted


def forms(marker: bytes) -> set[bytes]:
    """Every byte string under which a value could be found on disk."""
    out = {marker}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        out.add(encode(marker).rstrip(b"="))
    try:
        text = marker.decode("utf-8")
    except UnicodeDecodeError:
        return out
    for ascii_only in (True, False):
        out.add(json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode())
    out.add(text.encode("utf-16-le"))
    return {f for f in out if len(f) >= 16}


def files_under(*roots: Path) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(p for p in sorted(root.rglob("*")) if p.is_file())
    return found


def search(paths: Iterable[Path], markers: dict[str, bytes]) -> list[str]:
    """(marker, form, file) hits, as readable strings."""
    hits = []
    for path in paths:
        data = path.read_bytes()
        for label, marker in markers.items():
            for form in forms(marker):
                if form in data:
                    hits.append(f"{label} ({form[:24]!r}...) in {path}")
    return hits


def make_markers() -> dict[str, bytes]:
    token = secrets.token_hex(24)
    return {
        "text": f"plaintext-marker-{token}".encode(),
        "text_newline": f"second-marker-{secrets.token_hex(24)}\n".encode(),
        "unicode": f"ünïcødé-日本-🔑-{secrets.token_hex(20)}".encode(),
        "binary": b"\x00\xff" + secrets.token_bytes(64) + b"\x80\x81",
        "json_field": f"json-field-marker-{secrets.token_hex(24)}".encode(),
        "mount_text": f"mount-marker-{secrets.token_hex(24)}".encode(),
        "mount_binary": b"\xfe\x00" + secrets.token_bytes(64),
        "mount_unicode": f"mount-ünïcødé-🔑-{secrets.token_hex(20)}".encode(),
        "mount_append": f"appended-marker-{secrets.token_hex(24)}".encode(),
    }


@pytest.mark.mount
def test_no_plaintext_in_database_wal_or_data_dir(tmp_path: Path) -> None:
    markers = make_markers()
    data = tmp_path / "data"
    instance = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secrets.token_urlsafe(24)))

    instance.cli("put", "text", input=markers["text"])
    instance.cli("put", "dir/text_newline", input=markers["text_newline"])
    instance.cli("put", "unicode", input=markers["unicode"])
    instance.cli("put", "binary", input=markers["binary"])
    field = json.dumps({"user": "u", "password": markers["json_field"].decode()}).encode()
    instance.cli("put", "json", input=field)

    log = tmp_path / "mnt.log"
    with mounted(instance, tmp_path / "mnt") as m:
        (m.path / "mount_text").write_bytes(markers["mount_text"])
        (m.path / "sub").mkdir()
        (m.path / "sub" / "mount_binary").write_bytes(markers["mount_binary"])
        (m.path / "mount_unicode").write_bytes(markers["mount_unicode"])
        with open(m.path / "mount_text", "ab") as f:
            f.write(markers["mount_append"])
        # Read everything back through the mount (reads must not leave plaintext behind either).
        assert (m.path / "text").read_bytes() == markers["text"]
        assert (m.path / "binary").read_bytes() == markers["binary"]
        assert (m.path / "unicode").read_bytes() == markers["unicode"]
        assert (m.path / "mount_text").read_bytes() == markers["mount_text"] + markers["mount_append"]
        assert (m.path / "sub" / "mount_binary").read_bytes() == markers["mount_binary"]
        assert json.loads((m.path / "json").read_bytes())["password"] == markers["json_field"].decode()
        # While the mount is live the WAL holds the latest pages: search it now as well.
        live_files = files_under(data)
        assert any(p.name == "secretfs.db-wal" for p in live_files), live_files
        assert search(live_files, markers) == []

    assert instance.cli("get", "mount_unicode").stdout == markers["mount_unicode"]
    all_files = files_under(data, log)
    names = {p.name for p in all_files}
    assert "secretfs.db" in names
    assert log in all_files
    assert search(all_files, markers) == []


def test_positive_control_finds_plaintext_rows(tmp_path: Path) -> None:
    """The search above would fail if values were stored in plaintext, in any of the stored forms."""
    markers = make_markers()
    data = tmp_path / "data"
    instance = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secrets.token_urlsafe(24)))
    instance.cli("put", "seed", input=b"x")
    copy = tmp_path / "copy.db"
    shutil.copy(data / "secretfs.db", copy)
    conn = sqlite3.connect(copy)
    try:
        stored = {
            "text": {"value": markers["text"].decode()},
            "unicode_escaped": {"value": markers["unicode"].decode()},  # json.dumps escapes non-ASCII
            "binary": {"value": base64.b64encode(markers["binary"]).decode(), "encoding": "base64"},
        }
        for name, value in stored.items():
            conn.execute(
                "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
                (str(uuid.uuid4()), name, json.dumps(value), "2024-01-01 00:00:00", "2024-01-01 00:00:00"),
            )
        conn.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
            (
                str(uuid.uuid4()),
                "unicode_raw",
                json.dumps({"value": markers["mount_unicode"].decode()}, ensure_ascii=False),
                "2024-01-01 00:00:00",
                "2024-01-01 00:00:00",
            ),
        )
        conn.commit()
    finally:
        conn.close()
    hits = search([copy], markers)
    for label in ("text", "unicode", "binary", "mount_unicode"):
        assert any(hit.startswith(f"{label} (") for hit in hits), (label, hits)
    assert not any(hit.startswith("mount_text (") for hit in hits)


def test_startup_migration_leaves_no_plaintext_behind(tmp_path: Path) -> None:
    """Plaintext rows that secretfs encrypts at startup do not survive in freed pages or the WAL."""
    markers = {"legacy": f"legacy-plaintext-{secrets.token_hex(24)}".encode()}
    data = tmp_path / "data"
    instance = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secrets.token_urlsafe(24)))
    instance.cli("put", "seed", input=b"x")
    db = data / "secretfs.db"
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
            (
                str(uuid.uuid4()),
                "legacy",
                json.dumps({"value": markers["legacy"].decode()}),
                "2024-01-01 00:00:00",
                "2024-01-01 00:00:00",
            ),
        )
        conn.commit()
    finally:
        conn.close()
    assert search([db], markers) != []  # control: it is there before
    result = json.loads(instance.cli("migrate", "--json").stdout)
    assert result == {"encrypted_rows": 1}
    assert instance.cli("get", "legacy").stdout == markers["legacy"]
    assert search(files_under(data), markers) == []
