"""The mount's life: SIGTERM/SIGINT, a busy mount at shutdown, a dead daemon's stale mount, refusals,
and credentials from $CREDENTIALS_DIRECTORY (systemd LoadCredential=), all with real processes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from secretfs import mounts
from tests.support.mount import SECRETFS, Instance, Mounted, base_env, force_unmount, mounted

pytestmark = pytest.mark.mount


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_and_exits_0(instance: Instance, tmp_path: Path, signum: int) -> None:
    with mounted(instance, tmp_path / "mnt", "-v") as m:
        m.proc.send_signal(signum)
        assert m.proc.wait(timeout=15) == 0, m.log.read_text()
        assert mounts.find_mount(m.path) is None
        log = m.log.read_text()
        assert f"received {signal.Signals(signum).name}" in log
        assert f"unmounted {m.path}" in log
        assert "lazily" not in log


def test_busy_mount_is_detached_lazily_at_sigterm(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "held", input=b"open-file")
    with mounted(instance, tmp_path / "mnt", "-v") as m:
        fd = os.open(m.path / "held", os.O_RDONLY)
        holder = subprocess.Popen(["sleep", "60"], cwd=m.path)  # a working directory inside the mount
        try:
            assert os.read(fd, 100) == b"open-file"
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(timeout=15) == 0, m.log.read_text()
            # Detached, not left behind as a dead mount in the table.
            assert mounts.find_mount(m.path) is None
            assert "busy" in m.log.read_text()
            assert f"detached {m.path} lazily" in m.log.read_text()
            assert holder.poll() is None  # the process working inside it was not disturbed
        finally:
            with contextlib.suppress(OSError):  # closing flushes to a daemon that is gone: ENOTCONN
                os.close(fd)
            holder.kill()
            holder.wait()


def kill_daemon(m: Mounted) -> None:
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=10)
    assert mounts.mount_state(m.path) == "stale"
    with pytest.raises(OSError) as caught:
        os.listdir(m.path)
    assert caught.value.errno == errno.ENOTCONN


def test_recovery_after_sigkill_with_background_mount(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "db_password", input=b"hunter2")
    path = tmp_path / "mnt"
    try:
        with mounted(instance, path) as m:
            kill_daemon(m)
            status = json.loads(instance.cli("status", str(path), "--json", check=False).stdout)
            assert status["mount"]["state"] == "stale"
            result = instance.cli("mount", str(path), "--log-file", str(tmp_path / "bg.log"))
            stderr = result.stderr.decode()
            assert "stale secretfs mount" in stderr
            assert "Transport endpoint is not connected" in stderr
            assert "detaching it lazily" in stderr
            assert mounts.mount_state(path) == "live"
            assert (path / "db_password").read_bytes() == b"hunter2"
    finally:
        force_unmount(path)


def test_recovery_after_sigkill_with_foreground_mount(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "db_password", input=b"hunter2")
    path = tmp_path / "mnt"
    with mounted(instance, path) as m:
        kill_daemon(m)
        log = tmp_path / "again.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*SECRETFS, "mount", "-f", str(path)], env=instance.env, stdout=out, stderr=out)
        try:
            assert mounts.wait_until_live(path, 30, alive=lambda: proc.poll() is None), log.read_text()
            assert (path / "db_password").read_bytes() == b"hunter2"
            assert "found a stale secretfs mount" in log.read_text()
        finally:
            force_unmount(path)
            proc.wait(timeout=10)


def test_second_mount_on_a_live_mount_is_refused(instance: Instance, mnt: Mounted) -> None:
    result = instance.cli("mount", "-f", str(mnt.path), check=False)
    assert result.returncode == 3
    assert b"already mounted" in result.stderr
    assert mounts.is_live(mnt.path)


@pytest.mark.parametrize("foreground", [True, False])
def test_refusals(instance: Instance, tmp_path: Path, foreground: bool) -> None:
    flags = ["-f"] if foreground else []
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "app.conf").write_text("x")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = {
        busy: "is not empty",
        a_file: "is not a directory",
        tmp_path / "missing": "does not exist",
    }
    for path, message in cases.items():
        result = instance.cli("mount", *flags, str(path), check=False)
        assert result.returncode == 3, (path, result.stderr)
        assert message.encode() in result.stderr, result.stderr
        assert mounts.find_mount(path) is None
    assert (busy / "app.conf").read_text() == "x"


def test_encryption_secret_from_credentials_directory(tmp_path: Path, credentials_dir: Path) -> None:
    key = secrets.token_urlsafe(24)
    data_dir = tmp_path / "data"
    writer = Instance(data_dir, base_env(data_dir, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=key))
    writer.cli("put", "db_password", input=b"from-credential")
    cred = credentials_dir / "ARCHESTRA_SECRETS_ENCRYPTION_SECRET"
    cred.write_text(key + "\n")
    cred.chmod(0o400)
    # The key is only in the credential: not in the environment, not in a NAME_FILE variable.
    reader = Instance(data_dir, base_env(data_dir, CREDENTIALS_DIRECTORY=str(credentials_dir)))
    assert "ARCHESTRA_SECRETS_ENCRYPTION_SECRET" not in reader.env
    with mounted(reader, tmp_path / "mnt") as m:
        assert (m.path / "db_password").read_bytes() == b"from-credential"
        assert key not in m.log.read_text()
    # A wrong key in the credential is refused by the key canary (exit 5), so the credential is what was used.
    cred.chmod(0o600)
    cred.write_text(secrets.token_urlsafe(24))
    (tmp_path / "mnt2").mkdir()
    result = subprocess.run(
        [*SECRETFS, "mount", "-f", str(tmp_path / "mnt2")], env=reader.env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 5, result.stderr
    assert mounts.find_mount(tmp_path / "mnt2") is None
