"""PostgreSQL push between hosts: LISTEN/NOTIFY, the opt-in trigger, and a dropped listener.

Two "hosts" share one PostgreSQL database: separate data directories and separate runtime
directories (so the local control socket cannot carry the change). The mounts' TTL is far longer
than the test, so only a notification can bring a change across.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.support.mount import Instance, Mounted, make_instance, mounted, os_read
from tests.support.pg import plain_sql_update
from tests.support.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.server]

Hosts = tuple[Instance, Instance, str]  # host A, host B, the encryption secret they share
TTL = "600"
BOUND = 1.0  # seconds: a change on host A is read on host B within this


def host(instance: Instance, tmp_path: Path, label: str) -> Instance:
    data = tmp_path / f"data-{label}"
    env = {**instance.env, "SECRETFS_DATA_DIR": str(data), "SECRETFS_RUNTIME_DIR": str(tmp_path / f"run-{label}")}
    return dataclasses.replace(instance, data_dir=data, env=env)


def lag_until(path: Path, expected: bytes | None, bound: float) -> float:
    """Seconds until path reads expected (None: until it is gone); fails past bound."""
    started = time.monotonic()

    def seen() -> bool:
        try:
            return os_read(path) == expected
        except FileNotFoundError:
            return expected is None

    wait_until(seen, bound, interval=0.005, message=lambda: f"{path.name} not {expected!r} within {bound}s")
    return time.monotonic() - started


@pytest.fixture
def two_hosts(tmp_path: Path, pg_url: str) -> Hosts:
    base = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=pg_url)
    a, b = host(base, tmp_path, "a"), host(base, tmp_path, "b")
    a.cli("put", "shared", input=b"initial")
    return a, b, base.env["ARCHESTRA_SECRETS_ENCRYPTION_SECRET"]


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_writes_on_host_a_reach_host_b(two_hosts: Hosts, tmp_path: Path, mode: str) -> None:
    a, b, _ = two_hosts
    args = ("--cache-mode", mode, "--cache-ttl", TTL)
    with mounted(a, tmp_path / "a", *args) as ma, mounted(b, tmp_path / "b", *args) as mb:
        assert os_read(mb.path / "shared") == b"initial"
        lags = []
        for i in range(5):
            (ma.path / "shared").write_bytes(f"through mount A {i}".encode())
            lags.append(lag_until(mb.path / "shared", f"through mount A {i}".encode(), BOUND))
            a.cli("put", "shared", input=f"through CLI on A {i}".encode())
            lags.append(lag_until(mb.path / "shared", f"through CLI on A {i}".encode(), BOUND))
        a.cli("rm", "shared")
        lags.append(lag_until(mb.path / "shared", None, BOUND))
        print(f"\nA -> B over PostgreSQL ({mode}): max {max(lags):.3f}s, median {sorted(lags)[len(lags) // 2]:.3f}s")


def test_trigger_brings_plain_sql_writes(two_hosts: Hosts, tmp_path: Path, pg_url: str) -> None:
    a, b, secret = two_hosts
    with mounted(b, tmp_path / "b", "--cache-ttl", TTL) as mb:
        assert os_read(mb.path / "shared") == b"initial"
        assert "not installed" in a.cli("pg-trigger", "status").stdout.decode()
        # The control: without the trigger a plain SQL write notifies nobody.
        plain_sql_update(pg_url, secret, "shared", "by plain SQL, unseen")
        time.sleep(2 * BOUND)
        assert os_read(mb.path / "shared") == b"initial"
        assert a.cli("pg-trigger", "install").stdout.decode().strip() == "notify trigger: installed"
        assert b"notify_trigger: True" in a.cli("status").stdout
        plain_sql_update(pg_url, secret, "shared", "by plain SQL, pushed")
        lag_until(mb.path / "shared", b"by plain SQL, pushed", BOUND)
        assert "not installed" in a.cli("pg-trigger", "remove").stdout.decode()


def listener_count(mount: Mounted, pg_url: str) -> int:
    conninfo = sa.engine.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'").fetchone()
    return int(row[0]) if row else 0


def test_a_dropped_listener_reconnects(two_hosts: Hosts, tmp_path: Path, pg_url: str) -> None:
    a, b, _ = two_hosts
    with mounted(b, tmp_path / "b", "--cache-ttl", TTL) as mb:
        assert os_read(mb.path / "shared") == b"initial"
        wait_until(lambda: listener_count(mb, pg_url) == 1, 10, message="the mount is not listening")
        conninfo = sa.engine.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
        wait_until(lambda: "lost the PostgreSQL notification connection" in mb.log.read_text(), 10, message="no log")
        wait_until(
            lambda: "listening for PostgreSQL notifications again" in mb.log.read_text(), 20, message="no reconnect"
        )
        a.cli("put", "shared", input=b"after the reconnect")
        lag_until(mb.path / "shared", b"after the reconnect", BOUND)
