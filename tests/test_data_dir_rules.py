"""Issue 10, findings 5 and 8: the data directory and the key file are checked as ssh checks its
keys, directories are made 0700 whatever the umask, and no key is ever generated for a database
that already holds secrets (status never writes anything)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import SECRETFS, Instance, make_instance

ENC = "ARCHESTRA_SECRETS_ENCRYPTION_SECRET"
UNSAFE = "SECRETFS_ALLOW_UNSAFE_DATA_DIR"
NOBODY = 65534


def keyless(tmp_path: Path, **env: str) -> Instance:
    """An instance with no key configured: the key file in the data directory is used or made."""
    instance = make_instance(tmp_path, **env)
    instance.env.pop(ENC)
    return instance


def one_error_line(result: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    """One error line with every needle; for `status`, which reports on stdout, the backend error line."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err
    if result.args[-1] == "status":
        lines = [line for line in result.stdout.decode().splitlines() if line.strip().startswith("error:")]
        assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stdout.decode()
        return lines[0]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(directory.rglob("*"))
    }


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make files owned by another user")


def test_world_writable_data_dir_refused(tmp_path: Path) -> None:
    instance = keyless(tmp_path)
    instance.data_dir.mkdir(mode=0o700)
    instance.data_dir.chmod(0o777)
    result = instance.cli("put", "a", input=b"v", check=False)
    one_error_line(result, 3, "unsafe data directory", "writable by group or others", UNSAFE)
    assert list(instance.data_dir.iterdir()) == []


def test_foreign_data_dir_and_key_file_refused(tmp_path: Path, root_only: None) -> None:
    """Another user pre-creates the data directory and plants a key file: root refuses both."""
    instance = keyless(tmp_path)
    instance.data_dir.mkdir(mode=0o700)
    key = instance.data_dir / "encryption.secret"
    key.write_text("attacker-known-key\n")
    key.chmod(0o600)
    os.chown(instance.data_dir, NOBODY, NOBODY)
    result = instance.cli("put", "a", input=b"v", check=False)
    one_error_line(result, 3, "unsafe data directory", f"owned by uid {NOBODY}")
    os.chown(instance.data_dir, 0, 0)
    os.chown(key, NOBODY, NOBODY)
    result = instance.cli("put", "a", input=b"v", check=False)
    one_error_line(result, 3, "unsafe key file", f"owned by uid {NOBODY}")
    assert not (instance.data_dir / "secretfs.db").exists()


def test_world_readable_key_file_refused_unless_overridden(tmp_path: Path) -> None:
    instance = keyless(tmp_path)
    instance.data_dir.mkdir(mode=0o700)
    key = instance.data_dir / "encryption.secret"
    key.write_text("some-key-material-long-enough\n")
    key.chmod(0o644)
    for command in (["put", "a"], ["ls"], ["get", "a"], ["status"]):
        result = instance.cli(*command, input=b"v", check=False)
        one_error_line(result, 3, "unsafe key file", "readable by group or others", "chmod 600")
    assert not (instance.data_dir / "secretfs.db").exists()
    instance.env[UNSAFE] = "1"
    result = instance.cli("put", "a", input=b"v", check=False)
    assert result.returncode == 0, result.stderr
    assert b"WARNING" in result.stderr and UNSAFE.encode() in result.stderr
    assert instance.cli("get", "a").stdout == b"v"


def test_directories_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "er" / "data"
    instance = keyless(tmp_path, SECRETFS_DATA_DIR=str(data_dir))
    result = subprocess.run(
        [*SECRETFS, "put", "a"],
        input=b"v",
        env=instance.env,
        capture_output=True,
        check=False,
        preexec_fn=lambda: os.umask(0),
    )
    assert result.returncode == 0, result.stderr
    for directory in (tmp_path / "deep", tmp_path / "deep" / "er", data_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    key = data_dir / "encryption.secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"Back it up" in result.stderr


def test_no_key_generated_for_a_database_with_secrets(tmp_path: Path) -> None:
    """A database written with a key from the environment, then used without it: every command
    exits 3 with one line, and no key file appears; status leaves the data directory unchanged."""
    instance = make_instance(tmp_path)
    instance.cli("put", "db_password", input=b"hunter2")
    key = instance.env.pop(ENC)
    before = snapshot(instance.data_dir)
    for command in (["get", "db_password"], ["ls"], ["status"], ["put", "x"], ["rm", "db_password"], ["migrate"]):
        result = instance.cli(*command, input=b"v", check=False)
        one_error_line(result, 3, "no encryption secret is configured", "no key was generated")
        assert not (instance.data_dir / "encryption.secret").exists(), command
    assert snapshot(instance.data_dir) == before
    instance.env[ENC] = key
    assert instance.cli("get", "db_password").stdout == b"hunter2"


def test_no_key_generated_for_a_database_with_only_a_canary(tmp_path: Path) -> None:
    instance = make_instance(tmp_path)
    instance.cli("put", "a", input=b"v")
    instance.cli("rm", "a")
    instance.env.pop(ENC)
    one_error_line(instance.cli("ls", check=False), 3, "no encryption secret is configured")
    assert not (instance.data_dir / "encryption.secret").exists()


def test_status_writes_nothing(tmp_path: Path) -> None:
    # A fresh data directory: status creates neither the directory, nor a key, nor a database.
    instance = keyless(tmp_path)
    assert instance.cli("status").returncode == 0
    assert instance.cli("ls").stdout == b""
    assert instance.cli("get", "a", check=False).returncode == 6
    assert not instance.data_dir.exists()
    # An existing database with its generated key: status leaves every byte as it was.
    instance.cli("put", "a", input=b"v")
    before = snapshot(instance.data_dir)
    assert instance.cli("status").returncode == 0
    assert snapshot(instance.data_dir) == before
