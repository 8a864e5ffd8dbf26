"""Daemon hardening, checked from outside the process: not dumpable, RLIMIT_CORE 0, mlockall outcome.

PR_GET_DUMPABLE can only be read in-process, and every /proc file of a root daemon is owned by root
either way, so dumpability is checked by its effect: a process of the same uid without
CAP_SYS_PTRACE may open /proc/PID/mem of a dumpable process (the control) but not of a
non-dumpable one. The daemon is started without CAP_SYS_PTRACE too (setpriv), since the kernel
also refuses when the target holds capabilities the prober lacks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs import mounts
from secretfs.mounts import STATUS_XATTR
from tests.support.mount import SECRETFS, Instance, force_unmount
from tests.support.wait import wait_until

pytestmark = pytest.mark.mount

NO_PTRACE = ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]


@contextlib.contextmanager
def daemon(instance: Instance, mountpoint: Path, prefix: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """`secretfs mount -f` started through a wrapper command (setpriv, prlimit); always unmounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*prefix, *SECRETFS, "mount", "-f", str(mountpoint)],
            env=instance.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def live() -> bool:
        if mounts.is_live(mountpoint):
            return True
        assert proc.poll() is None, log.read_text()
        return False

    try:
        wait_until(live, 30, message=log.read_text)
        yield proc
    finally:
        force_unmount(mountpoint)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def can_open_mem(pid: int) -> int:
    """0 if a same-uid process without CAP_SYS_PTRACE can open /proc/PID/mem, else the errno."""
    probe = subprocess.run(
        [
            *NO_PTRACE,
            "python3",
            "-c",
            "import sys\ntry:\n open(f'/proc/{sys.argv[1]}/mem','rb').close()\nexcept OSError as e:\n"
            " print(e.errno)\nelse:\n print(0)",
            str(pid),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(probe.stdout.strip())


def proc_field(pid: int, name: str, file: str = "status") -> str:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(name):
            return line
    raise AssertionError(f"{name} not in /proc/{pid}/{file}")


def test_daemon_is_not_dumpable_has_no_core_and_is_locked(instance: Instance, tmp_path: Path) -> None:
    marker = "hardening-marker-" + os.urandom(8).hex()
    instance.cli("put", "secret", input=marker.encode())
    control = subprocess.Popen([*NO_PTRACE, "sleep", "60"])
    try:
        time.sleep(0.2)
        assert can_open_mem(control.pid) == 0  # the probe works on a dumpable process of the same kind
        with daemon(instance, tmp_path / "mnt", NO_PTRACE) as proc:
            assert (tmp_path / "mnt" / "secret").read_text() == marker
            assert can_open_mem(proc.pid) in (errno.EACCES, errno.EPERM)
            assert proc_field(proc.pid, "Max core file size", "limits").split()[4:6] == ["0", "0"]
            locked_kb = int(proc_field(proc.pid, "VmLck:").split()[1])
            assert locked_kb > 0  # mlockall took effect (the tests run as root: CAP_IPC_LOCK)

            status = instance.cli("status", str(tmp_path / "mnt"), "--json")
            report = json.loads(status.stdout)["mount"]["daemon"]
            assert report["pid"] == proc.pid
            assert report["dumpable"] is False
            assert report["core_limit"] == 0 and report["core_limit_hard"] == 0
            assert report["mlockall"]["ok"] is True and report["mlockall"]["detail"].startswith("locked")
            text = instance.cli("status", str(tmp_path / "mnt")).stdout.decode()
            assert "dumpable: False" in text and "locked (MCL_CURRENT|MCL_FUTURE" in text

            raw = os.getxattr(tmp_path / "mnt", STATUS_XATTR)
            assert json.loads(raw)["dumpable"] is False
            assert (
                marker.encode() not in raw and instance.env["ARCHESTRA_SECRETS_ENCRYPTION_SECRET"].encode() not in raw
            )
            assert STATUS_XATTR in os.listxattr(tmp_path / "mnt")
            # Only the root carries it; a file has no extended attributes.
            assert os.listxattr(tmp_path / "mnt" / "secret") == []
            with pytest.raises(OSError) as info:
                os.getxattr(tmp_path / "mnt" / "secret", STATUS_XATTR)
            assert info.value.errno == errno.ENODATA
            with pytest.raises(OSError) as info:
                os.getxattr(tmp_path / "mnt", "user.other")
            assert info.value.errno == errno.ENODATA
            # Writes still work with getxattr implemented (the kernel asks for security.capability).
            (tmp_path / "mnt" / "secret").write_text(marker + "2")
            assert instance.cli("get", "secret").stdout.decode() == marker + "2"
    finally:
        control.kill()
        control.wait()


def test_mlockall_not_permitted_is_reported_and_the_mount_works(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "s", input=b"value")
    prefix = ["prlimit", "--memlock=65536:65536", "setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock"]
    with daemon(instance, tmp_path / "mnt", prefix) as proc:
        assert (tmp_path / "mnt" / "s").read_bytes() == b"value"
        assert int(proc_field(proc.pid, "VmLck:").split()[1]) == 0
        report = json.loads(instance.cli("status", str(tmp_path / "mnt"), "--json").stdout)["mount"]["daemon"]
        assert report["mlockall"]["ok"] is False
        assert "CAP_IPC_LOCK" in report["mlockall"]["detail"] and "65536" in report["mlockall"]["detail"]
        assert report["dumpable"] is False  # the rest of the hardening does not depend on it
        assert proc_field(proc.pid, "Max core file size", "limits").split()[4:6] == ["0", "0"]


def test_cli_commands_that_handle_values_are_hardened_too(instance: Instance, tmp_path: Path) -> None:
    """`secretfs put` waiting for its value on stdin: not dumpable and no core file, like the daemon
    (`ulimit -c unlimited` and a SIGABRT must not write the value it holds to a core file)."""
    proc = subprocess.Popen(
        [*NO_PTRACE, "prlimit", "--core=unlimited", *SECRETFS, "put", "held"],
        env=instance.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"a value in memory")
        proc.stdin.flush()
        # prlimit execs secretfs: the pid is the CLI's once its limits say so.
        wait_until(lambda: proc_field(proc.pid, "Max core file size", "limits").split()[4:6] == ["0", "0"], 30)
        assert can_open_mem(proc.pid) in (errno.EACCES, errno.EPERM)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert instance.cli("get", "held").stdout == b"a value in memory"


def test_children_get_no_caller_environment_and_no_path_lookup(instance: Instance, tmp_path: Path) -> None:
    """A fake `ls` and `fusermount3` early in PATH are never run (the readiness probe and unmount use
    the system's), and the tools secretfs runs get no key variable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "ran"
    for tool in ("ls", "fusermount3"):
        fake = bin_dir / tool
        fake.write_text(f"#!/bin/sh\nenv > {ran}.{tool}\nexit 1\n")
        fake.chmod(0o755)
    instance.env["PATH"] = f"{bin_dir}:{instance.env.get('PATH', '/usr/bin:/bin')}"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    started = instance.cli("mount", str(mountpoint))  # background: waits for the readiness probe
    try:
        assert mounts.is_live(mountpoint), started.stderr
        assert instance.cli("umount", str(mountpoint)).returncode == 0
        assert mounts.find_mount(mountpoint) is None
    finally:
        force_unmount(mountpoint)
    assert not list(tmp_path.glob("ran.*")), [p.read_text() for p in tmp_path.glob("ran.*")]
