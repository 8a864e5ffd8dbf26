"""Real mounts: ordinary tools and file calls against a `secretfs mount -f` subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import Instance, Mounted, mounted

pytestmark = pytest.mark.mount


def sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)


def test_cat_and_shell_redirection(mnt: Mounted) -> None:
    assert sh("printf tok > token", mnt.path).returncode == 0
    assert sh("cat token", mnt.path).stdout == "tok"
    assert sh("printf 'line\\n' >> token", mnt.path).returncode == 0
    assert (mnt.path / "token").read_bytes() == b"tokline\n"
    assert mnt.instance.cli("get", "token").stdout == b"tokline\n"
    assert json.loads(mnt.instance.cli("get", "token", "--json").stdout) == {"value": "tokline\n"}


def test_python_open_and_nested_directories(mnt: Mounted) -> None:
    (mnt.path / "app").mkdir()
    (mnt.path / "app" / "db").mkdir()
    with open(mnt.path / "app" / "db" / "password", "w", encoding="utf-8") as handle:
        handle.write("s3cr3t-päss")
    assert (mnt.path / "app" / "db" / "password").read_text(encoding="utf-8") == "s3cr3t-päss"
    assert sorted(os.listdir(mnt.path)) == ["app"]
    assert mnt.instance.cli("ls").stdout.decode().split() == ["app/db/password"]
    # Seek and overwrite in the middle of an existing value: one atomic replace at close.
    with open(mnt.path / "app" / "db" / "password", "r+b") as handle:
        handle.seek(2)
        handle.write(b"XY")
    assert (mnt.path / "app" / "db" / "password").read_text(encoding="utf-8") == "s3XY3t-päss"


def test_ls_l_and_stat_attributes(mnt: Mounted) -> None:
    mnt.instance.cli("put", "dir/one", input=b"12345")
    listing = sh("ls -l dir", mnt.path).stdout
    assert "-rw-------" in listing and " 5 " in listing and "one" in listing
    st = os.stat(mnt.path / "dir" / "one")
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
    assert st.st_size == 5 and st.st_uid == os.getuid() and st.st_gid == os.getgid()
    assert abs(st.st_mtime - __import__("time").time()) < 60
    dst = os.stat(mnt.path / "dir")
    assert stat.S_ISDIR(dst.st_mode) and stat.S_IMODE(dst.st_mode) == 0o700
    out = sh("stat -c '%s %a %F' dir/one", mnt.path).stdout.strip()
    assert out == "5 600 regular file"


def test_mv_and_rm(mnt: Mounted) -> None:
    mnt.instance.cli("put", "old", input=b"v1")
    mnt.instance.cli("put", "target", input=b"will be replaced")
    assert sh("mv old target", mnt.path).returncode == 0
    assert (mnt.path / "target").read_bytes() == b"v1"
    assert not (mnt.path / "old").exists()
    assert sh("mkdir sub && mv target sub/moved", mnt.path).returncode == 0
    assert mnt.instance.cli("get", "sub/moved").stdout == b"v1"
    assert sh("rm sub/moved", mnt.path).returncode == 0
    assert mnt.instance.cli("get", "sub/moved", check=False).returncode == 6
    assert mnt.instance.cli("ls").stdout == b""


def test_mv_populated_directory_copies(mnt: Mounted) -> None:
    mnt.instance.cli("put", "a/x", input=b"1")
    mnt.instance.cli("put", "a/y", input=b"2")
    result = sh("mv a b", mnt.path)
    assert result.returncode == 0, result.stderr
    assert sorted(mnt.instance.cli("ls").stdout.decode().split()) == ["b/x", "b/y"]


def test_edit_rendered_json_in_place(mnt: Mounted) -> None:
    mnt.instance.cli("put", "cfg", input=b'{"user": "app", "port": 5432}')
    rendered = (mnt.path / "cfg").read_text(encoding="utf-8")
    assert rendered == '{\n  "port": 5432,\n  "user": "app"\n}\n'
    # sed -i writes a temporary file in the same directory and renames it over the original.
    assert sh("sed -i 's/5432/6543/' cfg", mnt.path).returncode == 0
    assert json.loads(mnt.instance.cli("get", "cfg", "--json").stdout) == {"port": 6543, "user": "app"}
    # An editor-style rewrite through Python keeps the object too.
    data = json.loads((mnt.path / "cfg").read_text(encoding="utf-8"))
    data["user"] = "other"
    (mnt.path / "cfg").write_text(json.dumps(data), encoding="utf-8")
    assert json.loads(mnt.instance.cli("get", "cfg", "--json").stdout) == {"port": 6543, "user": "other"}


def test_binary_value_round_trips(mnt: Mounted) -> None:
    blob = bytes(range(256)) * 3 + b"\xff\xfe\x00"
    (mnt.path / "keystore.p12").write_bytes(blob)
    assert (mnt.path / "keystore.p12").read_bytes() == blob
    stored = json.loads(mnt.instance.cli("get", "keystore.p12", "--json").stdout)
    assert stored["encoding"] == "base64"
    assert mnt.instance.cli("get", "keystore.p12").stdout == blob
    assert os.stat(mnt.path / "keystore.p12").st_size == len(blob)


def test_touch_creates_empty_secret_and_utimens(mnt: Mounted) -> None:
    assert sh("touch empty", mnt.path).returncode == 0
    assert (mnt.path / "empty").read_bytes() == b""
    assert json.loads(mnt.instance.cli("get", "empty", "--json").stdout) == {"value": ""}
    assert sh("touch empty", mnt.path).returncode == 0


def test_keys_layout(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "app/db", input=b'{"username": "app", "password": "pw", "port": 5432}')
    instance.cli("put", "plain", input=b"just text")
    with mounted(instance, tmp_path / "keys", "--layout", "keys") as m:
        assert sorted(os.listdir(m.path)) == ["app", "plain"]
        assert (m.path / "plain").is_dir()
        assert (m.path / "plain" / "value").read_bytes() == b"just text"
        assert sorted(os.listdir(m.path / "app" / "db")) == ["password", "port", "username"]
        assert (m.path / "app" / "db" / "username").read_bytes() == b"app"
        assert (m.path / "app" / "db" / "port").read_bytes() == b"5432\n"
        (m.path / "app" / "db" / "password").write_bytes(b"new-pw")
        (m.path / "app" / "db" / "port").write_bytes(b"6000")
        (m.path / "app" / "db" / "host").write_bytes(b"db.internal")
        stored = json.loads(instance.cli("get", "app/db", "--json").stdout)
        assert stored == {"username": "app", "password": "new-pw", "port": 6000, "host": "db.internal"}
        os.unlink(m.path / "app" / "db" / "host")
        assert "host" not in json.loads(instance.cli("get", "app/db", "--json").stdout)


def test_read_only_flag(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "ro", input=b"value")
    with mounted(instance, tmp_path / "ro", "--read-only") as m:
        assert (m.path / "ro").read_bytes() == b"value"
        assert stat.S_IMODE(os.stat(m.path / "ro").st_mode) == 0o400
        with pytest.raises(OSError) as info:
            (m.path / "ro").write_bytes(b"x")
        assert info.value.errno == 30  # EROFS


def test_background_mount_returns_once_live(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "bg", input=b"live")
    mountpoint = tmp_path / "bg"
    mountpoint.mkdir()
    try:
        instance.cli("mount", str(mountpoint))
        # No waiting: the command returned only once the mount answered.
        assert (mountpoint / "bg").read_bytes() == b"live"
        status = json.loads(instance.cli("status", str(mountpoint), "--json").stdout)
        assert status["mount"]["live"] is True
    finally:
        instance.cli("umount", str(mountpoint), check=False)
    assert instance.cli("status", str(mountpoint), check=False).returncode == 4
