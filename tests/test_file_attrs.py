"""Per-secret modes and owners (issue 13): chmod/chown through real mounts, `put --file-mode`, copy-in
tools (install, cp -p, rsync -a, tar -x) as root, KV v1 and KV v2, and databases without the table."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from secretfs import crypto
from secretfs.errors import EXIT_REFUSED
from secretfs.stores.base import FileAttrs
from secretfs.stores.sql import SqlStore, make_engine
from secretfs.stores.sql_setup import prepare_database
from tests.support.bao import KV1_MOUNT, BaoServer, vault_env
from tests.support.mount import Instance, make_instance, mounted, os_read
from tests.support.wait import wait_until

pytestmark = pytest.mark.mount

DAEMON = 1  # uid and gid of the `daemon` user and group on Debian
CACHE_MODES = ["kernel", "direct"]


def shown(path: Path) -> tuple[int, int, int]:
    """(permission bits, uid, gid) as stat shows them."""
    st = os.stat(path)
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def attrs_rows(instance: Instance) -> dict[str, tuple[int | None, str | None, str | None]]:
    with sqlite3.connect(instance.data_dir / "secretfs.db") as conn:
        rows = conn.execute("SELECT name, mode, owner, grp FROM secretfs_file_attrs").fetchall()
    return {name: (mode, owner, grp) for name, mode, owner, grp in rows}


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)


# ----- chmod and chown through the mount ----------------------------------------------------------


@pytest.fixture
def mnt_with_secret(instance: Instance, tmp_path: Path) -> Iterator[Path]:
    """A mount holding one secret `s`; the mount point."""
    instance.cli("put", "s", input=b"v")
    with mounted(instance, tmp_path / "mnt") as m:
        yield m.path


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_chmod_chown_seen_by_another_mount_and_after_remount(
    instance: Instance, tmp_path: Path, cache_mode: str
) -> None:
    instance.cli("put", "app/s", input=b"value")
    instance.cli("put", "app/other", input=b"other")
    args = ("--cache-mode", cache_mode)
    with mounted(instance, tmp_path / "a", *args) as a, mounted(instance, tmp_path / "b", *args) as b:
        assert shown(b.path / "app/s") == (0o600, 0, 0)  # the second kernel caches the attrs (1 h)
        os.chmod(a.path / "app/s", 0o640)
        assert shown(a.path / "app/s") == (0o640, 0, 0)  # the reply carried it
        os.chown(a.path / "app/s", DAEMON, DAEMON)
        assert shown(a.path / "app/s") == (0o640, DAEMON, DAEMON)
        assert shown(b.path / "app/s") == (0o640, DAEMON, DAEMON)  # told before chown returned
        assert os_read(b.path / "app/s") == b"value"
        assert shown(b.path / "app/other") == (0o600, 0, 0)  # the others keep theirs
        os.chown(a.path / "app/s", -1, 0)  # the group alone
        assert shown(b.path / "app/s") == (0o640, DAEMON, 0)
    assert attrs_rows(instance) == {"app/s": (0o640, "daemon", "root")}
    with mounted(instance, tmp_path / "c", *args) as c:
        assert shown(c.path / "app/s") == (0o640, DAEMON, 0)
        assert shown(c.path / "app/other") == (0o600, 0, 0)


def test_special_bits_are_refused_and_change_nothing(mnt_with_secret: Path) -> None:
    path = mnt_with_secret / "s"
    os.chmod(path, 0o644)
    for mode in (0o4644, 0o2644, 0o1644):
        with pytest.raises(PermissionError) as info:
            os.chmod(path, mode)
        assert info.value.errno == errno.EPERM
    assert shown(path) == (0o644, 0, 0)


def test_directories_keep_the_mount_mode(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "d/s", input=b"v")
    with mounted(instance, tmp_path / "mnt", "--dir-mode", "0750") as m:
        os.chmod(m.path / "d", 0o755)  # accepted (rsync -a, tar -x set directory modes) ...
        os.chown(m.path / "d", DAEMON, DAEMON)
        assert shown(m.path / "d") == (0o750, 0, 0)  # ... and changes nothing


def test_read_only_mount_refuses_chmod(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "s", input=b"v")
    instance.cli("put", "t", "--file-mode", "0440", input=b"v")
    with mounted(instance, tmp_path / "mnt", "--read-only") as m:
        with pytest.raises(OSError) as info:
            os.chmod(m.path / "s", 0o444)
        assert info.value.errno == errno.EROFS
        assert shown(m.path / "s") == (0o400, 0, 0)  # the read-only default
        assert shown(m.path / "t") == (0o440, 0, 0)  # a stored mode wins over it


# ----- put --file-mode --owner --group ------------------------------------------------------------


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_put_sets_modes_and_live_mounts_see_them(instance: Instance, tmp_path: Path, cache_mode: str) -> None:
    instance.cli("put", "s", input=b"v1")
    (tmp_path / "x").write_bytes(b"x")
    (tmp_path / "y").write_bytes(b"y")
    with mounted(instance, tmp_path / "mnt", "--cache-mode", cache_mode) as m:
        assert shown(m.path / "s") == (0o600, 0, 0)
        instance.cli("put", "s", "--file-mode", "0640", "--owner", "daemon", "--group", "daemon", input=b"v2")
        assert shown(m.path / "s") == (0o640, DAEMON, DAEMON)
        assert os_read(m.path / "s") == b"v2"
        instance.cli("put", "s", input=b"v3")  # a new value keeps the mode and owner
        assert shown(m.path / "s") == (0o640, DAEMON, DAEMON)
        instance.cli("put", "s", "--file-mode", "0440", input=b"v3")  # the same value, a new mode
        assert shown(m.path / "s") == (0o440, DAEMON, DAEMON)
        instance.cli("put", "--file-mode", "0604", f"p/x={tmp_path / 'x'}", f"p/y={tmp_path / 'y'}")
        assert [shown(m.path / "p" / n) for n in "xy"] == [(0o604, 0, 0)] * 2  # each of several names
        # A name this host does not know shows the mount's owner; the name is kept as it is.
        instance.cli("put", "u", "--owner", "no-such-user-here", "--group", "12345", input=b"u")
        assert shown(m.path / "u") == (0o600, 0, 12345)
    assert attrs_rows(instance)["u"] == (None, "no-such-user-here", "12345")


def test_put_refuses_special_bits(instance: Instance) -> None:
    result = instance.cli("put", "s", "--file-mode", "4644", input=b"v", check=False)
    assert result.returncode == 2 and "permission bits only" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    assert instance.cli("ls", check=False).stdout == b""


def test_chown_to_a_uid_with_no_name_stores_the_number(mnt_with_secret: Path, instance: Instance) -> None:
    os.chown(mnt_with_secret / "s", 54321, 54322)
    assert shown(mnt_with_secret / "s") == (0o600, 54321, 54322)
    assert attrs_rows(instance)["s"] == (None, "54321", "54322")


# ----- copy-in tools ------------------------------------------------------------------------------


def make_tar(path: Path) -> None:
    """An archive with a directory, files of modes 0600 and 0644, owned by root and by daemon."""
    with tarfile.open(path, "w") as archive:
        folder = tarfile.TarInfo("./t")
        folder.type, folder.mode, folder.uname, folder.gname = tarfile.DIRTYPE, 0o755, "root", "root"
        archive.addfile(folder)
        for name, mode, owner, uid in (("./t/one", 0o600, "root", 0), ("./t/two", 0o644, "daemon", DAEMON)):
            data = f"tar {name}".encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uname, info.gname, info.uid, info.gid = len(data), mode, owner, owner, uid, uid
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_copy_in_tools_exit_0_and_keep_their_modes(instance: Instance, tmp_path: Path, cache_mode: str) -> None:
    assert shutil.which("rsync"), "rsync is missing: scripts/bootstrap --test installs it"
    src = tmp_path / "src"
    (src / "tree").mkdir(parents=True)
    for name, mode in (("a", 0o644), ("b", 0o600), ("c", 0o640)):
        (src / name).write_text(f"value {name}")
        (src / name).chmod(mode)
    for name, mode in (("x", 0o640), ("y", 0o604), ("z", 0o644)):
        (src / "tree" / name).write_text(f"tree {name}")
        (src / "tree" / name).chmod(mode)
    make_tar(tmp_path / "archive.tar")
    instance.cli("put", "kept", "--file-mode", "0604", input=b"kept")
    instance.cli("put", "plain", input=b"plain")
    with mounted(instance, tmp_path / "mnt", "--cache-mode", cache_mode) as m:
        mnt = m.path
        for argv in (
            ["install", "-m", "0644", src / "a", mnt / "a"],
            ["install", "-m", "0600", src / "b", mnt / "b"],
            ["cp", "-p", src / "c", mnt / "c"],
            ["rsync", "-a", f"{src / 'tree'}/", f"{mnt / 'dir'}/"],
            ["tar", "-x", "-C", mnt, "-f", tmp_path / "archive.tar"],
            ["install", "-m", "0640", src / "a", mnt / "a"],  # over an existing file
            ["touch", "-d", "2020-01-02 03:04:05", mnt / "b"],
        ):
            result = run(*argv)
            assert result.returncode == 0, f"{argv[0]} exited {result.returncode}: {result.stderr}"
        expected = {
            "a": (0o640, 0, 0),
            "b": (0o600, 0, 0),
            "c": (0o640, 0, 0),
            "dir/x": (0o640, 0, 0),
            "dir/y": (0o604, 0, 0),
            "dir/z": (0o644, 0, 0),
            "t/one": (0o600, 0, 0),
            "t/two": (0o644, DAEMON, DAEMON),
            "kept": (0o604, 0, 0),
            "plain": (0o600, 0, 0),
        }
        assert {name: shown(mnt / name) for name in expected} == expected
        assert os_read(mnt / "dir/y") == b"tree y" and os_read(mnt / "t/two") == b"tar ./t/two"
        assert os_read(mnt / "c") == b"value c"
    with mounted(instance, tmp_path / "again") as m:
        assert {name: shown(m.path / name) for name in expected} == expected


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_mv_keeps_value_and_attrs(instance: Instance, tmp_path: Path, cache_mode: str) -> None:
    instance.cli("put", "s", "--file-mode", "0640", "--owner", "daemon", input=b"moving")
    instance.cli("put", "target", "--file-mode", "0604", "--group", "daemon", input=b"old target")
    with mounted(instance, tmp_path / "mnt", "--cache-mode", cache_mode) as m:
        os.mkdir(m.path / "d")
        assert run("mv", m.path / "s", m.path / "d" / "t").returncode == 0
        assert shown(m.path / "d" / "t") == (0o640, DAEMON, 0)
        assert os_read(m.path / "d" / "t") == b"moving"
        assert run("mv", m.path / "d" / "t", m.path / "target").returncode == 0  # replaces the target
        assert shown(m.path / "target") == (0o640, DAEMON, 0)
        assert os_read(m.path / "target") == b"moving"
    assert attrs_rows(instance) == {"target": (0o640, "daemon", None)}


def test_keys_layout_attrs_apply_to_every_key_file(instance: Instance, tmp_path: Path) -> None:
    (tmp_path / "db.json").write_text(json.dumps({"user": "app", "password": "pw"}))
    instance.cli("put", f"db={tmp_path / 'db.json'}")
    with mounted(instance, tmp_path / "mnt", "--layout", "keys") as m:
        assert shown(m.path / "db/user") == (0o600, 0, 0)
        os.chmod(m.path / "db/password", 0o640)
        assert shown(m.path / "db/password") == (0o640, 0, 0)
        assert shown(m.path / "db/user") == (0o640, 0, 0)  # the secret's attrs: every key file


# ----- databases without the table ----------------------------------------------------------------


def test_database_without_the_attrs_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    key = crypto.derive_key(secrets.token_urlsafe(24))
    engine = make_engine(url, timeout=5)
    prepare_database(engine, key)
    writer = SqlStore(engine, key)
    writer.write("s", {"value": "v"})
    writer.set_attrs("s", FileAttrs(mode=0o640))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE secretfs_file_attrs")  # as an older secretfs left it
    writer.close()
    ro_engine = make_engine(url, timeout=5)
    prepare_database(ro_engine, key, writable=False)  # read-only: creates no attrs table
    reader = SqlStore(ro_engine, key, read_only=True)
    assert reader.read("s").attrs is None and reader.read_many(["s"])["s"].value == {"value": "v"}
    assert "secretfs_file_attrs" not in sa.inspect(ro_engine).get_table_names()
    reader.close()
    engine = make_engine(url, timeout=5)
    writer = SqlStore(engine, key)  # a writable store creates it when it first needs it
    writer.rename("s", "t")
    writer.set_attrs("t", FileAttrs(owner="daemon"))
    assert writer.read("t").attrs == FileAttrs(owner="daemon")
    writer.delete("t")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM secretfs_file_attrs").scalar() == 0
        # A row left by a secret another program (Archestra) deleted is not inherited by a new one.
        conn.exec_driver_sql("INSERT INTO secretfs_file_attrs (name, mode) VALUES ('t', 511)")
    writer.write("t", {"value": "new"})
    assert writer.read("t").attrs is None
    writer.close()


# ----- Vault ---------------------------------------------------------------------------------------


def unique() -> str:
    return f"fa-{uuid.uuid4().hex[:10]}"


@pytest.mark.server
def test_kv1_accepts_only_what_the_file_shows(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", f"{KV1_MOUNT}/{sub}/s", "value=v")
    env = vault_env(bao_server, f"{KV1_MOUNT}/{sub}")
    env["ARCHESTRA_HASHICORP_VAULT_KV_VERSION"] = "1"
    inst = make_instance(tmp_path, **env)
    with mounted(inst, tmp_path / "mnt") as m:
        os.chmod(m.path / "s", 0o600)  # what it shows: accepted
        os.chown(m.path / "s", 0, 0)
        with pytest.raises(PermissionError):
            os.chmod(m.path / "s", 0o644)
        with pytest.raises(PermissionError):
            os.chown(m.path / "s", DAEMON, DAEMON)
        assert shown(m.path / "s") == (0o600, 0, 0)
        result = run("install", "-m", "0644", "/etc/hostname", m.path / "new")
        assert result.returncode != 0  # the mode cannot be kept: install says so
        assert "KV v1 keeps no per-secret modes; use a policy file" in m.log.read_text()
    refused = inst.cli("put", "t", "--file-mode", "0640", input=b"v", check=False)
    assert refused.returncode == EXIT_REFUSED and "KV v1 keeps no per-secret modes" in refused.stderr.decode()
    assert "Traceback" not in refused.stderr.decode()
    assert bao_server.api("GET", f"{KV1_MOUNT}/{sub}/t").status_code == 404  # refused before any write


@pytest.mark.server
def test_kv2_keeps_attrs_in_custom_metadata(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/s", "value=v")
    bao_server.cli("kv", "metadata", "put", "-mount=secret", "-custom-metadata=team=payments", f"{sub}/s")
    inst = make_instance(tmp_path, **vault_env(bao_server, f"secret/data/{sub}"))

    def custom(name: str) -> dict[str, str]:
        got = json.loads(bao_server.cli("kv", "metadata", "get", "-format=json", "-mount=secret", name).stdout)
        return dict(got["data"]["custom_metadata"] or {})

    with mounted(inst, tmp_path / "a") as a, mounted(inst, tmp_path / "b") as b:
        assert shown(b.path / "s") == (0o600, 0, 0)
        os.chmod(a.path / "s", 0o640)
        os.chown(a.path / "s", DAEMON, DAEMON)
        assert shown(b.path / "s") == (0o640, DAEMON, DAEMON)
        assert custom(f"{sub}/s") == {
            "team": "payments",  # keys of others are left alone
            "secretfs_mode": "0640",
            "secretfs_owner": "daemon",
            "secretfs_group": "daemon",
        }
        result = run("install", "-m", "0604", "/etc/hostname", a.path / "new")
        assert result.returncode == 0, result.stderr
        assert shown(b.path / "new") == (0o604, 0, 0)
        assert run("mv", a.path / "s", a.path / "moved").returncode == 0
        assert shown(b.path / "moved") == (0o640, DAEMON, DAEMON)
    assert custom(f"{sub}/moved")["secretfs_mode"] == "0640"
    inst.cli("put", "p", "--file-mode", "0444", "--owner", "nobody", input=b"p")
    assert custom(f"{sub}/p") == {"secretfs_mode": "0444", "secretfs_owner": "nobody"}
    with mounted(inst, tmp_path / "c") as c:
        assert shown(c.path / "p") == (0o444, 65534, 0)
        assert shown(c.path / "moved") == (0o640, DAEMON, DAEMON)


# ----- PostgreSQL: another host ------------------------------------------------------------------


@pytest.mark.server
def test_chmod_on_one_host_reaches_another_through_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Two "hosts" (own data and runtime directories: no control socket between them) share one
    database; the TTL is far longer than the test, so only the store's notification can tell B."""
    base = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=pg_url)
    a, b = (
        dataclasses.replace(
            base,
            data_dir=tmp_path / f"data-{label}",
            env={
                **base.env,
                "SECRETFS_DATA_DIR": str(tmp_path / f"data-{label}"),
                "SECRETFS_RUNTIME_DIR": str(tmp_path / f"run-{label}"),
            },
        )
        for label in "ab"
    )
    name = f"pg-{uuid.uuid4().hex[:8]}"
    a.cli("put", name, input=b"v")
    args = ("--cache-ttl", "600")
    with mounted(a, tmp_path / "a", *args) as ma, mounted(b, tmp_path / "b", *args) as mb:
        assert shown(mb.path / name) == (0o600, 0, 0)
        os.chmod(ma.path / name, 0o640)
        wait_until(lambda: shown(mb.path / name) == (0o640, 0, 0), 5, message="host B still shows the old mode")
        b.cli("put", name, "--file-mode", "0604", "--owner", "daemon", input=b"v")
        wait_until(lambda: shown(ma.path / name) == (0o604, DAEMON, 0), 5, message="host A still shows the old mode")
        assert os_read(ma.path / name) == b"v"
