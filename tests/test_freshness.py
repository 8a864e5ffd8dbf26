"""Freshness: whatever the cache state, a read never returns a value older than the TTL promises.

Values are changed behind the mount (another process on SQLite, another client on PostgreSQL,
`bao kv put` on Vault), with same-size changes, which the kernel would never notice by itself.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from tests.support.bao import BaoServer, vault_env
from tests.support.mount import Instance, make_instance, mounted, os_read
from tests.support.pg import plain_sql_update

pytestmark = pytest.mark.mount

TTL = 1.0
# The refresher runs every TTL and a pass takes one backend read per tracked secret.
SLACK = 1.5


def warm(path: Path, expected: bytes) -> None:
    for _ in range(20):
        assert os_read(path) == expected


def assert_fresh_within(path: Path, expected: bytes, bound: float) -> float:
    """Read until the new value shows; fail if it takes longer than bound. Returns the delay."""
    started = time.monotonic()
    while True:
        got = os_read(path)
        waited = time.monotonic() - started
        if got == expected:
            return waited
        assert waited <= bound, f"still {got!r} after {waited:.2f}s (bound {bound}s)"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
@pytest.mark.parametrize("read_only", [False, True])
def test_sqlite_change_by_another_process(instance: Instance, tmp_path: Path, mode: str, read_only: bool) -> None:
    instance.cli("put", "rot", input=b"value-AAAA")
    args = ["--cache-mode", mode, "--cache-ttl", str(TTL)] + (["--read-only"] if read_only else [])
    with mounted(instance, tmp_path / "m", *args) as m:
        warm(m.path / "rot", b"value-AAAA")
        for new in (b"value-BBBB", b"value-CCCC"):  # same size each time
            instance.cli("put", "rot", input=new)
            assert_fresh_within(m.path / "rot", new, TTL + SLACK)
        instance.cli("rm", "rot")
        deadline = time.monotonic() + TTL + SLACK
        while (m.path / "rot").exists():
            assert time.monotonic() < deadline, "a deleted secret is still shown"
            time.sleep(0.02)
        instance.cli("put", "new-one", input=b"fresh")
        assert_fresh_within(m.path / "new-one", b"fresh", TTL + SLACK)


def test_kernel_mode_really_caches(tmp_path: Path, pg_url: str) -> None:
    # The control for the tests here: a write that nothing announces (plain SQL on PostgreSQL, no
    # trigger: no notification, no file to watch, no control socket) with a long TTL: a kernel
    # mount keeps serving what it has, while a direct mount with the cache off sees the change at
    # once. So freshness is the watcher's, the notifications', the control socket's or the TTL's.
    inst = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=pg_url)
    inst.cli("put", "cached", input=b"original")
    with (
        mounted(inst, tmp_path / "k", "--read-only", "--cache-ttl", "600") as kernel,
        mounted(inst, tmp_path / "d", "--read-only", "--cache-mode", "direct", "--cache-ttl", "0") as direct,
    ):
        warm(kernel.path / "cached", b"original")
        warm(direct.path / "cached", b"original")
        plain_sql_update(pg_url, inst.env["ARCHESTRA_SECRETS_ENCRYPTION_SECRET"], "cached", "replaced")
        assert os_read(direct.path / "cached") == b"replaced"
        assert os_read(kernel.path / "cached") == b"original"


def test_postgresql_change_seen_within_ttl_in_kernel_mode(tmp_path: Path, pg_url: str) -> None:
    # PostgreSQL with a write that nothing announces (plain SQL, no trigger): the TTL brings it in.
    inst = make_instance(tmp_path, ARCHESTRA_DATABASE_URL=pg_url)
    inst.cli("put", "pgsecret", input=b"pg-value-1")
    with mounted(inst, tmp_path / "m", "--cache-ttl", str(TTL)) as m:
        warm(m.path / "pgsecret", b"pg-value-1")
        plain_sql_update(pg_url, inst.env["ARCHESTRA_SECRETS_ENCRYPTION_SECRET"], "pgsecret", "pg-value-2")
        assert_fresh_within(m.path / "pgsecret", b"pg-value-2", TTL + SLACK)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_vault_change_by_bao_kv_put(tmp_path: Path, bao_server: BaoServer, mode: str) -> None:
    sub = f"fresh-{uuid.uuid4().hex[:8]}"
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/token", "value=vault-AAAA")
    inst = make_instance(tmp_path, **vault_env(bao_server, f"secret/data/{sub}", mode="READONLY_VAULT"))
    with mounted(inst, tmp_path / "m", "--cache-mode", mode, "--cache-ttl", str(TTL)) as m:
        warm(m.path / "token", b"vault-AAAA")
        bao_server.cli("kv", "put", "-mount=secret", f"{sub}/token", "value=vault-BBBB")
        assert_fresh_within(m.path / "token", b"vault-BBBB", TTL + SLACK)


@pytest.mark.parametrize("mode", ["kernel", "direct"])
def test_own_write_seen_as_soon_as_close_returns(instance: Instance, tmp_path: Path, mode: str) -> None:
    """Close-to-open on one mount: once a writer's close() returns, stat and read show the new value.

    A reader or a stat in between (which makes the kernel cache the size and pages it saw) must not
    leave an old size or contents behind. Found by the fuzzer: in `kernel` mode stat gave the
    pre-write size after close; `direct` mode kept it for libfuse's 1 s attribute timeout.
    """
    instance.cli("put", "f", input=b"")
    with mounted(instance, tmp_path / "m", "--cache-mode", mode) as m:
        path = m.path / "f"
        value = b""
        for i in range(60):
            data = bytes([65 + i % 26]) * (1 + i % 5)
            fd = os.open(path, os.O_RDWR)
            written = value.ljust(len(value) + i % 3, b"\0") + data
            try:
                os.pwrite(fd, data, len(value) + i % 3)
                # Another descriptor of the file, as on a local filesystem: the pending content.
                assert os_read(path) == written, i
                assert os.stat(path).st_size == len(written), i  # a stat during the write
            finally:
                os.close(fd)
            value = written
            assert os.stat(path).st_size == len(value), i
            assert os_read(path) == value, i
