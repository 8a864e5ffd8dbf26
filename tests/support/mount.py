"""Run `secretfs mount -f` as a subprocess against a private data directory, and always unmount."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from secretfs import mounts
from tests.support.wait import wait_until

SECRETFS = [sys.executable, "-m", "secretfs"]


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for secretfs: no ARCHESTRA_* from the caller, a private data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHESTRA_", "SECRETFS_"))}
    env["SECRETFS_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


@dataclass
class Instance:
    """A secretfs configuration: its data dir, environment, and CLI."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [*SECRETFS, *args], input=input, env=self.env, capture_output=True, timeout=120, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"secretfs {args} exited {result.returncode}: {result.stderr.decode()}")
        return result


def make_instance(tmp_path: Path, **env: str) -> Instance:
    data_dir = tmp_path / "data"
    env.setdefault("ARCHESTRA_SECRETS_ENCRYPTION_SECRET", secrets.token_urlsafe(24))
    return Instance(data_dir, base_env(data_dir, **env))


@dataclass
class Mounted:
    path: Path
    proc: subprocess.Popen[bytes]
    instance: Instance
    log: Path


def force_unmount(path: Path) -> None:
    """Unmount, retrying, then lazily, so a test never leaves a mount behind."""
    for _ in range(20):
        if mounts.find_mount(path) is None:
            return
        if mounts.unmount(path).returncode == 0:
            return
        time.sleep(0.1)
    mounts.unmount(path, lazy=True)


@contextlib.contextmanager
def mounted(instance: Instance, mountpoint: Path, *args: str, timeout: float = 30) -> Iterator[Mounted]:
    """`secretfs mount -f MOUNTPOINT ARGS` in the background until the block ends."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SECRETFS, "mount", "-f", str(mountpoint), *args],
            env=instance.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def live() -> bool:
        if mounts.is_live(mountpoint):
            return True
        if proc.poll() is not None:
            raise AssertionError(f"secretfs mount exited {proc.returncode}: {log.read_text()}")
        return False

    try:
        wait_until(live, timeout, message=lambda: f"mount not live: {log.read_text()}")
        yield Mounted(mountpoint, proc, instance, log)
    finally:
        force_unmount(mountpoint)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            force_unmount(mountpoint)


def os_read(path: Path) -> bytes:
    """open/read/close as C programs do (Python's open() adds an isatty ioctl that FUSE forwards)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)
