"""The outage policy, with real servers stopped and restarted underneath a live mount.

A value read before is served for up to --max-stale while the backend is down or timing out, then
EIO; a value never read fails with EIO within the request timeout; service recovers by itself; the
log and `status` say degraded or healthy, and since when.
"""

from __future__ import annotations

import errno
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bao import BaoServer, vault_env
from tests.support.mount import Instance, Mounted, make_instance, mounted, os_read
from tests.support.pg import PgServer, postgres_server
from tests.support.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.server]

TIMEOUT = 1.0
MAX_STALE = 4.0
TTL = 0.5


def read_errno(path: Path) -> tuple[int, float]:
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        os_read(path)
    return int(info.value.errno or 0), time.monotonic() - started


def runtime_status(m: Mounted) -> dict[str, Any]:
    report = json.loads(m.instance.cli("status", str(m.path), "--json", check=False).stdout)
    assert "daemon" in report["mount"], report["mount"]
    daemon: dict[str, Any] = report["mount"]["daemon"]
    return daemon


def outage_args(mode: str) -> list[str]:
    return ["--cache-mode", mode, "--cache-ttl", str(TTL), "--max-stale", str(MAX_STALE), "--timeout", str(TIMEOUT)]


def check_outage(m: Mounted, known: Path, unknown: Path, expected: bytes, stop, start) -> None:  # type: ignore[no-untyped-def]
    assert os_read(known) == expected
    assert runtime_status(m)["health"]["state"] == "healthy"
    stop()
    went_down = time.monotonic()
    time.sleep(TTL * 2)  # past the TTL: every read now asks the backend
    # A value read before is served while the outage lasts less than --max-stale.
    assert os_read(known) == expected
    # A value never read fails with EIO within the request timeout (never a hang).
    code, took = read_errno(unknown)
    assert code == errno.EIO
    assert took < TIMEOUT * 3 + 2
    health = runtime_status(m)["health"]
    assert health["state"] == "degraded" and health["degraded_since"] is not None
    # After --max-stale, the known value fails too.
    while time.monotonic() - went_down < MAX_STALE + TTL * 2 + 1:
        time.sleep(0.2)
    code, took = read_errno(known)
    assert code == errno.EIO and took < TIMEOUT * 3 + 2
    start()

    def recovered() -> bool:
        try:
            return os_read(known) == expected
        except OSError:
            return False

    # Service recovers by itself.
    wait_until(recovered, 30, interval=0.2, message="the mount did not recover after the backend came back")
    assert runtime_status(m)["health"]["state"] == "healthy"
    log = m.log.read_text()
    assert "backend unavailable" in log and "available again" in log


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_postgresql_stopped_and_restarted(tmp_path: Path, own_pg: PgServer, mode: str) -> None:
    inst = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=own_pg.database_url)
    inst.cli("put", "known", input=b"served-while-down")
    inst.cli("put", "unknown", input=b"never-read")
    with mounted(inst, tmp_path / "m", *outage_args(mode)) as m:

        def stop() -> None:
            own_pg.run("pg_ctl", "stop", "-D", str(own_pg.data_dir), "-m", "immediate", "-w")

        def start() -> None:
            from tests.support.pg import server_options

            result = own_pg.run(
                "pg_ctl",
                "start",
                "-D",
                str(own_pg.data_dir),
                "-l",
                str(own_pg.log_file),
                "-w",
                "-o",
                server_options(own_pg.port, own_pg.root),
            )
            assert result.returncode == 0, result.stderr

        check_outage(m, m.path / "known", m.path / "unknown", b"served-while-down", stop, start)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_vault_timing_out_then_back(tmp_path: Path, fresh_bao: BaoServer, mode: str) -> None:
    # SIGSTOP makes the server accept connections and answer nothing: the timeout case.
    sub = f"outage-{uuid.uuid4().hex[:8]}"
    fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/known", "value=vault-known")
    fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/unknown", "value=vault-unknown")
    inst: Instance = make_instance(tmp_path, **vault_env(fresh_bao, f"secret/data/{sub}"))
    with mounted(inst, tmp_path / "m", *outage_args(mode)) as m:
        try:
            check_outage(
                m,
                m.path / "known",
                m.path / "unknown",
                b"vault-known",
                lambda: fresh_bao.proc.send_signal(signal.SIGSTOP),
                lambda: fresh_bao.proc.send_signal(signal.SIGCONT),
            )
        finally:
            fresh_bao.proc.send_signal(signal.SIGCONT)
