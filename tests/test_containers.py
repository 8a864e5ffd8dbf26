"""The container shape, reproduced with namespaces (no Docker engine here).

A "host" directory is a shared mount (as `/` is on a systemd host; Docker's rshared bind of it
joins that peer group); secretfs (the sidecar) mounts with --allow-other on its subdirectory
`secrets`. The "application container" is another mount namespace with slave propagation
(`unshare --mount --propagation slave`) that binds the shared directory recursively and makes it
rslave, as Docker does for `-v /srv/secretfs:/run/secretfs:rslave`, and reads as uid 65534.

Binding the shared parent, not the mount point itself, is what lets a mount made later (secretfs
restarted) show through the same bind; a bind of the mount root pins the first mount, which
answers ENOTCONN once its daemon is gone. Both are checked, and that the first daemon still stops
cleanly (exit 0) while that pinned bind exists in the other namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs import mounts
from tests.support.mount import Instance, force_unmount, mounted

pytestmark = pytest.mark.mount

APP_SCRIPT = r"""
set -e
mount --rbind "$SHARED" "$APP"
mount --make-rslave "$APP"
mount --bind "$SHARED/secrets" "$PINNED"
as_other() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
echo "uid=$(as_other id -u)"
echo "first=$(as_other cat "$APP/secrets/db_password")"
echo "pinned=$(as_other cat "$PINNED/db_password")"
if as_other sh -c "printf x > '$APP/secrets/db_password'" 2>/dev/null
then echo write=allowed
else echo write=refused
fi
echo READY
read -r _
echo "second=$(as_other cat "$APP/secrets/db_password")"
echo "pinned_after=$(as_other cat "$PINNED/db_password" 2>&1 || true)"
echo DONE
"""

MODES = ("--allow-other", "--file-mode", "0444", "--dir-mode", "0555")


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory uid 65534 can traverse (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="secretfs-ct-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_until(proc: subprocess.Popen[str], marker: str) -> dict[str, str]:
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        if line == marker:
            return seen
        key, _, value = line.partition("=")
        seen[key] = value
    raise AssertionError(f"the application namespace ended before {marker}: {seen}, exit {proc.wait()}")


def test_other_uid_reads_through_a_slave_bind_and_sees_a_later_mount(
    instance: Instance, world_readable_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mount namespaces and bind mounts")
    base = world_readable_dir
    shared, app, pinned = base / "shared", base / "app", base / "pinned"
    for directory in (shared, app, pinned):
        directory.mkdir(mode=0o755)
    mountpoint = shared / "secrets"
    mountpoint.mkdir(mode=0o755)
    instance.cli("put", "db_password", input=b"first-value")
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    app_ns: subprocess.Popen[str] | None = None
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        with mounted(instance, mountpoint, *MODES, "-v") as first:
            env = dict(os.environ, SHARED=str(shared), APP=str(app), PINNED=str(pinned))
            app_ns = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "slave", "sh", "-c", APP_SCRIPT],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            before = read_until(app_ns, "READY")
            assert before == {"uid": "65534", "first": "first-value", "pinned": "first-value", "write": "refused"}
            # The application's namespace is separate: its binds are not in ours.
            assert mounts.find_mount(app / "secrets") is None

            # secretfs restarts (the sidecar container is replaced): stop, change a value, mount again.
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(timeout=20) == 0, first.log.read_text()
            assert "still referenced elsewhere" in first.log.read_text()
        instance.cli("put", "db_password", input=b"second-value")
        with mounted(instance, mountpoint, *MODES):
            assert app_ns.stdin is not None
            app_ns.stdin.write("go\n")
            app_ns.stdin.flush()
            after = read_until(app_ns, "DONE")
            # A mount made after the bind is seen through it...
            assert after["second"] == "second-value"
            # ...while a bind of the first mount's root is left with a dead connection, not a hang.
            assert "Transport endpoint is not connected" in after["pinned_after"]
            assert app_ns.wait(timeout=10) == 0
    finally:
        if app_ns is not None and app_ns.poll() is None:
            app_ns.kill()
            app_ns.wait(timeout=10)
        force_unmount(mountpoint)
        subprocess.run(["umount", "-l", str(shared)], check=False)
