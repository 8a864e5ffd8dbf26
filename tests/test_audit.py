"""The audit log (`mount --audit-log`): one JSON line per open, write, unlink, rename and chmod, never a value."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secretfs.audit import AuditLog
from tests.support.access import NOBODY, OPEN_MODES, OTHER, as_uid, denied, reads, run, shared_dir, write_policy
from tests.support.mount import Instance, Mounted, mounted
from tests.support.wait import wait_until

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
POLICY = f'[[rule]]\nsecrets = ["db/*"]\n[rule.readers]\nuids = [{NOBODY}]\n'


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_lines(path: Path, count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        found = lines(path)
        return found if len(found) >= count else None

    result = wait_until(enough, 10, message=lambda: f"{path}: {len(lines(path))} line(s), expected {count}")
    assert result is not None
    return result


def status(m: Mounted) -> dict[str, Any]:
    report = json.loads(m.instance.cli("status", str(m.path), "--json").stdout)
    return dict(report["mount"]["daemon"]["audit"])


def spawn(command: list[str]) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run command; its pid (setpriv execs the command, so the reader's pid) and its result."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    return proc.pid, subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_audit_lines_field_by_field_and_no_value(instance: Instance, tmp_path: Path, shared: Path) -> None:
    values = {name: f"MARKER-{secrets.token_hex(8)}" for name in ("db/key", "tls/key", "tls/new")}
    for name in ("db/key", "tls/key"):
        instance.cli("put", name, input=values[name].encode())
    policy = write_policy(tmp_path / "policy.toml", POLICY)
    log = tmp_path / "audit.log"
    args = (*OPEN_MODES, "--policy", str(policy), "--audit-log", str(log))
    with mounted(instance, shared / "m", *args) as m:
        key = str(m.path / "db" / "key")
        reader, result = spawn(as_uid(NOBODY, "cat", key))
        assert result.stdout == values["db/key"], result.stderr
        intruder, result = spawn(as_uid(OTHER, "cat", key))
        assert denied(result)
        fd = os.open(m.path / "tls" / "key", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, values["tls/new"].encode())
        os.close(fd)
        os.rename(m.path / "tls" / "key", m.path / "tls" / "moved")
        os.unlink(m.path / "tls" / "moved")
        found = wait_lines(log, 6)
        counts = status(m)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert [(e["op"], e["secret"], e["result"]) for e in found] == [
        ("open", "db/key", "allowed"),
        ("open", "db/key", "denied"),
        ("open", "tls/key", "allowed"),
        ("write", "tls/key", "allowed"),
        ("rename", "tls/key", "allowed"),
        ("unlink", "tls/moved", "allowed"),
    ]
    allowed, refused, opened, wrote, renamed, unlinked = found
    assert (allowed["pid"], allowed["uid"], allowed["gid"], allowed["exe"]) == (reader, NOBODY, NOBODY, "/usr/bin/cat")
    assert (refused["pid"], refused["uid"], refused["gid"], refused["exe"]) == (intruder, OTHER, OTHER, "/usr/bin/cat")
    me = os.getpid()
    for entry in (opened, wrote, renamed, unlinked):
        assert (entry["pid"], entry["uid"], entry["exe"]) == (me, 0, os.readlink("/proc/self/exe"))
    assert renamed["to"] == "tls/moved" and "to" not in unlinked
    for entry in found:
        assert TIME.fullmatch(entry["time"]), entry["time"]
        assert entry["cgroup"].startswith("/")
        assert set(entry) <= {"time", "secret", "op", "result", "pid", "exe", "uid", "gid", "unit", "cgroup", "to"}
    text = log.read_text() + m.log.read_text()
    for value in values.values():
        assert value not in text
    assert (counts["opens_allowed"], counts["opens_denied"], counts["lines_dropped"]) == (2, 1, 0)


def test_chmod_is_recorded_allowed_or_denied(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "a", input=b"x")
    instance.cli("put", "db/key", input=b"y")
    log = tmp_path / "audit.log"
    policy = write_policy(tmp_path / "policy.toml", POLICY)
    with mounted(instance, tmp_path / "m", "--audit-log", str(log), "--policy", str(policy)) as m:
        try:
            os.chmod(m.path / "a", 0o600)
            expected = "allowed"
        except OSError as exc:  # whatever chmod answers, the line says it
            expected = f"error {errno.errorcode[exc.errno or 0]}"
        with pytest.raises(PermissionError):
            os.chmod(m.path / "db" / "key", 0o600)  # the rule names readers, and root is not one
        found = wait_lines(log, 2)
    assert [(e["op"], e["secret"], e["result"]) for e in found] == [
        ("setattr", "a", expected),
        ("setattr", "db/key", "denied"),
    ]


@pytest.mark.parametrize("mode", [("--cache-mode", "kernel"), ("--read-only",)], ids=["kernel", "read-only-kernel"])
def test_every_open_is_recorded_in_kernel_modes(instance: Instance, tmp_path: Path, mode: tuple[str, ...]) -> None:
    instance.cli("put", "a", input=b"x")
    log = tmp_path / "audit.log"
    with mounted(instance, tmp_path / "m", *mode, "--audit-log", str(log)) as m:
        for _ in range(3):
            assert reads(["cat", str(m.path / "a")]) == "x"
        assert len(wait_lines(log, 3)) == 3


def test_stderr_destination(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "a", input=b"x")
    with mounted(instance, tmp_path / "m", "--audit-log", "-") as m:
        assert reads(["cat", str(m.path / "a")]) == "x"
        wait_until(lambda: '"op":"open"' in m.log.read_text(), 10, message=m.log.read_text)


def test_size_rotation_keeps_one_generation(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "a", input=b"x")
    log = tmp_path / "audit.log"

    def written() -> int:
        return len(lines(log)) + len(lines(log.with_name("audit.log.1")))

    with mounted(instance, tmp_path / "m", "--audit-log", str(log), "--audit-log-max-size", "1000") as m:
        for count in range(1, 13):
            assert reads(["cat", str(m.path / "a")]) == "x"
            # One at a time, so each line meets the limit on its own.
            wait_until(lambda: written() >= count, 10)  # noqa: B023 (called before count changes)
        rotated = log.with_name("audit.log.1")
        assert rotated.exists() and rotated.stat().st_size <= 1000 and log.stat().st_size <= 1000
        assert all(e["op"] == "open" for e in lines(log) + lines(rotated))


def test_moved_log_is_reopened(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "a", input=b"x")
    log = tmp_path / "audit.log"
    with mounted(instance, tmp_path / "m", "--audit-log", str(log)) as m:
        assert reads(["cat", str(m.path / "a")]) == "x"
        wait_lines(log, 1)
        log.rename(tmp_path / "audit.log.old")  # logrotate's default: move, and let the writer create
        assert reads(["cat", str(m.path / "a")]) == "x"
        assert len(wait_lines(log, 1)) == 1
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert len(lines(tmp_path / "audit.log.old")) == 1


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    audit = AuditLog([str(tmp_path / "a.log")], queue_max=2)  # its writer not started: nothing drains
    for n in range(5):
        audit.record({"n": n})
    assert audit.status()["lines_dropped"] == 3
    audit.stop()


def test_unusable_audit_log_mounts_nothing(instance: Instance, tmp_path: Path) -> None:
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    result = instance.cli("mount", str(mountpoint), "--audit-log", str(tmp_path / "missing" / "a.log"), check=False)
    assert result.returncode == 3 and b"cannot open the audit log" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(mountpoint.iterdir())
    assert run(["mountpoint", "-q", str(mountpoint)]).returncode != 0
