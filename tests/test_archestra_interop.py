"""Interoperability with Archestra's v1 format, checked against an independent implementation in Node.js.

The Node side uses only node:crypto (hkdfSync, createCipheriv/createDecipheriv 'aes-256-gcm'),
JSON.stringify and base64url, as Archestra does. Secrets reach Node through its environment, never argv.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from secretfs import crypto
from tests.support.mount import Instance, base_env, mounted

NODE_LIB = r"""
const crypto = require('node:crypto');
const secret = process.env.INTEROP_SECRET;
if (!secret) { throw new Error('INTEROP_SECRET is not set'); }
const key = Buffer.from(crypto.hkdfSync('sha256', Buffer.from(secret, 'utf8'),
  Buffer.from('archestra-hkdf-salt-v1'), Buffer.from('archestra-secret-encryption-v1'), 32));
const b64u = (buf) => buf.toString('base64url');
function encrypt(value) {
  const iv = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', key, iv);
  const ct = Buffer.concat([cipher.update(JSON.stringify(value), 'utf8'), cipher.final()]);
  return { __encrypted: `v1:${b64u(iv)}:${b64u(cipher.getAuthTag())}:${b64u(ct)}` };
}
function isEncrypted(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    && typeof value.__encrypted === 'string' && value.__encrypted.startsWith('v1:');
}
function decrypt(envelope) {
  if (!isEncrypted(envelope)) { throw new Error('not a v1 envelope'); }
  const [, iv, tag, ct] = envelope.__encrypted.split(':');
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
  decipher.setAuthTag(Buffer.from(tag, 'base64url'));
  const plain = Buffer.concat([decipher.update(Buffer.from(ct, 'base64url')), decipher.final()]);
  return JSON.parse(plain.toString('utf8'));
}
const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
"""

NODE_ENCRYPT = (
    NODE_LIB
    + r"""
process.stdout.write(JSON.stringify(input.map((v) => ({ envelope: encrypt(v), stringified: JSON.stringify(v) }))));
"""
)

NODE_DECRYPT = (
    NODE_LIB
    + r"""
process.stdout.write(JSON.stringify(input.map((e) => ({ encrypted: isEncrypted(e), value: decrypt(e) }))));
"""
)


def node(script: str, secret: str, payload: Any) -> Any:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "INTEROP_SECRET": secret}
    result = subprocess.run(
        ["node", "-e", script],
        input=json.dumps(payload).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


ARCHESTRA_DDL = """
CREATE TABLE secret (
    id text PRIMARY KEY NOT NULL,
    name varchar(256) NOT NULL,
    secret text NOT NULL,
    is_vault integer DEFAULT 0 NOT NULL,
    created_at text DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at text DEFAULT CURRENT_TIMESTAMP NOT NULL
)
"""

BINARY = bytes(range(256)) + b"\x00\xff\xfe"

VALUES: dict[str, Any] = {
    "db_password": {"value": "hunter2"},
    "app/api_key": {"value": 'grüße 日本 🔑 "quoted"\n'},
    "app/db/credentials": {"user": "app", "password": "p@ss", "options": {"ssl": "verify-full", "list": ["a", 1]}},
    "keystore.p12": {"value": base64.b64encode(BINARY).decode(), "encoding": "base64"},
    "numbers": {"int": 42, "float": 1.5, "bool": True, "null": None},
}


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def archestra_db(tmp_path: Path, secret: str) -> Path:
    """An SQLite database in Archestra's shape, with rows encrypted by the Node implementation."""
    encrypted = node(NODE_ENCRYPT, secret, list(VALUES.values()))
    path = tmp_path / "archestra.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute(ARCHESTRA_DDL)
        rows = []
        for i, (name, item) in enumerate(zip(VALUES, encrypted, strict=True)):
            stamp = f"2024-05-0{i + 1}T10:00:00.000Z" if i % 2 else f"2024-05-0{i + 1} 10:00:00"
            rows.append((str(uuid.uuid4()), name, json.dumps(item["envelope"]), 0, stamp, stamp))
        rows.append(
            (str(uuid.uuid4()), "vault_ref", json.dumps({"path": "secret/data/x"}), 1, "2024-05-09", "2024-05-09")
        )
        rows.append(
            (str(uuid.uuid4()), "legacy_plain", json.dumps({"value": "plain-legacy"}), 0, "2024-05-10", "2024-05-10")
        )
        conn.executemany("INSERT INTO secret VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
    finally:
        conn.close()
    return path


def instance_for(tmp_path: Path, db: Path, secret: str) -> Instance:
    data = tmp_path / "data"
    return Instance(
        data, base_env(data, ARCHESTRA_DATABASE_URL=f"sqlite:///{db}", ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secret)
    )


def stored_rows(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        return {name: json.loads(value) for name, value in conn.execute("SELECT name, secret FROM secret")}
    finally:
        conn.close()


def expected_file(value: dict[str, Any]) -> bytes:
    """What a file shows, written out from README "The file view" (not by calling secretfs.render)."""
    if set(value) == {"value"} and isinstance(value["value"], str):
        return value["value"].encode()
    if set(value) == {"value", "encoding"} and value["encoding"] == "base64":
        return base64.b64decode(value["value"])
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def test_node_json_stringify_matches_compact_json(secret: str) -> None:
    tricky = [
        {"ctl": "\x00\x01\x1f\x7f", "sep": "\u2028\u2029", "slash": "a/b", "quote": '"\\'},
        {"lone": "\ud800", "pair": "😀", "nested": {"z": "1", "a": "2"}},
    ]
    encrypted = node(NODE_ENCRYPT, secret, tricky)
    key = crypto.derive_key(secret)
    for value, item in zip(tricky, encrypted, strict=True):
        assert crypto.compact_json(value) == item["stringified"]
        assert crypto.decrypt(key, item["envelope"]) == value


def test_node_envelopes_read_by_cli(tmp_path: Path, archestra_db: Path, secret: str) -> None:
    instance = instance_for(tmp_path, archestra_db, secret)
    listed = instance.cli("ls").stdout.decode().split()
    assert listed == sorted([*VALUES, "legacy_plain"])
    assert "vault_ref" not in listed
    for name, value in VALUES.items():
        assert instance.cli("get", name).stdout == expected_file(value), name
        assert json.loads(instance.cli("get", "--json", name).stdout) == value
    assert instance.cli("get", "legacy_plain").stdout == b"plain-legacy"
    assert instance.cli("get", "vault_ref", check=False).returncode == 6
    status = json.loads(instance.cli("status", "--json").stdout)
    assert status["backend"]["hidden_vault_rows"] == 1


@pytest.mark.mount
def test_node_envelopes_read_through_mount(tmp_path: Path, archestra_db: Path, secret: str) -> None:
    instance = instance_for(tmp_path, archestra_db, secret)
    assert not crypto.is_encrypted(stored_rows(archestra_db)["legacy_plain"])
    with mounted(instance, tmp_path / "mnt") as m:
        # Startup encrypted the plaintext row, in a form the Node implementation reads.
        rows = stored_rows(archestra_db)
        assert crypto.is_encrypted(rows["legacy_plain"])
        assert node(NODE_DECRYPT, secret, [rows["legacy_plain"]]) == [
            {"encrypted": True, "value": {"value": "plain-legacy"}}
        ]
        assert rows["vault_ref"] == {"path": "secret/data/x"}

        assert sorted(os.listdir(m.path)) == ["app", "db_password", "keystore.p12", "legacy_plain", "numbers"]
        assert sorted(os.listdir(m.path / "app")) == ["api_key", "db"]
        assert not (m.path / "vault_ref").exists()
        for name, value in VALUES.items():
            content = (m.path / name).read_bytes()
            assert content == expected_file(value), name
            assert os.stat(m.path / name).st_size == len(content)
        assert (m.path / "keystore.p12").read_bytes() == BINARY
        assert (m.path / "legacy_plain").read_bytes() == b"plain-legacy"

        # Writes through the mount are readable by Node.
        (m.path / "db_password").write_bytes(b"rotated-by-mount")
        (m.path / "app" / "new").write_text('{"k": "v", "n": {"x": "y"}}')
    rows = stored_rows(archestra_db)
    decrypted = node(NODE_DECRYPT, secret, [rows["db_password"], rows["app/new"]])
    assert decrypted == [
        {"encrypted": True, "value": {"value": "rotated-by-mount"}},
        {"encrypted": True, "value": {"k": "v", "n": {"x": "y"}}},
    ]


def test_secretfs_put_rows_decrypt_with_node(tmp_path: Path, secret: str) -> None:
    db = tmp_path / "secretfs.db"
    instance = instance_for(tmp_path, db, secret)
    inputs: dict[str, tuple[bytes, Any]] = {
        "text": (b"tok", {"value": "tok"}),
        "text_newline": (b"line\n", {"value": "line\n"}),
        "unicode/名前": ("grüße 🔑".encode(), {"value": "grüße 🔑"}),
        "json": (b'{"user": "u", "nested": {"a": "\\u00e9"}}', {"user": "u", "nested": {"a": "é"}}),
        "binary": (BINARY, {"value": base64.b64encode(BINARY).decode(), "encoding": "base64"}),
    }
    for name, (content, _) in inputs.items():
        instance.cli("put", name, input=content)
    rows = stored_rows(db)
    assert set(rows) == set(inputs)
    names = list(inputs)
    decrypted = node(NODE_DECRYPT, secret, [rows[n] for n in names])
    for name, item in zip(names, decrypted, strict=True):
        assert item == {"encrypted": True, "value": inputs[name][1]}, name
    # And Node refuses them under another secret (the envelopes are really keyed).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "INTEROP_SECRET": "wrong"}
    result = subprocess.run(
        ["node", "-e", NODE_DECRYPT],
        input=json.dumps([rows["text"]]).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"authenticate" in result.stderr
