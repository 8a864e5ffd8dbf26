"""Subtree mounts (`secretfs mount --prefix`) through real FUSE mounts: SQLite, and one Vault case.

Two mounts of one store, `--prefix tls/` and `--prefix db`, each show only their subtree at their
root; whatever goes through them lands under their prefix; no path through them reaches a secret
outside it; the control socket translates names both ways (the CLI's full names in, the mount's
writes out with the prefix put back). Every mount has a long --cache-ttl: only the control socket
can make another process's change visible at once.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path

import pytest

from secretfs.errors import EXIT_CONFIG, EXIT_NOT_FOUND
from tests.support.bao import BaoServer, vault_env
from tests.support.mount import Instance, make_instance, mounted, os_read
from tests.support.wait import wait_until

pytestmark = pytest.mark.mount

TTL = "600"
OUTSIDE = {"top": b"top-value", "tlsx/a": b"beside-value", "other/tls/a": b"deeper-value"}


def seed(instance: Instance) -> None:
    for name, value in {
        **OUTSIDE,
        "tls/crt": b"crt-value",
        "tls/key": b"key-value",
        "tls/sub/ca": b"ca-value",
        "db/password": b"db-value",
    }.items():
        instance.cli("put", name, input=value)


def get(instance: Instance, name: str) -> bytes | None:
    """The stored value of a full name, or None when there is none."""
    result = instance.cli("get", name, check=False)
    if result.returncode == EXIT_NOT_FOUND:
        return None
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_outside_untouched(instance: Instance) -> None:
    for name, value in OUTSIDE.items():
        assert get(instance, name) == value, name


def test_each_mount_shows_only_its_subtree(instance: Instance, tmp_path: Path) -> None:
    seed(instance)
    instance.cli("put", "tls", input=b"a file named like the prefix")
    with (
        mounted(instance, tmp_path / "tls", "--prefix", "tls/", "--cache-ttl", TTL) as tls,
        mounted(instance, tmp_path / "db", "--prefix", "db", "--cache-ttl", TTL) as db,
    ):
        assert sorted(os.listdir(tls.path)) == ["crt", "key", "sub"]
        assert os.listdir(tls.path / "sub") == ["ca"]
        assert os.listdir(db.path) == ["password"]
        assert os_read(tls.path / "crt") == b"crt-value"
        assert os_read(tls.path / "sub" / "ca") == b"ca-value"
        assert os_read(db.path / "password") == b"db-value"
        for name in ("top", "tls", "db", "a", "password", "tlsx", "other"):
            assert not (tls.path / name).exists(), name
        assert not (db.path / "crt").exists()


def test_writes_mv_rm_land_under_the_prefix(instance: Instance, tmp_path: Path) -> None:
    seed(instance)
    with (
        mounted(instance, tmp_path / "tls", "--prefix", "/tls/", "--cache-ttl", TTL) as tls,
        mounted(instance, tmp_path / "all", "--cache-ttl", TTL) as whole,
    ):
        assert os_read(whole.path / "tls" / "crt") == b"crt-value"  # the whole mount holds it
        (tls.path / "new").write_bytes(b"new-value")
        assert get(instance, "tls/new") == b"new-value"
        assert get(instance, "new") is None
        # The unprefixed mount of the same store sees it at once: published with its full name.
        assert os_read(whole.path / "tls" / "new") == b"new-value"
        (tls.path / "crt").write_bytes(b"crt-2")
        assert os_read(whole.path / "tls" / "crt") == b"crt-2"

        os.mkdir(tls.path / "made")
        (tls.path / "made" / "f").write_bytes(b"in-made")
        assert get(instance, "tls/made/f") == b"in-made"

        os.rename(tls.path / "new", tls.path / "sub" / "moved")
        assert get(instance, "tls/sub/moved") == b"new-value"
        assert get(instance, "tls/new") is None
        assert sorted(os.listdir(whole.path / "tls" / "sub")) == ["ca", "moved"]

        os.unlink(tls.path / "sub" / "moved")
        assert get(instance, "tls/sub/moved") is None
        assert not (whole.path / "tls" / "sub" / "moved").exists()

        # Dot names that are names, not path steps, stay under the prefix.
        for name in ("...", "..foo", ".hidden"):
            (tls.path / name).write_bytes(name.encode())
            assert get(instance, f"tls/{name}") == name.encode()
        check_outside_untouched(instance)


def test_no_path_reaches_outside(instance: Instance, tmp_path: Path) -> None:
    seed(instance)
    with (
        mounted(instance, tmp_path / "a" / "tls", "--prefix", "tls", "--cache-ttl", TTL) as tls,
        mounted(instance, tmp_path / "b" / "db", "--prefix", "db", "--cache-ttl", TTL) as db,
    ):
        # `..` at the mount root leaves the filesystem: it is the mount point's parent, a plain
        # directory (here tmp_path/a, beside no other mount) that holds no secret.
        for path in (
            tls.path / ".." / "top",
            tls.path / ".." / "tls" / "crt",
            tls.path / "sub" / ".." / ".." / "db" / "password",
            tls.path / ".." / "db" / "password",
        ):
            try:
                got = os_read(path)
            except OSError as exc:
                assert exc.errno in (errno.ENOENT, errno.EISDIR), (path, exc)
                continue
            assert got not in (b"top-value", b"db-value"), path
        assert os.path.samefile(tls.path / "sub" / "..", tls.path)
        # Names of path steps cannot be made; links out are refused; renames cannot leave.
        for step in (".", ".."):
            with pytest.raises(OSError) as caught:
                os.close(os.open(tls.path / step, os.O_WRONLY | os.O_CREAT, 0o600))
            assert caught.value.errno in (errno.EISDIR, errno.EEXIST)
        with pytest.raises(OSError) as caught:
            os.symlink("../db/password", tls.path / "link")
        assert caught.value.errno == errno.EPERM
        for target in (db.path / "crt", tmp_path / "crt"):
            with pytest.raises(OSError) as caught:
                os.rename(tls.path / "crt", target)
            assert caught.value.errno == errno.EXDEV
        with pytest.raises(OSError) as caught:
            os.link(tls.path / "crt", tls.path / "crt2")
        assert caught.value.errno == errno.EPERM
        assert get(instance, "tls/crt") == b"crt-value"
        assert get(instance, "db/crt") is None
        check_outside_untouched(instance)


def test_control_socket_translates_names(instance: Instance, tmp_path: Path) -> None:
    seed(instance)
    with (
        mounted(instance, tmp_path / "tls", "--prefix", "tls/", "--cache-ttl", TTL) as tls,
        mounted(instance, tmp_path / "db", "--prefix", "db/", "--cache-ttl", TTL) as db,
    ):
        assert sorted(os.listdir(tls.path)) == ["crt", "key", "sub"]  # listed before the put
        assert os_read(tls.path / "crt") == b"crt-value"
        result = instance.cli("put", "tls/new", input=b"from-cli")
        assert b"warning" not in result.stderr, result.stderr
        assert os_read(tls.path / "new") == b"from-cli"
        assert "new" in os.listdir(tls.path)
        instance.cli("put", "tls/crt", input=b"crt-from-cli")
        assert os_read(tls.path / "crt") == b"crt-from-cli"

        instance.cli("put", "db/y", input=b"db-y")
        assert os_read(db.path / "y") == b"db-y"
        assert not (tls.path / "y").exists()
        assert "y" not in os.listdir(tls.path)

        instance.cli("rm", "tls/key")
        assert not (tls.path / "key").exists()
        # A write through one prefixed mount reaches the other's store names, not its own.
        (db.path / "crt").write_bytes(b"db-crt")
        assert os_read(tls.path / "crt") == b"crt-from-cli"
        assert get(instance, "db/crt") == b"db-crt"


def test_status_shows_the_prefix(instance: Instance, tmp_path: Path) -> None:
    with mounted(instance, tmp_path / "tls", "--prefix", "tls") as tls:
        result = instance.cli("status", "--json", str(tls.path))
        assert json.loads(result.stdout)["mount"]["daemon"]["prefix"] == "tls/"


def test_action_globs_match_relative_names(instance: Instance, tmp_path: Path) -> None:
    seed(instance)
    record = tmp_path / "changed.txt"
    action = f"crt=/bin/sh -c 'echo \"$SECRETFS_CHANGED\" >> {record}'"
    values = (f"crt-{i}".encode() for i in range(1000))

    def put_then_ran() -> bool:
        # The feed reads its baseline in the background: a put before it is read is no change.
        instance.cli("put", "tls/crt", input=next(values))
        return wait_until_ran()

    def wait_until_ran() -> bool:
        try:
            return bool(wait_until(record.exists, 1, interval=0.05))
        except AssertionError:
            return False

    with mounted(instance, tmp_path / "tls", "--prefix", "tls", "--on-change-exec", action):
        wait_until(put_then_ran, 30, interval=0, message="the action on `crt` did not run")
        assert set(record.read_text().split()) == {"crt"}  # SECRETFS_CHANGED: the relative name


@pytest.mark.parametrize("prefix", ["..", "tls/..", "a//b", "./tls", "tls/./x", "x" * 300, "a/\udcff"])
def test_bad_prefix_is_one_line_and_exit_3(instance: Instance, tmp_path: Path, prefix: str) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for args in (["mount", "--prefix", prefix, str(mountpoint)], ["mount", "-f", "--prefix", prefix, str(mountpoint)]):
        result = instance.cli(*args, check=False)
        assert result.returncode == EXIT_CONFIG, result.stderr
        lines = result.stderr.decode(errors="replace").splitlines()
        assert len(lines) == 1 and lines[0].startswith("secretfs: error: --prefix"), lines
        assert not os.path.ismount(mountpoint)


@pytest.mark.server
def test_vault_subtree_mount(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = f"t-{uuid.uuid4().hex[:10]}"
    instance = make_instance(tmp_path, **vault_env(bao_server, f"secret/data/{sub}"))
    instance.cli("put", "tls/crt", input=b"crt-value")
    instance.cli("put", "top", input=b"top-value")
    instance.cli("put", "tlsx/a", input=b"beside-value")
    with (
        mounted(instance, tmp_path / "tls", "--prefix", "tls", "--cache-ttl", TTL) as tls,
        mounted(instance, tmp_path / "all", "--cache-ttl", TTL) as whole,
    ):
        assert os.listdir(tls.path) == ["crt"]
        assert os_read(tls.path / "crt") == b"crt-value"
        assert os_read(whole.path / "tls" / "crt") == b"crt-value"
        # Vault pushes no changes: only the control socket, with the full name, tells the other mount.
        (tls.path / "crt").write_bytes(b"crt-2")
        assert os_read(whole.path / "tls" / "crt") == b"crt-2"
        instance.cli("put", "tls/crt", input=b"crt-3")
        assert os_read(tls.path / "crt") == b"crt-3"
        (tls.path / "new").write_bytes(b"new-value")
        assert get(instance, "tls/new") == b"new-value"
        os.rename(tls.path / "new", tls.path / "moved")
        assert get(instance, "tls/moved") == b"new-value"
        assert get(instance, "tls/new") is None
        for name in ("...", "..x"):
            (tls.path / name).write_bytes(b"dots")
            assert get(instance, f"tls/{name}") == b"dots"
        assert not (tls.path / "top").exists()
        assert get(instance, "top") == b"top-value"
        assert get(instance, "tlsx/a") == b"beside-value"
