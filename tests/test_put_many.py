"""Several secrets in one command: `put NAME=FILE...` and `put --from-dir`, and the rotation recipe.

In DB mode the names are written in one transaction (all or none); when put returns, every mount of
the store on this host serves all the new values, so a certificate and its key are replaced and
reloaded with no pause and no mismatched pair.
"""

from __future__ import annotations

import datetime
import sqlite3
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secretfs import errors
from tests.support.mount import Instance, mounted, os_read

TTL = "600"  # only read-your-writes can make a change visible during these tests


def test_pairs_and_a_directory(instance: Instance, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "b.json").write_bytes(b'{"user": "u", "password": "p"}')
    instance.cli("put", f"one={tmp_path / 'a.txt'}", f"two/json={tmp_path / 'b.json'}")
    assert instance.cli("get", "one").stdout == b"alpha"
    assert b'"password": "p"' in instance.cli("get", "two/json").stdout
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "top").write_bytes(b"t")
    (tree / "sub" / "leaf").write_bytes(b"l")
    instance.cli("put", "--from-dir", str(tree), "app")
    assert instance.cli("get", "app/top").stdout == b"t"
    assert instance.cli("get", "app/sub/leaf").stdout == b"l"
    instance.cli("put", "--from-dir", str(tree))
    assert instance.cli("get", "sub/leaf").stdout == b"l"


@pytest.mark.parametrize(
    "args",
    [
        ("a=",),
        ("=file",),
        ("a=/nonexistent/file",),
        ("one", "two"),
        ("--from-dir", "/", "a", "b"),
    ],
)
def test_usage_errors_store_nothing(instance: Instance, args: tuple[str, ...]) -> None:
    result = instance.cli("put", *args, check=False, input=b"")
    assert result.returncode == errors.EXIT_USAGE, result.stderr
    assert b"Traceback" not in result.stderr
    assert instance.cli("ls").stdout == b""


def test_one_transaction_all_or_none(instance: Instance, tmp_path: Path) -> None:
    # A name held by an Archestra Vault-reference row cannot be written: the whole batch fails.
    instance.cli("put", "pair/crt", input=b"old-crt")
    db = sqlite3.connect(instance.data_dir / "secretfs.db")
    with db:
        db.execute(
            "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES "
            "('0b7c7f4e-0000-4000-8000-000000000002', 'pair/key', '{\"path\": \"x\"}', 1, "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
        )
    db.close()
    (tmp_path / "crt").write_bytes(b"new-crt")
    (tmp_path / "key").write_bytes(b"new-key")
    result = instance.cli("put", f"pair/crt={tmp_path / 'crt'}", f"pair/key={tmp_path / 'key'}", check=False)
    assert result.returncode == errors.EXIT_REFUSED, result.stderr
    assert instance.cli("get", "pair/crt").stdout == b"old-crt"


def certificate_and_key(serial: int) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rotation-{serial}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.mark.mount
@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_certificate_rotation_then_reload_at_once(instance: Instance, tmp_path: Path, mode: str) -> None:
    """20 rotations of a certificate and its key, each with one `put`, each followed at once by a
    reload (ssl's load_cert_chain raises on a mismatched pair): no mismatch, never the old one."""
    crt, key = certificate_and_key(1)
    (tmp_path / "crt").write_bytes(crt)
    (tmp_path / "key").write_bytes(key)
    instance.cli("put", f"tls/crt={tmp_path / 'crt'}", f"tls/key={tmp_path / 'key'}")
    mismatches, old = 0, 0
    with mounted(instance, tmp_path / "m", "--cache-mode", mode, "--cache-ttl", TTL) as m:
        for serial in range(2, 22):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(m.path / "tls" / "crt", m.path / "tls" / "key")  # the running server
            crt, key = certificate_and_key(serial)
            (tmp_path / "crt").write_bytes(crt)
            (tmp_path / "key").write_bytes(key)
            instance.cli("put", f"tls/crt={tmp_path / 'crt'}", f"tls/key={tmp_path / 'key'}")
            reloaded = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                reloaded.load_cert_chain(m.path / "tls" / "crt", m.path / "tls" / "key")
            except ssl.SSLError:
                mismatches += 1
            served = x509.load_pem_x509_certificate(os_read(m.path / "tls" / "crt"))
            if served.serial_number != serial:
                old += 1
    assert (mismatches, old) == (0, 0)
