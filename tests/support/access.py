"""Callers for policy and audit tests: other uids, other executables, other cgroups; policy files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.wait import wait_until

OTHER = 1234  # a uid (and gid) with no account: denied unless a rule names it
NOBODY = 65534
# Modes that let every uid through the kernel's checks, so the policy alone decides.
OPEN_MODES = ("--allow-other", "--file-mode", "0644", "--dir-mode", "0755")


def as_uid(uid: int, *command: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]


def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=30, check=False)


def denied(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "Permission denied" in result.stderr


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory other uids can reach, for mount points: not under pytest's base directory, which
    every pytest session (another one running at the same time too) makes 0700 again."""
    path = Path(tempfile.mkdtemp(prefix="secretfs-access-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise AssertionError("no cgroup2 mount")


@contextlib.contextmanager
def cgroup(*parts: str) -> Iterator[tuple[Path, str]]:
    """A new cgroup (its directory, and its path as /proc/PID/cgroup shows it); removed afterwards."""
    root = cgroup2_root()
    top = root / f"secretfs-test-{secrets.token_hex(4)}"
    leaf = top.joinpath(*parts)
    leaf.mkdir(parents=True)
    try:
        yield leaf, "/" + leaf.relative_to(root).as_posix()
    finally:
        for directory in [leaf, *leaf.parents]:
            if directory == root:
                break

            def removed(d: Path = directory) -> bool:
                try:
                    d.rmdir()
                except OSError as exc:
                    if exc.errno == errno.EBUSY:  # its last process is still leaving
                        return False
                    raise
                return True

            wait_until(removed, 10, message=f"cgroup {directory} still busy")


def in_cgroup(directory: Path, *command: str) -> list[str]:
    """A command that moves itself into a cgroup, then execs command (the same process)."""
    script = f'echo $$ > "{directory}/cgroup.procs" && exec "$@"'
    return ["sh", "-c", script, "sh", *command]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_exe(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    target.chmod(0o755)
    return target


def reads(command: Sequence[str]) -> str:
    """What command prints; it must succeed."""
    result = run(command)
    assert result.returncode == 0, f"{list(command)} exited {result.returncode}: {result.stderr.strip()}"
    return result.stdout
