"""The systemd notification protocol, against a real `secretfs mount -f` and a socket the test owns.

READY=1 must arrive only once the mount answers (checked at the moment it is received), STOPPING=1
on SIGTERM, then the process exits 0 with the mount gone.
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs import mounts, notify
from tests.support.mount import SECRETFS, Instance, force_unmount


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify.socket_address(address))  # type: ignore[arg-type]
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        return fields

    def wait_for(self, key: str, timeout: float, on_message: object = None) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is None:
                break
            if callable(on_message):
                on_message(fields)
            if key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(str(tmp_path / "notify.sock"))
    try:
        yield lst
    finally:
        lst.close()


def start(instance: Instance, mountpoint: Path, log: Path, notify_socket: str) -> subprocess.Popen[bytes]:
    mountpoint.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*SECRETFS, "mount", "-f", str(mountpoint)],
            env=dict(instance.env, NOTIFY_SOCKET=notify_socket),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop(proc: subprocess.Popen[bytes], mountpoint: Path) -> None:
    force_unmount(mountpoint)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        force_unmount(mountpoint)


def run_protocol(instance: Instance, tmp_path: Path, listener: NotifyListener) -> None:
    instance.cli("put", "db_password", input=b"hunter2")
    mountpoint, log = tmp_path / "mnt", tmp_path / "mount.log"
    proc = start(instance, mountpoint, log, listener.address)
    try:
        seen_at_ready: dict[str, object] = {}

        def check_on_ready(fields: dict[str, str]) -> None:
            if fields.get("READY") == "1":
                # At the very moment READY=1 is received, the mount must already answer.
                seen_at_ready["live"] = mounts.is_live(mountpoint)
                seen_at_ready["value"] = (mountpoint / "db_password").read_bytes()

        ready = listener.wait_for("READY", 30, check_on_ready)
        assert ready["READY"] == "1"
        assert seen_at_ready == {"live": True, "value": b"hunter2"}, log.read_text()
        assert str(mountpoint) in ready.get("STATUS", "")
        assert not any("STOPPING" in m for m in listener.messages)

        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING", 15)
        assert stopping["STOPPING"] == "1"
        assert "SIGTERM" in stopping.get("STATUS", "")
        assert proc.wait(timeout=15) == 0, log.read_text()
        assert mounts.find_mount(mountpoint) is None
        assert "hunter2" not in log.read_text()
        # Exactly one READY and one STOPPING over the whole life.
        assert [m.get("READY") for m in listener.messages if "READY" in m] == ["1"]
        assert [m.get("STOPPING") for m in listener.messages if "STOPPING" in m] == ["1"]
    finally:
        stop(proc, mountpoint)


@pytest.mark.mount
def test_ready_after_mount_answers_and_stopping_on_sigterm(
    instance: Instance, tmp_path: Path, listener: NotifyListener
) -> None:
    run_protocol(instance, tmp_path, listener)


@pytest.mark.mount
def test_abstract_notify_socket(instance: Instance, tmp_path: Path) -> None:
    lst = NotifyListener(f"@secretfs-test-{secrets.token_hex(8)}")
    try:
        run_protocol(instance, tmp_path, lst)
    finally:
        lst.close()


@pytest.mark.mount
def test_no_ready_when_the_mount_fails(instance: Instance, tmp_path: Path, listener: NotifyListener) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "occupied").write_text("x")
    proc = start(instance, mountpoint, tmp_path / "mount.log", listener.address)
    try:
        assert proc.wait(timeout=30) == 3
        listener.receive(0.5)
        assert all("READY" not in m for m in listener.messages)
    finally:
        stop(proc, mountpoint)


def test_send_without_a_socket_is_a_no_op(listener: NotifyListener) -> None:
    assert notify.send("READY=1", env={}) is False
    assert notify.send("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify.send("STATUS=hello", env={"NOTIFY_SOCKET": listener.address}) is True
    assert listener.receive(2) == {"STATUS": "hello"}


def test_send_to_a_missing_socket_reports_false(tmp_path: Path) -> None:
    assert notify.send("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}) is False
