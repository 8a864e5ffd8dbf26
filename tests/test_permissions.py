"""Another uid reading through the mount: refused unless --allow-other and readable modes."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.mount import Instance, mounted

pytestmark = pytest.mark.mount

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def read_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, "cat", str(path)], capture_output=True, text=True, timeout=30, check=False)


def prepare(tmp_path: Path) -> None:
    """Open the way to tmp_path for other users, and check it with a plain readable file."""
    # The other user must be able to reach the mount point itself (pytest's dirs are 0700).
    for directory in [tmp_path, *tmp_path.parents]:
        if directory == Path(tempfile.gettempdir()) or directory == Path("/"):
            break
        directory.chmod(directory.stat().st_mode | 0o055)
    control = tmp_path / "control.txt"
    control.write_text("ok")
    control.chmod(0o644)
    assert read_as_nobody(control).stdout == "ok"


def test_other_uid_refused_without_allow_other(instance: Instance, tmp_path: Path) -> None:
    prepare(tmp_path)
    instance.cli("put", "s", input=b"private")
    with mounted(instance, tmp_path / "m", "--file-mode", "0444", "--dir-mode", "0555") as m:
        result = read_as_nobody(m.path / "s")
        assert result.returncode != 0 and "Permission denied" in result.stderr
        assert (m.path / "s").read_bytes() == b"private"


def test_other_uid_refused_by_0400_files_with_allow_other(instance: Instance, tmp_path: Path) -> None:
    prepare(tmp_path)
    instance.cli("put", "s", input=b"private")
    with mounted(instance, tmp_path / "m", "--allow-other", "--read-only", "--dir-mode", "0555") as m:
        assert oct((m.path / "s").stat().st_mode & 0o777) == "0o400"
        result = read_as_nobody(m.path / "s")
        assert result.returncode != 0 and "Permission denied" in result.stderr


def test_other_uid_reads_with_allow_other_and_readable_mode(instance: Instance, tmp_path: Path) -> None:
    # The positive control: the same reader succeeds once both gates are open.
    prepare(tmp_path)
    instance.cli("put", "s", input=b"shared")
    with mounted(instance, tmp_path / "m", "--allow-other", "--file-mode", "0444", "--dir-mode", "0555") as m:
        result = read_as_nobody(m.path / "s")
        assert result.returncode == 0 and result.stdout == "shared"
